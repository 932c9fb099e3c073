import ArgumentParser
import BrokerCore
import BrokerServer
import BrokerStorage
import Foundation
import Logging
import ServiceLifecycle
import UnixSignals

/// The broker daemon: parse flags, set up logging and the data directory, run the server until SIGTERM/SIGINT.
@main
struct Brokerd: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "brokerd",
        abstract: "The brokerd message broker.",
        discussion: "With no flags it listens on 127.0.0.1:\(ServerConfiguration.defaultPort) and keeps its data in ./brokerd-data. "
            + "The default user guest/guest may connect only from localhost.",
        version: Broker.version)

    @Option(help: "Address to listen on.")
    var host = "127.0.0.1"

    @Option(help: "TCP port to listen on (0 picks a free port).")
    var port = ServerConfiguration.defaultPort

    @Option(name: .customLong("data-dir"), help: "Data directory (created if missing).")
    var dataDir = "brokerd-data"

    @Option(help: "Heartbeat interval to propose to clients, in seconds (0 disables).")
    var heartbeat: UInt16 = 30

    @Option(name: .customLong("max-frame-size"), help: "Largest frame accepted, in bytes (bounds one message's size).")
    var maxFrameSize: UInt32 = 8 << 20

    @Option(help: "When the message log is flushed to disk: always (before every confirm), interval, or never.")
    var fsync = "always"

    @Option(name: .customLong("fsync-interval-ms"), help: "With --fsync interval: longest time between flushes, in ms.")
    var fsyncIntervalMs = 100

    @Option(name: .customLong("disk-free-limit"), help: "Block publishers while the data directory's disk has fewer free bytes.")
    var diskFreeLimit: UInt64 = 50_000_000

    @Option(name: .customLong("memory-limit"), help: "Block publishers above this many bytes of messages held in memory (default: 40% of RAM; 0: no limit).")
    var memoryLimit: Int = ServerConfiguration.defaultMemoryLimit

    @Option(name: .customLong("log-level"), help: "trace, debug, info, notice, warning, error or critical.")
    var logLevel = "info"

    @Option(name: .customLong("log-target"), help: "Where logs go: stderr, journal (systemd's, with structured fields), or auto (the journal when stderr is connected to it).")
    var logTarget: LogTarget = .auto

    enum LogTarget: String, ExpressibleByArgument, CaseIterable {
        case auto, stderr, journal
    }

    func validate() throws {
        guard (0...65535).contains(port) else { throw ValidationError("--port must be between 0 and 65535, got \(port)") }
        guard maxFrameSize >= 4096 else { throw ValidationError("--max-frame-size must be at least 4096 bytes") }
        guard !host.isEmpty else { throw ValidationError("--host must not be empty") }
        guard FsyncPolicy(rawValue: fsync) != nil else {
            throw ValidationError("--fsync must be one of always, interval, never")
        }
        guard memoryLimit >= 0 else { throw ValidationError("--memory-limit must not be negative") }
        guard fsyncIntervalMs >= 1 else { throw ValidationError("--fsync-interval-ms must be at least 1") }
        guard Logger.Level(rawValue: logLevel) != nil else {
            throw ValidationError("--log-level must be one of \(Logger.Level.allCases.map(\.rawValue).joined(separator: ", "))")
        }
    }

    func run() async throws {
        let level = Logger.Level(rawValue: logLevel) ?? .info
        // libsystemd drops journal entries silently when journald is not running: then stderr, said once.
        let journal = Systemd.journalIsRunning && (logTarget == .journal || (logTarget == .auto && Systemd.stderrIsJournal))
        if logTarget == .journal && !journal {
            FileHandle.standardError.write(Data("brokerd: --log-target journal, but journald is not running here; logging to stderr\n".utf8))
        }
        LoggingSystem.bootstrap { label in
            if journal {
                var handler = JournalLogHandler(label: label)
                handler.logLevel = level
                return handler
            }
            var handler = StreamLogHandler.standardError(label: label)
            handler.logLevel = level
            return handler
        }
        let logger = Logger(label: "brokerd")

        var configuration = ServerConfiguration()
        configuration.host = host
        configuration.port = port
        configuration.dataDirectory = dataDir
        configuration.heartbeatSeconds = heartbeat
        configuration.maxFrameSize = maxFrameSize
        configuration.fsyncPolicy = FsyncPolicy(rawValue: fsync) ?? .always
        configuration.fsyncIntervalMilliseconds = fsyncIntervalMs
        configuration.diskFreeLimit = diskFreeLimit
        configuration.memoryLimit = memoryLimit
        // Socket activation: adopt systemd's listening sockets instead of binding --host/--port.
        let activated = Systemd.activatedSockets()
        if !activated.isEmpty {
            configuration.activatedSockets = activated.map(\.descriptor)
            logger.notice("using sockets from systemd (socket activation); --host and --port are not used",
                          metadata: ["sockets": "\(activated.map { "\($0.name) (fd \($0.descriptor))" }.joined(separator: ", "))"])
        }
        // A file-size limit (ulimit -f) must turn into a failed write we handle, not a signal that kills us.
        signal(SIGXFSZ, SIG_IGN)

        let service = BrokerService(configuration: configuration, logger: logger) { server in
            // A line scripts and tests can wait for; with --port 0 it tells the port chosen.
            logger.notice("brokerd ready", metadata: ["port": "\(server.port)", "version": "\(Broker.version)"])
        }
        let group = ServiceGroup(configuration: .init(
            services: [.init(service: service, successTerminationBehavior: .gracefullyShutdownGroup,
                             failureTerminationBehavior: .gracefullyShutdownGroup)],
            gracefulShutdownSignals: [.sigterm, .sigint],
            logger: logger))
        do {
            try await group.run()
        } catch let error as StorageError {
            // The data directory: locked by another broker, not writable, damaged beyond repair.
            logger.critical("\(error.description)")
            throw ExitCode(73)  // EX_CANTCREAT
        } catch {
            logger.critical("brokerd failed", metadata: ["error": "\(error)"])
            throw ExitCode(69)  // EX_UNAVAILABLE: could not bind, for example
        }
    }
}

