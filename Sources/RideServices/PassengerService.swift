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
        try await RideTopology.declare(on: connection, retryDelayMs: settings.retryDelayMs, logger: logger)
        let relay = OutboxRelay(database: database, connection: connection, service: "passenger", logger: logger)
        let handlers = PassengerHandlers(database: database)
        let settings = self.settings
        let logger = self.logger
        let app = try RideHTTP.application(service: "passenger", host: settings.httpHost, port: settings.httpPort, logger: logger,
                                           onListening: { await settings.reportListening($0) }) { router in
            try handlers.registerHandlers(on: router, middlewares: [ProblemMiddleware(logger: logger)])
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

    func createPassenger(_ input: PassengerAPI.Operations.CreatePassenger.Input) async throws -> PassengerAPI.Operations.CreatePassenger.Output {
        guard case .json(let request) = input.body else { throw HTTPProblem(.unsupportedMediaType, code: "unsupported_media_type", "send application/json") }
        do {
            try Check.text(request.name, field: "name", max: 200)
            if let phone = request.phone, phone.count > 40 {
                throw HTTPProblem(.badRequest, code: "invalid_field", "'phone' must be at most 40 characters", field: "phone")
            }
        } catch {
            return .badRequest(.init(body: .json(Self.problem(error))))
        }
        let id = RideIds.make("p_")
        let now = RideIds.nowMs()
        try await database.transaction { tx in
            try await tx.execute("INSERT INTO passengers (id, name, phone, created_ms) VALUES (?, ?, ?, ?)",
                                 [.text(id), .text(request.name), request.phone.map { .text($0) } ?? .null, .integer(Int(now))])
        }
        return .created(.init(headers: .init(location: "/v1/passengers/\(id)"),
                              body: .json(.init(id: id, name: request.name, phone: request.phone, createdAt: date(ms: now)))))
    }

    func getPassenger(_ input: PassengerAPI.Operations.GetPassenger.Input) async throws -> PassengerAPI.Operations.GetPassenger.Output {
        let rows = try await database.query("SELECT * FROM passengers WHERE id = ?", [.text(input.path.passengerId)])
        guard let row = rows.first else {
            return .notFound(.init(body: .json(Self.problem(HTTPProblem(.notFound, code: "not_found", "no passenger '\(input.path.passengerId)'")))))
        }
        return .ok(.init(body: .json(.init(id: try row.text("id"), name: try row.text("name"), phone: row.optionalText("phone"),
                                           createdAt: date(ms: try row.integer("created_ms"))))))
    }

    static func problem(_ error: any Error) -> Schemas.Problem {
        let problem = error as? HTTPProblem ?? HTTPProblem(.badRequest, code: "bad_request", "\(error)")
        return Schemas.Problem(error: .init(code: problem.code, message: problem.message, field: problem.field))
    }
}
