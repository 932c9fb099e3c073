import BrokerClient
import BrokerCore
import Foundation
import NIOCore
import Testing
import WireProtocol

/// Per-user permissions (configure / write / read patterns) and limits, enforced on every operation of a real broker.
@Suite("Permissions and user limits")
struct PermissionTests {
    static func users() -> UserStore {
        var users = UserStore()
        users.add(User(name: "trip", password: PasswordHash(password: "trip-secret"), isAdmin: false))
        return users
    }

    /// The client configuration of the `trip` user, against the same broker as `config`.
    static func asTrip(_ config: ClientConfiguration) -> ClientConfiguration {
        var trip = config
        trip.user = "trip"
        trip.password = "trip-secret"
        return trip
    }

    static func expectRefused(_ fragment: String, sourceLocation: SourceLocation = #_sourceLocation,
                              _ body: () async throws -> Void) async {
        do {
            try await body()
            Issue.record("expected 403 mentioning \(fragment), but it succeeded", sourceLocation: sourceLocation)
        } catch let error as BrokerError {
            #expect(error.code == .accessRefused && error.message.contains(fragment), "\(error)", sourceLocation: sourceLocation)
        } catch {
            Issue.record("expected BrokerError, got \(error)", sourceLocation: sourceLocation)
        }
    }

    @Test("an unprivileged service cannot declare, bind, publish to or consume from what it was not granted")
    func enforced() async throws {
        try await withBroker(users: Self.users()) { _, config in
            let tripConfig = Self.asTrip(config)
            try await withConnection(config) { admin in
                try await admin.declareExchange("dispatch", type: .fanout)
                try await admin.declareQueue("driver.offers")
                try await admin.setPermissions(of: "trip", configure: #"^trip\..*"#, write: #"^(trip\..*|dispatch)$"#, read: #"^trip\..*"#)
                let row = try #require(try await admin.listUsers().first { $0.name == "trip" })
                #expect(row.configure == #"^trip\..*"# && row.write == #"^(trip\..*|dispatch)$"#)
                await expectBrokerError(.invalidArgument) {
                    try await admin.setPermissions(of: "trip", configure: "(", write: "", read: "")
                }
            }
            try await withConnection(tripConfig) { trip in
                try await trip.declareQueue("trip.events")
                await Self.expectRefused("no configure permission on queue 'other'") { try await trip.declareQueue("other") }
                await Self.expectRefused("no configure permission on exchange 'trip-owned-not'") {
                    try await trip.declareExchange("trip-owned-not", type: .topic)
                }
                await Self.expectRefused("no configure permission on queue 'driver.offers'") { _ = try await trip.deleteQueue("driver.offers") }
                // Binding reads from the exchange: dispatch is not readable for trip.
                await Self.expectRefused("no read permission on exchange 'dispatch'") {
                    try await trip.bind(queue: "trip.events", exchange: "dispatch")
                }
                await Self.expectRefused("no read permission on queue 'driver.offers'") { _ = try await trip.consume(queue: "driver.offers") }
                await Self.expectRefused("no read permission on queue 'driver.offers'") { _ = try await trip.get(queue: "driver.offers") }
                try await trip.enableConfirms()
                try await trip.publish(exchange: "dispatch", routingKey: "", body: "allowed")
                await Self.expectRefused("no write permission on the default exchange") {
                    try await trip.publish(routingKey: "trip.events", body: "via the default exchange")
                }
                // Messaging on what was granted works.
                try await trip.publish(exchange: "dispatch", routingKey: "", body: "again")
                _ = try await trip.get(queue: "trip.events", noAck: true)
            }
        }
    }

    @Test("a permission change applies to open connections at once and survives a restart")
    func changedAndKept() async throws {
        let dir = temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        var tripConfig: ClientConfiguration?
        try await withBroker(dataDirectory: dir) { _, config in
            try await withConnection(config) { admin in
                try await admin.addUser("trip", password: "trip-secret")
                try await admin.declareQueue("trip.events", durable: true)
            }
            let trip = Self.asTrip(config)
            tripConfig = trip
            try await withConnection(trip) { tripConnection in
                try await tripConnection.enableConfirms()
                try await tripConnection.publish(routingKey: "trip.events", body: "before")  // full access by default
                try await withConnection(config) { admin in
                    try await admin.setPermissions(of: "trip", configure: "", write: "", read: #"trip\..*"#)
                }
                // The cached route is checked again.
                await Self.expectRefused("no write permission") { try await tripConnection.publish(routingKey: "trip.events", body: "after") }
                #expect(try await tripConnection.get(queue: "trip.events", noAck: true)?.bodyString == "before")
            }
        }
        try await withBroker(dataDirectory: dir) { _, config in
            var trip = try #require(tripConfig)
            trip.port = config.port
            try await withConnection(trip) { tripConnection in
                await Self.expectRefused("no configure permission") { try await tripConnection.declareQueue("trip.new") }
            }
            try await withConnection(config) { admin in
                try await admin.clearPermissions(of: "trip")
            }
            try await withConnection(trip) { tripConnection in try await tripConnection.declareQueue("trip.new") }
        }
    }

    @Test("per-user limits on queues, bindings and consumers are refused with 506 naming the limit, and freed by deletion")
    func limits() async throws {
        try await withBroker(users: Self.users()) { _, config in
            let tripConfig = Self.asTrip(config)
            try await withConnection(config) { admin in
                try await admin.setLimits(of: "trip", maxQueues: 2, maxBindings: 1, maxConsumers: 1)
                try await admin.declareExchange("dispatch", type: .direct)
            }
            try await withConnection(tripConfig) { trip in
                try await trip.declareQueue("a")
                try await trip.declareQueue("b")
                await expectBrokerError(.resourceError) { try await trip.declareQueue("c") }
                try await trip.declareQueue("a")  // redeclaring an existing queue is not a new one
                _ = try await trip.deleteQueue("b")
                try await trip.declareQueue("c")

                try await trip.bind(queue: "a", exchange: "dispatch", key: "one")
                try await trip.bind(queue: "a", exchange: "dispatch", key: "one")  // the same binding again
                await expectBrokerError(.resourceError) { try await trip.bind(queue: "a", exchange: "dispatch", key: "two") }
                try await trip.unbind(queue: "a", exchange: "dispatch", key: "one")
                try await trip.bind(queue: "c", exchange: "dispatch", key: "two")

                let first = try await trip.consume(queue: "a")
                await expectBrokerError(.resourceError) { _ = try await trip.consume(queue: "c") }
                try await first.cancel()
                _ = try await trip.consume(queue: "c")
            }
        }
    }
}
