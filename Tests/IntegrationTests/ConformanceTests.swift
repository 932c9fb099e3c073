import BrokerClient
import Foundation
import Testing
import WireProtocol

/// The broker doing what docs/protocol.md and docs/operations.md say (issue 13).
@Suite("Conformance to the spec")
struct ConformanceTests {
    @Test("deleting the default exchange is 403, as for every built-in exchange (§8.1)")
    func defaultExchangeDelete() async throws {
        try await withBroker { _, config in
            try await withConnection(config) { c in
                // Before: 502 "name must not be empty".
                await expectBrokerError(.accessRefused) { try await c.deleteExchange("") }
                await expectBrokerError(.accessRefused) { try await c.deleteExchange("amq.topic") }
                await expectBrokerError(.notFound) { try await c.deleteExchange("never-declared") }
            }
        }
    }

    @Test("the client name from hello is what list.connections and list.consumers show (§4, §11)")
    func clientNameShown() async throws {
        try await withBroker { _, config in
            var named = config
            named.clientName = "trip-service"
            try await withConnection(named) { trip in
                try await trip.declareQueue("trips")
                _ = try await trip.consume(queue: "trips")
                try await withConnection(config) { admin in
                    // Before: both showed the user name (guest).
                    let connection = try #require(try await admin.listConnections().first { $0.id == Int64(trip.connectionId) })
                    #expect(connection.name == "trip-service" && connection.user == "guest")
                    let consumer = try #require(try await admin.listConsumers().first { $0.queue == "trips" })
                    #expect(consumer.connectionName == "trip-service")
                }
            }
        }
    }

    @Test("a port in use stops brokerd with exit 69 and a line naming the address and port")
    func portInUse() async throws {
        let first = DaemonTests.temporaryDirectory()
        let second = DaemonTests.temporaryDirectory()
        defer {
            try? FileManager.default.removeItem(at: first)
            try? FileManager.default.removeItem(at: second)
        }
        let (process, port, _) = try DaemonTests.startDaemon(dataDirectory: first)
        defer { DaemonTests.stop(process) }
        let (status, _, err) = try DaemonTests.run("brokerd", ["--port", "\(port)", "--data-dir", second.path, "--log-target", "stderr"])
        #expect(status == 69, "\(err)")
        #expect(err.contains("127.0.0.1:\(port)") && err.contains("in use"), "\(err)")
    }
}

extension ConformanceTests {
    @Test("after kill -9 every recovered message comes back redelivered; after a clean stop only those delivered before")
    func redeliveredAfterCrash() async throws {
        let directory = DaemonTests.temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: directory) }
        var (process, port, _) = try DaemonTests.startDaemon(dataDirectory: directory)
        defer { DaemonTests.stop(process) }
        var config = ClientConfiguration(port: port, clientName: "crash", recovery: nil)
        config.logger = quietLogger
        let persistent = MessageProperties(persistent: true)
        // A consumer holds deliveries unacknowledged when the broker is killed.
        let holder = try await BrokerConnection.connect(config)
        try await holder.declareQueue("held", durable: true)
        try await holder.enableConfirms()
        for i in 0..<20 { try await holder.publish(routingKey: "held", body: "m\(i)", properties: persistent) }
        for _ in 0..<5 { _ = try #require(try await holder.get(queue: "held")) }
        kill(process.processIdentifier, SIGKILL)
        process.waitUntilExit()
        await holder.close()

        (process, port, _) = try DaemonTests.startDaemon(dataDirectory: directory)
        config.port = port
        try await withConnection(config) { c in
            var flags: [Bool] = []
            while let message = try await c.get(queue: "held", noAck: true) { flags.append(message.redelivered) }
            // Before: messages delivered just before the kill could come back unflagged.
            #expect(flags.count == 20 && flags.allSatisfy { $0 }, "\(flags)")
            try await c.enableConfirms()
            for i in 0..<3 { try await c.publish(routingKey: "held", body: "n\(i)", properties: persistent) }
        }
        // A clean stop: nothing was delivered, nothing comes back flagged.
        DaemonTests.stop(process)
        (process, port, _) = try DaemonTests.startDaemon(dataDirectory: directory)
        config.port = port
        try await withConnection(config) { c in
            var flags: [Bool] = []
            while let message = try await c.get(queue: "held", noAck: true) { flags.append(message.redelivered) }
            #expect(flags == [false, false, false])
        }
    }
}
