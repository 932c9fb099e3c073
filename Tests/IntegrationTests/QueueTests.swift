import BrokerClient
import BrokerCore
import BrokerServer
import NIOCore
import Testing
import WireProtocol

@Suite("Declarations through a real broker", .timeLimit(.minutes(2)))
struct QueueTests {
    @Test("exchange declare: passive, mismatch, reserved names, delete if-unused")
    func exchanges() async throws {
        try await withBroker { _, config in
            try await withConnection(config) { c in
                await expectBrokerError(.notFound) { try await c.declareExchange("x", type: .direct, passive: true) }
                try await c.declareExchange("x", type: .direct)
                try await c.declareExchange("x", type: .direct)  // idempotent
                try await c.declareExchange("x", type: .fanout, passive: true)  // passive only checks existence
                await expectBrokerError(.preconditionFailed) { try await c.declareExchange("x", type: .topic) }
                await expectBrokerError(.preconditionFailed) { try await c.declareExchange("x", type: .direct, durable: true) }
                await expectBrokerError(.accessRefused) { try await c.declareExchange("amq.mine", type: .direct) }
                await expectBrokerError(.accessRefused) { try await c.deleteExchange("amq.topic") }
                await expectBrokerError(.invalidArgument) { try await c.declareExchange("y", type: .direct, arguments: ["x-foo": .int(1)]) }
                try await c.declareQueue("q")
                try await c.bind(queue: "q", exchange: "x", key: "k")
                await expectBrokerError(.preconditionFailed) { try await c.deleteExchange("x", ifUnused: true) }
                try await c.deleteExchange("x")
                await expectBrokerError(.notFound) { try await c.deleteExchange("x") }
                await expectBrokerError(.notFound) { try await c.bind(queue: "q", exchange: "x", key: "k") }
                await expectBrokerError(.accessRefused) { try await c.bind(queue: "q", exchange: "", key: "k") }
                // The connection is still usable after all those errors.
                #expect(try await c.declareQueue("q", passive: true).name == "q")
            }
        }
    }

    @Test("queue declare: passive, mismatch, server-named, counts")
    func queues() async throws {
        try await withBroker { _, config in
            try await withConnection(config) { c in
                await expectBrokerError(.notFound) { try await c.declareQueue("q", passive: true) }
                let generated = try await c.declareQueue()
                #expect(generated.name.hasPrefix("amq.gen-"))
                try await c.declareQueue("q", durable: true)
                await expectBrokerError(.preconditionFailed) { try await c.declareQueue("q", durable: false) }
                await expectBrokerError(.invalidArgument) { try await c.declareQueue("bad", arguments: ["x-unheard-of": .int(1)]) }
                await expectBrokerError(.invalidArgument) { try await c.declareQueue("bad", arguments: ["x-max-length": .string("ten")]) }
                await expectBrokerError(.invalidArgument) { try await c.declareQueue("bad", arguments: ["x-message-ttl": .int(-1)]) }
                await expectBrokerError(.invalidArgument) { try await c.declareQueue("bad", arguments: ["x-overflow": .string("explode")]) }
                await expectBrokerError(.invalidArgument) { try await c.declareQueue(String(repeating: "n", count: 300)) }
                try await c.enableConfirms()
                for i in 0..<3 { try await c.publish(routingKey: "q", body: "\(i)") }
                let info = try await c.declareQueue("q", passive: true)
                #expect(info.messageCount == 3 && info.consumerCount == 0)
            }
        }
    }

    @Test("delete with if-unused and if-empty; purge")
    func deleteAndPurge() async throws {
        try await withBroker { _, config in
            try await withConnection(config) { c in
                try await c.declareQueue("q")
                try await c.enableConfirms()
                for i in 0..<4 { try await c.publish(routingKey: "q", body: "\(i)") }
                await expectBrokerError(.preconditionFailed) { try await c.deleteQueue("q", ifEmpty: true) }
                let consumer = try await c.consume(queue: "q", prefetch: 1)
                _ = try await next(consumer)
                await expectBrokerError(.preconditionFailed) { try await c.deleteQueue("q", ifUnused: true) }
                #expect(try await c.purgeQueue("q") == 3)  // the unacked one stays with the consumer
                try await consumer.cancel()
                #expect(try await c.deleteQueue("q", ifUnused: true, ifEmpty: true) == 0)
                await expectBrokerError(.notFound) { try await c.declareQueue("q", passive: true) }
                await expectBrokerError(.notFound) { try await c.purgeQueue("q") }
            }
        }
    }

    @Test("an exclusive queue is locked to its connection and deleted with it")
    func exclusive() async throws {
        try await withBroker { server, config in
            let owner = try await BrokerConnection.connect(config)
            try await owner.declareQueue("mine", exclusive: true)
            try await withConnection(config) { other in
                await expectBrokerError(.resourceLocked) { try await other.declareQueue("mine", exclusive: true) }
                await expectBrokerError(.resourceLocked) { _ = try await other.consume(queue: "mine") }
                await expectBrokerError(.resourceLocked) { _ = try await other.get(queue: "mine") }
                await expectBrokerError(.resourceLocked) { try await other.deleteQueue("mine") }
                // Publishing to it is allowed: that is how RPC replies reach an exclusive reply queue.
                try await other.enableConfirms()
                try await other.publish(routingKey: "mine", body: "reply")
            }
            #expect(try await owner.get(queue: "mine", noAck: true)?.bodyString == "reply")
            await owner.close()
            #expect(try await eventually { try await server.withBroker { $0.queueInfo("mine") } == nil })
        }
    }

    @Test("an auto-delete queue goes when its last consumer cancels")
    func autoDelete() async throws {
        try await withBroker { server, config in
            try await withConnection(config) { c in
                try await c.declareQueue("temp", autoDelete: true)
                let a = try await c.consume(queue: "temp")
                let b = try await c.consume(queue: "temp")
                try await a.cancel()
                #expect(try await server.withBroker { $0.queueInfo("temp") } != nil)
                try await b.cancel()
                await expectBrokerError(.notFound) { try await c.declareQueue("temp", passive: true) }
            }
        }
    }
}
