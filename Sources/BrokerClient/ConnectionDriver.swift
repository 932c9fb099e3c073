import Logging
import Metrics
import NIOCore
import NIOPosix
import NIOSSL
import NIOTLS
import WireProtocol

/// Carries out what ``ClientStateMachine`` decides: it owns the sockets (one at a time, a new one per reconnect),
/// the promises of waiting callers, the consumers' streams, timers and metrics. All of it is confined to one
/// event loop; ``BrokerConnection`` reaches it only through that loop.
final class ConnectionDriver {
    typealias Machine = ClientStateMachine

    let loop: any EventLoop
    let configuration: ClientConfiguration
    private(set) var machine: Machine
    private var logger: Logger

    /// The current socket; frames from an older one are ignored.
    private var channel: (any Channel)?
    private var nextId: UInt64 = 0
    private var calls: [Machine.CallID: EventLoopPromise<ServerMessage>] = [:]
    private var publishes: [Machine.PublishID: EventLoopPromise<Void>] = [:]
    private var consumers: [Machine.ConsumerID: AsyncThrowingStream<Message, any Error>.Continuation] = [:]
    private var writabilityWaiters: [EventLoopPromise<Void>] = []
    private var drainWaiters: [EventLoopPromise<Void>] = []
    private var flushScheduled = false
    private var ticker: RepeatedTask?
    private var reconnectTask: Scheduled<Void>?
    private var connectTimeoutTask: Scheduled<Void>?

    /// Completed with the handshake's results at the first connect, or failed if it never succeeds.
    let opened: EventLoopPromise<(HelloOk, AuthOk)>
    /// Completed when the connection ends for good.
    let terminated: EventLoopPromise<Void>
    var connection: BrokerConnection?

    let returns: AsyncStream<ReturnedMessage>.Continuation
    let errors: AsyncStream<BrokerError>.Continuation
    let flow: AsyncStream<FlowEvent>.Continuation
    let events: AsyncStream<ConnectionEvent>.Continuation
    let notices: AsyncStream<Notice>.Continuation

    private let metrics: ClientMetrics

    init(loop: any EventLoop, configuration: ClientConfiguration, returns: AsyncStream<ReturnedMessage>.Continuation,
         errors: AsyncStream<BrokerError>.Continuation, flow: AsyncStream<FlowEvent>.Continuation,
         events: AsyncStream<ConnectionEvent>.Continuation, notices: AsyncStream<Notice>.Continuation) {
        self.loop = loop
        self.notices = notices
        self.configuration = configuration
        self.returns = returns
        self.errors = errors
        self.flow = flow
        self.events = events
        self.opened = loop.makePromise()
        self.terminated = loop.makePromise()
        self.metrics = ClientMetrics(clientName: configuration.clientName, factory: configuration.metricsFactory ?? MetricsSystem.factory)
        var logger = configuration.logger
        logger[metadataKey: "brokerd.client"] = .string(configuration.clientName)
        self.logger = logger
        machine = Machine(
            endpointCount: configuration.endpoints.count,
            hello: Hello(versions: configuration.versions, clientName: configuration.clientName),
            authenticate: Authenticate(user: configuration.user, password: configuration.password,
                                       maxFrameSize: configuration.maxFrameSize, heartbeatSeconds: configuration.heartbeatSeconds),
            recovery: configuration.recovery, requestTimeout: .init(configuration.requestTimeout),
            publishTimeout: .init(configuration.publishTimeout), republishUnconfirmed: configuration.republishUnconfirmed)
    }

    func makeId() -> UInt64 {
        nextId += 1
        return nextId
    }

    /// Starts the first connect and the timer that enforces deadlines and heartbeats.
    func start() {
        let bound = NIOLoopBound(self, eventLoop: loop)
        ticker = loop.scheduleRepeatedTask(initialDelay: .milliseconds(100), delay: .milliseconds(100)) { _ in
            bound.value.run(bound.value.machine.tick(now: .now()))
        }
        run([machine.start()])
    }

    // MARK: - Running actions

    func run(_ actions: [Machine.Action]) {
        for action in actions { run(action) }
        checkDrained()
    }

    private func run(_ action: Machine.Action) {
        switch action {
        case .connect(let endpoint):
            connect(to: configuration.endpoints[endpoint % configuration.endpoints.count])
        case .sendHello(let hello):
            guard let channel else { return }
            var buffer = channel.allocator.buffer(capacity: 64)
            buffer.writeBytes(protocolMagic)
            ClientMessage.hello(hello).encode(into: &buffer)
            channel.writeAndFlush(buffer, promise: nil)
        case .send(let message):
            if case .publish = message { metrics.published.increment() }
            send(message)
        case .closeChannel:
            // The machine has already accounted for this socket's end: later events from it are ignored.
            guard let channel else { return }
            flushNow()
            channel.close(promise: nil)
            self.channel = nil
            connectTimeoutTask?.cancel()
        case .scheduleReconnect(let attempt):
            let delay = configuration.recovery?.delay(attempt: attempt, random: Double.random(in: 0..<1)) ?? .zero
            metrics.reconnects.increment()
            logger.info("reconnecting", metadata: ["attempt": "\(attempt)", "delay": "\(delay)"])
            let bound = NIOLoopBound(self, eventLoop: loop)
            reconnectTask = loop.scheduleTask(in: .init(delay)) { bound.value.run(bound.value.machine.reconnectTimerFired()) }
        case .opened(let helloOk, let authOk):
            logger[metadataKey: "brokerd.connection_id"] = .stringConvertible(authOk.connectionId)
            logger.debug("connected", metadata: ["server": .string(helloOk.serverName)])
            opened.succeed((helloOk, authOk))
        case .succeed(let call, let message):
            calls.removeValue(forKey: call)?.succeed(message)
        case .fail(let call, let error):
            calls.removeValue(forKey: call)?.fail(error)
        case .written(let id):
            guard let promise = publishes.removeValue(forKey: id) else { return }
            if channel?.isWritable ?? true { promise.succeed() } else { writabilityWaiters.append(promise) }
        case .confirmed(let id):
            metrics.confirmed.increment()
            publishes.removeValue(forKey: id)?.succeed()
        case .publishFailed(let id, let error):
            if error.code != .connectionClosed && error.code != .timeout { metrics.nacked.increment() }
            publishes.removeValue(forKey: id)?.fail(error)
        case .deliver(let consumer, let deliver):
            guard let continuation = consumers[consumer], let connection else { return }
            metrics.delivered.increment()
            let properties = (try? deliver.properties.decode()) ?? MessageProperties()
            continuation.yield(Message(deliveryTag: deliver.deliveryTag, redelivered: deliver.redelivered, exchange: deliver.exchange,
                                       routingKey: deliver.routingKey, properties: properties, body: deliver.body,
                                       messageCount: nil, connection: connection, epoch: machine.epoch))
        case .finishConsumer(let consumer, let error):
            guard let continuation = consumers.removeValue(forKey: consumer) else { return }
            if let error { continuation.finish(throwing: error) } else { continuation.finish() }
        case .returned(let returned):
            let properties = (try? returned.properties.decode()) ?? MessageProperties()
            returns.yield(ReturnedMessage(code: returned.code, text: returned.text, exchange: returned.exchange,
                                          routingKey: returned.routingKey, properties: properties, body: returned.body))
        case .asyncError(let error):
            logger.debug("broker reported an error", metadata: ["error": "\(error)"])
            errors.yield(error)
        case .flow(let event):
            if case .unblocked = event { releaseWritabilityWaiters() }
            flow.yield(event)
        case .notice(let notice):
            logger.warning("\(notice.text)", metadata: [
                "notice": "\(notice.kind)", "exchange": "\(notice.exchange)", "message_type": "\(notice.messageType)",
                "version": "\(notice.version)", "sunset": "\(notice.sunset)", "replacement": "\(notice.replacement)",
            ])
            notices.yield(notice)
        case .event(let event):
            log(event)
            events.yield(event)
            switch event {
            case .failed(let error):
                finishAll(error)
            case .closed:
                finishAll(BrokerError(.connectionClosed, "connection closed by the client"))
            case .disconnected, .reconnecting, .recovered, .recoveryError:
                break
            }
        }
    }

    private func log(_ event: ConnectionEvent) {
        switch event {
        case .disconnected(let error): logger.warning("connection lost", metadata: ["error": "\(error)"])
        case .reconnecting: break
        case .recovered: logger.info("connection recovered")
        case .recoveryError(let error): logger.error("recovery step refused", metadata: ["error": "\(error)"])
        case .failed(let error): logger.error("connection failed", metadata: ["error": "\(error)"])
        case .closed: logger.debug("connection closed")
        }
    }

    /// The end: nothing more will happen on this connection.
    private func finishAll(_ error: BrokerError) {
        ticker?.cancel()
        ticker = nil
        reconnectTask?.cancel()
        connectTimeoutTask?.cancel()
        opened.fail(error)
        for (_, promise) in calls { promise.fail(error) }
        calls.removeAll()
        for (_, promise) in publishes { promise.fail(error) }
        publishes.removeAll()
        for (_, continuation) in consumers { continuation.finish(throwing: error) }
        consumers.removeAll()
        for waiter in writabilityWaiters { waiter.fail(error) }
        writabilityWaiters.removeAll()
        returns.finish()
        errors.finish()
        flow.finish()
        events.finish()
        notices.finish()
        connection = nil
        terminated.succeed()
        let drained = drainWaiters
        drainWaiters.removeAll()
        for waiter in drained { waiter.succeed() }
    }

    // MARK: - Sockets

    private func connect(to endpoint: Endpoint) {
        let bound = NIOLoopBound(self, eventLoop: loop)
        let timeout = TimeAmount(configuration.connectTimeout)
        let tls: (context: NIOSSLContext, name: String)?
        do {
            tls = try configuration.tls.map { try (Self.tlsContext($0), $0.serverName ?? endpoint.host) }
        } catch {
            run(machine.connectFailed(BrokerError(.connectionClosed, "cannot set up TLS to \(endpoint): \(error)")))
            return
        }
        let wireProtocol = configuration.wireProtocol
        let clientName = configuration.clientName
        let future = ClientBootstrap(group: loop)
            .connectTimeout(timeout)
            .channelOption(.socketOption(.tcp_nodelay), value: 1)
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    if let tls {
                        // SNI takes a host name only: an IP address is checked against the certificate but not sent.
                        let sni = (try? SocketAddress(ipAddress: tls.name, port: 0)) == nil ? tls.name : nil
                        try channel.pipeline.syncOperations.addHandler(try NIOSSLClientHandler(context: tls.context, serverHostname: sni))
                    }
                    if wireProtocol == .amqp { try channel.pipeline.syncOperations.addHandler(AMQPClientHandler(clientName: clientName)) }
                    try channel.pipeline.syncOperations.addHandler(ClientChannelHandler(driver: bound.value, tls: tls != nil))
                }
            }
            .connect(host: endpoint.host, port: endpoint.port)
        future.whenComplete { result in
            let driver = bound.value
            switch result {
            case .success(let channel):
                // The handshake must finish within the connect timeout too.
                driver.connectTimeoutTask = channel.eventLoop.scheduleTask(in: timeout) {
                    let driver = bound.value
                    guard driver.channel === channel, !driver.machine.isOpen else { return }
                    driver.abandon(channel, BrokerError(.timeout, "handshake with \(endpoint) timed out"))
                }
            case .failure(let error):
                driver.run(driver.machine.connectFailed(BrokerError(.connectionClosed, "cannot connect to \(endpoint): \(Self.reason(error))")))
            }
        }
    }

    /// Why a connect failed, in one line ("connection refused", "timed out after 10 s", "cannot resolve host"),
    /// instead of NIO's nested description of every address tried.
    static func reason(_ error: any Error) -> String {
        switch error {
        case let failure as NIOConnectionError:
            if let first = failure.connectionErrors.first { return reason(first.error) }
            if failure.dnsAError != nil || failure.dnsAAAAError != nil { return "cannot resolve host '\(failure.host)'" }
            return "no address to connect to for '\(failure.host)'"
        case let io as IOError:
            return String(cString: strerror(io.errnoCode)).lowercased()
        case ChannelError.connectTimeout(let after):
            return "timed out after \(after.nanoseconds / 1_000_000) ms"
        default:
            return "\(error)"
        }
    }

    /// The TLS context for a configuration: its trust roots, hostname checking and client certificate.
    static func tlsContext(_ tls: ClientTLS) throws -> NIOSSLContext {
        var configuration = TLSConfiguration.makeClientConfiguration()
        configuration.minimumTLSVersion = .tlsv12
        if let caFile = tls.caFile { configuration.trustRoots = .certificates(try NIOSSLCertificate.fromPEMFile(caFile)) }
        configuration.certificateVerification = tls.verifyHostname ? .fullVerification : .noHostnameVerification
        if let certificateFile = tls.certificateFile, let keyFile = tls.keyFile {
            configuration.certificateChain = try NIOSSLCertificate.fromPEMFile(certificateFile).map { .certificate($0) }
            configuration.privateKey = .privateKey(try NIOSSLPrivateKey(file: keyFile, format: .pem))
        }
        return try NIOSSLContext(configuration: configuration)
    }

    func channelActive(_ channel: any Channel) {
        self.channel = channel
        run(machine.channelActive(now: .now()))
    }

    func channelInactive(_ channel: any Channel, error: BrokerError?) {
        guard self.channel === channel else { return }
        self.channel = nil
        connectTimeoutTask?.cancel()
        let waiters = writabilityWaiters
        writabilityWaiters.removeAll()
        run(machine.channelClosed(error))
        // Unconfirmed-free publishers that waited for writability continue (their frame is lost with the socket,
        // as any fire-and-forget publish in flight is).
        for waiter in waiters { waiter.succeed() }
    }

    func received(_ messages: [ServerMessage], on channel: any Channel) {
        guard self.channel === channel else { return }
        let now = NIODeadline.now()
        for message in messages {
            if case .authOk = message { connectTimeoutTask?.cancel() }
            run(machine.received(message, now: now))
        }
    }

    /// The client gives up on a socket (a frame it cannot decode, a handshake timeout, an I/O error): tell the
    /// broker why if the socket is still open, close it, and let the machine decide what comes next.
    func abandon(_ channel: any Channel, _ error: BrokerError, tellBroker: Bool = false) {
        guard self.channel === channel else { return }
        if tellBroker {
            send(.close(Close(code: error.code, reason: error.message)))
            flushNow()
        }
        channel.close(promise: nil)
        channelInactive(channel, error: error)
    }

    func writabilityChanged(_ channel: any Channel) {
        guard self.channel === channel, channel.isWritable else { return }
        releaseWritabilityWaiters()
    }

    private func releaseWritabilityWaiters() {
        let waiters = writabilityWaiters
        writabilityWaiters.removeAll()
        for waiter in waiters { waiter.succeed() }
    }

    /// Encodes a frame; one flush per event-loop turn covers every frame written in it.
    private func send(_ message: ClientMessage) {
        guard let channel else { return }
        var buffer = channel.allocator.buffer(capacity: 64)
        message.encode(into: &buffer)
        channel.write(buffer, promise: nil)
        if !flushScheduled {
            flushScheduled = true
            let bound = NIOLoopBound(self, eventLoop: loop)
            loop.execute { bound.value.flushNow() }
        }
    }

    private func flushNow() {
        flushScheduled = false
        channel?.flush()
    }

    // MARK: - Caller operations (on the loop)

    func request(_ message: ClientMessage, recording change: Machine.TopologyChange? = nil, promise: EventLoopPromise<ServerMessage>) {
        let call = makeId()
        calls[call] = promise
        run(machine.request(call, message, recording: change, now: .now()))
    }

    func get(_ get: Get, promise: EventLoopPromise<ServerMessage>) {
        let call = makeId()
        calls[call] = promise
        run(machine.get(call, get, now: .now()))
    }

    func enableConfirms(promise: EventLoopPromise<ServerMessage>) {
        let call = makeId()
        calls[call] = promise
        run(machine.enableConfirms(call, now: .now()))
    }

    func consume(_ consume: Consume, continuation: AsyncThrowingStream<Message, any Error>.Continuation,
                 promise: EventLoopPromise<ServerMessage>) -> Machine.ConsumerID {
        let call = makeId()
        let consumer = makeId()
        calls[call] = promise
        consumers[consumer] = continuation
        run(machine.consume(call, consumer: consumer, consume, now: .now()))
        return consumer
    }

    func cancel(consumer: Machine.ConsumerID, promise: EventLoopPromise<ServerMessage>) {
        let call = makeId()
        calls[call] = promise
        run(machine.cancel(call, consumer: consumer, now: .now()))
    }

    func publish(_ publish: Publish, promise: EventLoopPromise<Void>) {
        let id = makeId()
        publishes[id] = promise
        run(machine.publish(id, publish, now: .now()))
    }

    func settle(epoch: UInt64, deliveryTag: UInt64, multiple: Bool, _ kind: Machine.SettleKind) -> Result<Void, BrokerError> {
        switch machine.settle(epoch: epoch, deliveryTag: deliveryTag, multiple: multiple, kind, now: .now()) {
        case .success(let message):
            metrics.acked.increment()
            send(message)
            checkDrained()
            return .success(())
        case .failure(let error):
            return .failure(error)
        }
    }

    func close(promise: EventLoopPromise<Void>) {
        if machine.isTerminal { return promise.succeed() }
        terminated.futureResult.cascade(to: promise)
        let wait = machine.closeAwaitsBroker ? TimeAmount(configuration.closeTimeout) : .seconds(2)
        run(machine.close())
        // If the broker does not answer closeOk in time, close the socket anyway (what is unconfirmed then fails).
        if let channel {
            loop.scheduleTask(in: wait) { channel.close(promise: nil) }
        }
    }

    /// Graceful shutdown: cancel every consumer, then wait until deliveries are settled and publishes confirmed.
    func drain(promise: EventLoopPromise<Void>) {
        for id in Array(machine.consumers.keys) {
            let ignored = loop.makePromise(of: ServerMessage.self)
            ignored.futureResult.whenFailure { _ in }
            cancel(consumer: id, promise: ignored)
        }
        drainWaiters.append(promise)
        checkDrained()
    }

    private func checkDrained() {
        guard !drainWaiters.isEmpty else { return }
        guard machine.isTerminal || (machine.unsettled.isEmpty && machine.unconfirmed.isEmpty && machine.held.isEmpty) else { return }
        let waiters = drainWaiters
        drainWaiters.removeAll()
        for waiter in waiters { waiter.succeed() }
    }

    /// The queue a consumer reads now.
    func queue(of consumer: Machine.ConsumerID) -> String? { machine.queue(of: consumer) }
}

@available(*, unavailable)
extension ConnectionDriver: Sendable {}

/// The per-socket handler: decodes frames in a loop over each read and hands them to the driver in one batch.
final class ClientChannelHandler: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer

    private let driver: ConnectionDriver
    private var reader = FrameReader(decoder: FrameDecoder(maxFrameSize: Frame.handshakeMaxSize, expectsMagic: false))
    private var failed = false
    /// Over TLS: whether the TLS handshake has completed (a connection that closes before it never reached the
    /// broker's protocol, and the reason is TLS's).
    private var awaitingTLSHandshake: Bool
    private var tlsError: (any Error)?

    init(driver: ConnectionDriver, tls: Bool = false) {
        self.driver = driver
        self.awaitingTLSHandshake = tls
    }

    func channelActive(context: ChannelHandlerContext) {
        driver.channelActive(context.channel)
        context.fireChannelActive()
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if case .handshakeCompleted? = event as? TLSUserEvent { awaitingTLSHandshake = false }
        context.fireUserInboundEventTriggered(event)
    }

    func channelInactive(context: ChannelHandlerContext) {
        // NIOSSL may close the channel before it reports why: say it was TLS, with its error if it came first.
        let error = awaitingTLSHandshake ? Self.tlsFailure(tlsError) : nil
        driver.channelInactive(context.channel, error: error)
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        if awaitingTLSHandshake || error is NIOSSLError || error is BoringSSLError {
            tlsError = error
            driver.abandon(context.channel, Self.tlsFailure(error))
        } else {
            driver.abandon(context.channel, BrokerError(.connectionClosed, "connection error: \(error)"))
        }
    }

    static func tlsFailure(_ error: (any Error)?) -> BrokerError {
        let reason = error.map { "\($0)" } ?? "the broker closed the connection during the handshake"
        return BrokerError(.connectionClosed, "TLS handshake failed (\(reason)); check that the broker speaks TLS, that its certificate is signed by a CA you trust and carries the name you connect to")
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        driver.writabilityChanged(context.channel)
        context.fireChannelWritabilityChanged()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard !failed else { return }
        reader.append(unwrapInboundIn(data))
        var messages: [ServerMessage] = []
        while true {
            do {
                guard let frame = try reader.next() else { break }
                let message = try ServerMessage.decode(frame)
                if case .authOk(let ok) = message { reader.decoder.maxFrameSize = ok.maxFrameSize }
                messages.append(message)
            } catch {
                failed = true
                reader.discard()
                driver.received(messages, on: context.channel)
                driver.abandon(context.channel, error, tellBroker: true)
                return
            }
        }
        driver.received(messages, on: context.channel)
    }
}

@available(*, unavailable)
extension ClientChannelHandler: Sendable {}

/// The client's counters, through swift-metrics (any backend: Prometheus, StatsD...), labelled by client name.
struct ClientMetrics {
    let published: Counter
    let confirmed: Counter
    let nacked: Counter
    let delivered: Counter
    let acked: Counter
    let reconnects: Counter

    init(clientName: String, factory: any MetricsFactory) {
        let dimensions = [("client", clientName)]
        func counter(_ name: String) -> Counter {
            Counter(label: "brokerd_client_\(name)_total", dimensions: dimensions, factory: factory)
        }
        published = counter("published")
        confirmed = counter("confirmed")
        nacked = counter("nacked")
        delivered = counter("delivered")
        acked = counter("settled")
        reconnects = counter("reconnects")
    }
}

extension TimeAmount {
    init(_ duration: Duration) {
        let (seconds, attoseconds) = duration.components
        let nanos = seconds.multipliedReportingOverflow(by: 1_000_000_000)
        self = .nanoseconds(nanos.overflow ? .max : nanos.partialValue.addingReportingOverflow(attoseconds / 1_000_000_000).partialValue)
    }
}
