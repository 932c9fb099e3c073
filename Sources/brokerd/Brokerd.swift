import ArgumentParser
import BrokerCore
import BrokerServer
import BrokerStorage
import Foundation
import Logging
import ServiceLifecycle
import UnixSignals

/// The broker daemon: read settings (flags over an optional TOML file over defaults), set up logging, run the
/// server until SIGTERM/SIGINT.
@main
struct Brokerd: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "brokerd",
        abstract: "The brokerd message broker.",
        discussion: """
            With no flags it listens on 127.0.0.1:\(ServerConfiguration.defaultPort) and keeps its data in \
            ./brokerd-data. The default user guest/guest may connect only from localhost.

            Every flag can also be set in a TOML file given with --config, under the flag's name with _ for - \
            (port = 5680, data_dir = "/var/lib/brokerd"); a flag wins over the file. docs/operations.md lists them.

            Exit codes: 0 after a clean shutdown, 64 bad flags, 69 cannot listen, 73 data directory unusable, \
            78 bad configuration file or unusable TLS files.
            """,
        version: Broker.version)

    @Option(help: ArgumentHelp("Settings file (TOML).", valueName: "path"))
    var config: String?

    @Option(help: "Address to listen on (default 127.0.0.1).")
    var host: String?

    @Option(help: "TCP port to listen on; 0 picks a free port (default \(ServerConfiguration.defaultPort)).")
    var port: Int?

    @Option(name: .customLong("amqp-port"), help: "Also speak AMQP 0-9-1 on this TCP port (docs/amqp.md); 0 picks a free port (default: off).")
    var amqpPort: Int?

    @Flag(name: .customLong("amqp"), help: "Also speak AMQP 0-9-1, on port \(ServerConfiguration.defaultAMQPPort) unless --amqp-port says another.")
    var amqp = false

    @Option(name: .customLong("data-dir"), help: "Data directory, created if missing (default ./brokerd-data).")
    var dataDir: String?

    @Option(help: "Heartbeat interval to propose to clients, in seconds; 0 disables (default 30).")
    var heartbeat: Int?

    @Option(name: .customLong("max-frame-size"), help: "Largest frame accepted, in bytes; bounds one message's size (default 8 MiB).")
    var maxFrameSize: Int?

    @Option(help: "When the message log is flushed to disk: always (before every confirm, the default), interval, or never.")
    var fsync: String?

    @Option(name: .customLong("fsync-interval-ms"), help: "With --fsync interval: longest time between flushes, in ms (default 100).")
    var fsyncIntervalMs: Int?

    @Option(name: .customLong("disk-free-limit"), help: "Block publishers while the data directory's disk has fewer free bytes (default 50 MB).")
    var diskFreeLimit: Int?

    @Option(name: .customLong("memory-limit"), help: "Block publishers above this many bytes of messages held in memory; paging starts at half (default 40% of RAM; 0: no limit).")
    var memoryLimit: Int?

    @Option(name: .customLong("log-level"), help: "trace, debug, info (default), notice, warning, error or critical.")
    var logLevel: String?

    @Option(name: .customLong("log-target"), help: "Where logs go: stderr, journal (systemd's, with structured fields), or auto (the default: the journal when stderr is connected to it).")
    var logTarget: String?

    @Option(name: .customLong("log-format"), help: "Layout of stderr log lines: text (the default), json or logfmt. The journal target always keeps structured fields.")
    var logFormat: String?

    @Option(name: .customLong("max-connections"), help: "Most client connections at once; more are refused with 506 (default 0: no limit).")
    var maxConnections: Int?

    @Option(name: .customLong("max-connections-per-user"), help: "Most connections one user may hold at once (default 0: no limit).")
    var maxConnectionsPerUser: Int?

    @Option(name: .customLong("tls-cert"), help: "PEM certificate chain: serve TLS on the listener (with --tls-key).")
    var tlsCert: String?

    @Option(name: .customLong("tls-key"), help: "PEM private key of --tls-cert.")
    var tlsKey: String?

    @Option(name: .customLong("tls-client-ca"), help: "PEM certificate authorities: require client certificates signed by them (mutual TLS).")
    var tlsClientCA: String?

    /// The settings given as flags.
    var flags: BrokerSettings {
        var settings = BrokerSettings()
        settings.host = host
        settings.port = port
        settings.amqpPort = amqpPort ?? (amqp ? ServerConfiguration.defaultAMQPPort : nil)
        settings.dataDir = dataDir
        settings.heartbeat = heartbeat
        settings.maxFrameSize = maxFrameSize
        settings.fsync = fsync
        settings.fsyncIntervalMs = fsyncIntervalMs
        settings.diskFreeLimit = diskFreeLimit
        settings.memoryLimit = memoryLimit
        settings.logLevel = logLevel
        settings.logTarget = logTarget
        settings.logFormat = logFormat
        settings.maxConnections = maxConnections
        settings.maxConnectionsPerUser = maxConnectionsPerUser
        settings.tlsCert = tlsCert
        settings.tlsKey = tlsKey
        settings.tlsClientCA = tlsClientCA
        return settings
    }

    func validate() throws {
        if let problem = flags.problem(naming: { "--" + $0.replacingOccurrences(of: "_", with: "-") }) {
            throw ValidationError(problem)
        }
    }

    func run() async throws {
        var settings = flags
        if let config {
            do {
                settings = settings.over(try BrokerSettings.load(path: config))
            } catch {
                FileHandle.standardError.write(Data("brokerd: \(error.description)\n".utf8))
                throw ExitCode(78)  // EX_CONFIG
            }
        }
        let level = settings.logLevel.flatMap(Logger.Level.init(rawValue:)) ?? .info
        let target = settings.logTarget ?? "auto"
        let format = settings.logFormat.flatMap(LogFormat.init(rawValue:)) ?? .text
        // libsystemd drops journal entries silently when journald is not running: then stderr, said once.
        let journal = Systemd.journalIsRunning && (target == "journal" || (target == "auto" && Systemd.stderrIsJournal))
        if target == "journal" && !journal {
            FileHandle.standardError.write(Data("brokerd: log target journal, but journald is not running here; logging to stderr\n".utf8))
        }
        LoggingSystem.bootstrap { label in
            if journal {
                var handler = JournalLogHandler(label: label)
                handler.logLevel = level
                return handler
            }
            var handler = BrokerLogHandler(label: label, format: format)
            handler.logLevel = level
            return handler
        }
        let logger = Logger(label: "brokerd")
        if let config { logger.info("settings read", metadata: ["file": "\(config)"]) }

        var configuration = settings.serverConfiguration
        // Socket activation: adopt systemd's listening sockets instead of binding host and port.
        let activated = Systemd.activatedSockets()
        if !activated.isEmpty {
            configuration.activatedSockets = activated.map(\.descriptor)
            logger.notice("using sockets from systemd (socket activation); host and port settings are not used",
                          metadata: ["sockets": "\(activated.map { "\($0.name) (fd \($0.descriptor))" }.joined(separator: ", "))"])
        }
        // A file-size limit (ulimit -f) must turn into a failed write we handle, not a signal that kills us.
        signal(SIGXFSZ, SIG_IGN)

        let service = BrokerService(configuration: configuration, logger: logger) { server in
            // A line scripts and tests can wait for; with --port 0 it tells the port chosen.
            var metadata: Logger.Metadata = ["port": "\(server.port)", "version": "\(Broker.version)"]
            if let amqpPort = server.amqpPort { metadata["amqp_port"] = "\(amqpPort)" }
            logger.notice("brokerd ready", metadata: metadata)
        }
        let group = ServiceGroup(configuration: .init(
            services: [.init(service: service, successTerminationBehavior: .gracefullyShutdownGroup,
                             failureTerminationBehavior: .gracefullyShutdownGroup)],
            gracefulShutdownSignals: [.sigterm, .sigint],
            logger: logger))
        do {
            try await group.run()
        } catch let error as TLSSetupError {
            logger.critical("\(error.description)")
            throw ExitCode(78)  // EX_CONFIG: the TLS files given cannot be used
        } catch let error as ListenError {
            logger.critical("\(error.description)")
            throw ExitCode(69)  // EX_UNAVAILABLE
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
