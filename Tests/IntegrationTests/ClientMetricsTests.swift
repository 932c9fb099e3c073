import BrokerClient
import CoreMetrics
import Synchronization
import Testing
import WireProtocol

/// The client's counters reach whatever swift-metrics backend it is given.
@Suite("Client metrics", .timeLimit(.minutes(1)))
struct ClientMetricsTests {
    /// A swift-metrics backend that keeps counter totals by label.
    final class RecordingFactory: MetricsFactory, Sendable {
        let totals = Mutex<[String: Int64]>([:])

        final class Handler: CounterHandler, Sendable {
            let label: String
            let factory: RecordingFactory
            init(label: String, factory: RecordingFactory) {
                self.label = label
                self.factory = factory
            }
            func increment(by amount: Int64) { factory.totals.withLock { $0[label, default: 0] += amount } }
            func reset() { factory.totals.withLock { $0[label] = 0 } }
        }

        final class Ignored: RecorderHandler, TimerHandler, Sendable {
            func record(_ value: Int64) {}
            func record(_ value: Double) {}
            func recordNanoseconds(_ duration: Int64) {}
        }

        func makeCounter(label: String, dimensions: [(String, String)]) -> any CounterHandler {
            #expect(dimensions.contains { $0 == ("client", "metrics-test") })
            return Handler(label: label, factory: self)
        }
        func makeRecorder(label: String, dimensions: [(String, String)], aggregate: Bool) -> any RecorderHandler { Ignored() }
        func makeTimer(label: String, dimensions: [(String, String)]) -> any TimerHandler { Ignored() }
        func destroyCounter(_ handler: any CounterHandler) {}
        func destroyRecorder(_ handler: any RecorderHandler) {}
        func destroyTimer(_ handler: any TimerHandler) {}

        func total(_ name: String) -> Int64 { totals.withLock { $0["brokerd_client_\(name)_total"] ?? 0 } }
    }

    @Test("published, confirmed, nacked, delivered and settled are counted")
    func countersReachTheBackend() async throws {
        try await withBroker { _, config in
            let factory = RecordingFactory()
            var configuration = config
            configuration.clientName = "metrics-test"
            configuration.metricsFactory = factory
            try await withConnection(configuration) { c in
                try await c.declareQueue("metered", arguments: ["x-max-length": .int(3), "x-overflow": .string("reject-publish")])
                try await c.enableConfirms()
                for n in 0..<3 { try await c.publish(routingKey: "metered", body: "\(n)") }
                await expectBrokerError(.resourceError) { try await c.publish(routingKey: "metered", body: "refused") }
                let consumer = try await c.consume(queue: "metered", prefetch: 10)
                var iterator = consumer.makeAsyncIterator()
                for _ in 0..<3 { try await #require(try await iterator.next()).ack() }
                #expect(factory.total("published") == 4)
                #expect(factory.total("confirmed") == 3)
                #expect(factory.total("nacked") == 1)
                #expect(factory.total("delivered") == 3)
                #expect(factory.total("settled") == 3)
                #expect(factory.total("reconnects") == 0)
            }
        }
    }
}
