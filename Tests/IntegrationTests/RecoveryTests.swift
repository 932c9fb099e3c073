import BrokerClient
import BrokerCore
import BrokerServer
import Foundation
import Logging
import NIOCore
import ServiceLifecycle
import Synchronization
import Testing
import WireProtocol

/// Automatic recovery of the client: against the brokerd executable killed with SIGKILL and restarted, and against
/// an in-process broker restarted on the same port.
@Suite("Client recovery", .serialized, .timeLimit(.minutes(3)))
struct RecoveryTests {
    static let fastRecovery = RecoveryPolicy(initialDelay: .milliseconds(50), maximumDelay: .milliseconds(500))

    static func configuration(port: Int, name: String, recovery: RecoveryPolicy? = fastRecovery) -> ClientConfiguration {
        var configuration = ClientConfiguration(port: port, clientName: name, connectTimeout: .seconds(5), requestTimeout: .seconds(20),
                                                publishTimeout: .seconds(60), recovery: recovery)
        configuration.logger = Logger(label: "test", factory: { _ in SwiftLogNoOpLogHandler() })
        return configuration
    }

    /// Collects a connection's events so a test can wait for the n-th `recovered` or a `failed`.
    final class EventLog: Sendable {
        let events = Mutex<[ConnectionEvent]>([])

        init(_ connection: BrokerConnection) {
            // The stream finishes when the connection ends, and so does this task.
            Task {
                for await event in connection.events { self.events.withLock { $0.append(event) } }
            }
        }

        var recoveredCount: Int { events.withLock { $0.filter { $0 == .recovered }.count } }
        var failure: BrokerError? {
            events.withLock { $0.lazy.compactMap { if case .failed(let error) = $0 { error } else { nil } }.first }
        }
    }

    final class Ledger: Sendable {
        let confirmed = Mutex<Set<Int>>([])
        let received = Mutex<[Int: Int]>([:])
        let publishErrors = Mutex<[String]>([])
        let ackErrors = Mutex<[String]>([])
        let staleAcks = Mutex(0)
        let acks = Mutex(0)
        let next = Mutex(0)
    }

    @Test("kill -9 and restart under a publishing and consuming client: it recovers by itself and loses nothing confirmed")
    func killNineRecovery() async throws {
        let directory = DaemonTests.temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: directory) }
        var (process, port, _) = try DaemonTests.startDaemon(dataDirectory: directory)
        defer { DaemonTests.stop(process) }
        let publisher = try await BrokerConnection.connect(Self.configuration(port: port, name: "recovery-publisher"))
        let consumer = try await BrokerConnection.connect(Self.configuration(port: port, name: "recovery-consumer"))
        let publisherEvents = EventLog(publisher)
        let consumerEvents = EventLog(consumer)
        try await publisher.declareQueue("recovery", durable: true)
        try await publisher.enableConfirms()
        let ledger = Ledger()

        let publishing = Task {
            await publishNumbered(publishers: 4, nextNumber: { ledger.next.withLock { $0 += 1; return $0 } }) { n in
                do {
                    try await publisher.publish(routingKey: "recovery", body: "\(n)",
                                                properties: MessageProperties(messageId: "m-\(n)", persistent: true))
                    _ = ledger.confirmed.withLock { $0.insert(n) }
                } catch {
                    ledger.publishErrors.withLock { $0.append("\(n): \(error)") }
                }
                return true
            }
        }
        let deliveries = try await consumer.consume(queue: "recovery", prefetch: 50)
        let consuming = Task {
            do {
                for try await message in deliveries {
                    guard let n = Int(message.bodyString) else { continue }
                    ledger.received.withLock { $0[n, default: 0] += 1 }
                    do {
                        try await message.ack()
                        ledger.acks.withLock { $0 += 1 }
                    } catch let error as BrokerError where error.code == .staleDelivery {
                        ledger.staleAcks.withLock { $0 += 1 }
                    } catch {
                        ledger.ackErrors.withLock { $0.append("\(error)") }
                    }
                }
            } catch {
                ledger.ackErrors.withLock { $0.append("consumer ended: \(error)") }
            }
        }

        let cycles = 3
        for cycle in 1...cycles {
            // Let traffic flow, then kill the broker mid-stream.
            let before = ledger.confirmed.withLock { $0.count }
            #expect(try await eventually(timeout: .seconds(30)) { ledger.confirmed.withLock { $0.count } >= before + 200 },
                    "publishing did not resume before cycle \(cycle)")
            kill(process.processIdentifier, SIGKILL)
            process.waitUntilExit()
            (process, _, _) = try DaemonTests.startDaemon(dataDirectory: directory, extraArguments: ["--port", "\(port)"])
            #expect(try await eventually(timeout: .seconds(30)) {
                publisherEvents.recoveredCount >= cycle && consumerEvents.recoveredCount >= cycle
            }, "cycle \(cycle): publisher recovered \(publisherEvents.recoveredCount), consumer \(consumerEvents.recoveredCount)")
        }
        publishing.cancel()
        _ = await publishing.value
        let confirmed = ledger.confirmed.withLock { $0 }
        #expect(try await eventually(timeout: .seconds(60)) {
            let received = ledger.received.withLock { $0 }
            return confirmed.allSatisfy { received[$0] != nil }
        })
        let received = ledger.received.withLock { $0 }
        let lost = confirmed.filter { received[$0] == nil }.sorted()
        #expect(confirmed.count > 600, "only \(confirmed.count) confirmed")
        #expect(lost.isEmpty, "\(lost.count) confirmed messages never consumed, first \(lost.prefix(10))")
        // Publishes in flight at each kill were re-sent after recovery; none failed.
        #expect(ledger.publishErrors.withLock { $0 }.isEmpty, "\(ledger.publishErrors.withLock { $0.prefix(5) })")
        // Every delivery was either acked once on its own connection or refused locally as stale; nothing else. The
        // consumer counts a delivery before its ack completes, so wait for the last ack in flight to settle (settled
        // counts are read before deliveries, so equality is a consistent moment).
        var seen = (settled: 0, deliveries: 0)
        let settled = try await eventually(timeout: .seconds(20)) {
            let settledNow = ledger.acks.withLock { $0 } + ledger.staleAcks.withLock { $0 } + ledger.ackErrors.withLock { $0.count }
            seen = (settledNow, ledger.received.withLock { $0.values.reduce(0, +) })
            return seen.settled >= seen.deliveries
        }
        #expect(settled, "acks in flight never settled: \(seen)")
        #expect(ledger.ackErrors.withLock { $0 }.isEmpty, "\(ledger.ackErrors.withLock { $0.prefix(5) })")
        print("RECOVERYSTATS confirmed=\(confirmed.count) deliveries=\(seen.deliveries) acks=\(ledger.acks.withLock { $0 }) stale=\(ledger.staleAcks.withLock { $0 }) redelivered=\(received.values.filter { $0 > 1 }.count)")
        #expect(seen.settled == seen.deliveries, "\(seen)")
        #expect(publisherEvents.failure == nil && consumerEvents.failure == nil)
        await publisher.close()
        await consumer.close()
        consuming.cancel()
        _ = await consuming.value
    }

    @Test("a broker that stays down past the retry budget ends the connection with a terminal error")
    func retryBudgetSpent() async throws {
        let directory = DaemonTests.temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: directory) }
        let (process, port, _) = try DaemonTests.startDaemon(dataDirectory: directory)
        defer { DaemonTests.stop(process) }
        let policy = RecoveryPolicy(initialDelay: .milliseconds(20), maximumDelay: .milliseconds(50), maximumAttempts: 3)
        let connection = try await BrokerConnection.connect(Self.configuration(port: port, name: "budget", recovery: policy))
        let events = EventLog(connection)
        try await connection.declareQueue("budget")
        let consumer = try await connection.consume(queue: "budget")
        kill(process.processIdentifier, SIGKILL)
        process.waitUntilExit()
        await connection.closed()
        let terminal = await connection.terminalError()
        #expect(terminal?.code == .connectionClosed)
        #expect(terminal?.message.contains("gave up reconnecting after 3 attempt(s)") == true, "\(String(describing: terminal))")
        #expect(try await eventually { events.failure != nil })
        let reconnecting = events.events.withLock { $0.filter { if case .reconnecting = $0 { true } else { false } }.count }
        #expect(reconnecting == 3)
        await expectBrokerError(.connectionClosed) {
            for try await _ in consumer {}
        }
        await expectBrokerError(.connectionClosed) { try await connection.publish(routingKey: "budget", body: "late") }
        // run() reports the terminal error to a ServiceGroup.
        await #expect(throws: BrokerError.self) { try await connection.run() }
    }

    @Test("restart of the broker on the same port: server-named queues, bindings and RPC come back")
    func inProcessRestartKeepsTopologyAndRPC() async throws {
        let directory = temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        var configuration = ServerConfiguration()
        configuration.dataDirectory = directory
        configuration.host = "127.0.0.1"
        configuration.port = 0
        let logger = Logger(label: "test", factory: { _ in SwiftLogNoOpLogHandler() })
        var server = try await BrokerServer.start(configuration: configuration, users: UserStore(), logger: logger)
        configuration.port = server.port
        let client = Self.configuration(port: server.port, name: "rpc")
        let responder = try await BrokerConnection.connect(client)
        let caller = try await BrokerConnection.connect(client)
        let callerEvents = EventLog(caller)
        let responderEvents = EventLog(responder)
        // A fanout exchange with a server-named queue bound to it: after the restart both exist again, bound.
        try await caller.declareExchange("dispatch", type: .fanout)
        let listener = try await caller.declareQueue("", exclusive: true)
        try await caller.bind(queue: listener.name, exchange: "dispatch")
        let fanout = try await caller.consume(queue: listener.name, noAck: true)

        try await responder.declareQueue("driver.nearby")
        let serving = Task {
            try await responder.respond(queue: "driver.nearby") { request in
                RPCReply(body: ByteBuffer(string: "near \(request.bodyString)"))
            }
        }
        let rpc = try await RPCClient.make(connection: caller)
        let before = try await rpc.call(routingKey: "driver.nearby", body: ByteBuffer(string: "p1"), timeout: .seconds(10))
        #expect(before.bodyString == "near p1")

        await server.shutdown()
        server = try await BrokerServer.start(configuration: configuration, users: UserStore(), logger: logger)
        #expect(try await eventually(timeout: .seconds(20)) { callerEvents.recoveredCount == 1 && responderEvents.recoveredCount == 1 })

        let after = try await rpc.call(routingKey: "driver.nearby", body: ByteBuffer(string: "p2"), timeout: .seconds(10))
        #expect(after.bodyString == "near p2")
        let renamed = await caller.currentQueue(of: fanout)
        #expect(renamed != nil && renamed != listener.name, "the server-named queue was not redeclared under a new name")
        try await responder.publish(exchange: "dispatch", routingKey: "", body: "driver 7 assigned")
        let event = try await next(fanout, timeout: .seconds(10))
        #expect(event.bodyString == "driver 7 assigned")

        serving.cancel()
        await caller.close()
        await responder.close()
        await server.shutdown()
    }

    @Test("under a ServiceGroup, graceful shutdown stops consuming, lets handlers settle, then closes")
    func serviceGroupGracefulShutdown() async throws {
        try await withBroker { _, client in
            var configuration = client
            configuration.logger = Logger(label: "test", factory: { _ in SwiftLogNoOpLogHandler() })
            let connection = try await BrokerConnection.connect(configuration)
            try await connection.declareQueue("work")
            for n in 0..<20 { try await connection.publish(routingKey: "work", body: "\(n)") }
            let consumer = try await connection.consume(queue: "work", prefetch: 5)
            let handled = Mutex(0)
            let started = Mutex(false)
            let worker = Task {
                for try await message in consumer {
                    started.withLock { $0 = true }
                    try await Task.sleep(for: .milliseconds(5))  // a handler doing some work
                    try await message.ack()
                    handled.withLock { $0 += 1 }
                }
            }
            let group = ServiceGroup(configuration: .init(services: [connection], logger: configuration.logger))
            let running = Task { try await group.run() }
            #expect(try await eventually { started.withLock { $0 } })
            await group.triggerGracefulShutdown()
            try await running.value
            // The consumer's sequence ended and the connection is closed, not failed.
            try await worker.value
            #expect(await connection.terminalError() == nil)
            await expectBrokerError(.connectionClosed) { try await connection.publish(routingKey: "work", body: "late") }
            // What was handed out was settled before the close: the rest is still in the queue, none unacked.
            let count = handled.withLock { $0 }
            try await withConnection(client) { check in
                let info = try await check.declareQueue("work", passive: true)
                #expect(Int(info.messageCount) == 20 - count, "handled \(count), ready \(info.messageCount)")
            }
        }
    }

    @Test("connect tries the endpoints in turn; a wrong address first does not stop it")
    func endpointsInTurn() async throws {
        try await withBroker { server, client in
            var configuration = ClientConfiguration(endpoints: [Endpoint(host: "127.0.0.1", port: 1),
                                                                Endpoint(host: "127.0.0.1", port: server.port)])
            configuration.logger = quietLogger
            try await withConnection(configuration) { c in
                let queue = try await c.declareQueue("reached")
                #expect(queue.name == "reached")
            }
            // No endpoint answers: the first connect fails with the last endpoint's error.
            var nowhere = ClientConfiguration(endpoints: [Endpoint(host: "127.0.0.1", port: 1), Endpoint(host: "127.0.0.1", port: 1)])
            nowhere.logger = quietLogger
            await expectBrokerError(.connectionClosed) { _ = try await BrokerConnection.connect(nowhere) }
        }
    }
}
