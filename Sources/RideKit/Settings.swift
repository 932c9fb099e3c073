public import BrokerClient
public import Logging
import Foundation

/// What every ride service is configured with (flags or environment, `ride --help`).
public struct RideSettings: Sendable {
    public var brokerHost = "127.0.0.1"
    public var brokerPort = 5680
    public var brokerUser = "guest"
    public var brokerPassword = "guest"
    /// The broker as a URL (``ClientConfiguration/init(url:clientName:)``), instead of host, port, user and password:
    /// `amqp://...` runs the service over AMQP 0-9-1 against brokerd's AMQP listener or a RabbitMQ cluster.
    public var brokerURL: String?
    /// Declare the services' queues as quorum queues (`x-queue-type: quorum`): for a RabbitMQ cluster, where they are
    /// replicated. brokerd refuses the argument, so this goes with a move (docs/operations.md, "Scaling out").
    public var quorumQueues = false
    public var httpHost = "127.0.0.1"
    /// 0 picks a free port (reported by `onListening` and written to `portFile`).
    public var httpPort = 0
    /// Where the service keeps its SQLite database (`<dataDirectory>/<service>.sqlite`).
    public var dataDirectory = "./ride-data"
    /// How long the dispatcher waits before it looks for a driver again (the retry queue's TTL).
    public var retryDelayMs: Int64 = 2000
    /// The dispatcher's attempts before a trip is `no_driver`.
    public var dispatchAttempts = 3
    /// How long the dispatcher keeps a driver it assigned out of further choices (the driver service marks them
    /// busy when its copy of `trip.dispatched` arrives; this covers the gap).
    public var assignmentHold: Duration = .seconds(30)
    /// The trip service's bound on its call to the passenger service.
    public var passengerTimeout: Duration = .seconds(2)
    /// The major of `trip.requested` the trip service publishes: 2 (with the fare class), or 1 for a trip service
    /// that has not been upgraded yet (docs/contracts.md, "Rolling out a new major").
    public var tripRequestedMajor: UInt16 = 2
    /// The trip service's passenger service.
    public var passengerURL = "http://127.0.0.1:8081"
    /// Where the service writes its HTTP port once it listens (for scripts and tests).
    public var portFile: String?
    /// Fault injection for tests: when false, the outbox relay does not run, so events stay in the outbox (the
    /// state of a service killed between committing and publishing).
    public var relayEnabled = true
    /// Called with the bound HTTP port once the server listens.
    public var onListening: @Sendable (Int) async -> Void = { _ in }

    public init() {}

    /// The broker client's configuration: reconnect for ever, confirmed publishes re-sent after a reconnect.
    public func clientConfiguration(service: String, logger: Logger) -> ClientConfiguration {
        var configuration = ClientConfiguration(host: brokerHost, port: brokerPort, user: brokerUser, password: brokerPassword,
                                                clientName: "ride-\(service)")
        // Checked when the settings were read (`ride` refuses a bad URL); an unparsable one keeps host and port.
        if let brokerURL, let parsed = try? ClientConfiguration(url: brokerURL, clientName: "ride-\(service)") {
            configuration.endpoints = parsed.endpoints
            configuration.user = parsed.user
            configuration.password = parsed.password
            configuration.wireProtocol = parsed.wireProtocol
        }
        configuration.recovery = RecoveryPolicy(initialDelay: .milliseconds(100), maximumDelay: .seconds(2))
        configuration.publishTimeout = .seconds(60)
        configuration.logger = logger
        return configuration
    }

    /// Connects to the broker, retrying (with the recovery policy's backoff) while it is not up yet, so a service
    /// may start before brokerd.
    public func connect(service: String, logger: Logger) async throws -> BrokerConnection {
        let configuration = clientConfiguration(service: service, logger: logger)
        let policy = configuration.recovery ?? .default
        var attempt = 1
        while true {
            do {
                return try await BrokerConnection.connect(configuration)
            } catch {
                try Task.checkCancellation()
                let delay = policy.delay(attempt: attempt, random: Double.random(in: 0..<1))
                logger.warning("broker not reachable; retrying", metadata: [
                    "broker": "\(brokerHost):\(brokerPort)", "error": "\(error)", "retry_in": "\(delay)"])
                try await Task.sleep(for: delay)
                attempt += 1
            }
        }
    }

    /// Reports the bound port: the callback, the port file (written atomically), the log.
    public func reportListening(_ port: Int) async {
        if let portFile {
            let temporary = portFile + ".tmp"
            if FileManager.default.createFile(atPath: temporary, contents: Data("\(port)\n".utf8)) {
                _ = rename(temporary, portFile)  // atomic: a reader sees no file or the whole port
            }
        }
        await onListening(port)
    }
}
