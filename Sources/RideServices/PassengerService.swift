public import Logging
public import RideKit
public import ServiceLifecycle
import BrokerClient
import Foundation
import HTTPTypes
import Hummingbird
import OpenAPIHummingbird
import OpenAPIRuntime
import PassengerAPI
import RideContracts
import SQLiteNIO

/// The passenger service: registers passengers and serves their profiles (the trip service's synchronous call);
/// from each dispatch outcome it asks the notification service to tell the passenger ("driver on the way" or
/// "no driver found"), through its outbox.
public struct PassengerService: Service {
    public var settings: RideSettings
    public var logger: Logger
    public init(settings: RideSettings, logger: Logger) {
        self.settings = settings
        self.logger = logger
    }

    static let schema = [
        "CREATE TABLE IF NOT EXISTS passengers (id TEXT PRIMARY KEY, name TEXT NOT NULL, phone TEXT, created_ms INTEGER NOT NULL)",
    ]

    public func run() async throws {
        let database = try await RideDatabase.open(directory: settings.dataDirectory, file: "passenger.sqlite", schema: Self.schema, logger: logger)
        let connection = try await settings.connect(service: "passenger", logger: logger)
        try await RideTopology.declare(on: connection, retryDelayMs: settings.retryDelayMs, quorumQueues: settings.quorumQueues, logger: logger)
        let relay = OutboxRelay(database: database, connection: connection, service: "passenger", logger: logger)
        let handlers = PassengerHandlers(database: database)
        let settings = self.settings
        let logger = self.logger
        let app = try RideHTTP.application(service: "passenger", host: settings.httpHost, port: settings.httpPort, logger: logger,
                                           onListening: { await settings.reportListening($0) }) { router in
            // Outermost, so error responses of /v1 carry the headers too.
            try handlers.registerHandlers(on: router, middlewares: [Self.v1Deprecation, ProblemMiddleware(logger: logger)])
        }
        let outcomes = InboxConsumer(name: "passenger", connection: connection, database: database,
                                     queue: RideTopology.passengerDispatchQueue, logger: logger,
                                     afterCommit: { relay.wake() }) { message, tx, duplicate in
            if duplicate { return .ack }
            try await Self.notify(message, tx: tx)
            return .ack
        }
        var parts: [any Service] = [connection]
        if settings.relayEnabled { parts.append(relay) }
        parts += [outcomes, app]
        try await runParts(parts, logger: logger)
        await database.close()
    }

    /// `/v1` is deprecated since 2026-12-01 and served until 2027-06-30 (docs/ride-services.md, "API versions").
    static let v1Deprecation = DeprecationMiddleware(
        operations: ["createPassenger", "getPassenger"],
        deprecatedSince: Date(timeIntervalSince1970: 1_796_083_200),  // 2026-12-01T00:00:00Z
        sunset: Date(timeIntervalSince1970: 1_814_313_600))  // 2027-06-30T00:00:00Z

    /// One notification per trip for the passenger: its id is derived from the trip, so it is created once.
    static func notify(_ message: Message, tx: RideDatabase.Transaction) async throws {
        let notification: NotificationRequested
        switch message.properties.type {
        case TripDispatched.type:
            let event = try RideEnvelope.decode(TripDispatched.self, from: message)
            notification = NotificationRequested(
                notificationId: "trip/\(event.tripId)/passenger", recipientId: event.passengerId, kind: .driverAssigned,
                title: "Your driver is on the way",
                body: "\(event.driverName) is \(String(format: "%.1f", event.distanceKm)) km away and heading to your pickup.",
                tripId: event.tripId, requestedAtMs: event.requestedAtMs)
        case TripNoDriver.type:
            let event = try RideEnvelope.decode(TripNoDriver.self, from: message)
            notification = NotificationRequested(
                notificationId: "trip/\(event.tripId)/passenger", recipientId: event.passengerId, kind: .noDriver,
                title: "No driver found", body: "No driver was free near your pickup after \(event.attempts) tries. Please try again.",
                tripId: event.tripId, requestedAtMs: event.requestedAtMs)
        default:
            throw ContractError("the passenger service does not read '\(message.properties.type ?? "(untyped)")' messages")
        }
        try await Outbox.enqueue(notification, exchange: "", routingKey: RideTopology.notificationQueue,
                                 messageId: "notification/\(notification.notificationId)", in: tx)
    }
}

struct PassengerHandlers: PassengerAPI.APIProtocol {
    typealias Schemas = PassengerAPI.Components.Schemas
    let database: RideDatabase

    /// A stored passenger, whichever version's representation it is served in.
    struct Stored {
        var id: String
        var name: String
        var phone: String?
        var createdMs: Int64
    }

    /// Checks and stores a new passenger (the fields as both versions name them for errors).
    func insert(name: String, nameField: String, phone: String?, phoneField: String) async throws -> Stored {
        try Check.text(name, field: nameField, max: 200)
        if let phone, phone.count > 40 {
            throw HTTPProblem(.badRequest, code: "invalid_field", "'\(phoneField)' must be at most 40 characters", field: phoneField)
        }
        let stored = Stored(id: RideIds.make("p_"), name: name, phone: phone, createdMs: RideIds.nowMs())
        try await database.transaction { tx in
            try await tx.execute("INSERT INTO passengers (id, name, phone, created_ms) VALUES (?, ?, ?, ?)",
                                 [.text(stored.id), .text(name), phone.map { .text($0) } ?? .null, .integer(Int(stored.createdMs))])
        }
        return stored
    }

    func find(_ id: String) async throws -> Stored? {
        guard let row = try await database.query("SELECT * FROM passengers WHERE id = ?", [.text(id)]).first else { return nil }
        return Stored(id: try row.text("id"), name: try row.text("name"), phone: row.optionalText("phone"),
                      createdMs: Int64(try row.integer("created_ms")))
    }

    static func notFound(_ id: String) -> Schemas.Problem { problem(HTTPProblem(.notFound, code: "not_found", "no passenger '\(id)'")) }

    // MARK: /v1 (deprecated: served with Deprecation and Sunset headers)

    func createPassenger(_ input: PassengerAPI.Operations.CreatePassenger.Input) async throws -> PassengerAPI.Operations.CreatePassenger.Output {
        guard case .json(let request) = input.body else { throw HTTPProblem(.unsupportedMediaType, code: "unsupported_media_type", "send application/json") }
        let stored: Stored
        do {
            stored = try await insert(name: request.name, nameField: "name", phone: request.phone, phoneField: "phone")
        } catch let problem as HTTPProblem {
            return .badRequest(.init(body: .json(Self.problem(problem))))
        }
        return .created(.init(headers: .init(location: "/v1/passengers/\(stored.id)"), body: .json(Self.v1(stored))))
    }

    func getPassenger(_ input: PassengerAPI.Operations.GetPassenger.Input) async throws -> PassengerAPI.Operations.GetPassenger.Output {
        guard let stored = try await find(input.path.passengerId) else { return .notFound(.init(body: .json(Self.notFound(input.path.passengerId)))) }
        return .ok(.init(body: .json(Self.v1(stored))))
    }

    static func v1(_ stored: Stored) -> Schemas.Passenger {
        Schemas.Passenger(id: stored.id, name: stored.name, phone: stored.phone, createdAt: date(ms: stored.createdMs))
    }

    // MARK: /v2

    func createPassengerV2(_ input: PassengerAPI.Operations.CreatePassengerV2.Input) async throws -> PassengerAPI.Operations.CreatePassengerV2.Output {
        guard case .json(let request) = input.body else { throw HTTPProblem(.unsupportedMediaType, code: "unsupported_media_type", "send application/json") }
        let stored: Stored
        do {
            stored = try await insert(name: request.displayName, nameField: "displayName", phone: request.contact?.phone, phoneField: "contact.phone")
        } catch let problem as HTTPProblem {
            return .badRequest(.init(body: .json(Self.problem(problem))))
        }
        return .created(.init(headers: .init(location: "/v2/passengers/\(stored.id)"), body: .json(Self.v2(stored))))
    }

    func getPassengerV2(_ input: PassengerAPI.Operations.GetPassengerV2.Input) async throws -> PassengerAPI.Operations.GetPassengerV2.Output {
        guard let stored = try await find(input.path.passengerId) else { return .notFound(.init(body: .json(Self.notFound(input.path.passengerId)))) }
        return .ok(.init(body: .json(Self.v2(stored))))
    }

    static func v2(_ stored: Stored) -> Schemas.PassengerV2 {
        Schemas.PassengerV2(id: stored.id, displayName: stored.name, contact: .init(phone: stored.phone), createdAt: date(ms: stored.createdMs))
    }

    static func problem(_ error: any Error) -> Schemas.Problem {
        let problem = error as? HTTPProblem ?? HTTPProblem(.badRequest, code: "bad_request", "\(error)")
        return Schemas.Problem(error: .init(code: problem.code, message: problem.message, field: problem.field))
    }
}
