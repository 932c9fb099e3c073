import BrokerCore
import Logging
import NIOCore
import NIOPosix
import WireProtocol

/// One client connection: decodes frames with a hand-written loop over the read buffer, feeds them to the
/// ``ConnectionStateMachine`` and, once authenticated, to the broker ``Session``; writes each read cycle's output
/// once, at `channelReadComplete`.
final class ConnectionHandler: ChannelInboundHandler, SessionTransport {
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    private let broker: Broker
    private let registry: ConnectionRegistry
    private let configuration: ServerConfiguration
    private var logger: Logger
    private var machine: ConnectionStateMachine
    private var reader = FrameReader(decoder: FrameDecoder(maxFrameSize: Frame.handshakeMaxSize, expectsMagic: true))
    private var session: Session?
    private var held: [ClientMessage] = []
    private var context: ChannelHandlerContext?
    private var heartbeat: HeartbeatMonitor?
    private var heartbeatTask: RepeatedTask?
    private var handshakeTimeout: Scheduled<Void>?
    private var peer = "unknown"
    private var clientName = ""

    init(broker: Broker, registry: ConnectionRegistry, configuration: ServerConfiguration, logger: Logger) {
        self.broker = broker
        self.registry = registry
        self.configuration = configuration
        self.logger = logger
        self.machine = ConnectionStateMachine(maxFrameSize: configuration.maxFrameSize, heartbeatSeconds: configuration.heartbeatSeconds,
                                              serverName: "brokerd \(Broker.version)")
    }

    // MARK: - Channel events

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
        peer = context.channel.remoteAddress.map { "\($0.ipAddress ?? "?"):\($0.port ?? 0)" } ?? "unknown"
        logger[metadataKey: "peer"] = "\(peer)"
    }

    func channelActive(context: ChannelHandlerContext) {
        registry.add(self)
        logger.debug("connection accepted")
        let bound = NIOLoopBound(self, eventLoop: context.eventLoop)
        handshakeTimeout = context.eventLoop.scheduleTask(in: .seconds(configuration.handshakeTimeoutSeconds)) {
            let handler = bound.value
            if !handler.machine.isOpen {
                handler.run(handler.machine.fail(.unexpectedFrame, "handshake not completed within \(handler.configuration.handshakeTimeoutSeconds) s"))
            }
        }
        context.fireChannelActive()
    }

    func channelInactive(context: ChannelHandlerContext) {
        machine.socketClosed()
        handshakeTimeout?.cancel()
        heartbeatTask?.cancel()
        registry.remove(self)
        if let session {
            broker.closeSession(session)
            self.session = nil
            logger.info("connection closed")
        }
        self.context = nil
        context.fireChannelInactive()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        if heartbeat != nil { heartbeat?.lastReceivedNanos = NIODeadline.now().uptimeNanoseconds.asInt64 }
        reader.append(unwrapInboundIn(data))
        // Every complete frame of this read, in order, without a pipeline hop per frame.
        while machine.acceptsFrames {
            let message: ClientMessage
            do {
                guard let frame = try reader.next() else { return }
                if frame.type == FrameType.publish.rawValue, let session {
                    // The hot path: a publish on an open connection goes straight to the session, parsed in place.
                    try session.publish(PublishView(parsing: frame.payload))
                    continue
                }
                message = try ClientMessage.decode(frame)
            } catch {
                reader.discard()
                run(machine.fail(error.code, error.message))
                return
            }
            run(machine.received(message))
        }
        reader.discard()
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        broker.flush()
        context.fireChannelReadComplete()
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        if context.channel.isWritable, let session { broker.sessionBecameWritable(session) }
        context.fireChannelWritabilityChanged()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        logger.debug("connection error", metadata: ["error": "\(error)"])
        context.close(promise: nil)
    }

    // MARK: - Actions

    private func run(_ action: ConnectionStateMachine.Action) {
        switch action {
        case .none:
            break
        case .send(let message):
            writeNow(message)
        case .forward(let message):
            guard let session else { return }
            do {
                try session.handle(message)
            } catch {
                run(machine.fail(error.code, error.message))
            }
        case .hold(let message):
            held.append(message)
            if held.count > configuration.maxFramesHeldDuringAuth {
                run(machine.fail(.resourceError, "more than \(configuration.maxFramesHeldDuringAuth) frames sent before authentication completed"))
            }
        case .verify(let auth, _):
            clientName = auth.user
            verify(auth)
        case .open(let authOk, let tuning):
            open(authOk, tuning)
        case .sendAndClose(let message):
            if case .close(let close) = message, close.code != .normal {
                logger.info("closing connection", metadata: ["code": "\(close.code)", "reason": "\(close.reason)"])
            }
            if let session {
                // Frames already encoded for the session go first, then the close.
                broker.flush()
                broker.closeSession(session)
                self.session = nil
            }
            guard let context else { return }
            var buffer = context.channel.allocator.buffer(capacity: 64)
            message.encode(into: &buffer)
            let channel = context.channel
            context.writeAndFlush(wrapOutboundOut(buffer)).whenComplete { _ in channel.close(promise: nil) }
        }
    }

    private func writeNow(_ message: ServerMessage) {
        guard let context else { return }
        var buffer = context.channel.allocator.buffer(capacity: 64)
        message.encode(into: &buffer)
        context.writeAndFlush(wrapOutboundOut(buffer), promise: nil)
    }

    private func verify(_ auth: Authenticate) {
        guard let context else { return }
        let user = broker.users.user(named: auth.user)
        let fromLoopback = Self.isLoopback(context.channel.remoteAddress)
        let password = auth.password
        let bound = NIOLoopBound(self, eventLoop: context.eventLoop)
        // PBKDF2 takes milliseconds: run it on the thread pool so the event loop keeps moving messages.
        NIOThreadPool.singleton.runIfActive(eventLoop: context.eventLoop) {
            UserStore.authenticate(user, password: password, fromLoopback: fromLoopback)
        }.whenComplete { result in
            let handler = bound.value
            switch result {
            case .success(.success(let user)): handler.authenticated(as: user)
            case .success(.failure(let error)): handler.run(handler.machine.refused(error))
            case .failure(let error): handler.run(handler.machine.refused(BrokerError(.internalError, "authentication failed: \(error)")))
            }
        }
    }

    private func authenticated(as user: User) {
        guard case .authenticating = machine.state else { return }
        let session = broker.openSession(user: user, clientName: clientName, peer: peer, transport: self)
        self.session = session
        logger[metadataKey: "connection"] = "\(session.id)"
        logger[metadataKey: "user"] = "\(user.name)"
        run(machine.authenticated(connectionId: session.id))
    }

    private func open(_ authOk: AuthOk, _ tuning: Tuning) {
        handshakeTimeout?.cancel()
        handshakeTimeout = nil
        reader.decoder.maxFrameSize = tuning.maxFrameSize
        writeNow(.authOk(authOk))
        logger.info("connection opened", metadata: ["heartbeat": "\(tuning.heartbeatSeconds)", "max_frame": "\(tuning.maxFrameSize)"])
        if tuning.heartbeatSeconds > 0, let context {
            let now = NIODeadline.now().uptimeNanoseconds.asInt64
            heartbeat = HeartbeatMonitor(intervalSeconds: tuning.heartbeatSeconds, nowNanos: now)
            let tick = TimeAmount.milliseconds(Int64(tuning.heartbeatSeconds) * 500)
            let bound = NIOLoopBound(self, eventLoop: context.eventLoop)
            heartbeatTask = context.eventLoop.scheduleRepeatedTask(initialDelay: tick, delay: tick) { _ in
                bound.value.heartbeatTick()
            }
        }
        let pending = held
        held = []
        for message in pending { run(machine.received(message)) }
        broker.flush()
    }

    private func heartbeatTick() {
        guard let monitor = heartbeat else { return }
        switch monitor.check(nowNanos: NIODeadline.now().uptimeNanoseconds.asInt64) {
        case .fine: break
        case .sendHeartbeat:
            writeNow(.heartbeat)
            heartbeat?.lastSentNanos = NIODeadline.now().uptimeNanoseconds.asInt64
        case .peerDead:
            logger.warning("peer missed heartbeats; closing the connection")
            heartbeatTask?.cancel()
            run(machine.fail(.heartbeatTimeout, "no frame from the client for two heartbeat intervals"))
        }
    }

    /// Closes the connection with a reason (broker shutdown).
    func closeConnection(code: BrokerError.Code, reason: String) {
        run(machine.fail(code, reason))
    }

    func closeForShutdown() {
        run(machine.fail(.connectionForced, "broker is shutting down"))
        broker.flush()
    }

    // MARK: - SessionTransport

    func send(_ buffer: ByteBuffer) {
        guard let context else { return }
        context.writeAndFlush(wrapOutboundOut(buffer), promise: nil)
        if heartbeat != nil { heartbeat?.lastSentNanos = NIODeadline.now().uptimeNanoseconds.asInt64 }
    }

    var isWritable: Bool { context?.channel.isWritable ?? false }

    func setReading(_ reading: Bool) {
        guard let context else { return }
        try? context.channel.syncOptions?.setOption(.autoRead, value: reading)
        if reading { context.read() }
    }

    func resumeSoon() {
        guard let context else { return }
        let bound = NIOLoopBound(self, eventLoop: context.eventLoop)
        context.eventLoop.execute {
            let handler = bound.value
            if handler.isWritable, let session = handler.session { handler.broker.sessionBecameWritable(session) }
        }
    }

    static func isLoopback(_ address: SocketAddress?) -> Bool {
        switch address {
        case .v4?: return address?.ipAddress?.hasPrefix("127.") == true
        case .v6?: return address?.ipAddress == "::1" || address?.ipAddress?.hasPrefix("::ffff:127.") == true
        case .unixDomainSocket?: return true
        case nil: return false
        }
    }
}

@available(*, unavailable)
extension ConnectionHandler: Sendable {}

extension UInt64 {
    var asInt64: Int64 { Int64(truncatingIfNeeded: self) }
}

/// The live connections, so shutdown can close each with a reason. Lives on the broker's event loop.
final class ConnectionRegistry {
    private var handlers: [ObjectIdentifier: ConnectionHandler] = [:]
    func add(_ handler: ConnectionHandler) { handlers[ObjectIdentifier(handler)] = handler }
    func remove(_ handler: ConnectionHandler) { handlers[ObjectIdentifier(handler)] = nil }
    var all: [ConnectionHandler] { Array(handlers.values) }
    var count: Int { handlers.count }
}
