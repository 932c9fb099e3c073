import BrokerClient
import BrokerServer
import Foundation
import NIOCore
import Synchronization
import Testing
import WireProtocol

/// BrokerClient speaking AMQP 0-9-1 (issue 16, part 4): the same API against brokerd's AMQP listener, including
/// the failures AMQP turns into channel exceptions, and recovery when the broker restarts.
@Suite("BrokerClient over AMQP 0-9-1", .timeLimit(.minutes(3)))
struct AMQPClientTests {
    static func configuration(port: Int, name: String = "amqp-client") -> ClientConfiguration {
        var configuration = ClientConfiguration(port: port, clientName: name, connectTimeout: .seconds(5), requestTimeout: .seconds(10))
        configuration.wireProtocol = .amqp
        configuration.logger = quietLogger
        return configuration
    }

    @Test("topology, confirms, consume with prefetch and acks, get, properties, RPC, and errors that leave the connection working")
    func sameAPI() async throws {
        try await withBroker(inMemory: true, adjust: { $0.amqpPort = 0 }) { server, _ in
            let port = try #require(server.amqpPort)
            try await withConnection(Self.configuration(port: port)) { c in
                #expect(c.serverName.hasPrefix("brokerd"))
                try await c.declareExchange("ride.trips", type: .topic)
                let queue = try await c.declareQueue("", exclusive: true)
                #expect(queue.name.hasPrefix("amq.gen-"))
                try await c.bind(queue: queue.name, exchange: "ride.trips", key: "trip.*")
                try await c.enableConfirms()
                for i in 0..<50 {
                    try await c.publish(exchange: "ride.trips", routingKey: "trip.requested", body: "\(i)",
                                        properties: MessageProperties(messageId: "m\(i)", type: "trip.requested", typeVersion: 2,
                                                                      persistent: true, headers: ["k": .string("v")]))
                }
                let consumer = try await c.consume(queue: queue.name, prefetch: 10)
                for i in 0..<50 {
                    let message = try await next(consumer)
                    #expect(message.bodyString == "\(i)" && message.routingKey == "trip.requested" && message.exchange == "ride.trips")
                    #expect(message.properties.messageId == "m\(i)" && message.properties.typeVersion == 2 && message.properties.persistent)
                    #expect(message.properties.headers?["k"] == .string("v"))
                    try await message.ack()
                }
                // A request AMQP answers with a channel exception fails alone; the consumer and confirms go on.
                await expectBrokerError(.notFound) { _ = try await c.declareQueue("missing", passive: true) }
                await expectBrokerError(.notFound) { _ = try await c.get(queue: "missing") }
                try await c.publish(exchange: "ride.trips", routingKey: "trip.after", body: "after the errors")
                #expect(try await next(consumer).bodyString == "after the errors")
                await expectBrokerError(.unknownFrame) { _ = try await c.status() }
                // get, nack with requeue, get again redelivered.
                try await c.declareQueue("work")
                try await c.publish(routingKey: "work", body: "job")
                let first = try #require(try await c.get(queue: "work"))
                try await first.nack(requeue: true)
                let again = try #require(try await c.get(queue: "work", noAck: true))
                #expect(again.bodyString == "job" && again.redelivered)
            }
            // RPC between two AMQP clients, through the broker.
            try await withConnection(Self.configuration(port: port, name: "responder")) { responder in
                try await responder.declareQueue("driver.nearby")
                let serving = Task {
                    try await responder.respond(queue: "driver.nearby") { request in RPCReply(body: ByteBuffer(string: "near " + request.bodyString)) }
                }
                defer { serving.cancel() }
                try await withConnection(Self.configuration(port: port, name: "caller")) { caller in
                    let rpc = try await RPCClient.make(connection: caller)
                    for i in 0..<5 {
                        let reply = try await rpc.call(routingKey: "driver.nearby", body: ByteBuffer(string: "trip \(i)"), timeout: .seconds(20))
                        #expect(reply.bodyString == "near trip \(i)")
                    }
                }
            }
        }
    }

    @Test("a brokerd restart (kill -9) under an AMQP publisher and consumer: both recover by themselves, nothing confirmed is lost")
    func recovery() async throws {
        let directory = DaemonTests.temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: directory) }
        var (process, port, log) = try DaemonTests.startDaemon(dataDirectory: directory, extraArguments: ["--amqp-port", "0"])
        defer { DaemonTests.stop(process) }
        let line = try #require(log.text.split(separator: "\n").first { $0.contains("brokerd ready") })
        let amqpPort = try #require(line.range(of: "amqp_port=").flatMap { Int(line[$0.upperBound...].prefix(while: \.isNumber)) })
        var publisherConfiguration = Self.configuration(port: amqpPort, name: "amqp-publisher")
        publisherConfiguration.recovery = RecoveryPolicy(initialDelay: .milliseconds(50), maximumDelay: .milliseconds(500))
        var consumerConfiguration = publisherConfiguration
        consumerConfiguration.clientName = "amqp-consumer"
        let publisher = try await BrokerConnection.connect(publisherConfiguration)
        let consumer = try await BrokerConnection.connect(consumerConfiguration)
        try await publisher.declareQueue("amqp.recovery", durable: true)
        try await publisher.enableConfirms()
        let deliveries = try await consumer.consume(queue: "amqp.recovery", prefetch: 20)
        let received = Mutex<Set<String>>([])
        let consuming = Task {
            for try await message in deliveries {
                _ = received.withLock { $0.insert(message.bodyString) }
                try? await message.ack()
            }
        }
        defer { consuming.cancel() }
        var confirmed: Set<String> = []
        var n = 0
        for cycle in 1...2 {
            for _ in 0..<100 {
                n += 1
                try await publisher.publish(routingKey: "amqp.recovery", body: "\(n)", properties: MessageProperties(persistent: true))
                confirmed.insert("\(n)")
            }
            kill(process.processIdentifier, SIGKILL)
            process.waitUntilExit()
            (process, port, log) = try DaemonTests.startDaemon(dataDirectory: directory,
                                                                extraArguments: ["--port", "\(port)", "--amqp-port", "\(amqpPort)"])
            _ = cycle
        }
        // After the last restart the publisher goes on by itself.
        for _ in 0..<50 {
            n += 1
            try await publisher.publish(routingKey: "amqp.recovery", body: "\(n)", properties: MessageProperties(persistent: true))
            confirmed.insert("\(n)")
        }
        let all = try await eventually(timeout: .seconds(60)) { received.withLock { confirmed.isSubset(of: $0) } }
        let missing = confirmed.subtracting(received.withLock { $0 })
        #expect(all, "\(missing.count) confirmed messages never consumed, e.g. \(missing.sorted().prefix(5))")
        await publisher.close()
        await consumer.close()
    }
}
