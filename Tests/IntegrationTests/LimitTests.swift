import BrokerClient
import BrokerCore
import BrokerServer
import Foundation
import NIOCore
import Testing
import WireProtocol

@Suite("Queue limits, TTL, dead letters and delivery limits through a real broker", .timeLimit(.minutes(2)))
struct LimitTests {
    static func drain(_ c: BrokerConnection, _ queue: String) async throws -> [Message] {
        var out: [Message] = []
        while let m = try await c.get(queue: queue, noAck: true) { out.append(m) }
        return out
    }

    @Test("max-length with drop-head keeps the newest and dead-letters the dropped ones with reason maxlen")
    func dropHead() async throws {
        try await withBroker { _, config in
            try await withConnection(config) { c in
                try await c.declareExchange("dlx", type: .fanout)
                try await c.declareQueue("dead")
                try await c.bind(queue: "dead", exchange: "dlx")
                try await c.declareQueue("bounded", arguments: ["x-max-length": .int(3), "x-dead-letter-exchange": .string("dlx")])
                try await c.enableConfirms()
                for i in 0..<5 { try await c.publish(routingKey: "bounded", body: "m\(i)") }
                #expect(try await Self.drain(c, "bounded").map(\.bodyString) == ["m2", "m3", "m4"])
                let dead = try await Self.drain(c, "dead")
                #expect(dead.map(\.bodyString) == ["m0", "m1"])
                guard case .array(let deaths)? = dead.first?.properties.headers?["x-death"], case .table(let death)? = deaths.first else {
                    Issue.record("no x-death header")
                    return
                }
                #expect(death["reason"] == .string("maxlen"))
                #expect(death["queue"] == .string("bounded"))
                #expect(death["count"] == .int(1))
                #expect(death["exchange"] == .string(""))
                #expect(death["routing-keys"] == .array([.string("bounded")]))
                #expect(dead.first?.properties.headers?["x-first-death-reason"] == .string("maxlen"))
                #expect(dead.first?.exchange == "dlx")
            }
        }
    }

    @Test("max-length-bytes counts body bytes")
    func maxBytes() async throws {
        try await withBroker { _, config in
            try await withConnection(config) { c in
                try await c.declareQueue("bytes", arguments: ["x-max-length-bytes": .int(250)])
                try await c.enableConfirms()
                for i in 0..<5 { try await c.publish(routingKey: "bytes", body: ByteBuffer(repeating: UInt8(i), count: 100)) }
                let kept = try await Self.drain(c, "bytes")
                #expect(kept.map { $0.body.getInteger(at: $0.body.readerIndex, as: UInt8.self) } == [3, 4])
            }
        }
    }

    @Test("reject-publish nacks the publisher; reject-publish-dlx also dead-letters the refused message")
    func rejectPublish() async throws {
        try await withBroker { _, config in
            try await withConnection(config) { c in
                try await c.declareQueue("dead")
                try await c.declareQueue("strict", arguments: ["x-max-length": .int(2), "x-overflow": .string("reject-publish")])
                try await c.declareQueue("strict-dlx", arguments: [
                    "x-max-length": .int(1), "x-overflow": .string("reject-publish-dlx"),
                    "x-dead-letter-exchange": .string(""), "x-dead-letter-routing-key": .string("dead"),
                ])
                try await c.enableConfirms()
                try await c.publish(routingKey: "strict", body: "1")
                try await c.publish(routingKey: "strict", body: "2")
                await expectBrokerError(.resourceError) { try await c.publish(routingKey: "strict", body: "3") }
                #expect(try await Self.drain(c, "strict").map(\.bodyString) == ["1", "2"])

                try await c.publish(routingKey: "strict-dlx", body: "kept")
                await expectBrokerError(.resourceError) { try await c.publish(routingKey: "strict-dlx", body: "refused") }
                #expect(try await Self.drain(c, "strict-dlx").map(\.bodyString) == ["kept"])
                let dead = try await Self.drain(c, "dead")
                #expect(dead.map(\.bodyString) == ["refused"])
                #expect(dead.first?.routingKey == "dead")
            }
        }
    }

    @Test("message TTL and per-message expiration: expired messages leave without a consumer and are dead-lettered")
    func ttl() async throws {
        try await withBroker { server, config in
            try await withConnection(config) { c in
                try await c.declareQueue("dead")
                try await c.declareQueue("short", arguments: [
                    "x-message-ttl": .int(200), "x-dead-letter-exchange": .string(""), "x-dead-letter-routing-key": .string("dead"),
                ])
                try await c.declareQueue("plain", arguments: ["x-dead-letter-exchange": .string(""), "x-dead-letter-routing-key": .string("dead")])
                try await c.enableConfirms()
                try await c.publish(routingKey: "short", body: "queue-ttl")
                try await c.publish(routingKey: "plain", body: "lives")
                try await c.publish(routingKey: "plain", body: "own-ttl", properties: MessageProperties(expiration: 100))
                try await c.publish(routingKey: "plain", body: "also lives")
                // Nobody consumes; the sweeper removes them.
                let gone = try await eventually {
                    let short = try await server.withBroker { $0.queueInfo("short")?.ready }
                    let plain = try await server.withBroker { $0.queueInfo("plain")?.ready }
                    return short == 0 && plain == 2
                }
                #expect(gone)
                let dead = try await Self.drain(c, "dead")
                #expect(Set(dead.map(\.bodyString)) == ["queue-ttl", "own-ttl"])
                #expect(dead.allSatisfy { $0.properties.expiration == nil })
                #expect(dead.allSatisfy { $0.properties.headers?["x-first-death-reason"] == .string("expired") })
                #expect(try await Self.drain(c, "plain").map(\.bodyString) == ["lives", "also lives"])
            }
        }
    }

    @Test("rejected messages are dead-lettered with reason rejected; a poison message stops at its delivery limit")
    func rejectedAndDeliveryLimit() async throws {
        try await withBroker { _, config in
            try await withConnection(config) { c in
                try await c.declareQueue("dead")
                try await c.declareQueue("work", arguments: [
                    "x-delivery-limit": .int(2), "x-dead-letter-exchange": .string(""), "x-dead-letter-routing-key": .string("dead"),
                ])
                try await c.enableConfirms()
                try await c.publish(routingKey: "work", body: "rejected")
                try await c.publish(routingKey: "work", body: "poison")
                let first = try #require(try await c.get(queue: "work"))
                try await first.reject(requeue: false)
                // The poison message is nacked with requeue again and again: delivered 3 times (limit 2), then dead.
                var deliveries = 0
                while let m = try await c.get(queue: "work") {
                    deliveries += 1
                    #expect(m.bodyString == "poison")
                    try await m.nack(requeue: true)
                    if deliveries > 10 { break }
                }
                #expect(deliveries == 3)
                let dead = try await Self.drain(c, "dead")
                #expect(dead.map(\.bodyString) == ["rejected", "poison"])
                #expect(dead.map { $0.properties.headers?["x-first-death-reason"] } == [.string("rejected"), .string("delivery_limit")])
            }
        }
    }

    @Test("a queue unused for its x-expires is deleted; dead-letter cycles are broken")
    func queueExpiryAndCycles() async throws {
        try await withBroker { server, config in
            try await withConnection(config) { c in
                try await c.declareQueue("ephemeral", arguments: ["x-expires": .int(200)])
                #expect(try await eventually { try await server.withBroker { $0.queueInfo("ephemeral") } == nil })
                // Expired messages dead-lettered back into their own queue go round once, then are dropped
                // (each step on the manual clock: CoreTests.deadLetterCycleOnTheManualClock).
                try await c.declareQueue("loop", arguments: [
                    "x-message-ttl": .int(50), "x-dead-letter-exchange": .string(""), "x-dead-letter-routing-key": .string("loop"),
                ])
                try await c.enableConfirms()
                try await c.publish(routingKey: "loop", body: "round")
                #expect(try await eventually { try await server.withBroker { $0.queueInfo("loop")?.ready } == 0 })
            }
        }
    }

    @Test("arguments are part of a queue's identity and survive a restart")
    func argumentsPersist() async throws {
        let dir = temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let arguments: FieldTable = ["x-max-length": .int(2), "x-overflow": .string("reject-publish")]
        try await withBroker(dataDirectory: dir) { _, config in
            try await withConnection(config) { c in
                try await c.declareQueue("limited", durable: true, arguments: arguments)
                await expectBrokerError(.preconditionFailed) { try await c.declareQueue("limited", durable: true) }
            }
        }
        try await withBroker(dataDirectory: dir) { _, config in
            try await withConnection(config) { c in
                try await c.declareQueue("limited", durable: true, arguments: arguments)
                try await c.enableConfirms()
                try await c.publish(routingKey: "limited", body: "1", properties: MessageProperties(persistent: true))
                try await c.publish(routingKey: "limited", body: "2", properties: MessageProperties(persistent: true))
                await expectBrokerError(.resourceError) { try await c.publish(routingKey: "limited", body: "3") }
            }
        }
    }
}
