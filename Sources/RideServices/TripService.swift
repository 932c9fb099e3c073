public import Logging
public import RideKit
public import ServiceLifecycle
import AsyncHTTPClient
import BrokerClient
import Foundation
import HTTPTypes
import Hummingbird
import OpenAPIAsyncHTTPClient
import OpenAPIHummingbird
import OpenAPIRuntime
import PassengerAPI
import RideContracts
import SQLiteNIO
import TripAPI

/// The trip service: `POST /v1/trips` checks the passenger with the passenger service (synchronously, bounded by
/// a timeout), stores the trip and its `trip.requested` event in one transaction (the outbox), and answers 201;
/// the dispatcher's outcome (from the dispatch fanout) later marks the trip `dispatched` or `no_driver`.
public struct TripService: Service {
    public var settings: RideSettings
    public var logger: Logger
    public init(settings: RideSettings, logger: Logger) {
        self.settings = settings
        self.logger = logger
    }

    static let schema = [
        """
        CREATE TABLE IF NOT EXISTS trips (
            id TEXT PRIMARY KEY,
            passenger_id TEXT NOT NULL,
            pickup_lat REAL NOT NULL, pickup_lon REAL NOT NULL,
            destination_lat REAL NOT NULL, destination_lon REAL NOT NULL,
            status TEXT NOT NULL,
            driver_id TEXT,
            created_ms INTEGER NOT NULL,
            updated_ms INTEGER NOT NULL
        )
        """,
    ]

    public func run() async throws {
        let database = try await RideDatabase.open(directory: settings.dataDirectory, file: "trip.sqlite", schema: Self.schema, logger: logger)
        let connection = try await settings.connect(service: "trip", logger: logger)
        try await RideTopology.declare(on: connection, retryDelayMs: settings.retryDelayMs, quorumQueues: settings.quorumQueues, logger: logger)
        let relay = OutboxRelay(database: database, connection: connection, service: "trip", logger: logger)
        let http = HTTPClient(eventLoopGroupProvider: .singleton)
        guard let passengerURL = URL(string: settings.passengerURL) else {
            throw HTTPProblem(.internalServerError, code: "bad_configuration", "the passenger service URL '\(settings.passengerURL)' is not a URL")
        }
        let passengers = PassengerAPI.Client(
            serverURL: passengerURL,
            transport: AsyncHTTPClientTransport(configuration: .init(client: http, timeout: .init(settings.passengerTimeout))))
        let handlers = TripHandlers(database: database, passengers: passengers, relay: relay, timeout: settings.passengerTimeout,
                                    publishedMajor: settings.tripRequestedMajor)
        let settings = self.settings
        let logger = self.logger
        let app = try RideHTTP.application(service: "trip", host: settings.httpHost, port: settings.httpPort, logger: logger,
                                           onListening: { await settings.reportListening($0) }) { router in
            try handlers.registerHandlers(on: router, middlewares: [ProblemMiddleware(logger: logger)])
        }
        let outcomes = InboxConsumer(name: "trip", connection: connection, database: database, queue: RideTopology.tripDispatchQueue,
                                     logger: logger) { message, tx, duplicate in
            if duplicate { return .ack }
            try await Self.apply(message, tx: tx)
            return .ack
        }
        var parts: [any Service] = [connection]
        if settings.relayEnabled { parts.append(relay) }
        parts += [outcomes, app]
        do {
            try await runParts(parts, logger: logger)
        } catch {
            try? await http.shutdown()
            await database.close()
            throw error
        }
        try? await http.shutdown()
        await database.close()
    }

    /// A dispatch outcome moves a requested trip on; a trip already decided stays as it is (first outcome wins).
    static func apply(_ message: Message, tx: RideDatabase.Transaction) async throws {
        let now = Int(RideIds.nowMs())
        switch message.properties.type {
        case TripDispatched.type:
            let event = try RideEnvelope.decode(TripDispatched.self, from: message)
            try await tx.execute("UPDATE trips SET status = 'dispatched', driver_id = ?, updated_ms = ? WHERE id = ? AND status = 'requested'",
                                 [.text(event.driverId), .integer(now), .text(event.tripId)])
        case TripNoDriver.type:
            let event = try RideEnvelope.decode(TripNoDriver.self, from: message)
            try await tx.execute("UPDATE trips SET status = 'no_driver', updated_ms = ? WHERE id = ? AND status = 'requested'",
                                 [.integer(now), .text(event.tripId)])
        default:
            throw ContractError("the trip service does not read '\(message.properties.type ?? "(untyped)")' messages")
        }
    }
}

struct TripHandlers: TripAPI.APIProtocol {
    typealias Schemas = TripAPI.Components.Schemas
    let database: RideDatabase
    let passengers: PassengerAPI.Client
    let relay: OutboxRelay
    let timeout: Duration
    /// The major of `trip.requested` this service publishes (``RideSettings/tripRequestedMajor``).
    var publishedMajor: UInt16 = TripRequestedV2.version.major

    func createTrip(_ input: TripAPI.Operations.CreateTrip.Input) async throws -> TripAPI.Operations.CreateTrip.Output {
        guard case .json(let request) = input.body else { throw HTTPProblem(.unsupportedMediaType, code: "unsupported_media_type", "send application/json") }
        do {
            try Check.text(request.passengerId, field: "passengerId", max: 100)
            try Check.location(lat: request.pickup.lat, lon: request.pickup.lon, field: "pickup")
            try Check.location(lat: request.destination.lat, lon: request.destination.lon, field: "destination")
        } catch {
            return .badRequest(.init(body: .json(Self.problem(error))))
        }
        // The synchronous path: without the passenger's answer, nothing is stored. (The current version of the
        // passenger API, /v2; /v1 is deprecated.)
        let passenger: PassengerAPI.Components.Schemas.PassengerV2
        do {
            switch try await passengers.getPassengerV2(path: .init(passengerId: request.passengerId)) {
            case .ok(let ok):
                passenger = try ok.body.json
            case .notFound:
                return .unprocessableContent(.init(body: .json(Self.problem(HTTPProblem(
                    .unprocessableContent, code: "unknown_passenger", "no passenger '\(request.passengerId)' is registered", field: "passengerId")))))
            case .undocumented(let status, _):
                return .serviceUnavailable(.init(body: .json(Self.problem(HTTPProblem(
                    .serviceUnavailable, code: "passenger_service_unavailable",
                    "the passenger service answered \(status); the trip was not stored, retry later")))))
            }
        } catch {
            return .serviceUnavailable(.init(body: .json(Self.problem(HTTPProblem(
                .serviceUnavailable, code: "passenger_service_unavailable",
                "the passenger service did not answer within \(timeout); the trip was not stored, retry later")))))
        }
        let id = RideIds.make("t_")
        let now = RideIds.nowMs()
        // The v1 trip API has no fare class: every trip it takes is a standard fare.
        let event = TripRequestedV2(tripId: id, passengerId: passenger.id, passengerName: passenger.displayName,
                                    pickup: GeoPoint(lat: request.pickup.lat, lon: request.pickup.lon),
                                    destination: GeoPoint(lat: request.destination.lat, lon: request.destination.lon), requestedAtMs: now,
                                    fareClass: .standard)
        try await database.transaction { tx in
            try await tx.execute("""
                INSERT INTO trips (id, passenger_id, pickup_lat, pickup_lon, destination_lat, destination_lon, status, created_ms, updated_ms)
                VALUES (?, ?, ?, ?, ?, ?, 'requested', ?, ?)
                """, [.text(id), .text(passenger.id), .float(request.pickup.lat), .float(request.pickup.lon),
                      .float(request.destination.lat), .float(request.destination.lon), .integer(Int(now)), .integer(Int(now))])
            if publishedMajor == TripRequested.version.major {
                try await Outbox.enqueue(event.v1, exchange: RideTopology.tripsExchange, routingKey: TripRequested.type,
                                         messageId: "trip.requested/\(id)", in: tx)
            } else {
                try await Outbox.enqueue(event, exchange: RideTopology.tripsExchange, routingKey: TripRequestedV2.type,
                                         messageId: "trip.requested/\(id)", in: tx)
            }
        }
        relay.wake()
        let trip = Schemas.Trip(id: id, passengerId: passenger.id, pickup: request.pickup, destination: request.destination,
                                status: .requested, createdAt: date(ms: now), updatedAt: date(ms: now))
        return .created(.init(headers: .init(location: "/v1/trips/\(id)"), body: .json(trip)))
    }

    func getTrip(_ input: TripAPI.Operations.GetTrip.Input) async throws -> TripAPI.Operations.GetTrip.Output {
        let rows = try await database.query("SELECT * FROM trips WHERE id = ?", [.text(input.path.tripId)])
        guard let row = rows.first else {
            return .notFound(.init(body: .json(Self.problem(HTTPProblem(.notFound, code: "not_found", "no trip '\(input.path.tripId)'")))))
        }
        let status = Schemas.Trip.StatusPayload(rawValue: try row.text("status")) ?? .requested
        let trip = Schemas.Trip(
            id: try row.text("id"), passengerId: try row.text("passenger_id"),
            pickup: .init(lat: try row.real("pickup_lat"), lon: try row.real("pickup_lon")),
            destination: .init(lat: try row.real("destination_lat"), lon: try row.real("destination_lon")),
            status: status, driverId: row.optionalText("driver_id"),
            createdAt: date(ms: try row.integer("created_ms")), updatedAt: date(ms: try row.integer("updated_ms")))
        return .ok(.init(body: .json(trip)))
    }

    static func problem(_ error: any Error) -> Schemas.Problem {
        let problem = error as? HTTPProblem ?? HTTPProblem(.badRequest, code: "bad_request", "\(error)")
        return Schemas.Problem(error: .init(code: problem.code, message: problem.message, field: problem.field))
    }
}
