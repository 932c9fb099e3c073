import BrokerClient
import BrokerCore
import BrokerServer
import NIOCore
import Testing
import WireProtocol

@Suite("Consumers, acks and redelivery through a real broker", .timeLimit(.minutes(2)))
struct ConsumerTests {
    @Test("prefetch: a consumer holds at most N unacknowledged messages")
    func prefetch() async throws {
        try await withBroker { server, config in
            try await withConnection(config) { c in
                try await c.declareQueue("q")
                try await c.enableConfirms()
                for i in 0..<10 { try await c.publish(routingKey: "q", body: "\(i)") }
                let consumer = try await c.consume(queue: "q", prefetch: 3)
                var held: [Message] = []
                for _ in 0..<3 { held.append(try await next(consumer)) }
                #expect(try await eventually { try await server.withBroker { $0.queueInfo("q")! } == (7, 3, 1) })
                // No fourth delivery while three are unacknowledged. A confirmed publish makes the queue try to
                // deliver again (on its own loop, before the confirm is written), so this checks without a pause.
                try await c.publish(routingKey: "q", body: "10")
                #expect(try await server.withBroker { $0.queueInfo("q")! } == (8, 3, 1))
                try await held[2].ack(multiple: true)
                for _ in 0..<3 { _ = try await next(consumer) }
                #expect(try await eventually { try await server.withBroker { $0.queueInfo("q")! } == (5, 3, 1) })
            }
        }
    }

    @Test("messages are shared round-robin between consumers on different connections")
    func roundRobinAcrossConnections() async throws {
        try await withBroker { _, config in
            let a = try await BrokerConnection.connect(config)
            let b = try await BrokerConnection.connect(config)
            try await a.declareQueue("work")
            let ca = try await a.consume(queue: "work", noAck: true)
            let cb = try await b.consume(queue: "work", noAck: true)
            try await a.enableConfirms()
            for i in 0..<6 { try await a.publish(routingKey: "work", body: "\(i)") }
            var got: [String] = []
            for _ in 0..<3 { got.append(try await next(ca).bodyString) }
            for _ in 0..<3 { got.append(try await next(cb).bodyString) }
            #expect(Array(got[0..<3]) == ["0", "2", "4"])
            #expect(Array(got[3..<6]) == ["1", "3", "5"])
            await a.close()
            await b.close()
        }
    }

    @Test("nack and reject with requeue send the message back to the head, redelivered; without requeue it is gone")
    func nackReject() async throws {
        try await withBroker { server, config in
            try await withConnection(config) { c in
                try await c.declareQueue("q")
                try await c.enableConfirms()
                for body in ["first", "second"] { try await c.publish(routingKey: "q", body: body) }
                let consumer = try await c.consume(queue: "q", prefetch: 1)
                let m1 = try await next(consumer)
                #expect(m1.bodyString == "first" && !m1.redelivered)
                try await m1.nack(requeue: true)
                let m1again = try await next(consumer)
                #expect(m1again.bodyString == "first" && m1again.redelivered)
                try await m1again.reject(requeue: true)
                let m1third = try await next(consumer)
                #expect(m1third.bodyString == "first" && m1third.redelivered)
                try await m1third.reject(requeue: false)
                let m2 = try await next(consumer)
                #expect(m2.bodyString == "second")
                try await m2.nack(requeue: false)
                #expect(try await eventually { try await server.withBroker { $0.queueInfo("q")! } == (0, 0, 1) })
            }
        }
    }

    @Test("everything unacknowledged by a connection that drops goes back to its queue")
    func dropRequeues() async throws {
        try await withBroker { server, config in
            let dying = try await BrokerConnection.connect(config)
            try await dying.declareQueue("q")
            try await dying.enableConfirms()
            for i in 0..<5 { try await dying.publish(routingKey: "q", body: "\(i)") }
            let consumer = try await dying.consume(queue: "q", prefetch: 3)
            let first = try await next(consumer)
            _ = try await next(consumer)
            _ = try await next(consumer)
            try await first.ack()
            await dying.close()
            #expect(try await eventually { try await server.withBroker { $0.queueInfo("q")! } == (4, 0, 0) })
            try await withConnection(config) { c in
                let survivor = try await c.consume(queue: "q", noAck: true)
                var got: [(String, Bool)] = []
                for _ in 0..<4 {
                    let m = try await next(survivor)
                    got.append((m.bodyString, m.redelivered))
                }
                #expect(got.map(\.0) == ["1", "2", "3", "4"])
                // 1 and 2 were delivered; acking 0 freed credit for 3; 4 was never delivered.
                #expect(got.map(\.1) == [true, true, true, false])
            }
        }
    }

    @Test("get pulls one message with the remaining count; unacked gets return on close")
    func get() async throws {
        try await withBroker { server, config in
            try await withConnection(config) { c in
                try await c.declareQueue("q")
                #expect(try await c.get(queue: "q") == nil)
                try await c.enableConfirms()
                for i in 0..<3 { try await c.publish(routingKey: "q", body: "\(i)") }
                let m = try #require(try await c.get(queue: "q"))
                #expect(m.bodyString == "0" && m.messageCount == 2)
                try await m.ack()
                _ = try #require(try await c.get(queue: "q"))
                #expect(try await eventually { try await server.withBroker { $0.queueInfo("q")! } == (1, 1, 0) })
            }
            #expect(try await eventually { try await server.withBroker { $0.queueInfo("q")! } == (2, 0, 0) })
        }
    }

    @Test("acking an unknown tag is an error that leaves the connection open")
    func unknownTag() async throws {
        try await withBroker { server, config in
            // The client refuses it locally, before the broker sees it.
            try await withConnection(config) { c in
                try await c.declareQueue("q")
                await expectBrokerError(.preconditionFailed) { try await c.ack(12345) }
                #expect(try await c.declareQueue("q", passive: true).name == "q")
            }
            // The broker answers a raw client's ack of an unknown tag with an error and keeps the connection.
            let raw = try RawSocket(port: server.port)
            _ = try raw.handshake()
            raw.send(.ack(Settle(deliveryTag: 12345)))
            raw.send(.queueDeclare(QueueDeclare(requestId: 1, name: "q", passive: true)))
            guard case .error(let error)? = try raw.receive() else {
                Issue.record("no error frame for the unknown tag")
                return
            }
            #expect(error.code == .preconditionFailed && error.requestId == 0)
            #expect(error.text.contains("12345"))
            guard case .queueDeclareOk(let ok)? = try raw.receive() else {
                Issue.record("the connection did not stay open")
                return
            }
            #expect(ok.name == "q")
        }
    }

    @Test("cancel ends the consumer's sequence; deleting the queue notifies its consumers")
    func cancelAndDeleteNotice() async throws {
        try await withBroker { _, config in
            try await withConnection(config) { c in
                try await c.declareQueue("a")
                try await c.declareQueue("b")
                let ca = try await c.consume(queue: "a")
                try await ca.cancel()
                var iterator = ca.makeAsyncIterator()
                #expect(try await iterator.next() == nil)

                let cb = try await c.consume(queue: "b")
                try await withConnection(config) { other in
                    try await other.deleteQueue("b")
                }
                do {
                    _ = try await next(cb)
                    Issue.record("the consumer of a deleted queue kept running")
                } catch let error as BrokerError {
                    #expect(error.code == .notFound)
                    #expect(error.message.contains("deleted"))
                }
            }
        }
    }

    @Test("an exclusive consumer keeps others out")
    func exclusiveConsumer() async throws {
        try await withBroker { _, config in
            try await withConnection(config) { c in
                try await c.declareQueue("q")
                let only = try await c.consume(queue: "q", exclusive: true)
                await expectBrokerError(.resourceLocked) { _ = try await c.consume(queue: "q") }
                try await only.cancel()
                let second = try await c.consume(queue: "q")
                await expectBrokerError(.resourceLocked) { _ = try await c.consume(queue: "q", exclusive: true) }
                try await second.cancel()
            }
        }
    }

    @Test("broker shutdown closes clients with a reason")
    func shutdownReason() async throws {
        var configuration: ClientConfiguration?
        var consumer: Consumer?
        try await withBroker { _, config in
            configuration = config
            let c = try await BrokerConnection.connect(withoutRecovery(config))
            try await c.declareQueue("q")
            consumer = try await c.consume(queue: "q")
        }
        let stream = try #require(consumer)
        do {
            _ = try await next(stream)
            Issue.record("consumer survived shutdown")
        } catch let error as BrokerError {
            #expect(error.code == .connectionForced)
        }
        _ = configuration
    }
}
