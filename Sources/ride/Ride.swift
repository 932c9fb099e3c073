import ArgumentParser
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
            (dispatcher). SIGTERM or SIGINT shuts a service down gracefully.
            """,
        subcommands: [Trip.self, Passenger.self, Driver.self, Dispatcher.self, Notification.self, All.self])
}

struct CommonOptions: ParsableArguments {
    @Option(help: "The broker's host.") var brokerHost = "127.0.0.1"
    @Option(help: "The broker's port.") var brokerPort = 5680
    @Option(help: "The broker user.") var brokerUser = "guest"
    @Option(help: "The broker password (default: $RIDE_BROKER_PASSWORD, else guest).") var brokerPassword: String?
    @Option(help: "The address the HTTP server listens on.") var host = "127.0.0.1"
    @Option(help: "The HTTP port (0 picks a free one; the default is the service's documented port).") var port: Int?
    @Option(help: "Where the service keeps its SQLite database.") var dataDir = "./ride-data"
    @Option(help: "Write the HTTP port to this file once listening.") var portFile: String?
    @Option(help: "The dispatcher's wait before it looks for a driver again, in ms (the retry queue's TTL).") var retryDelayMs: Int64 = 2000
    @Option(help: "The dispatcher's attempts before a trip is no_driver.") var dispatchAttempts = 3
    @Option(help: "How long the dispatcher keeps an assigned driver out of further choices, in seconds.") var assignmentHoldSeconds = 30
    @Option(help: "The trip service's passenger service.") var passengerUrl = "http://127.0.0.1:8081"
    @Option(help: "The trip service's bound on the passenger call, in ms.") var passengerTimeoutMs = 2000
    @Option(help: "trace, debug, info, notice, warning, error or critical.") var logLevel = "info"
    @Flag(help: .hidden) var noRelay = false

    func validate() throws {
        guard (1...65535).contains(brokerPort) else { throw ValidationError("--broker-port must be 1...65535, not \(brokerPort)") }
        if let port, !(0...65535).contains(port) { throw ValidationError("--port must be 0...65535, not \(port)") }
        guard retryDelayMs >= 1 else { throw ValidationError("--retry-delay-ms must be at least 1") }
        guard dispatchAttempts >= 1 else { throw ValidationError("--dispatch-attempts must be at least 1") }
        guard assignmentHoldSeconds >= 0 else { throw ValidationError("--assignment-hold-seconds must not be negative") }
        guard passengerTimeoutMs >= 1 else { throw ValidationError("--passenger-timeout-ms must be at least 1") }
        guard Logger.Level(rawValue: logLevel) != nil else {
            throw ValidationError("--log-level must be trace, debug, info, notice, warning, error or critical, not '\(logLevel)'")
        }
        guard URL(string: passengerUrl)?.host != nil else { throw ValidationError("--passenger-url '\(passengerUrl)' is not an http URL") }
    }

    func settings(for service: RideServiceName) -> RideSettings {
        var settings = RideSettings()
        settings.brokerHost = brokerHost
        settings.brokerPort = brokerPort
        settings.brokerUser = brokerUser
        settings.brokerPassword = brokerPassword ?? ProcessInfo.processInfo.environment["RIDE_BROKER_PASSWORD"] ?? "guest"
        settings.httpHost = host
        settings.httpPort = port ?? service.defaultPort
        settings.dataDirectory = dataDir
        settings.portFile = portFile
        settings.retryDelayMs = retryDelayMs
        settings.dispatchAttempts = dispatchAttempts
        settings.assignmentHold = .seconds(assignmentHoldSeconds)
        settings.passengerURL = passengerUrl
        settings.passengerTimeout = .milliseconds(passengerTimeoutMs)
        settings.relayEnabled = !noRelay
        return settings
    }

    func bootstrapLogging() {
        let level = Logger.Level(rawValue: logLevel) ?? .info
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
        options.bootstrapLogging()
        try await serve([(Self.service, options.settings(for: Self.service))])
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
        abstract: "All five services in one process, on their documented ports (--port is ignored).")
    @OptionGroup var options: CommonOptions

    func run() async throws {
        options.bootstrapLogging()
        try await serve(RideServiceName.allCases.map { name in
            var settings = options.settings(for: name)
            settings.httpPort = name.defaultPort
            settings.portFile = nil
            return (name, settings)
        })
    }
}
