import BrokerClient
import BrokerCore
import BrokerServer
import BrokerStorage
import Foundation
import NIOCore
import Testing
import WireProtocol

@Suite("Durability across restarts of an in-process broker", .timeLimit(.minutes(2)))
struct PersistenceTests {
    static let persistent = MessageProperties(persistent: true)

    @Test("durable definitions and confirmed persistent messages survive a restart; transient ones do not")
    func restart() async throws {
        let dir = temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        var users = UserStore()
        try await withBroker(users: users, dataDirectory: dir) { _, config in
            try await withConnection(config) { c in
                try await c.declareExchange("trips", type: .topic, durable: true)
                try await c.declareQueue("rides", durable: true)
                try await c.declareQueue("scratch", durable: false)
                try await c.bind(queue: "rides", exchange: "trips", key: "trip.#")
                try await c.enableConfirms()
                for i in 0..<100 {
                    try await c.publish(exchange: "trips", routingKey: "trip.created", body: "p\(i)", properties: Self.persistent)
                }
                for i in 0..<5 { try await c.publish(routingKey: "rides", body: "t\(i)") }  // transient
                try await c.publish(routingKey: "scratch", body: "gone", properties: Self.persistent)
                // Ten acknowledged, three delivered and left unacknowledged.
                for _ in 0..<10 { try await c.get(queue: "rides")!.ack() }
                for _ in 0..<3 { _ = try await c.get(queue: "rides") }
            }
        }
        users = UserStore()
        try await withBroker(users: users, dataDirectory: dir) { server, config in
            #expect(try await server.withBroker { $0.queueInfo("scratch") } == nil)
            #expect(try await server.withBroker { $0.queueInfo("rides")?.ready } == 90)
            try await withConnection(config) { c in
                var bodies: [String] = []
                var redelivered: [Bool] = []
                while let m = try await c.get(queue: "rides", noAck: true) {
                    bodies.append(m.bodyString)
                    redelivered.append(m.redelivered)
                }
                #expect(bodies == (10..<100).map { "p\($0)" })
                #expect(redelivered.prefix(3) == [true, true, true])
                #expect(!redelivered.dropFirst(3).contains(true))
                // The binding survived too.
                try await c.enableConfirms()
                try await c.publish(exchange: "trips", routingKey: "trip.cancelled", body: "after restart", properties: Self.persistent)
                #expect(try await c.get(queue: "rides", noAck: true)?.bodyString == "after restart")
                // Redeclaring a recovered queue with the same flags works; with others it is refused.
                try await c.declareQueue("rides", durable: true)
                await expectBrokerError(.preconditionFailed) { try await c.declareQueue("rides", durable: false) }
            }
        }
    }

    @Test("a persistent message fanned out to several durable queues is written once and survives in each")
    func fanoutWrittenOnce() async throws {
        let dir = temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        try await withBroker(dataDirectory: dir) { _, config in
            try await withConnection(config) { c in
                try await c.declareExchange("dispatch", type: .fanout, durable: true)
                for q in ["a", "b", "c"] {
                    try await c.declareQueue(q, durable: true)
                    try await c.bind(queue: q, exchange: "dispatch")
                }
                try await c.enableConfirms()
                try await c.publish(exchange: "dispatch", routingKey: "", body: ByteBuffer(repeating: 0x5A, count: 100_000),
                                    properties: Self.persistent)
            }
        }
        let logBytes = try FileManager.default.contentsOfDirectory(atPath: dir + "/log").reduce(0) { total, name in
            total + ((try FileManager.default.attributesOfItem(atPath: dir + "/log/" + name)[.size] as? Int) ?? 0)
        }
        #expect(logBytes > 100_000 && logBytes < 150_000, "log holds \(logBytes) bytes for one 100 KB message in 3 queues")
        try await withBroker(dataDirectory: dir) { server, _ in
            for q in ["a", "b", "c"] {
                let ready = try await server.withBroker { $0.queueInfo(q)?.ready }
                #expect(ready == 1, "queue \(q)")
            }
        }
    }

    @Test("TTLs keep counting while the broker is down: a message whose time ran out is dead-lettered at restart, others wait")
    func ttlAcrossRestart() async throws {
        let dir = temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        try await withBroker(dataDirectory: dir) { _, config in
            try await withConnection(config) { c in
                try await c.declareQueue("short", durable: true, arguments: [
                    "x-message-ttl": .int(800), "x-dead-letter-exchange": .string(""), "x-dead-letter-routing-key": .string("short.dead"),
                ])
                try await c.declareQueue("short.dead", durable: true)
                try await c.declareQueue("long", durable: true)
                try await c.enableConfirms()
                try await c.publish(routingKey: "short", body: "ran out", properties: Self.persistent)
                try await c.publish(routingKey: "long", body: "own expiration",
                                    properties: MessageProperties(expiration: 60_000, persistent: true))
            }
        }
        // Real time must pass here (the TTL counts wall-clock time across a restart): this waits for time, it checks
        // nothing by itself.
        try await Task.sleep(for: .milliseconds(1000))  // longer than the 800 ms TTL, with the broker down
        try await withBroker(dataDirectory: dir) { server, config in
            // Before: recovered messages got no expiry at all and stayed forever.
            #expect(try await eventually { try await server.withBroker { $0.queueInfo("short.dead")?.ready } == 1 })
            #expect(try await server.withBroker { $0.queueInfo("short")?.ready } == 0)
            #expect(try await server.withBroker { $0.queueInfo("long")?.ready } == 1)
            try await withConnection(config) { c in
                let dead = try await c.get(queue: "short.dead", noAck: true)
                #expect(dead?.bodyString == "ran out")
                #expect(dead?.properties.headers?["x-first-death-reason"] == .string("expired"))
                #expect(try await c.get(queue: "long", noAck: true)?.bodyString == "own expiration")
            }
        }
    }

    @Test("the data directory shrinks after the backlog is drained")
    func shrinksAfterDrain() async throws {
        let dir = temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        func logSize() throws -> Int {
            try FileManager.default.contentsOfDirectory(atPath: dir + "/log").reduce(0) { total, name in
                total + ((try FileManager.default.attributesOfItem(atPath: dir + "/log/" + name)[.size] as? Int) ?? 0)
            }
        }
        try await withBroker(dataDirectory: dir, segmentSize: 256 << 10) { _, config in
            try await withConnection(config) { c in
                try await c.declareQueue("backlog", durable: true)
                try await c.enableConfirms()
                try await withThrowingTaskGroup(of: Void.self) { group in
                    for p in 0..<4 {
                        group.addTask {
                            for i in 0..<500 {
                                try await c.publish(routingKey: "backlog", body: ByteBuffer(repeating: UInt8(i & 0xFF), count: 1024 + p),
                                                    properties: Self.persistent)
                            }
                        }
                    }
                    try await group.waitForAll()
                }
                let full = try logSize()
                #expect(full > 2_000_000)
                let consumer = try await c.consume(queue: "backlog", prefetch: 200)
                var n = 0
                for try await m in consumer {
                    try await m.ack()
                    n += 1
                    if n == 2000 { break }
                }
                // One more round trip lets the last acks reach the log and the emptied segments go.
                try await c.declareQueue("backlog", durable: true)
                try await c.publish(routingKey: "backlog", body: "tail", properties: Self.persistent)
                let shrunk = try await eventually { try logSize() < full / 4 }
                #expect(shrunk, "log still \((try? logSize()) ?? -1) bytes of \(full)")
            }
        }
    }

    @Test("a second broker on the same data directory refuses to start, with a clear message")
    func secondBrokerRefused() async throws {
        let dir = temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        try await withBroker(dataDirectory: dir) { _, _ in
            var configuration = ServerConfiguration()
            configuration.port = 0
            configuration.dataDirectory = dir
            do {
                let second = try await BrokerServer.start(configuration: configuration)
                await second.shutdown()
                Issue.record("a second broker started on a locked data directory")
            } catch let error as StorageError {
                #expect(error.description.contains("another brokerd"))
            }
        }
    }
}

@Suite("Durable definitions: the journal")
struct DefinitionsJournalIntegrationTests {
    @Test("a durable declare is answered once journaled, in request order; many at once share a write")
    func answeredInOrderAndCoalesced() async throws {
        let dir = temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        try await withBroker(dataDirectory: dir) { server, config in
            let raw = try RawSocket(port: server.port)
            _ = try await offThePool { try raw.handshake() }
            // A durable declare, then requests that do not change definitions, in one write: the answers come
            // in request order even though the first waits for its fdatasync.
            raw.send(wireBytes(.queueDeclare(QueueDeclare(requestId: 1, name: "journaled", durable: true)),
                                         .queueDeclare(QueueDeclare(requestId: 2, name: "journaled", passive: true)),
                                         .queuePurge(QueuePurge(requestId: 3, name: "journaled"))))
            let answers = try await offThePool { () throws -> [ServerMessage] in try (0..<3).compactMap { _ in try raw.receive() } }
            let ids: [UInt32] = answers.compactMap {
                switch $0 {
                case .queueDeclareOk(let ok): ok.requestId
                case .countOk(let requestId, _): requestId
                default: nil
                }
            }
            #expect(ids == [1, 2, 3], "\(answers)")
            // The answer came after the change was on disk.
            let journal = String(decoding: FileManager.default.contents(atPath: dir + "/metadata.journal") ?? Data(), as: UTF8.self)
            #expect(journal.contains("journaled"))

            let before = try await server.withBroker { $0.definitionsBatchesWritten }
            try await withConnection(config) { c in
                try await withThrowingTaskGroup(of: Void.self) { group in
                    for i in 0..<200 { group.addTask { try await c.declareQueue("durable-\(i)", durable: true) } }
                    try await group.waitForAll()
                }
            }
            let writes = try await server.withBroker { $0.definitionsBatchesWritten } - before
            // Before: one rewrite of the whole metadata.json per declare, on the event loop.
            #expect(writes >= 1 && writes < 200, "\(writes) journal writes for 200 declares")
        }
    }

    @Test("kill -9 after durable changes: the journal brings every definition back; a clean stop leaves it empty")
    func journalSurvivesKill() async throws {
        let directory = DaemonTests.temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: directory) }
        var (process, port, _) = try DaemonTests.startDaemon(dataDirectory: directory)
        defer { DaemonTests.stop(process) }
        var config = ClientConfiguration(port: port, clientName: "journal", recovery: nil)
        config.logger = quietLogger
        try await withConnection(config) { c in
            try await c.declareExchange("trips", type: .topic, durable: true)
            for i in 0..<50 { try await c.declareQueue("q\(i)", durable: true) }
            for i in 0..<50 { try await c.bind(queue: "q\(i)", exchange: "trips", key: "trip.\(i).#") }
            for i in stride(from: 0, to: 50, by: 5) { _ = try await c.deleteQueue("q\(i)") }
            try await c.unbind(queue: "q1", exchange: "trips", key: "trip.1.#")
            try await c.addUser("ops", password: "secret", admin: true)
        }
        let journalPath = directory.appendingPathComponent("metadata.journal").path
        #expect((FileManager.default.contents(atPath: journalPath)?.count ?? 0) > 0, "the changes are in the journal")
        kill(process.processIdentifier, SIGKILL)
        process.waitUntilExit()
        (process, port, _) = try DaemonTests.startDaemon(dataDirectory: directory)
        config.port = port
        let expected = Set((0..<50).filter { $0 % 5 != 0 }.map { "q\($0)" })
        try await withConnection(config) { c in
            let queues = Set(try await c.listQueues().map(\.name))
            #expect(queues == expected)
            let bindings = try await c.listBindings().filter { $0.source == "trips" }
            #expect(bindings.count == expected.count - 1)
            #expect(!bindings.contains { $0.destination == "q1" })
            #expect(try await c.listUsers().contains { $0.name == "ops" })
        }
        // A clean stop writes one snapshot and empties the journal.
        DaemonTests.stop(process)
        #expect(process.terminationStatus == 0)
        #expect(FileManager.default.contents(atPath: journalPath)?.count == 0)
        let snapshot = String(decoding: FileManager.default.contents(atPath: directory.appendingPathComponent("metadata.json").path) ?? Data(), as: UTF8.self)
        #expect(snapshot.contains("\"q49\"") && !snapshot.contains("\"q45\""))
    }
}
