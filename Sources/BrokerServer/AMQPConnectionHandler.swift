import AMQPWire
import BrokerCore
import Logging
import NIOCore
import NIOPosix
import WireProtocol

/// One AMQP 0-9-1 client connection (docs/amqp.md): negotiates on channel 0 with the
/// ``AMQPConnectionStateMachine``, and maps each open channel onto a broker ``Session`` of its own
/// (``AMQPChannel``), so delivery tags, confirms, consumers and prefetch are per channel as AMQP wants, while
/// routing, queues and settling are the same core the native protocol uses. Like the native handler it decodes
/// every complete frame of a read in one loop and writes each session's output once per read cycle.
final class AMQPConnectionHandler: ChannelInboundHandler, RegisteredConnection {
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    let broker: Broker
    private let registry: ConnectionRegistry
    private let logins: LoginScheduler
    private var loginTicket: UInt64?
    private let configuration: ServerConfiguration
    private(set) var logger: Logger
    private var machine: AMQPConnectionStateMachine
    private var input = ByteBuffer()
    private var context: ChannelHandlerContext?
    private var channels: [UInt16: AMQPChannel] = [:]
    /// Channels that closed with an exception while a frame was being handled: released after it.
    private var toRelease: [AMQPChannel] = []
    private(set) var user: User?
    private(set) var userName: String?
    private(set) var connectionId: UInt64 = 0
    private(set) var tuning = AMQPTuning(channelMax: 0, frameMax: AMQPFrame.minimumFrameMax, heartbeatSeconds: 0)
    private var pauses: ReadPauses = []
    /// Channels whose publishes an alarm stopped (reading resumes when none is left).
    private var channelsPausedByAlarm: Set<UInt16> = []
    private var blockedSent = false
    private var heartbeat: HeartbeatMonitor?
    private var heartbeatTask: Scheduled<Void>?
    private var handshakeTimeout: Scheduled<Void>?
    private var closeTimeout: Scheduled<Void>?
    private(set) var peer = "unknown"
    private var openedAt: NIODeadline?
    private var closeReason: String?

    init(broker: Broker, registry: ConnectionRegistry, logins: LoginScheduler, configuration: ServerConfiguration, logger: Logger) {
        self.broker = broker
        self.registry = registry
        self.logins = logins
        self.configuration = configuration
        var logger = logger
        logger[metadataKey: "protocol"] = "amqp"
        self.logger = logger
        self.machine = AMQPConnectionStateMachine(
            maxFrameSize: min(configuration.maxFrameSize, UInt32(Int32.max)), heartbeatSeconds: configuration.heartbeatSeconds,
            serverProperties: Self.serverProperties)
    }

    /// What the broker tells AMQP clients about itself: RabbitMQ's capability names for what brokerd has.
    static let serverProperties: AMQPTable = [
        "product": .string("brokerd"),
        "version": .string(Broker.version),
        "platform": .string("Swift"),
        "information": .string("brokerd, a message broker: https://example.invalid/brokerd (docs/amqp.md)"),
        "capabilities": .table([
            "publisher_confirms": .bool(true),
            "basic.nack": .bool(true),
            "consumer_cancel_notify": .bool(true),
            "connection.blocked": .bool(true),
            "authentication_failure_close": .bool(true),
            "per_consumer_qos": .bool(true),
            "direct_reply_to": .bool(true),
            "exchange_exchange_bindings": .bool(false),
            "consumer_priorities": .bool(false),
        ]),
    ]

    var frameMax: UInt32 { tuning.frameMax }
    /// The largest message body accepted: the broker's frame limit, as for a native publish.
    var maxMessageSize: UInt32 { configuration.maxFrameSize }
    var isWritable: Bool { context?.channel.isWritable ?? false }

    // MARK: - Channel events

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
        peer = peerDescription(context)
        logger[metadataKey: "peer"] = "\(peer)"
    }

    func channelActive(context: ChannelHandlerContext) {
        registry.add(self)
        if configuration.maxConnections > 0 && registry.count > configuration.maxConnections {
            logger.warning("connection refused: limit reached", metadata: ["max_connections": "\(configuration.maxConnections)"])
            context.close(promise: nil)
            return
        }
        let bound = NIOLoopBound(self, eventLoop: context.eventLoop)
        handshakeTimeout = context.eventLoop.scheduleTask(in: .seconds(configuration.handshakeTimeoutSeconds)) {
            let handler = bound.value
            if !handler.machine.isOpen {
                handler.closeReason = "handshake not completed within \(handler.configuration.handshakeTimeoutSeconds) s"
                handler.context?.close(promise: nil)
            }
        }
        context.fireChannelActive()
    }

    func channelInactive(context: ChannelHandlerContext) {
        machine.socketClosed()
        handshakeTimeout?.cancel()
        heartbeatTask?.cancel()
        closeTimeout?.cancel()
        if let ticket = loginTicket { logins.withdraw(ticket) }
        registry.remove(self)
        releaseAllChannels()
        logClosed()
        self.context = nil
        context.fireChannelInactive()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        if heartbeat != nil { heartbeat?.lastReceivedNanos = NIODeadline.now().uptimeNanoseconds.asInt64 }
        var bytes = unwrapInboundIn(data)
        if input.readableBytes == 0 {
            input = bytes
        } else {
            input.writeBuffer(&bytes)
        }
        processInput()
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        broker.flush()
        if !context.channel.isWritable { pause(.output) }
        context.fireChannelReadComplete()
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        if context.channel.isWritable {
            resume(.output)
            for channel in channels.values { if let session = channel.session { broker.sessionBecameWritable(session) } }
        }
        context.fireChannelWritabilityChanged()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        logger.debug("connection error", metadata: ["error": "\(error)"])
        context.close(promise: nil)
    }

    // MARK: - Frames

    /// Handles every complete frame buffered. Stops while the password is checked (the frames after
    /// `start-ok` wait in the buffer; reading is paused meanwhile).
    private func processInput() {
        if case .awaitingHeader = machine.state {
            guard input.readableBytes >= 8, let header = input.readBytes(length: 8) else { return }
            run(machine.header(header))
        }
        while context != nil {
            switch machine.state {
            case .awaitingHeader, .authenticating, .closed: return
            default: break
            }
            let frame: AMQPFrame
            do {
                guard let next = try AMQPFrame.read(from: &input, maxFrameSize: machine.isOpen ? tuning.frameMax : machine.maxFrameSize) else {
                    break
                }
                frame = next
            } catch {
                input.clear()
                fail(error.code, error.text)
                return
            }
            handle(frame)
            if !toRelease.isEmpty { releaseClosedChannels() }
        }
        if input.readableBytes == 0 { input = ByteBuffer() } else { input.discardReadBytes() }
        if input.readableBytes > Int(tuning.frameMax) + configuration.maxBytesHeldDuringAuth {
            fail(.frameError, "more than a frame buffered")
        }
    }

    private func handle(_ frame: AMQPFrame) {
        if frame.kind == .heartbeat { return }
        guard frame.channel != 0 else {
            guard frame.kind == .method else {
                return fail(.commandInvalid, "a \(frame.kind) frame on channel 0")
            }
            do {
                run(machine.received(try AMQPMethod.read(from: frame.payload)))
            } catch {
                fail(error.code, error.text)
            }
            return
        }
        guard machine.isOpen else {
            if case .closing = machine.state { return }  // discarded until close-ok (2.2.4)
            return fail(.unexpectedFrame, "a frame on channel \(frame.channel) before the connection is open")
        }
        if let channel = channels[frame.channel] {
            channel.handle(frame)
            return
        }
        // A channel that is not open accepts only channel.open.
        guard frame.kind == .method, let method = try? AMQPMethod.read(from: frame.payload) else {
            return fail(.channelError, "a \(frame.kind) frame on channel \(frame.channel), which is not open")
        }
        guard method.signature.name == "channel.open" else {
            return fail(.channelError, "\(method.signature.name) on channel \(frame.channel), which is not open", method)
        }
        guard frame.channel <= tuning.channelMax else {
            return fail(.notAllowed, "channel \(frame.channel) is above the negotiated channel-max \(tuning.channelMax)", method)
        }
        openChannel(frame.channel)
    }

    private func openChannel(_ number: UInt16) {
        guard let user else { return }
        let channel = AMQPChannel(number: number, connection: self)
        let session = broker.openSession(
            user: user, clientName: machine.clientName, peer: peer, transport: channel,
            front: SessionFront(connectionId: connectionId, encoder: channel, protocolName: "amqp", channel: number))
        channel.session = session
        channels[number] = channel
        // channel.open-ok goes through the session, so an alarm's notice written at open follows it.
        channel.send(AMQPMethod("channel.open-ok", ["channel-id": .longString([])]))
    }

    /// The channel finished closing (close-ok received or sent): its number may be reused.
    func channelClosed(_ channel: AMQPChannel) {
        if channels[channel.number] === channel { channels[channel.number] = nil }
        release(channel)
    }

    /// A channel closed with an exception during the current frame: release its session after the frame.
    func releaseLater(_ channel: AMQPChannel) { toRelease.append(channel) }

    private func releaseClosedChannels() {
        let channels = toRelease
        toRelease.removeAll()
        for channel in channels { release(channel) }
    }

    private func release(_ channel: AMQPChannel) {
        guard let session = channel.session else { return }
        channel.session = nil
        channelsPausedByAlarm.remove(channel.number)
        // What the session encoded (its close) goes out first.
        broker.flush()
        broker.closeSession(session)
        if channelsPausedByAlarm.isEmpty { resume(.alarm) }
    }

    private func releaseAllChannels() {
        let open = channels.values.sorted { $0.number < $1.number }
        channels.removeAll()
        toRelease.removeAll()
        for channel in open {
            if let session = channel.session {
                channel.session = nil
                broker.closeSession(session)
            }
        }
    }

    // MARK: - Actions

    private func run(_ action: AMQPConnectionStateMachine.Action) {
        switch action {
        case .none:
            break
        case .send(let methods):
            for method in methods { writeMethod(method, channel: 0) }
        case .verify(let credentials):
            pause(.authentication)
            verify(credentials)
        case .open(let tuning, let openOk):
            open(tuning)
            writeMethod(openOk, channel: 0)
        case .close(let error, let classId, let methodId):
            if closeReason == nil { closeReason = "broker closed the connection (\(error.code.rawValue): \(error.text))" }
            logger.debug("closing the connection", metadata: ["code": "\(error.code.rawValue)", "text": "\(error.text)"])
            broker.flush()
            releaseAllChannels()
            writeMethod(.close(channel: false, code: error.code.rawValue, text: error.text, classId: classId, methodId: methodId), channel: 0)
            // A client that never answers close-ok is disconnected after a while.
            if let context {
                let bound = NIOLoopBound(self, eventLoop: context.eventLoop)
                closeTimeout = context.eventLoop.scheduleTask(in: .seconds(2)) { bound.value.context?.close(promise: nil) }
            }
        case .closeOk:
            if closeReason == nil { closeReason = "client closed the connection" }
            broker.flush()
            releaseAllChannels()
            guard let context else { return }
            var buffer = context.channel.allocator.buffer(capacity: 16)
            try? AMQPFrameWriter.writeMethod(AMQPMethod("connection.close-ok"), channel: 0, into: &buffer)
            let channel = context.channel
            context.writeAndFlush(wrapOutboundOut(buffer)).whenComplete { _ in channel.close(promise: nil) }
        case .rejectHeader:
            guard let context else { return }
            var buffer = context.channel.allocator.buffer(capacity: 8)
            buffer.writeBytes(AMQPFrame.protocolHeader)
            let channel = context.channel
            closeReason = "the client does not speak AMQP 0-9-1"
            context.writeAndFlush(wrapOutboundOut(buffer)).whenComplete { _ in channel.close(promise: nil) }
        case .closeSocket:
            context?.close(promise: nil)
        }
    }

    /// A connection exception.
    func fail(_ code: AMQPWireError.Code, _ text: String, _ method: AMQPMethod? = nil) {
        run(machine.fail(code, text, method))
    }


    func writeMethod(_ method: AMQPMethod, channel: UInt16) {
        guard let context else { return }
        var buffer = context.channel.allocator.buffer(capacity: 64)
        do {
            try AMQPFrameWriter.writeMethod(method, channel: channel, into: &buffer)
        } catch {
            logger.error("cannot encode \(method.signature.name): \(error)")
            return
        }
        send(buffer)
    }

    func send(_ buffer: ByteBuffer) {
        guard let context else { return }
        context.writeAndFlush(wrapOutboundOut(buffer), promise: nil)
        if heartbeat != nil { heartbeat?.lastSentNanos = NIODeadline.now().uptimeNanoseconds.asInt64 }
    }

    // MARK: - Authentication and opening

    private func verify(_ credentials: AMQPCredentials) {
        guard let context else { return }
        let bound = NIOLoopBound(self, eventLoop: context.eventLoop)
        logins.check(user: credentials.user, password: credentials.password, channel: context.channel, broker: broker, logger: logger,
                     ticket: { bound.value.loginTicket = $0 }, isGone: { bound.value.context == nil }, finish: { outcome in
            bound.value.authenticationFinished(outcome, user: credentials.user)
        })
    }

    private func authenticationFinished(_ outcome: Result<User, BrokerError>, user name: String) {
        switch outcome {
        case .success(let user):
            let limit = configuration.maxConnectionsPerUser
            if limit > 0 && registry.connections(of: user.name) >= limit {
                logger.warning("connection refused: per-user limit reached", metadata: ["user": "\(user.name)", "max_connections_per_user": "\(limit)"])
                run(machine.refused("user '\(user.name)' already has \(limit) connections, the most one user may have"))
                break
            }
            self.user = user
            userName = user.name
            registry.opened(self, user: user.name)
            connectionId = broker.newConnectionId()
            logger[metadataKey: "connection"] = "\(connectionId)"
            logger[metadataKey: "user"] = "\(user.name)"
            logger[metadataKey: "client"] = "\(machine.clientName)"
            run(machine.authenticated())
        case .failure(let error):
            // As RabbitMQ says it (the text names the mechanism's user, never the secret).
            let text = error.code == .accessRefused && error.message.contains("too many")
                ? error.message : "ACCESS_REFUSED - Login was refused for user '\(name)': \(error.message)"
            run(machine.refused(text))
        }
        resume(.authentication)
        processInput()
        broker.flush()
    }

    private func open(_ tuning: AMQPTuning) {
        self.tuning = tuning
        handshakeTimeout?.cancel()
        handshakeTimeout = nil
        openedAt = .now()
        logger.info("connection opened", metadata: ["heartbeat": "\(tuning.heartbeatSeconds)", "frame_max": "\(tuning.frameMax)"])
        if tuning.heartbeatSeconds > 0 {
            heartbeat = HeartbeatMonitor(intervalSeconds: tuning.heartbeatSeconds, nowNanos: NIODeadline.now().uptimeNanoseconds.asInt64)
            scheduleHeartbeatCheck()
        }
    }

    private func scheduleHeartbeatCheck() {
        guard let monitor = heartbeat, let context else { return }
        let bound = NIOLoopBound(self, eventLoop: context.eventLoop)
        heartbeatTask = monitor.scheduleCheck(on: context.eventLoop) { bound.value.heartbeatCheck() }
    }

    private func heartbeatCheck() {
        guard let monitor = heartbeat, machine.isOpen else { return }
        switch monitor.check(nowNanos: NIODeadline.now().uptimeNanoseconds.asInt64) {
        case .fine:
            break
        case .sendHeartbeat:
            guard let context else { return }
            var buffer = context.channel.allocator.buffer(capacity: 8)
            AMQPFrameWriter.writeHeartbeat(into: &buffer)
            send(buffer)
        case .peerDead:
            logger.warning("peer missed heartbeats; closing the connection")
            closeReason = "missed heartbeats from the client"
            // RabbitMQ closes the socket without a close method: a silent peer would not read one anyway.
            context?.close(promise: nil)
            return
        }
        scheduleHeartbeatCheck()
    }

    private func logClosed() {
        logConnectionClosed(logger, openedAt: openedAt, reason: closeReason)
        openedAt = nil
    }

    // MARK: - Flow control

    private func pause(_ reason: ReadPauses) { pauses.pause(reason, context) }

    private func resume(_ reason: ReadPauses) { pauses.resume(reason, context) }

    /// A channel's session stops or resumes reading its publishes (an alarm past its grace).
    func setReading(_ reading: Bool, for channel: AMQPChannel) {
        if reading {
            channelsPausedByAlarm.remove(channel.number)
            if channelsPausedByAlarm.isEmpty { resume(.alarm) }
        } else {
            channelsPausedByAlarm.insert(channel.number)
            pause(.alarm)
        }
    }

    /// `connection.blocked` / `unblocked` (RabbitMQ's extension), once per connection however many channels it
    /// has, and only to clients that said they understand it.
    func sendBlocked(_ reason: String?) {
        guard machine.clientUnderstandsBlocked else { return }
        if let reason {
            guard !blockedSent else { return }
            blockedSent = true
            writeMethod(AMQPMethod("connection.blocked", ["reason": .shortString(reason.amqpShortText)]), channel: 0)
        } else {
            guard blockedSent else { return }
            blockedSent = false
            writeMethod(AMQPMethod("connection.unblocked"), channel: 0)
        }
    }

    func resumeSoon(_ channel: AMQPChannel) {
        guard let context else { return }
        let bound = NIOLoopBound(self, eventLoop: context.eventLoop)
        let number = channel.number
        context.eventLoop.execute {
            let handler = bound.value
            if handler.isWritable, let session = handler.channels[number]?.session { handler.broker.sessionBecameWritable(session) }
        }
    }

    // MARK: - Closing from the broker's side

    func closeConnection(code: BrokerError.Code, reason: String) {
        fail(code == .accessRefused ? .accessRefused : .connectionForced, reason)
        broker.flush()
    }

    func closeForShutdown() {
        closeReason = "broker shut down"
        fail(.connectionForced, "broker is shutting down")
    }
}

@available(*, unavailable)
extension AMQPConnectionHandler: Sendable {}
