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
