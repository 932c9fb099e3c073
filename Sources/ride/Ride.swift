import ArgumentParser
import BrokerClient
import Foundation
import Logging
import RideKit
import RideServices
import ServiceLifecycle
import UnixSignals

/// `ride`: the ride-hailing services (docs/ride-services.md), one subcommand each, or all five in one process.
@main
struct Ride: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "ride",
        abstract: "The ride-hailing services that talk through brokerd: trip, passenger, driver, dispatcher, notification.",
        discussion: """
            Each service keeps its data in an SQLite database under --data-dir and reaches the broker at \
            --broker-host:--broker-port (default 127.0.0.1:5680, user guest). `ride all` runs the five services in \
            one process on ports 8080 (trip), 8081 (passenger), 8082 (driver), 8083 (notification) and 8084 \
            (dispatcher), or from --base-port on. SIGTERM or SIGINT shuts a service down gracefully.
            """,
        subcommands: [Trip.self, Passenger.self, Driver.self, Dispatcher.self, Notification.self, All.self])
}

struct CommonOptions: ParsableArguments {
    static let defaultPassengerURL = "http://127.0.0.1:8081"

    @Option(help: "A TOML settings file (docs/ride-services.md): these options' names in snake_case, per service in [trip] etc.")
    var config: String?
    @Option(help: "The broker's host (default 127.0.0.1).") var brokerHost: String?
    @Option(help: "The broker's port (default 5680).") var brokerPort: Int?
    @Option(help: "The broker user (default guest).") var brokerUser: String?
    @Option(help: "The broker password (default guest).") var brokerPassword: String?
    @Option(help: "The broker as a URL instead of host and port: brokerd://host:port, or amqp://user:password@host:port for brokerd's AMQP listener or RabbitMQ (several hosts comma-separated: a cluster).")
    var brokerUrl: String?
    @Flag(help: "Declare the services' queues as quorum queues (x-queue-type quorum), for a RabbitMQ cluster.")
    var quorumQueues = false
    @Option(help: "The address the HTTP server listens on (default 127.0.0.1).") var host: String?
    @Option(help: "The HTTP port (0 picks a free one; default: the service's documented port).") var port: Int?
    @Option(help: "Where the service keeps its SQLite database (default ./ride-data).") var dataDir: String?
    @Option(help: "Write the HTTP port to this file once listening.") var portFile: String?
    @Option(help: "The dispatcher's wait before it looks for a driver again, in ms (the retry queue's TTL; default 2000).")
    var retryDelayMs: Int?
    @Option(help: "The dispatcher's attempts before a trip is no_driver (default 3).") var dispatchAttempts: Int?
    @Option(help: "How long the dispatcher keeps an assigned driver out of further choices, in seconds (default 30).")
    var assignmentHoldSeconds: Int?
    @Option(help: "The trip service's passenger service (default \(CommonOptions.defaultPassengerURL)).") var passengerUrl: String?
    @Option(help: "The trip service's bound on the passenger call, in ms (default 2000).") var passengerTimeoutMs: Int?
    @Option(help: "The trip.requested major the trip service publishes: 2, or 1 as a service not yet upgraded (default 2).")
    var tripRequestedVersion: Int?
    @Option(help: "trace, debug, info, notice, warning, error or critical (default info).") var logLevel: String?
    @Flag(help: .hidden) var noRelay = false

    func file() throws -> RideConfigFile {
        guard let config = config ?? ProcessInfo.processInfo.environment["RIDE_CONFIG"] else { return RideConfigFile() }
        return try RideConfigFile.load(path: config)
    }

    /// The log level from the flag, else the file's top level, else info.
    func level(_ file: RideConfigFile) throws -> Logger.Level {
        let text = logLevel ?? file.string("log_level", for: "") ?? "info"
        guard let level = Logger.Level(rawValue: text) else {
            throw ValidationError("the log level must be trace, debug, info, notice, warning, error or critical, not '\(text)'")
        }
        return level
    }

    /// A service's settings: each from its flag, else the file (the service's table, then the top level), else the
    /// default; every value range-checked with a message naming the setting.
    func settings(for service: RideServiceName, file: RideConfigFile) throws -> RideSettings {
        let name = service.rawValue
        func int(_ flag: Int?, _ key: String, _ fallback: Int, _ range: ClosedRange<Int>) throws -> Int {
            let value = try flag ?? file.int(key, for: name) ?? fallback
            guard range.contains(value) else {
                throw ValidationError("\(key.replacingOccurrences(of: "_", with: "-")) must be \(range.lowerBound)...\(range.upperBound), not \(value)")
            }
            return value
        }
        var settings = RideSettings()
        settings.brokerHost = brokerHost ?? file.string("broker_host", for: name) ?? "127.0.0.1"
        settings.brokerPort = try int(brokerPort, "broker_port", 5680, 1...65535)
        settings.brokerUser = brokerUser ?? file.string("broker_user", for: name) ?? "guest"
        settings.brokerPassword = brokerPassword ?? file.string("broker_password", for: name) ?? "guest"
        settings.brokerURL = brokerUrl ?? file.string("broker_url", for: name)
        settings.quorumQueues = quorumQueues || file.string("quorum_queues", for: name) == "true"
        if let url = settings.brokerURL {
            do {
                _ = try ClientConfiguration(url: url)
            } catch {
                throw ValidationError("broker-url: \(error.message)")
            }
        }
        settings.httpHost = host ?? file.string("host", for: name) ?? "127.0.0.1"
        settings.httpPort = try int(port, "port", service.defaultPort, 0...65535)
        settings.dataDirectory = dataDir ?? file.string("data_dir", for: name) ?? "./ride-data"
        settings.portFile = portFile
        settings.retryDelayMs = Int64(try int(retryDelayMs, "retry_delay_ms", 2000, 1...86_400_000))
        settings.dispatchAttempts = try int(dispatchAttempts, "dispatch_attempts", 3, 1...1000)
        settings.assignmentHold = .seconds(try int(assignmentHoldSeconds, "assignment_hold_seconds", 30, 0...86_400))
        settings.passengerURL = passengerUrl ?? file.string("passenger_url", for: name) ?? Self.defaultPassengerURL
        guard URL(string: settings.passengerURL)?.host != nil else {
            throw ValidationError("passenger-url '\(settings.passengerURL)' is not an http URL")
        }
        settings.passengerTimeout = .milliseconds(try int(passengerTimeoutMs, "passenger_timeout_ms", 2000, 1...600_000))
        settings.tripRequestedMajor = UInt16(try int(tripRequestedVersion, "trip_requested_version", 2, 1...2))
        settings.relayEnabled = !noRelay
        return settings
    }

    func bootstrapLogging(_ level: Logger.Level) {
        LoggingSystem.bootstrap { label in
            var handler = StreamLogHandler.standardError(label: label)
            handler.logLevel = level
            return handler
        }
    }
}

/// Runs services until SIGTERM or SIGINT.
func serve(_ services: [(RideServiceName, RideSettings)]) async throws {
    var parts: [ServiceGroupConfiguration.ServiceConfiguration] = []
    for (name, settings) in services {
        var logger = Logger(label: "ride.\(name.rawValue)")
        logger[metadataKey: "service"] = "\(name.rawValue)"
        parts.append(.init(service: name.make(settings: settings, logger: logger)))
    }
    let group = ServiceGroup(configuration: .init(services: parts, gracefulShutdownSignals: [.sigterm, .sigint],
                                                  logger: Logger(label: "ride")))
    try await group.run()
}

protocol SingleService: AsyncParsableCommand {
    static var service: RideServiceName { get }
    var options: CommonOptions { get }
}

extension SingleService {
    func run() async throws {
        let file = try options.file()
        let settings = try options.settings(for: Self.service, file: file)
        options.bootstrapLogging(try options.level(file))
        try await serve([(Self.service, settings)])
    }
}

struct Trip: SingleService {
    static let configuration = CommandConfiguration(abstract: "POST /v1/trips, GET /v1/trips/{id} (port 8080).")
    static let service = RideServiceName.trip
    @OptionGroup var options: CommonOptions
}

struct Passenger: SingleService {
    static let configuration = CommandConfiguration(abstract: "POST /v1/passengers, GET /v1/passengers/{id} (port 8081).")
    static let service = RideServiceName.passenger
    @OptionGroup var options: CommonOptions
}

struct Driver: SingleService {
    static let configuration = CommandConfiguration(abstract: "Drivers and their locations; answers driver.nearby (port 8082).")
    static let service = RideServiceName.driver
    @OptionGroup var options: CommonOptions
}

struct Dispatcher: SingleService {
    static let configuration = CommandConfiguration(
        abstract: "Assigns drivers to requested trips; run several to share the work (same --data-dir) (port 8084).")
    static let service = RideServiceName.dispatcher
    @OptionGroup var options: CommonOptions
}

struct Notification: SingleService {
    static let configuration = CommandConfiguration(
        abstract: "Keeps notifications and streams them as Server-Sent Events (port 8083).")
    static let service = RideServiceName.notification
    @OptionGroup var options: CommonOptions
}

struct All: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "All five services in one process: trip on --base-port, then passenger, driver, notification, dispatcher.")
    @OptionGroup var options: CommonOptions
    @Option(help: "The trip service's port; the others follow it (passenger +1, driver +2, notification +3, dispatcher +4).")
    var basePort = 8080

    func validate() throws {
        guard (1...65531).contains(basePort) else { throw ValidationError("--base-port must be 1...65531, not \(basePort)") }
    }

    func run() async throws {
        let file = try options.file()
        let services = try RideServiceName.allCases.map { name in
            var settings = try options.settings(for: name, file: file)
            settings.httpPort = basePort + name.defaultPort - RideServiceName.trip.defaultPort
            settings.portFile = nil
            if name == .trip && options.passengerUrl == nil && file.string("passenger_url", for: "trip") == nil {
                settings.passengerURL = "http://127.0.0.1:\(basePort + 1)"
            }
            return (name, settings)
        }
        options.bootstrapLogging(try options.level(file))
        try await serve(services)
    }
}
