import BrokerClient
import Foundation
import NIOCore
import Synchronization
import TestSupport
import Testing
import WireProtocol

/// kill -9 of the real brokerd executable while a client publishes persistent messages with confirms and another
/// consumes with acks: every confirmed message must be delivered at least once, intact.
@Suite("Crash recovery of the brokerd executable", .serialized, .timeLimit(.minutes(2)))
struct CrashTests {
    /// Messages: "seq:<n>:" then a body derived from n, so corruption shows.
    static func body(_ n: Int) -> String { "seq:\(n):" + String(repeating: String(UnicodeScalar(UInt8(65 + n % 26))), count: 200) }

    final class Ledger: Sendable {
        let confirmed = Mutex<Set<Int>>([])
        let received = Mutex<[Int: Int]>([:])  // seq → times delivered
        let corrupt = Mutex<[String]>([])
        let acked = Mutex<Set<Int>>([])
        let next = Mutex(0)
    }

    @Test("kill -9 at random moments, 10 cycles: every confirmed message is delivered at least once, intact")
    func killNineCycles() async throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("brokerd-crash-\(UUID().uuidString)")
        defer { try? FileManager.default.removeItem(at: dir) }
        let ledger = Ledger()
        // The kill moments come from a seeded generator: a failure prints the seed, and BROKERD_CRASH_SEED=<seed>
        // replays the same kill points (counted in confirms, so the same on a fast or a loaded machine).
        let seed = ProcessInfo.processInfo.environment["BROKERD_CRASH_SEED"].flatMap(UInt64.init) ?? UInt64.random(in: 1...UInt64.max)
        var generator = SplitMix(seed: seed)
        print("CRASHSEED \(seed)")
        var redeliveredAfterAck = 0
        for cycle in 0..<10 {
            let (process, port, _) = try DaemonTests.startDaemon(dataDirectory: dir)
            // Fresh connections each cycle, without automatic recovery: this test is about the broker's own recovery
            // (RecoveryTests covers the client's).
            let config = withoutRecovery(ClientConfiguration(port: port, connectTimeout: .seconds(5), requestTimeout: .seconds(5)))
            let publisher = try await BrokerConnection.connect(config)
            let consumerConnection = try await BrokerConnection.connect(config)
            try await publisher.declareQueue("crash", durable: true)
            try await publisher.enableConfirms()
            let ackedBefore = ledger.acked.withLock { $0 }
            let confirmedBefore = ledger.confirmed.withLock { $0.count }

            let publishing = Task {
                await publishNumbered(publishers: 4, nextNumber: { ledger.next.withLock { $0 += 1; return $0 } }) { n in
                    do {
                        try await publisher.publish(routingKey: "crash", body: Self.body(n), properties: MessageProperties(persistent: true))
                        _ = ledger.confirmed.withLock { $0.insert(n) }
                        return true
                    } catch {
                        return false
                    }
                }
            }
            let consuming = Task {
                guard let consumer = try? await consumerConnection.consume(queue: "crash", prefetch: 50) else { return 0 }
                var afterAck = 0
                do {
                    for try await message in consumer {
                        let text = message.bodyString
                        let parts = text.split(separator: ":", maxSplits: 2)
                        guard parts.count == 3, let n = Int(parts[1]), text == Self.body(n) else {
                            ledger.corrupt.withLock { $0.append(String(text.prefix(40))) }
                            continue
                        }
                        if ackedBefore.contains(n) { afterAck += 1 }
                        ledger.received.withLock { $0[n, default: 0] += 1 }
                        try await message.ack()
                        _ = ledger.acked.withLock { $0.insert(n) }
                    }
                } catch {}
                return afterAck
            }
            // Kill once this cycle has seen a random number of confirms: mid-stream, whatever the machine's speed.
            let killAfter = Int.random(in: 20...400, using: &generator)
            let reached = try await eventually(timeout: .seconds(60)) {
                ledger.confirmed.withLock { $0.count } - confirmedBefore >= killAfter || !process.isRunning
            }
            #expect(reached, "cycle \(cycle): \(killAfter) confirms never came (seed \(seed))")
            if process.isRunning { kill(process.processIdentifier, SIGKILL) }
            process.waitUntilExit()
            #expect(process.terminationReason == .uncaughtSignal, "cycle \(cycle), seed \(seed)")
            publishing.cancel()
            _ = await publishing.result
            redeliveredAfterAck += await consuming.value
            await publisher.close()
            await consumerConnection.close()
        }
        // Last start: drain what is left.
        let (process, port, _) = try DaemonTests.startDaemon(dataDirectory: dir)
        defer { DaemonTests.stop(process) }
        try await withConnection(ClientConfiguration(port: port)) { c in
            while let message = try await c.get(queue: "crash", noAck: true) {
                let text = message.bodyString
                let parts = text.split(separator: ":", maxSplits: 2)
                guard parts.count == 3, let n = Int(parts[1]), text == Self.body(n) else {
                    ledger.corrupt.withLock { $0.append(String(text.prefix(40))) }
                    continue
                }
                ledger.received.withLock { $0[n, default: 0] += 1 }
            }
        }
        let confirmed = ledger.confirmed.withLock { $0 }
        let received = ledger.received.withLock { $0 }
        let lost = confirmed.filter { received[$0] == nil }.sorted()
        print("CRASHSTATS confirmed=\(confirmed.count) received=\(received.count) duplicates=\(received.values.filter { $0 > 1 }.count) afterAck=\(redeliveredAfterAck)")
        #expect(confirmed.count > 100, "only \(confirmed.count) messages were confirmed in 10 cycles (seed \(seed))")
        #expect(lost.isEmpty, "\(lost.count) confirmed messages lost, first \(lost.prefix(10)) (seed \(seed))")
        #expect(ledger.corrupt.withLock { $0 }.isEmpty)
        // Acks in flight at a kill (at most the prefetch window per cycle) may come back; nothing older may.
        #expect(redeliveredAfterAck <= 10 * 50, "\(redeliveredAfterAck) messages acked in an earlier cycle came back")
    }
}

