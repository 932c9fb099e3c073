import DequeModule
import NIOCore
import WireProtocol

/// The client's side of a connection, confined to the channel's event loop: it matches answers to requests,
/// confirms to publishes and deliveries to consumers. ``BrokerConnection`` reaches it only through the loop.
final class ClientHandler: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    enum Phase {
        case handshaking
        case open
        case closed(BrokerError)
    }

    private let configuration: ClientConfiguration
    private var reader = FrameReader(decoder: FrameDecoder(maxFrameSize: Frame.handshakeMaxSize, expectsMagic: false))
    private(set) var phase = Phase.handshaking
    private var context: ChannelHandlerContext?
    private let handshake: EventLoopPromise<(HelloOk, AuthOk)>
    private var helloOk: HelloOk?
    private var handshakeDone = false

    private var nextRequestId: UInt32 = 0
    private var pending: [UInt32: EventLoopPromise<ServerMessage>] = [:]
    /// Consumers whose `consumeOk` has not arrived yet: registered before any delivery can follow it.
    private var pendingConsumers: [UInt32: AsyncThrowingStream<Message, any Error>.Continuation] = [:]
    private var consumers: [UInt32: AsyncThrowingStream<Message, any Error>.Continuation] = [:]
    var connection: BrokerConnection?

    private var confirmsEnabled = false
    private var publishSequence: UInt64 = 0
    private var unconfirmed = Deque<(sequence: UInt64, promise: EventLoopPromise<Void>)>()
    private var writabilityWaiters: [EventLoopPromise<Void>] = []
    /// Whether the broker said publishers are blocked (an alarm); publishes wait in `heldPublishes` meanwhile, so
    /// the connection stays readable by the broker for acks and requests (docs/protocol.md, flow control).
    private var blocked = false
    private var heldPublishes: [(Publish, EventLoopPromise<Void>)] = []
    private var flushScheduled = false
    var returns: AsyncStream<ReturnedMessage>.Continuation?
    var errors: AsyncStream<BrokerError>.Continuation?
    var flow: AsyncStream<FlowEvent>.Continuation?

    private var heartbeatTask: RepeatedTask?
    private var lastReceived = NIODeadline.now()
    private var lastSent = NIODeadline.now()

    init(configuration: ClientConfiguration, handshake: EventLoopPromise<(HelloOk, AuthOk)>) {
        self.configuration = configuration
        self.handshake = handshake
    }

    // MARK: - Channel events

    func handlerAdded(context: ChannelHandlerContext) { self.context = context }

    func channelActive(context: ChannelHandlerContext) {
        var buffer = context.channel.allocator.buffer(capacity: 64)
        buffer.writeBytes(protocolMagic)
        ClientMessage.hello(Hello(versions: configuration.versions, clientName: configuration.clientName)).encode(into: &buffer)
        context.writeAndFlush(wrapOutboundOut(buffer), promise: nil)
        context.fireChannelActive()
    }

    func channelInactive(context: ChannelHandlerContext) {
        fail(BrokerError(.connectionClosed, "connection to the broker closed"))
        heartbeatTask?.cancel()
        self.context = nil
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        fail(BrokerError(.connectionClosed, "connection error: \(error)"))
        context.close(promise: nil)
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        if context.channel.isWritable {
            let waiters = writabilityWaiters
            writabilityWaiters.removeAll()
            for waiter in waiters { waiter.succeed() }
        }
        context.fireChannelWritabilityChanged()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        lastReceived = .now()
        reader.append(unwrapInboundIn(data))
        while true {
            let message: ServerMessage
            do {
                guard let frame = try reader.next() else { return }
                message = try ServerMessage.decode(frame)
            } catch {
                reader.discard()
                closeWithError(error)
                return
            }
            handle(message)
            if case .closed = phase { return }
        }
    }

    // MARK: - Incoming frames

    private func handle(_ message: ServerMessage) {
        switch message {
        case .helloOk(let ok):
            helloOk = ok
            let auth = Authenticate(user: configuration.user, password: configuration.password, maxFrameSize: configuration.maxFrameSize,
                                    heartbeatSeconds: configuration.heartbeatSeconds)
            send(.authenticate(auth))
        case .authOk(let ok):
            guard let helloOk else { return closeWithError(BrokerError(.unexpectedFrame, "authOk before helloOk")) }
            phase = .open
            reader.decoder.maxFrameSize = ok.maxFrameSize
            startHeartbeats(seconds: ok.heartbeatSeconds)
            handshakeDone = true
            handshake.succeed((helloOk, ok))
        case .heartbeat:
            break
        case .close(let close):
            send(.closeOk)
            fail(BrokerError(close.code, close.reason))
            context?.close(promise: nil)
        case .closeOk:
            context?.close(promise: nil)
        case .ok(let requestId), .getEmpty(let requestId):
            complete(requestId, message)
        case .countOk(let requestId, _), .statusOk(let requestId, _), .manageOk(let requestId, _):
            complete(requestId, message)
        case .queueDeclareOk(let ok):
            complete(ok.requestId, message)
        case .consumeOk(let ok):
            if let continuation = pendingConsumers.removeValue(forKey: ok.requestId) { consumers[ok.consumerTag] = continuation }
            complete(ok.requestId, message)
        case .getOk(let ok):
            complete(ok.requestId, message)
        case .error(let error):
            if error.requestId == 0 {
                // About a publish without confirms, or an ack/nack/reject: nothing awaits it, so it goes to the
                // connection's error stream.
                errors?.yield(error.error)
            } else {
                pendingConsumers[error.requestId]?.finish(throwing: error.error)
                pendingConsumers[error.requestId] = nil
                pending.removeValue(forKey: error.requestId)?.fail(error.error)
            }
        case .deliver(let deliver):
            guard let connection, let continuation = consumers[deliver.consumerTag] else { return }
            let properties = (try? deliver.properties.decode()) ?? MessageProperties()
            continuation.yield(Message(deliveryTag: deliver.deliveryTag, redelivered: deliver.redelivered, exchange: deliver.exchange,
                                       routingKey: deliver.routingKey, properties: properties, body: deliver.body,
                                       messageCount: nil, connection: connection))
        case .returned(let returned):
            let properties = (try? returned.properties.decode()) ?? MessageProperties()
            returns?.yield(ReturnedMessage(code: returned.code, text: returned.text, exchange: returned.exchange,
                                           routingKey: returned.routingKey, properties: properties, body: returned.body))
        case .confirmAck(let confirm):
            settleConfirms(confirm, error: nil)
        case .confirmNack(let confirm):
            settleConfirms(confirm, error: BrokerError(confirm.code, "publish \(confirm.sequence) refused: \(confirm.text)"))
        case .connectionBlocked(let reason):
            blocked = true
            flow?.yield(.blocked(reason: reason))
        case .connectionUnblocked:
            blocked = false
            let held = heldPublishes
            heldPublishes.removeAll()
            for (publish, promise) in held { self.publish(publish, promise: promise) }
            flow?.yield(.unblocked)
        case .consumerCancelled(let cancelled):
            consumers.removeValue(forKey: cancelled.consumerTag)?
                .finish(throwing: BrokerError(cancelled.code, "consumer cancelled by the broker: \(cancelled.reason)"))
        }
    }

    private func complete(_ requestId: UInt32, _ message: ServerMessage) {
        pending.removeValue(forKey: requestId)?.succeed(message)
    }

    private func settleConfirms(_ confirm: Confirm, error: BrokerError?) {
        func finish(_ promise: EventLoopPromise<Void>) {
            if let error { promise.fail(error) } else { promise.succeed() }
        }
        if confirm.multiple {
            while let first = unconfirmed.first, first.sequence <= confirm.sequence {
                unconfirmed.removeFirst()
                finish(first.promise)
            }
        } else if let index = unconfirmed.firstIndex(where: { $0.sequence == confirm.sequence }) {
            let entry = unconfirmed.remove(at: index)
            finish(entry.promise)
        }
    }

    // MARK: - Requests from BrokerConnection (on the event loop)

    /// Sends a request built with a fresh request id; the promise gets the answer or the broker's error.
    func request(_ build: (UInt32) -> ClientMessage, promise: EventLoopPromise<ServerMessage>,
                 consumer: AsyncThrowingStream<Message, any Error>.Continuation? = nil) {
        guard case .open = phase else { return promise.fail(closedError) }
        nextRequestId &+= 1
        if nextRequestId == 0 { nextRequestId = 1 }
        let requestId = nextRequestId
        pending[requestId] = promise
        if let consumer { pendingConsumers[requestId] = consumer }
        send(build(requestId))
    }

    func enableConfirms(promise: EventLoopPromise<ServerMessage>) {
        confirmsEnabled = true
        request({ .confirmSelect(requestId: $0) }, promise: promise)
    }

    /// Writes a publish. With confirms on, `promise` completes at the broker's confirm; otherwise once the
    /// connection can take more (so publishers slow down instead of queueing without bound).
    func publish(_ publish: Publish, promise: EventLoopPromise<Void>) {
        guard case .open = phase else { return promise.fail(closedError) }
        if blocked {
            heldPublishes.append((publish, promise))  // bounded by the callers awaiting them
            return
        }
        send(.publish(publish))
        if confirmsEnabled {
            publishSequence += 1
            unconfirmed.append((publishSequence, promise))
        } else if context?.channel.isWritable ?? false {
            promise.succeed()
        } else {
            writabilityWaiters.append(promise)
        }
    }

    func settle(_ message: ClientMessage, promise: EventLoopPromise<Void>) {
        guard case .open = phase else { return promise.fail(closedError) }
        send(message)
        promise.succeed()
    }

    func cancelConsumer(tag: UInt32) {
        consumers.removeValue(forKey: tag)?.finish()
    }

    func close(promise: EventLoopPromise<Void>) {
        guard let context, case .open = phase else { return promise.succeed() }
        send(.close(Close(code: .normal, reason: "client closed the connection")))
        fail(BrokerError(.connectionClosed, "connection closed by the client"))
        context.channel.closeFuture.cascade(to: promise)
        // If the broker does not answer closeOk promptly, close anyway.
        let channel = context.channel
        context.eventLoop.scheduleTask(in: .seconds(2)) { channel.close(promise: nil) }
    }

    // MARK: - Output

    /// Encodes a frame; one flush per event-loop turn covers every frame written in it.
    private func send(_ message: ClientMessage) {
        guard let context else { return }
        var buffer = context.channel.allocator.buffer(capacity: 64)
        message.encode(into: &buffer)
        context.write(wrapOutboundOut(buffer), promise: nil)
        lastSent = .now()
        if !flushScheduled {
            flushScheduled = true
            let bound = NIOLoopBound(self, eventLoop: context.eventLoop)
            context.eventLoop.execute {
                let handler = bound.value
                handler.flushScheduled = false
                handler.context?.flush()
            }
        }
    }

    private func startHeartbeats(seconds: UInt16) {
        guard seconds > 0, let context else { return }
        let interval = TimeAmount.seconds(Int64(seconds))
        let half = TimeAmount.milliseconds(Int64(seconds) * 500)
        let bound = NIOLoopBound(self, eventLoop: context.eventLoop)
        heartbeatTask = context.eventLoop.scheduleRepeatedTask(initialDelay: half, delay: half) { _ in
            let handler = bound.value
            let now = NIODeadline.now()
            if now - handler.lastReceived > interval * 2 {
                handler.closeWithError(BrokerError(.heartbeatTimeout, "the broker sent nothing for two heartbeat intervals"))
            } else if now - handler.lastSent >= half {
                handler.send(.heartbeat)
            }
        }
    }

    // MARK: - Failure

    private var closedError: BrokerError {
        if case .closed(let error) = phase { return error }
        return BrokerError(.connectionClosed, "the connection is not open")
    }

    private func closeWithError(_ error: BrokerError) {
        if case .open = phase { send(.close(Close(code: error.code, reason: error.message))) }
        fail(error)
        context?.close(promise: nil)
    }

    /// Fails everything waiting: requests, confirms, consumers.
    private func fail(_ error: BrokerError) {
        if case .closed = phase { return }
        phase = .closed(error)
        if !handshakeDone {
            handshakeDone = true
            handshake.fail(error)
        }
        let waiting = pending
        pending.removeAll()
        for promise in waiting.values { promise.fail(error) }
        let confirms = unconfirmed
        unconfirmed.removeAll()
        for entry in confirms { entry.promise.fail(error) }
        for waiter in writabilityWaiters { waiter.fail(error) }
        writabilityWaiters.removeAll()
        for (_, promise) in heldPublishes { promise.fail(error) }
        heldPublishes.removeAll()
        for continuation in consumers.values { continuation.finish(throwing: error) }
        for continuation in pendingConsumers.values { continuation.finish(throwing: error) }
        consumers.removeAll()
        pendingConsumers.removeAll()
        returns?.finish()
        errors?.finish()
        flow?.finish()
        heartbeatTask?.cancel()
    }
}

@available(*, unavailable)
extension ClientHandler: Sendable {}
