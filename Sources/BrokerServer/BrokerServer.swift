public import BrokerCore
import BrokerStorage
public import Logging
import NIOCore
import NIOPosix
public import ServiceLifecycle
import WireProtocol

/// A running broker: one event loop that owns the ``Broker`` and every connection, and a listening socket.
///
/// Deviation from a multi-loop design, on purpose: the whole core and all connections share one event loop, like
/// LavinMQ's single-threaded core. Routing, enqueueing and delivery are then plain function calls with no lock,
/// Task or hop per message, and a read cycle's deliveries to every consumer leave in one write per connection.
/// docs/design.md explains the trade-off and how a second loop could take decoding and socket I/O.
public final class BrokerServer: Sendable {
    public let configuration: ServerConfiguration
    /// The port actually bound (useful when the configuration asked for port 0).
    public let port: Int
    /// The AMQP 0-9-1 listener's port, when there is one.
    public let amqpPort: Int?
    private let group: MultiThreadedEventLoopGroup
    private let serverChannels: [any Channel]
    private let state: NIOLoopBound<(broker: Broker, registry: ConnectionRegistry, logins: LoginScheduler)>
    private let logger: Logger
    private let directory: DataDirectory?
    private let writer: LogWriter?
    private let journal: DefinitionsJournal?

    private init(configuration: ServerConfiguration, port: Int, amqpPort: Int?, group: MultiThreadedEventLoopGroup, serverChannels: [any Channel],
                 state: NIOLoopBound<(broker: Broker, registry: ConnectionRegistry, logins: LoginScheduler)>, logger: Logger, directory: DataDirectory?,
                 writer: LogWriter?, journal: DefinitionsJournal?) {
        self.configuration = configuration
        self.port = port
        self.amqpPort = amqpPort
        self.group = group
        self.serverChannels = serverChannels
        self.state = state
        self.logger = logger
        self.directory = directory
        self.writer = writer
        self.journal = journal
    }

    /// Binds the listener and starts serving. `makeUsers` runs once to give the broker its users.
    public static func start(configuration: ServerConfiguration, users: UserStore = UserStore(),
                             logger: Logger = Logger(label: "brokerd")) async throws -> BrokerServer {
        // TLS files are read and checked first: a wrong path stops the start before the data directory is touched.
        let tls = try configuration.tls.map { settings throws(TLSSetupError) in try ServerTLSContext(settings) }
        // Lock the data directory and recover before anything listens: READY means recovered.
        var directory: DataDirectory?
        var recovery: (Definitions, RecoveredLog, DefinitionsJournal)?
        if let path = configuration.dataDirectory {
            let opened = try DataDirectory(path: path)
            let start = ContinuousClock.now
            let (definitions, journal, journalRepair) = try Definitions.recover(snapshotPath: opened.metadataPath,
                                                                                 journalPath: opened.metadataJournalPath)
            if let journalRepair { logger.warning("definitions journal repaired", metadata: ["repair": "\(journalRepair)"]) }
            let cleanStop = try opened.takeCleanStop()
            var recovered = try LogRecovery.recover(directory: opened.logPath)
            if !cleanStop && !recovered.messages.isEmpty {
                // Deliveries are marked in the log lazily, so after a crash a message may have reached a consumer
                // without its mark: every recovered message comes back redelivered (conservative; §10.2).
                for index in recovered.messages.indices { recovered.messages[index].delivered = recovered.messages[index].queues }
                logger.notice("the previous run did not stop cleanly: recovered messages are marked redelivered",
                              metadata: ["messages": "\(recovered.messages.count)"])
            }
            for repair in recovered.repairs { logger.warning("message log repaired", metadata: ["repair": "\(repair)"]) }
            logger.info("recovery scanned the log", metadata: [
                "records": "\(recovered.recordsScanned)", "bytes": "\(recovered.bytesScanned)",
                "live_messages": "\(recovered.messages.count)", "duration": "\(ContinuousClock.now - start)",
            ])
            directory = opened
            recovery = (definitions, recovered, journal)
        }
        let writer = directory.map {
            LogWriter(directory: $0.logPath, policy: configuration.fsyncPolicy, intervalMilliseconds: configuration.fsyncIntervalMilliseconds)
        }
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        let loop = group.next()
        let recoveryResult = recovery
        let state = try await loop.submit {
            var persistence: PersistenceContext?
            if let writer, let (definitions, recovered, journal) = recoveryResult {
                let store = MessageStore(writer: writer, recovered: recovered, maxSegmentSize: configuration.segmentSize)
                persistence = PersistenceContext(metadataPath: configuration.dataDirectory.map { $0 + "/metadata.json" } ?? "",
                                                 store: store, eventLoop: loop, definitions: definitions, recovered: recovered,
                                                 journal: journal)
            }
            let broker = Broker(users: users, logger: logger, persistence: persistence, memoryLimit: configuration.memoryLimit)
            // Password checks run on the thread pool (one thread per core): as many at once as it has threads.
            let logins = LoginScheduler(gate: LoginGate(concurrency: System.coreCount),
                                        now: { Int64(truncatingIfNeeded: NIODeadline.now().uptimeNanoseconds) })
            return NIOLoopBound((broker: broker, registry: ConnectionRegistry(), logins: logins), eventLoop: loop)
        }.get()
        // Both front ends share the loop, the core and the socket options; each has its own handler.
        let bootstrap = Self.bootstrap(group) { channel in
            // The group has one loop, so every connection is on the broker's loop.
            let (broker, registry, logins) = state.value
            let handler = ConnectionHandler(broker: broker, registry: registry, logins: logins, configuration: configuration, logger: logger)
            if let tls { try channel.pipeline.syncOperations.addHandler(tls.makeHandler()) }
            try channel.pipeline.syncOperations.addHandler(handler)
        }
        // The AMQP 0-9-1 front end (docs/amqp.md), plain TCP.
        let amqpBootstrap = Self.bootstrap(group) { channel in
            let (broker, registry, logins) = state.value
            try channel.pipeline.syncOperations.addHandler(
                AMQPConnectionHandler(broker: broker, registry: registry, logins: logins, configuration: configuration, logger: logger))
        }
        do {
            var channels: [any Channel] = []
            if configuration.activatedSockets.isEmpty {
                do {
                    channels.append(try await bootstrap.bind(host: configuration.host, port: configuration.port).get())
                } catch let error as IOError where error.errnoCode == EADDRINUSE {
                    throw ListenError("cannot listen on \(configuration.host):\(configuration.port): the port is in use by another process (stop it, or choose another --port)")
                } catch {
                    throw ListenError("cannot listen on \(configuration.host):\(configuration.port): \(error)")
                }
            } else {
                // Socket activation: systemd bound these; NIO owns each descriptor from here on.
                for descriptor in configuration.activatedSockets {
                    channels.append(try await bootstrap.withBoundSocket(descriptor).get())
                }
            }
            let port = channels.first?.localAddress?.port ?? configuration.port
            var amqpPort: Int?
            if let requested = configuration.amqpPort {
                do {
                    let channel = try await amqpBootstrap.bind(host: configuration.host, port: requested).get()
                    channels.append(channel)
                    amqpPort = channel.localAddress?.port ?? requested
                } catch let error as IOError where error.errnoCode == EADDRINUSE {
                    throw ListenError("cannot listen for AMQP on \(configuration.host):\(requested): the port is in use by another process (is RabbitMQ running? stop it, or choose another --amqp-port)")
                } catch {
                    throw ListenError("cannot listen for AMQP on \(configuration.host):\(requested): \(error)")
                }
            }
            let listeners = channels.map { channel in
                channel.localAddress.map { "\($0.ipAddress ?? "?"):\($0.port ?? 0)" } ?? "?"
            }
            let info: FieldTable = [
                "listeners": .array(listeners.map { .string($0) }),
                "socket_activated": .bool(!configuration.activatedSockets.isEmpty),
                "data_directory": .string(configuration.dataDirectory ?? "(none: in memory)"),
                "fsync": .string(directory == nil ? "none (in memory)" : configuration.fsyncPolicy.rawValue),
                "disk_free_limit": .int(Int64(clamping: configuration.diskFreeLimit)),
                "max_frame_size": .int(Int64(configuration.maxFrameSize)),
                "heartbeat_seconds": .int(Int64(configuration.heartbeatSeconds)),
            ]
            try await loop.submit { state.value.broker.serverInfo = info }.get()
            // Expiry of messages (TTL) and of unused queues, without waiting for consumers.
            loop.scheduleRepeatedTask(initialDelay: .milliseconds(100), delay: .milliseconds(100)) { _ in
                state.value.broker.sweep()
            }
            // After a storm of connections goes away, give the freed memory back to the system (glibc keeps it
            // otherwise): checked every 10 s, trimmed off the loop when the connection count fell by a quarter.
            let trimmer = try await loop.submit { NIOLoopBoundBox(MemoryTrimmer(), eventLoop: loop) }.get()
            loop.scheduleRepeatedTask(initialDelay: .seconds(10), delay: .seconds(10)) { _ in
                if trimmer.value.shouldTrim(connections: state.value.registry.count) {
                    NIOThreadPool.singleton.submit { _ in MemoryTrimmer.trim() }
                }
            }
            if let directory {
                // The free-disk alarm: checked every 500 ms on the broker's loop (statvfs takes microseconds).
                let limit = configuration.diskFreeLimit
                loop.scheduleRepeatedTask(initialDelay: .zero, delay: .milliseconds(500)) { _ in
                    let broker = state.value.broker
                    guard let free = directory.freeBytes() else { return }
                    broker.diskFree = free
                    let effectiveLimit = broker.diskFreeLimitOverride ?? limit
                    if free < effectiveLimit {
                        broker.setAlarm(.disk, "free disk space \(free / 1_000_000) MB is below the limit of \(effectiveLimit / 1_000_000) MB")
                    } else {
                        broker.setAlarm(.disk, nil)
                    }
                }
            }
            logger.info("listening", metadata: ["listeners": "\(listeners.joined(separator: ", "))"])
            return BrokerServer(configuration: configuration, port: port, amqpPort: amqpPort, group: group, serverChannels: channels, state: state, logger: logger,
                                directory: directory, writer: writer, journal: recoveryResult?.2)
        } catch {
            try? await group.shutdownGracefully()
            writer?.shutdown()
            directory?.unlock()
            throw error
        }
    }

    /// A listener's bootstrap: `addHandlers` sets up each accepted connection's pipeline.
    private static func bootstrap(_ group: MultiThreadedEventLoopGroup,
                                  addHandlers: @escaping @Sendable (any Channel) throws -> Void) -> ServerBootstrap {
        ServerBootstrap(group: group)
            .serverChannelOption(.backlog, value: 256)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelOption(.socketOption(.tcp_nodelay), value: 1)
            // One read of at most 64 KiB per connection per event-loop turn: a fast publisher then cannot delay
            // other connections' acks for long, which keeps the credit round trip of ack-mode consumers short
            // (docs/benchmarks.md: 16 reads of 256 KiB starved an ack-every-100 consumer to 7k msg/s).
            .childChannelOption(.maxMessagesPerRead, value: 1)
            // Reads start small and grow on full reads (to 64 KiB after one): NIO keeps each connection's receive
            // buffer between reads, so an idle connection costs its last read's size, not 64 KiB
            // (docs/benchmarks.md, "Idle connections").
            .childChannelOption(.recvAllocator, value: AdaptiveRecvByteBufferAllocator(minimum: 1024, initial: 2048, maximum: 65536))
            .childChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture { try addHandlers(channel) }
            }
    }

    /// Runs `body` on the broker's event loop with the broker (tests and management).
    public func withBroker<T: Sendable>(_ body: @escaping @Sendable (Broker) -> T) async throws -> T {
        let state = self.state
        return try await group.next().submit { body(state.value.broker) }.get()
    }

    /// Password checks waiting for their turn and running now (``LoginScheduler``), for tests and diagnostics.
    public func loginQueue() async throws -> (waiting: Int, running: Int) {
        let state = self.state
        return try await group.next().submit { (state.value.logins.waitingCount, state.value.logins.runningCount) }.get()
    }

    /// A one-line summary for systemd's STATUS=, after a liveness check: the broker's loop answers and the log
    /// writer's thread completes a (possibly empty) batch. A hung loop or writer never returns, so the watchdog
    /// is not pinged and systemd restarts the broker.
    public func checkedStatusLine() async throws -> String {
        let status = try await withBroker { $0.status() }
        await writer?.barrier()
        func int(_ key: String) -> Int64 { status[key]?.intValue ?? 0 }
        var line = "\(int("connections")) connections, \(int("queues")) queues, \(int("messages_ready")) ready, "
            + "\(int("messages_unacked")) unacked, \(int("messages_paged")) paged; memory \(int("memory_used") / 1_000_000)"
            + " of \(int("memory_limit") / 1_000_000) MB"
        if case .array(let alarms)? = status["alarms"], !alarms.isEmpty {
            line += "; ALARM: " + alarms.compactMap(\.stringValue).joined(separator: "; ")
        }
        return line
    }

    /// Graceful shutdown: stop accepting, tell every connection why it closes, wait briefly for them to go, stop the loop.
    public func shutdown() async {
        logger.info("shutting down")
        for channel in serverChannels { try? await channel.close() }
        let state = self.state
        let loop = group.next()
        _ = try? await loop.submit {
            for handler in state.value.registry.all { handler.closeForShutdown() }
        }.get()
        // Connections close once their close frame is written; give slow peers up to 2 s.
        for _ in 0..<40 {
            let open = (try? await loop.submit { state.value.registry.count }.get()) ?? 0
            if open == 0 { break }
            try? await Task.sleep(for: .milliseconds(50))
        }
        // Hand the last records to the log and wait for them (their completions still need the loop); write the
        // definitions as one snapshot (the next start replays no journal), then stop.
        _ = try? await loop.submit {
            state.value.broker.flush()
            state.value.broker.compactDefinitions()
        }.get()
        await writer?.barrier()
        journal?.barrier()
        _ = try? await loop.submit {}.get()
        try? await group.shutdownGracefully()
        writer?.shutdown()
        // Everything is written: mark the stop clean, so the next start need not assume deliveries were lost.
        do {
            try directory?.markCleanStop()
        } catch {
            logger.error("cannot mark the stop clean; the next start will flag recovered messages redelivered", metadata: ["error": "\(error)"])
        }
        directory?.unlock()
        logger.info("stopped")
    }
}

/// Runs a ``BrokerServer`` under swift-service-lifecycle: serve until graceful shutdown (SIGTERM, SIGINT), then
/// close connections with a reason and stop.
/// What the service group logs about this service at debug level: where it listens and keeps its data, not its
/// whole configuration (which holds the users' password hashes).
extension BrokerService: CustomStringConvertible {
    public var description: String {
        "BrokerService(listen: \(configuration.host):\(configuration.port), data: \(configuration.dataDirectory ?? "none (in memory)"))"
    }
}

public struct BrokerService: Service {
    let configuration: ServerConfiguration
    let users: UserStore
    let logger: Logger
    let onStarted: @Sendable (BrokerServer) -> Void

    public init(configuration: ServerConfiguration, users: UserStore = UserStore(), logger: Logger,
                onStarted: @escaping @Sendable (BrokerServer) -> Void = { _ in }) {
        self.configuration = configuration
        self.users = users
        self.logger = logger
        self.onStarted = onStarted
    }

    public func run() async throws {
        let server = try await BrokerServer.start(configuration: configuration, users: users, logger: logger)
        onStarted(server)
        // Under systemd: READY=1 now (listeners bound, recovery done), then STATUS= and WATCHDOG=1 pings.
        let supervision = Systemd.isSupervised ? Task { await Systemd.supervise(server, logger: logger) } : nil
        try? await gracefulShutdown()
        supervision?.cancel()
        Systemd.notify("STOPPING=1", "STATUS=shutting down: closing connections, flushing the log")
        await server.shutdown()
    }
}

/// The listener could not be opened, said with the address and port.
public struct ListenError: Error, CustomStringConvertible {
    public let description: String
    init(_ description: String) { self.description = description }
}
