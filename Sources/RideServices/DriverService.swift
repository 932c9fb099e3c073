public import Logging
public import RideKit
public import ServiceLifecycle
import BrokerClient
import DriverAPI
import Foundation
import HTTPTypes
import Hummingbird
import NIOCore
import OpenAPIHummingbird
import OpenAPIRuntime
import RideContracts
import SQLiteNIO

/// The driver service: drivers register and report their location over REST; it answers the dispatcher's
/// `driver.nearby` RPC (available drivers near a pickup, nearest first) over the broker; from each `trip.dispatched`
/// it marks the chosen driver busy and asks the notification service to send them the offer.
public struct DriverService: Service {
    public var settings: RideSettings
    public var logger: Logger
    public init(settings: RideSettings, logger: Logger) {
        self.settings = settings
        self.logger = logger
    }

    static let schema = [
        """
        CREATE TABLE IF NOT EXISTS drivers (
            id TEXT PRIMARY KEY, name TEXT NOT NULL, vehicle TEXT,
            lat REAL, lon REAL,
            available INTEGER NOT NULL DEFAULT 1,
            current_trip TEXT,
            updated_ms INTEGER NOT NULL
        )
        """,
    ]

    public func run() async throws {
        let database = try await RideDatabase.open(directory: settings.dataDirectory, file: "driver.sqlite", schema: Self.schema, logger: logger)
        let connection = try await settings.connect(service: "driver", logger: logger)
        try await RideTopology.declare(on: connection, retryDelayMs: settings.retryDelayMs, quorumQueues: settings.quorumQueues, logger: logger)
        let relay = OutboxRelay(database: database, connection: connection, service: "driver", logger: logger)
        let handlers = DriverHandlers(database: database)
        let settings = self.settings
        let logger = self.logger
        let app = try RideHTTP.application(service: "driver", host: settings.httpHost, port: settings.httpPort, logger: logger,
                                           onListening: { await settings.reportListening($0) }) { router in
            try handlers.registerHandlers(on: router, middlewares: [ProblemMiddleware(logger: logger)])
        }
        let outcomes = InboxConsumer(name: "driver", connection: connection, database: database, queue: RideTopology.driverDispatchQueue,
                                     logger: logger, afterCommit: { relay.wake() }) { message, tx, duplicate in
            if duplicate { return .ack }
            try await Self.assign(message, tx: tx)
            return .ack
        }
        let nearby = NearbyResponder(connection: connection, database: database, logger: logger)
        var parts: [any Service] = [connection]
        if settings.relayEnabled { parts.append(relay) }
        parts += [outcomes, nearby, app]
        try await runParts(parts, logger: logger)
        await database.close()
    }

    /// The chosen driver becomes busy with the trip and gets the offer. A trip is offered once (its notification
    /// id is derived from the trip).
    static func assign(_ message: Message, tx: RideDatabase.Transaction) async throws {
        switch message.properties.type {
        case TripDispatched.type:
            let event = try RideEnvelope.decode(TripDispatched.self, from: message)
            try await tx.execute("UPDATE drivers SET available = 0, current_trip = ?, updated_ms = ? WHERE id = ?",
                                 [.text(event.tripId), .integer(Int(RideIds.nowMs())), .text(event.driverId)])
            let offer = NotificationRequested(
                notificationId: "trip/\(event.tripId)/driver", recipientId: event.driverId, kind: .tripOffer,
                title: "New trip", body: "Pick up \(event.passengerId) \(String(format: "%.1f", event.distanceKm)) km from you.",
                tripId: event.tripId, requestedAtMs: event.requestedAtMs)
            try await Outbox.enqueue(offer, exchange: "", routingKey: RideTopology.notificationQueue,
                                     messageId: "notification/\(offer.notificationId)", in: tx)
        case TripNoDriver.type:
            _ = try RideEnvelope.decode(TripNoDriver.self, from: message)  // nothing for drivers to do
        default:
            throw ContractError("the driver service does not read '\(message.properties.type ?? "(untyped)")' messages")
        }
    }

    /// Available drivers within `radiusKm` of `pickup`, nearest first.
    static func nearby(_ request: DriverNearbyRequest, database: RideDatabase) async throws -> DriverNearbyReply {
        // A bounding box narrows the scan in SQL; the exact distance is computed here.
        let latSpan = request.radiusKm / 111.0
        let lonSpan = request.radiusKm / max(1, 111.0 * cos(request.pickup.lat * .pi / 180))
        let rows = try await database.query("""
            SELECT id, name, lat, lon FROM drivers
            WHERE available = 1 AND lat BETWEEN ? AND ? AND lon BETWEEN ? AND ?
            """, [.float(request.pickup.lat - latSpan), .float(request.pickup.lat + latSpan),
                  .float(request.pickup.lon - lonSpan), .float(request.pickup.lon + lonSpan)])
        var candidates: [DriverNearbyReply.Candidate] = []
        for row in rows {
            let location = GeoPoint(lat: try row.real("lat"), lon: try row.real("lon"))
            let distance = request.pickup.distanceKm(to: location)
            if distance <= request.radiusKm {
                candidates.append(.init(driverId: try row.text("id"), name: try row.text("name"), location: location, distanceKm: distance))
            }
        }
        candidates.sort { ($0.distanceKm, $0.driverId) < ($1.distanceKm, $1.driverId) }
        return DriverNearbyReply(drivers: Array(candidates.prefix(max(1, min(request.limit, 50)))))
    }
}

/// Serves `driver.nearby` from the driver service's database (RPC: the reply goes to the request's `replyTo`
/// with its correlation id).
struct NearbyResponder: Service {
    let connection: BrokerConnection
    let database: RideDatabase
    let logger: Logger

    func run() async throws {
        let database = self.database
        let logger = self.logger
        try await cancelWhenGracefulShutdown {
            try await connection.respond(queue: RideTopology.driverRPCQueue, prefetch: 32) { request in
                let query: DriverNearbyRequest
                do {
                    query = try RideEnvelope.decode(DriverNearbyRequest.self, from: request)
                } catch {
                    logger.error("refusing a driver.nearby request that breaks its contract", metadata: ["error": "\(error)"])
                    throw error
                }
                let reply = try await DriverService.nearby(query, database: database)
                let (body, properties) = try RideEnvelope.encode(reply, messageId: RideIds.make("r_"))
                var transient = properties
                transient.persistent = false  // a reply is useless after its caller's timeout
                return RPCReply(body: body, properties: transient)
            }
        }
    }
}

struct DriverHandlers: DriverAPI.APIProtocol {
    typealias Schemas = DriverAPI.Components.Schemas
    let database: RideDatabase

    func createDriver(_ input: DriverAPI.Operations.CreateDriver.Input) async throws -> DriverAPI.Operations.CreateDriver.Output {
        guard case .json(let request) = input.body else { throw HTTPProblem(.unsupportedMediaType, code: "unsupported_media_type", "send application/json") }
        do {
            try Check.text(request.name, field: "name", max: 200)
            if let location = request.location { try Check.location(lat: location.lat, lon: location.lon, field: "location") }
        } catch {
            return .badRequest(.init(body: .json(Self.problem(error))))
        }
        let id = RideIds.make("d_")
        try await database.transaction { tx in
            try await tx.execute("INSERT INTO drivers (id, name, vehicle, lat, lon, available, updated_ms) VALUES (?, ?, ?, ?, ?, 1, ?)", [
                .text(id), .text(request.name), request.vehicle.map { .text($0) } ?? .null,
                request.location.map { .float($0.lat) } ?? .null, request.location.map { .float($0.lon) } ?? .null,
                .integer(Int(RideIds.nowMs())),
            ])
        }
        guard let driver = try await load(id) else { throw DatabaseError("driver \(id) vanished after its insert") }
        return .created(.init(headers: .init(location: "/v1/drivers/\(id)"), body: .json(driver)))
    }

    func getDriver(_ input: DriverAPI.Operations.GetDriver.Input) async throws -> DriverAPI.Operations.GetDriver.Output {
        guard let driver = try await load(input.path.driverId) else {
            return .notFound(.init(body: .json(Self.problem(HTTPProblem(.notFound, code: "not_found", "no driver '\(input.path.driverId)'")))))
        }
        return .ok(.init(body: .json(driver)))
    }

    func updateDriverLocation(_ input: DriverAPI.Operations.UpdateDriverLocation.Input) async throws
        -> DriverAPI.Operations.UpdateDriverLocation.Output
    {
        guard case .json(let report) = input.body else { throw HTTPProblem(.unsupportedMediaType, code: "unsupported_media_type", "send application/json") }
        do {
            try Check.location(lat: report.lat, lon: report.lon, field: "location")
        } catch {
            var problem = Self.problem(error)
            problem.error.field = problem.error.field?.replacingOccurrences(of: "location.", with: "")
            return .badRequest(.init(body: .json(problem)))
        }
        let id = input.path.driverId
        let changed = try await database.transaction { tx -> Bool in
            var sql = "UPDATE drivers SET lat = ?, lon = ?, updated_ms = ?"
            var binds: [SQLiteData] = [.float(report.lat), .float(report.lon), .integer(Int(RideIds.nowMs()))]
            if let available = report.available {
                sql += ", available = ?" + (available ? ", current_trip = NULL" : "")
                binds.append(.integer(available ? 1 : 0))
            }
            binds.append(.text(id))
            return !(try await tx.query(sql + " WHERE id = ? RETURNING id", binds)).isEmpty
        }
        guard changed, let driver = try await load(id) else {
            return .notFound(.init(body: .json(Self.problem(HTTPProblem(.notFound, code: "not_found", "no driver '\(id)'")))))
        }
        return .ok(.init(body: .json(driver)))
    }

    private func load(_ id: String) async throws -> Schemas.Driver? {
        guard let row = try await database.query("SELECT * FROM drivers WHERE id = ?", [.text(id)]).first else { return nil }
        var location: Schemas.Location?
        if let lat = row.column("lat")?.double, let lon = row.column("lon")?.double { location = .init(lat: lat, lon: lon) }
        return Schemas.Driver(id: try row.text("id"), name: try row.text("name"), vehicle: row.optionalText("vehicle"), location: location,
                              available: try row.integer("available") != 0, currentTripId: row.optionalText("current_trip"))
    }

    static func problem(_ error: any Error) -> Schemas.Problem {
        let problem = error as? HTTPProblem ?? HTTPProblem(.badRequest, code: "bad_request", "\(error)")
        return Schemas.Problem(error: .init(code: problem.code, message: problem.message, field: problem.field))
    }
}
