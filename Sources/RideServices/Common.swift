public import Logging
public import RideKit
public import ServiceLifecycle
import BrokerClient
import Foundation
import HTTPTypes

/// The services by name, for `ride <name>` and `ride all`.
public enum RideServiceName: String, CaseIterable, Sendable {
    case trip, passenger, driver, dispatcher, notification

    /// The documented local HTTP port of each (docs/ride-services.md).
    public var defaultPort: Int {
        switch self {
        case .trip: 8080
        case .passenger: 8081
        case .driver: 8082
        case .dispatcher: 8084
        case .notification: 8083
        }
    }

    /// A runnable instance of the service.
    public func make(settings: RideSettings, logger: Logger) -> any Service {
        switch self {
        case .trip: TripService(settings: settings, logger: logger)
        case .passenger: PassengerService(settings: settings, logger: logger)
        case .driver: DriverService(settings: settings, logger: logger)
        case .dispatcher: DispatcherService(settings: settings, logger: logger)
        case .notification: NotificationService(settings: settings, logger: logger)
        }
    }
}

/// Runs a service's parts in a group: shut down in reverse order (HTTP first, then the consumers, the relay, and
/// the broker connection last, so in-flight acks and confirms complete).
func runParts(_ parts: [any Service], logger: Logger) async throws {
    let group = ServiceGroup(configuration: .init(
        services: parts.map { .init(service: $0) }, gracefulShutdownSignals: [], logger: logger))
    try await group.run()
}

func date(ms: Int64) -> Date { Date(timeIntervalSince1970: Double(ms) / 1000) }

/// Validation helpers that name the field at fault.
enum Check {
    static func location(lat: Double, lon: Double, field: String) throws(HTTPProblem) {
        guard lat.isFinite, (-90...90).contains(lat) else {
            throw HTTPProblem(.badRequest, code: "invalid_field", "'\(field).lat' must be a latitude between -90 and 90", field: "\(field).lat")
        }
        guard lon.isFinite, (-180...180).contains(lon) else {
            throw HTTPProblem(.badRequest, code: "invalid_field", "'\(field).lon' must be a longitude between -180 and 180", field: "\(field).lon")
        }
    }
    static func text(_ value: String, field: String, max: Int) throws(HTTPProblem) {
        let trimmed = value.trimmingCharacters(in: .whitespacesAndNewlines)
        guard !trimmed.isEmpty else { throw HTTPProblem(.badRequest, code: "invalid_field", "'\(field)' must not be empty", field: field) }
        guard value.count <= max else {
            throw HTTPProblem(.badRequest, code: "invalid_field", "'\(field)' must be at most \(max) characters", field: field)
        }
    }
}
