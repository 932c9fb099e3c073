import BrokerClient
import BrokerCore
import BrokerServer
import NIOCore
import Testing
import WireProtocol

@Suite("Routing through a real broker", .timeLimit(.minutes(2)))
struct RoutingTests {
    @Test("publish, consume and ack through the default exchange")
    func publishConsumeAck() async throws {
        try await withBroker { server, config in
            try await withConnection(config) { c in
                try await c.declareQueue("trips")
                for i in 0..<10 { try await c.publish(routingKey: "trips", body: "trip-\(i)") }
                let consumer = try await c.consume(queue: "trips", prefetch: 5)
                var bodies: [String] = []
                for _ in 0..<10 {
                    let message = try await next(consumer)
                    bodies.append(message.bodyString)
                    try await message.ack()
                }
                #expect(bodies == (0..<10).map { "trip-\($0)" })
                #expect(try await eventually { try await server.withBroker { $0.queueInfo("trips")! }.unacked == 0 })
                #expect(try await server.withBroker { $0.queueInfo("trips")! }.ready == 0)
            }
        }
    }

    @Test("fanout delivers one copy to every bound queue")
    func fanout() async throws {
        try await withBroker { _, config in
            try await withConnection(config) { c in
                try await c.declareExchange("dispatch", type: .fanout)
                for q in ["passenger", "driver", "trip"] {
                    try await c.declareQueue(q)
                    try await c.bind(queue: q, exchange: "dispatch", key: "ignored-\(q)")
                }
                try await c.enableConfirms()
                try await c.publish(exchange: "dispatch", routingKey: "any", body: "driver-found")
                for q in ["passenger", "driver", "trip"] {
                    let message = try #require(try await c.get(queue: q, noAck: true))
                    #expect(message.bodyString == "driver-found")
                    #expect(message.exchange == "dispatch" && message.routingKey == "any")
                    #expect(try await c.get(queue: q) == nil)
                }
            }
        }
    }

    @Test("direct routes by exact key")
    func direct() async throws {
        try await withBroker { _, config in
            try await withConnection(config) { c in
                try await c.declareExchange("notify", type: .direct)
                try await c.declareQueue("sms")
                try await c.declareQueue("push")
                try await c.bind(queue: "sms", exchange: "notify", key: "sms")
                try await c.bind(queue: "push", exchange: "notify", key: "push")
                try await c.bind(queue: "push", exchange: "notify", key: "all")
                try await c.bind(queue: "sms", exchange: "notify", key: "all")
                try await c.enableConfirms()
                try await c.publish(exchange: "notify", routingKey: "sms", body: "a")
                try await c.publish(exchange: "notify", routingKey: "push", body: "b")
                try await c.publish(exchange: "notify", routingKey: "all", body: "c")
                try await c.publish(exchange: "notify", routingKey: "SMS", body: "lost")
                #expect(try await c.get(queue: "sms", noAck: true)?.bodyString == "a")
                #expect(try await c.get(queue: "sms", noAck: true)?.bodyString == "c")
                #expect(try await c.get(queue: "sms", noAck: true) == nil)
                #expect(try await c.get(queue: "push", noAck: true)?.bodyString == "b")
                #expect(try await c.get(queue: "push", noAck: true)?.bodyString == "c")
                #expect(try await c.get(queue: "push", noAck: true) == nil)
            }
        }
    }

    @Test("topic routes by pattern: * one word, # zero or more")
    func topic() async throws {
        try await withBroker { _, config in
            try await withConnection(config) { c in
                try await c.declareExchange("events", type: .topic)
                try await c.declareQueue("created")
                try await c.declareQueue("eu")
                try await c.declareQueue("everything")
                try await c.bind(queue: "created", exchange: "events", key: "trip.*.created")
                try await c.bind(queue: "eu", exchange: "events", key: "trip.eu.#")
                try await c.bind(queue: "everything", exchange: "events", key: "#")
                try await c.enableConfirms()
                for key in ["trip.eu.created", "trip.us.created", "trip.eu.west.cancelled", "trip.eu", "driver.moved"] {
                    try await c.publish(exchange: "events", routingKey: key, body: key)
                }
                func drain(_ q: String) async throws -> [String] {
                    var out: [String] = []
                    while let m = try await c.get(queue: q, noAck: true) { out.append(m.bodyString) }
                    return out
                }
                #expect(try await drain("created") == ["trip.eu.created", "trip.us.created"])
                #expect(try await drain("eu") == ["trip.eu.created", "trip.eu.west.cancelled", "trip.eu"])
                #expect(try await drain("everything").count == 5)
            }
        }
    }

    @Test("unbind stops routing")
    func unbind() async throws {
        try await withBroker { _, config in
            try await withConnection(config) { c in
                try await c.declareExchange("x", type: .direct)
                try await c.declareQueue("q")
                try await c.bind(queue: "q", exchange: "x", key: "k")
                try await c.enableConfirms()
                try await c.publish(exchange: "x", routingKey: "k", body: "1")
                try await c.unbind(queue: "q", exchange: "x", key: "k")
                try await c.publish(exchange: "x", routingKey: "k", body: "2")
                #expect(try await c.get(queue: "q", noAck: true)?.bodyString == "1")
                #expect(try await c.get(queue: "q", noAck: true) == nil)
            }
        }
    }

    @Test("an unroutable mandatory message comes back to its publisher; a plain one is dropped")
    func mandatoryReturn() async throws {
        try await withBroker { _, config in
            try await withConnection(config) { c in
                try await c.enableConfirms()
                try await c.publish(routingKey: "no-such-queue", body: "plain")
                try await c.publish(routingKey: "no-such-queue", body: "lost ride", properties: MessageProperties(messageId: "r1"),
                                    mandatory: true)
                var returns = c.returns.makeAsyncIterator()
                let returned = try #require(await returns.next())
                #expect(returned.code == .noRoute)
                #expect(String(buffer: returned.body) == "lost ride")
                #expect(returned.properties.messageId == "r1")
                #expect(returned.routingKey == "no-such-queue")
            }
        }
    }

    @Test("publisher confirms: a publish to a missing exchange is nacked with the reason")
    func confirmNack() async throws {
        try await withBroker { _, config in
            try await withConnection(config) { c in
                try await c.declareQueue("q")
                try await c.enableConfirms()
                try await c.publish(routingKey: "q", body: "ok")
                await expectBrokerError(.notFound) { try await c.publish(exchange: "missing", routingKey: "q", body: "nope") }
                try await c.publish(routingKey: "q", body: "ok again")
                #expect(try await c.declareQueue("q", passive: true).messageCount == 2)
            }
        }
    }

    @Test("without confirms, a publish to a missing exchange is reported on the error stream")
    func publishErrorWithoutConfirms() async throws {
        try await withBroker { _, config in
            try await withConnection(config) { c in
                try await c.publish(exchange: "missing", routingKey: "k", body: "lost")
                var errors = c.errors.makeAsyncIterator()
                let error = try #require(await errors.next())
                #expect(error.code == .notFound)
                #expect(error.message.contains("missing"))
            }
        }
    }

    @Test("many concurrent confirmed publishes all complete")
    func concurrentConfirms() async throws {
        try await withBroker { server, config in
            try await withConnection(config) { c in
                try await c.declareQueue("burst")
                try await c.enableConfirms()
                try await withThrowingTaskGroup(of: Void.self) { group in
                    for p in 0..<4 {
                        group.addTask {
                            for i in 0..<250 { try await c.publish(routingKey: "burst", body: "\(p)-\(i)") }
                        }
                    }
                    try await group.waitForAll()
                }
                #expect(try await server.withBroker { $0.queueInfo("burst")!.ready } == 1000)
            }
        }
    }

    @Test("message properties travel intact")
    func properties() async throws {
        try await withBroker { _, config in
            try await withConnection(config) { c in
                try await c.declareQueue("props")
                let properties = MessageProperties(
                    messageId: "id-1", correlationId: "corr", replyTo: "replies", contentType: "application/json", type: "trip.requested",
                    typeVersion: 2, timestamp: 1_700_000_000_000, expiration: 30_000, persistent: true, priority: 5,
                    headers: ["region": .string("eu"), "attempt": .int(1)])
                try await c.enableConfirms()
                try await c.publish(routingKey: "props", body: "{}", properties: properties)
                let message = try #require(try await c.get(queue: "props", noAck: true))
                #expect(message.properties == properties)
            }
        }
    }
}
