public import Logging
public import RideKit
public import ServiceLifecycle
import BrokerClient
import Foundation
import HTTPTypes
import Hummingbird
import Metrics
import NIOCore
import RideContracts
import SQLiteNIO
import WireProtocol

/// The dispatcher: competing consumers of `dispatcher.trips`. For each `trip.requested` it asks the driver service
/// by RPC (`driver.nearby`, with a timeout) for available drivers, picks the nearest one no dispatcher assigned in
/// the last minute, and publishes `trip.dispatched` to the dispatch fanout (trip, passenger and driver services
/// each get it). With no driver it rejects the message, which the broker dead-letters into the retry queue; the
/// retry queue's TTL sends it back after the delay (the broker's `x-death` count is the attempt number), and after
/// the last attempt the dispatcher publishes `trip.no_driver`.
///
/// Several instances share one SQLite database (the same data directory on one host): the decision for a trip is
/// a row inserted in a transaction, so a trip redelivered to another instance after a crash is not dispatched twice.
public struct DispatcherService: Service {
    public var settings: RideSettings
    public var logger: Logger
    public init(settings: RideSettings, logger: Logger) {
        self.settings = settings
        self.logger = logger
    }

    static let schema = [
        """
        CREATE TABLE IF NOT EXISTS dispatches (
            trip_id TEXT PRIMARY KEY,
            status TEXT NOT NULL,
            driver_id TEXT,
            attempts INTEGER NOT NULL,
            decided_ms INTEGER NOT NULL
        )
        """,
        "CREATE INDEX IF NOT EXISTS dispatches_recent ON dispatches (decided_ms)",
    ]
    /// Where messages that break their contract are parked (a retry cannot fix them).
    public static let poisonQueue = "dispatcher.poison"

    public func run() async throws {
        let database = try await RideDatabase.open(directory: settings.dataDirectory, file: "dispatcher.sqlite", schema: Self.schema, logger: logger)
        let connection = try await settings.connect(service: "dispatcher", logger: logger)
        try await RideTopology.declare(on: connection, retryDelayMs: settings.retryDelayMs, quorumQueues: settings.quorumQueues, logger: logger)
        try await connection.declareQueue(Self.poisonQueue, durable: true)
        let relay = OutboxRelay(database: database, connection: connection, service: "dispatcher", logger: logger)
        let rpc = try await RPCClient.make(connection: connection)
        let settings = self.settings
        let app = RideHTTP.application(service: "dispatcher", host: settings.httpHost, port: settings.httpPort, logger: logger,
                                       onListening: { await settings.reportListening($0) }) { _ in }
        var worker = DispatchWorker(connection: connection, database: database, rpc: rpc, relay: relay,
                                    maxAttempts: max(1, settings.dispatchAttempts), logger: logger)
        worker.busyWindowMs = Int64(settings.assignmentHold.components.seconds) * 1000
            + settings.assignmentHold.components.attoseconds / 1_000_000_000_000_000
        var parts: [any Service] = [connection]
        if settings.relayEnabled { parts.append(relay) }
        parts += [worker, app]
        try await runParts(parts, logger: logger)
        await database.close()
    }
}

struct DispatchWorker: Service {
    let connection: BrokerConnection
    let database: RideDatabase
    let rpc: RPCClient
    let relay: OutboxRelay
    let maxAttempts: Int
    let logger: Logger
    var prefetch: UInt16 = 32
    /// A driver assigned within this window is not offered another trip (the driver service marks them busy
    /// asynchronously, when its copy of `trip.dispatched` arrives).
    var busyWindowMs: Int64 = 30_000
    var searchRadiusKm = 5.0

    enum Decision: Sendable { case alreadyDecided, dispatched(String), noDriver, retry }

    func run() async throws {
        // Both majors of trip.requested while 1.0 publishers still run (the broker holds back any other major).
        let consumer = try await connection.consume(queue: RideTopology.dispatcherQueue, prefetch: prefetch,
                                                    accepting: [RideEnvelope.tripRequestedMajors])
        let dispatched = Counter(label: "ride_dispatch_total", dimensions: [("outcome", "dispatched")])
        let noDriver = Counter(label: "ride_dispatch_total", dimensions: [("outcome", "no_driver")])
        let retried = Counter(label: "ride_dispatch_total", dimensions: [("outcome", "retry")])
        try await withGracefulShutdownHandler {
            try await withThrowingTaskGroup(of: Void.self) { group in
                var running = 0
                for try await message in consumer {
                    if running >= Int(prefetch) {
                        try await group.next()
                        running -= 1
                    }
                    running += 1
                    group.addTask {
                        let decision = await handle(message)
                        switch decision {
                        case .dispatched?: dispatched.increment()
                        case .noDriver?: noDriver.increment()
                        case .retry?: retried.increment()
                        case .alreadyDecided?, nil: break
                        }
                    }
                }
                try await group.waitForAll()
            }
        } onGracefulShutdown: {
            Task { try? await consumer.cancel() }
        }
    }

    /// Decides one trip; nil when the message was requeued after a failure or parked as poison.
    func handle(_ message: Message) async -> Decision? {
        let trip: TripRequestedV2
        do {
            trip = try RideEnvelope.decodeTripRequested(from: message)
        } catch {
            await park(message, error)
            return nil
        }
        let attempt = RideEnvelope.rejections(in: message.properties, queue: RideTopology.dispatcherQueue) + 1
        do {
            if try await decided(trip.tripId) {
                try await message.ack()
                return .alreadyDecided
            }
            let candidates = await nearbyDrivers(trip)
            let decision = try await decide(trip, attempt: attempt, candidates: candidates)
            relay.wake()
            switch decision {
            case .retry:
                logger.info("no driver near the pickup; retrying later", metadata: ["trip": "\(trip.tripId)", "attempt": "\(attempt)"])
                try await message.reject(requeue: false)  // dead-lettered into the retry queue by the broker
            case .dispatched(let driver):
                logger.info("trip dispatched", metadata: ["trip": "\(trip.tripId)", "driver": "\(driver)", "attempt": "\(attempt)"])
                try await message.ack()
            case .noDriver:
                logger.info("no driver after the last attempt", metadata: ["trip": "\(trip.tripId)", "attempts": "\(attempt)"])
                try await message.ack()
            case .alreadyDecided:
                try await message.ack()
            }
            return decision
        } catch let error as BrokerError where error.code == .staleDelivery {
            return nil  // decided and committed; the redelivery finds the decision
        } catch {
            logger.warning("dispatching failed; the trip goes back to the queue", metadata: ["trip": "\(trip.tripId)", "error": "\(error)"])
            try? await Task.sleep(for: .milliseconds(200))
            try? await message.nack(requeue: true)
            return nil
        }
    }

    private func decided(_ tripId: String) async throws -> Bool {
        !(try await database.query("SELECT 1 FROM dispatches WHERE trip_id = ?", [.text(tripId)])).isEmpty
    }

    /// The driver service's answer, or none when it does not answer in time (then this attempt finds no driver).
    private func nearbyDrivers(_ trip: TripRequestedV2) async -> [DriverNearbyReply.Candidate] {
        do {
            let request = DriverNearbyRequest(pickup: trip.pickup, radiusKm: searchRadiusKm, limit: 10)
            var (body, properties) = try RideEnvelope.encode(request, messageId: RideIds.make("q_"))
            properties.persistent = false
            properties.expiration = 3000  // a request nobody answered in time is useless
            let reply = try await rpc.call(routingKey: RideTopology.driverRPCQueue, body: body, properties: properties, timeout: .seconds(3))
            return try RideEnvelope.decode(DriverNearbyReply.self, from: reply).drivers
        } catch {
            logger.warning("driver.nearby failed", metadata: ["trip": "\(trip.tripId)", "error": "\(error)"])
            return []
        }
    }

    private func decide(_ trip: TripRequestedV2, attempt: Int, candidates: [DriverNearbyReply.Candidate]) async throws -> Decision {
        let now = RideIds.nowMs()
        let maxAttempts = self.maxAttempts
        let busyWindowMs = self.busyWindowMs
        return try await database.transaction { tx -> Decision in
            if !(try await tx.query("SELECT 1 FROM dispatches WHERE trip_id = ?", [.text(trip.tripId)])).isEmpty {
                return .alreadyDecided
            }
            let busy = Set(try await tx.query("SELECT driver_id FROM dispatches WHERE status = 'dispatched' AND decided_ms > ?",
                                              [.integer(Int(now - busyWindowMs))]).compactMap { $0.optionalText("driver_id") })
            if let driver = candidates.first(where: { !busy.contains($0.driverId) }) {
                try await tx.execute("INSERT INTO dispatches (trip_id, status, driver_id, attempts, decided_ms) VALUES (?, 'dispatched', ?, ?, ?)",
                                     [.text(trip.tripId), .text(driver.driverId), .integer(attempt), .integer(Int(now))])
                let event = TripDispatched(tripId: trip.tripId, passengerId: trip.passengerId, driverId: driver.driverId, driverName: driver.name,
                                           pickup: trip.pickup, destination: trip.destination, distanceKm: driver.distanceKm,
                                           requestedAtMs: trip.requestedAtMs, attempts: attempt)
                try await Outbox.enqueue(event, exchange: RideTopology.dispatchExchange, routingKey: "",
                                         messageId: "trip.dispatched/\(trip.tripId)", in: tx)
                return .dispatched(driver.driverId)
            }
            guard attempt >= maxAttempts else { return .retry }
            try await tx.execute("INSERT INTO dispatches (trip_id, status, attempts, decided_ms) VALUES (?, 'no_driver', ?, ?)",
                                 [.text(trip.tripId), .integer(attempt), .integer(Int(now))])
            let event = TripNoDriver(tripId: trip.tripId, passengerId: trip.passengerId, attempts: attempt, requestedAtMs: trip.requestedAtMs)
            try await Outbox.enqueue(event, exchange: RideTopology.dispatchExchange, routingKey: "",
                                     messageId: "trip.no_driver/\(trip.tripId)", in: tx)
            return .noDriver
        }
    }

    /// A message that is not a readable `trip.requested`: kept in the poison queue for a person, not retried.
    private func park(_ message: Message, _ error: any Error) async {
        logger.error("parking a message that breaks its contract", metadata: [
            "queue": "\(DispatcherService.poisonQueue)", "message_id": "\(message.properties.messageId ?? "-")", "error": "\(error)"])
        do {
            var properties = message.properties
            var headers = properties.headers ?? [:]
            headers["x-poison-reason"] = .string("\(error)")
            properties.headers = headers
            try await connection.enableConfirms()
            try await connection.publish(routingKey: DispatcherService.poisonQueue, body: message.body, properties: properties)
            try await message.ack()
        } catch {
            try? await message.nack(requeue: true)
        }
    }
}
