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
    private let logins: LoginScheduler
    /// This connection's password check while it waits in the ``LoginScheduler``.
    private var loginTicket: UInt64?
    private let configuration: ServerConfiguration
    private var logger: Logger
    private var machine: ConnectionStateMachine
    private var reader = FrameReader(decoder: FrameDecoder(maxFrameSize: Frame.handshakeMaxSize, expectsMagic: true))
    private var session: Session?
    /// Why reading from the socket is paused; it reads again when no reason is left.
    private var pauses: ReadPauses = []
    /// The authenticated user, for the per-user connection count.
    private(set) var userName: String?
    private var context: ChannelHandlerContext?
    private var heartbeat: HeartbeatMonitor?
    private var heartbeatTask: Scheduled<Void>?
    private var handshakeTimeout: Scheduled<Void>?
    private var peer = "unknown"
    private var clientName = ""
    /// Set once the connection opened: its end is then logged, with ``closeReason``.
    private var openedAt: NIODeadline?
    /// Why the connection ends, as the log line says it: the client's close, the broker's, or the socket's end.
    private var closeReason: String?

    init(broker: Broker, registry: ConnectionRegistry, logins: LoginScheduler, configuration: ServerConfiguration, logger: Logger) {
        self.broker = broker
        self.registry = registry
        self.logins = logins
        self.configuration = configuration
        self.logger = logger
        self.machine = ConnectionStateMachine(maxFrameSize: configuration.maxFrameSize, heartbeatSeconds: configuration.heartbeatSeconds,
                                              serverName: "brokerd \(Broker.version)")
    }

    // MARK: - Channel events

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
        peer = peerDescription(context)
        logger[metadataKey: "peer"] = "\(peer)"
    }

    func channelActive(context: ChannelHandlerContext) {
        registry.add(self)
        logger.debug("connection accepted")
        if configuration.maxConnections > 0 && registry.count > configuration.maxConnections {
            logger.warning("connection refused: limit reached", metadata: ["max_connections": "\(configuration.maxConnections)"])
            run(machine.fail(.resourceError, "the broker's limit of \(configuration.maxConnections) connections is reached; try again later"))
            context.fireChannelActive()
            return
        }
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
        if let ticket = loginTicket { logins.withdraw(ticket) }
        registry.remove(self)
        if let session {
            broker.closeSession(session)
            self.session = nil
        }
        logClosed()
        self.context = nil
        context.fireChannelInactive()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        if heartbeat != nil { heartbeat?.lastReceivedNanos = NIODeadline.now().uptimeNanoseconds.asInt64 }
        var bytes = unwrapInboundIn(data)
        // Queued messages keep slices of the read they came in (no copy on the hot path). A sparse read (a few
        // bytes in a large receive buffer, as a slow publisher's are) would pin the whole buffer for as long as
        // its messages wait in a queue, far beyond the bytes the memory limit counts: copy those out. Dense reads,
        // the throughput case, are kept as they are.
        if bytes.readableBytes * 4 < bytes.capacity {
            var compact = context.channel.allocator.buffer(capacity: bytes.readableBytes)
            compact.writeBuffer(&bytes)
            bytes = compact
        }
        reader.append(bytes)
        decodeFrames()
    }

    /// Decodes and handles every complete frame buffered, in order, without a pipeline hop per frame. Stops while
    /// the password is checked: frames pipelined after `authenticate` stay in the read buffer (reading is paused
    /// meanwhile) and are decoded here once the connection is open, on the same path as any other frame.
    private func decodeFrames() {
        while machine.decodesFrames {
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
            if case .close(let close) = message, closeReason == nil {
                closeReason = "client closed the connection (\(close.code.rawValue)\(close.reason.isEmpty ? "" : ": " + close.reason))"
            }
            if case .hello(let hello) = message, case .awaitingHello = machine.state {
                // The name the client gave, shown in listings and logs (docs/protocol.md §4).
                clientName = hello.clientName
                logger[metadataKey: "client"] = "\(hello.clientName)"
            }
            run(machine.received(message))
        }
        if case .authenticating = machine.state {
            if reader.bufferedBytes > configuration.maxBytesHeldDuringAuth {
                reader.discard()
                run(machine.fail(.resourceError, "more than \(configuration.maxBytesHeldDuringAuth) bytes sent before authentication completed"))
            }
            return
        }
        reader.discard()
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        broker.flush()
        // Output the peer does not read (answers to requests, returned messages, confirms) stays in this process:
        // past the channel's high watermark, stop reading its requests until it drains. Deliveries stop on their
        // own (a session delivers only while writable).
        if !context.channel.isWritable { pause(.output) }
        context.fireChannelReadComplete()
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        if context.channel.isWritable {
            resume(.output)
            if let session { broker.sessionBecameWritable(session) }
        }
        context.fireChannelWritabilityChanged()
    }

    // MARK: - Reading

    private func pause(_ reason: ReadPauses) { pauses.pause(reason, context) }

    private func resume(_ reason: ReadPauses) { pauses.resume(reason, context) }

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
        case .verify(let auth, _):
            pause(.authentication)
            verify(auth)
        case .open(let authOk, let tuning):
            open(authOk, tuning)
        case .sendAndClose(.closeOk) where session?.awaitsConfirms == true:
            // The client closes with publishes still waiting for the log: answer closeOk only after their confirms,
            // so a client that waits for closeOk learns the fate of every publish it sent (§7). Frames after the
            // close are not read (the machine is closing); the log's completion resumes this on a later turn.
            guard let session, let context else { return }
            let bound = NIOLoopBound(self, eventLoop: context.eventLoop)
            let eventLoop = context.eventLoop
            session.closeAfterConfirms {
                eventLoop.execute { bound.value.finishClose() }
            }
        case .sendAndClose(let message):
            if case .close(let close) = message, closeReason == nil {
                closeReason = "broker closed the connection (\(close.code.rawValue) \(close.code.name): \(close.reason))"
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

    /// The confirms a client's close waited for are encoded: write them, then closeOk, then close the socket.
    private func finishClose() {
        guard session != nil else { return }
        run(.sendAndClose(.closeOk))
    }

    /// One line per opened connection when it ends (its logger carries client, user, peer and connection id);
    /// connections refused before they opened are logged where they are refused.
    private func logClosed() {
        logConnectionClosed(logger, openedAt: openedAt, reason: closeReason)
        openedAt = nil
    }

    private func writeNow(_ message: ServerMessage) {
        guard let context else { return }
        var buffer = context.channel.allocator.buffer(capacity: 64)
        message.encode(into: &buffer)
        context.writeAndFlush(wrapOutboundOut(buffer), promise: nil)
    }

    /// Queues the password check with the broker's ``LoginScheduler``, which decides when it runs (a storm of
    /// failing logins waits behind legitimate ones) and may refuse it outright.
    private func verify(_ auth: Authenticate) {
        guard let context else { return }
        let bound = NIOLoopBound(self, eventLoop: context.eventLoop)
        logins.check(user: auth.user, password: auth.password, channel: context.channel, broker: broker, logger: logger,
                     ticket: { bound.value.loginTicket = $0 }, isGone: { bound.value.context == nil }, finish: { outcome in
            let handler = bound.value
            switch outcome {
            case .success(let user): handler.authenticated(as: user)
            case .failure(let error): handler.run(handler.machine.refused(error))
            }
        })
    }

    private func authenticated(as user: User) {
        guard case .authenticating(let tuning) = machine.state else { return }
        let version = tuning.version
        let limit = configuration.maxConnectionsPerUser
        if limit > 0 && registry.connections(of: user.name) >= limit {
            logger.warning("connection refused: per-user limit reached", metadata: ["user": "\(user.name)", "max_connections_per_user": "\(limit)"])
            run(machine.refused(BrokerError(.resourceError, "user '\(user.name)' already has \(limit) connections, the most one user may have")))
            return
        }
        userName = user.name
        registry.opened(self, user: user.name)
        let session = broker.openSession(user: user, clientName: clientName, peer: peer, transport: self, protocolVersion: version)
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
        openedAt = .now()
        logger.info("connection opened", metadata: ["heartbeat": "\(tuning.heartbeatSeconds)", "max_frame": "\(tuning.maxFrameSize)"])
        if tuning.heartbeatSeconds > 0, let context {
            let now = NIODeadline.now().uptimeNanoseconds.asInt64
            heartbeat = HeartbeatMonitor(intervalSeconds: tuning.heartbeatSeconds, nowNanos: now)
            scheduleHeartbeatCheck()
        }
        // Frames pipelined after `authenticate` were left undecoded: decode them now, then read again.
        decodeFrames()
        broker.flush()
        resume(.authentication)
    }

    /// Schedules the next heartbeat check for when it has something to do (``HeartbeatMonitor``).
    private func scheduleHeartbeatCheck() {
        guard let monitor = heartbeat, let context else { return }
        let bound = NIOLoopBound(self, eventLoop: context.eventLoop)
        heartbeatTask = monitor.scheduleCheck(on: context.eventLoop) { bound.value.heartbeatCheck() }
    }

    private func heartbeatCheck() {
        guard let monitor = heartbeat, machine.acceptsFrames else { return }
        switch monitor.check(nowNanos: NIODeadline.now().uptimeNanoseconds.asInt64) {
        case .fine: break
        case .sendHeartbeat:
            writeNow(.heartbeat)
            heartbeat?.lastSentNanos = NIODeadline.now().uptimeNanoseconds.asInt64
        case .peerDead:
            logger.warning("peer missed heartbeats; closing the connection")
            run(machine.fail(.heartbeatTimeout, "no frame from the client for two heartbeat intervals"))
            return
        }
        scheduleHeartbeatCheck()
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
        if reading { resume(.alarm) } else { pause(.alarm) }
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

/// A client connection of either protocol, as the registry knows it.
protocol RegisteredConnection: AnyObject {
    /// The authenticated user, once there is one.
    var userName: String? { get }
    /// Closes the connection with a reason: the broker is shutting down.
    func closeForShutdown()
}

extension ConnectionHandler: RegisteredConnection {}

/// The live connections, so shutdown can close each with a reason. Lives on the broker's event loop.
final class ConnectionRegistry {
    private var handlers: [ObjectIdentifier: any RegisteredConnection] = [:]
    /// Authenticated connections per user, for `maxConnectionsPerUser`.
    private var perUser: [String: Int] = [:]
    func add(_ handler: any RegisteredConnection) { handlers[ObjectIdentifier(handler)] = handler }
    func remove(_ handler: any RegisteredConnection) {
        guard handlers.removeValue(forKey: ObjectIdentifier(handler)) != nil, let user = handler.userName else { return }
        perUser[user, default: 1] -= 1
        if perUser[user] == 0 { perUser[user] = nil }
    }
    /// A registered connection authenticated as `user`.
    func opened(_ handler: any RegisteredConnection, user: String) { perUser[user, default: 0] += 1 }
    func connections(of user: String) -> Int { perUser[user] ?? 0 }
    var all: [any RegisteredConnection] { Array(handlers.values) }
    var count: Int { handlers.count }
}
