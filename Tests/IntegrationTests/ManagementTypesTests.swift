import BrokerClient
import NIOCore
import Testing
import WireProtocol

/// The typed management API: each listing's Swift type reads the broker's rows and encodes back to exactly those
/// rows, so brokerctl's output (which is the encoded typed rows) and the Swift types cannot drift apart.
@Suite("Typed management API", .timeLimit(.minutes(1)))
struct ManagementTypesTests {
    @Test("every listing's rows round-trip through their Swift type unchanged")
    func rowsRoundTrip() async throws {
        try await withBroker { _, config in
            try await withConnection(config) { c in
                try await c.declareExchange("trips", type: .topic, durable: true)
                try await c.declareQueue("trip.events", durable: true, arguments: ["x-max-length": .int(10)])
                try await c.declareQueue("", exclusive: true)
                try await c.bind(queue: "trip.events", exchange: "trips", key: "trip.#")
                try await c.publish(exchange: "trips", routingKey: "trip.created", body: "{}",
                                    properties: MessageProperties(messageId: "t-1", contentType: "application/json"))
                _ = try await c.consume(queue: "trip.events", prefetch: 3)
                try await c.addUser("ops", password: "secret", admin: true)

                try await expectRoundTrip(c, QueueRow.self, atLeast: 2)
                try await expectRoundTrip(c, ExchangeRow.self, atLeast: 2)
                try await expectRoundTrip(c, BindingRow.self, atLeast: 1)
                try await expectRoundTrip(c, ConnectionRow.self, atLeast: 1)
                try await expectRoundTrip(c, ConsumerRow.self, atLeast: 1)
                try await expectRoundTrip(c, UserRow.self, atLeast: 2)

                let queues = try await c.listQueues()
                let events = try #require(queues.first { $0.name == "trip.events" })
                #expect(events.durable && events.consumers == 1 && events.arguments["x-max-length"] == .int(10))
                #expect(queues.contains { $0.exclusive && $0.ownerConnection == Int64(c.connectionId) })
                let consumer = try #require(try await c.listConsumers().first)
                #expect(consumer.prefetch == 3 && consumer.connection == Int64(c.connectionId) && consumer.ackRequired)
                #expect(try await c.listUsers().map(\.name).sorted() == ["guest", "ops"])
            }
        }
    }

    @Test("peek and move answer typed results; a missing queue is a broker error")
    func peekAndMove() async throws {
        try await withBroker { _, config in
            try await withConnection(config) { c in
                try await c.declareQueue("a")
                try await c.declareQueue("b")
                try await c.enableConfirms()
                for n in 0..<3 {
                    try await c.publish(routingKey: "a", body: "m\(n)", properties: MessageProperties(messageId: "id-\(n)"))
                }
                let peeked = try await c.peek(queue: "a", count: 2)
                #expect(peeked.map { String(decoding: $0.body, as: UTF8.self) } == ["m0", "m1"])
                #expect(peeked.first?.properties["message_id"] == .string("id-0"))
                #expect(peeked.first?.bodySize == 2 && peeked.first?.routingKey == "a")
                let raw = try await c.rows("queue.peek", ["queue": .string("a"), "count": .int(2)])
                #expect(try peeked.map { try FieldTableEncoder().encode($0) } == raw)

                let moved = try await c.move(from: "a", to: "b", count: 2)
                #expect(moved == MoveResult(moved: 2, remaining: 1, stopped: nil))
                await expectBrokerError(.notFound) { _ = try await c.peek(queue: "missing") }
            }
        }
    }

    func expectRoundTrip<Row: ManagementRow>(_ connection: BrokerConnection, _ type: Row.Type, atLeast count: Int,
                                             sourceLocation: SourceLocation = #_sourceLocation) async throws {
        let raw = try await connection.rows(Row.listMethod)
        #expect(raw.count >= count, "\(Row.listMethod) has \(raw.count) rows", sourceLocation: sourceLocation)
        // The typed call answers the same rows; the round trip is checked on one answer, since a second listing can
        // differ in its clock columns (connected_seconds).
        #expect(try await connection.list(type).count == raw.count, sourceLocation: sourceLocation)
        let typed = try raw.map { try FieldTableDecoder().decode(type, from: $0) }
        let encoded = try typed.map { try FieldTableEncoder().encode($0) }
        #expect(encoded == raw, "\(Row.listMethod): the Swift type and the broker's rows differ", sourceLocation: sourceLocation)
        // Every column the broker answers is a field of the type.
        let keys = Set(raw.flatMap(\.keys))
        #expect(keys.isSubset(of: Set(Row.columns)), "\(Row.listMethod) columns missing from \(type): \(keys.subtracting(Row.columns))",
                sourceLocation: sourceLocation)
    }
}
