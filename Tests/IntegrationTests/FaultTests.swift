import BrokerClient
import BrokerCore
import BrokerServer
import Foundation
import NIOCore
import Synchronization
import Testing
import WireProtocol

@Suite("Disk faults: failed writes and the free-disk alarm", .serialized, .timeLimit(.minutes(2)))
struct FaultTests {
    @Test("writes refused by the kernel nack the publishes and leave no half record behind")
    func failedWrites() async throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("brokerd-efbig-\(UUID().uuidString)")
        defer { try? FileManager.default.removeItem(at: dir) }
        // 2 MiB per file: the first log segment fills up after ~1,900 messages of 1 KiB.
        let (limited, port, _) = try DaemonTests.startDaemon(dataDirectory: dir, fileSizeLimitKiB: 2048)
        var confirmed: [Int] = []
        var nacked = 0
        do {
            try await withConnection(ClientConfiguration(port: port)) { c in
                try await c.declareQueue("disk", durable: true)
                try await c.enableConfirms()
                for i in 0..<3000 {
                    do {
                        try await c.publish(routingKey: "disk", body: "m\(i):" + String(repeating: "x", count: 1000),
                                            properties: MessageProperties(persistent: true))
                        confirmed.append(i)
                    } catch let error as BrokerError where error.code == .internalError {
                        nacked += 1
                    }
                }
            }
        } catch {
            DaemonTests.stop(limited)
            throw error
        }
        DaemonTests.stop(limited)
        #expect(nacked > 0, "the file-size limit never made a write fail")
        #expect(confirmed.count > 1000)

        let (process, port2, daemonLog) = try DaemonTests.startDaemon(dataDirectory: dir)
        defer { DaemonTests.stop(process) }
        var recovered: [Int] = []
        try await withConnection(ClientConfiguration(port: port2)) { c in
            while let m = try await c.get(queue: "disk", noAck: true) {
                let text = m.bodyString
                #expect(text.hasSuffix(String(repeating: "x", count: 1000)), "corrupt body \(text.prefix(20))")
                if let n = Int(text.prefix(while: { $0 != ":" }).dropFirst()) { recovered.append(n) }
            }
        }
        #expect(Set(confirmed).isSubset(of: Set(recovered)), "confirmed messages missing after the failed writes")
        DaemonTests.stop(process)
        #expect(!daemonLog.text.contains("message log repaired"), "recovery had to cut a half record:\n\(daemonLog.text)")
    }

    @Test("without a log to page to, publishers are blocked above the memory limit until consumers drain the backlog")
    func memoryAlarm() async throws {
        try await withBroker(memoryLimit: 1_000_000, inMemory: true) { server, config in
            let publisher = try await BrokerConnection.connect(config)
            let consumerConnection = try await BrokerConnection.connect(config)
            try await publisher.declareQueue("burst")
            let body = ByteBuffer(repeating: 0x42, count: 10_000)
            var flow = publisher.flow.makeAsyncIterator()
            // 200 × 10 KB = 2 MB into a queue with no consumer: the alarm goes off past 1 MB.
            let written = Mutex(0)
            let producing = Task {
                for _ in 0..<200 {
                    try await publisher.publish(routingKey: "burst", body: body)
                    written.withLock { $0 += 1 }
                }
            }
            guard case .blocked(let reason)? = await flow.next() else {
                Issue.record("no blocked notice")
                return
            }
            #expect(reason.contains("memory limit"))
            // Once the client holds a publish, everything it wrote has reached the queue: then the broker holds
            // little more than its limit (the publishes in flight when the notice went out).
            #expect(try await eventually { await publisher.statistics().heldPublishes == 1 })
            let sent = written.withLock { $0 }
            #expect(sent < 200)
            #expect(try await eventually { try await server.withBroker { $0.queueInfo("burst")?.ready } == sent })
            let held = try await server.withBroker { $0.bufferedBytes }
            #expect(held < 1_500_000, "the broker kept reading: \(held) bytes held")
            // A consumer that never published drains it; publishing resumes and completes.
            let consumer = try await consumerConnection.consume(queue: "burst", prefetch: 50)
            let draining = Task {
                var n = 0
                for try await m in consumer {
                    try await m.ack()
                    n += 1
                    if n == 200 { break }
                }
                return n
            }
            #expect(await flow.next() == .unblocked)
            try await producing.value
            #expect(try await draining.value == 200)
            #expect(try await eventually { try await server.withBroker { $0.bufferedBytes } == 0 })
            await publisher.close()
            await consumerConnection.close()
        }
    }

    @Test("a connection that publishes and consumes keeps acknowledging through a memory alarm it causes, and the alarm clears")
    func mixedConnectionDoesNotDeadlock() async throws {
        try await withBroker(memoryLimit: 1_000_000, inMemory: true) { server, config in
            // The worker publishes (so it is a publishing connection) and is the only consumer of "work".
            let worker = try await BrokerConnection.connect(config)
            let producer = try await BrokerConnection.connect(config)
            try await worker.declareQueue("work")
            try await worker.declareQueue("results")
            try await worker.publish(routingKey: "results", body: "hello")
            var flow = worker.flow.makeAsyncIterator()
            let consumer = try await worker.consume(queue: "work", prefetch: 200)
            let body = ByteBuffer(repeating: 0x57, count: 10_000)
            // 3 MB of work held unacknowledged by the worker trips the alarm; only its acks can clear it.
            let producing = Task { for _ in 0..<300 { try await producer.publish(routingKey: "work", body: body) } }
            guard case .blocked? = await flow.next() else {
                Issue.record("no blocked notice")
                return
            }
            // The worker's own publish waits (held by its client) while its acks still reach the broker.
            let reply = Task { try await worker.publish(routingKey: "results", body: "done") }
            for _ in 0..<300 {
                let m = try await next(consumer)  // throws after 5 s: the broker stopped reading the worker
                try await m.ack()
            }
            #expect(await flow.next() == .unblocked)
            try await producing.value
            try await reply.value
            #expect(try await worker.get(queue: "results", noAck: true)?.bodyString == "hello")
            #expect(try await worker.get(queue: "results", noAck: true)?.bodyString == "done")
            #expect(try await eventually { try await server.withBroker { $0.bufferedBytes } == 0 })
            await producer.close()
            await worker.close()
        }
    }

    @Test("below the free-disk limit publishers are blocked, not failed, consumers keep being served, and all resumes")
    func diskAlarm() async throws {
        try await withBroker { server, config in
            let publisher = try await BrokerConnection.connect(config)
            let consumerConnection = try await BrokerConnection.connect(config)
            try await publisher.declareQueue("work", durable: true)
            try await publisher.enableConfirms()
            for i in 0..<20 { try await publisher.publish(routingKey: "work", body: "before-\(i)") }

            _ = try await server.withBroker { $0.diskFreeLimitOverride = UInt64.max }  // no disk is that large
            var flow = publisher.flow.makeAsyncIterator()
            guard case .blocked(let reason)? = await flow.next() else {
                Issue.record("no blocked notice")
                return
            }
            #expect(reason.contains("free disk"))

            let published = Mutex(false)
            let pending = Task {
                try await publisher.publish(routingKey: "work", body: "during-alarm")
                published.withLock { $0 = true }
            }
            // The consumer, which never published, is still served.
            let consumer = try await consumerConnection.consume(queue: "work", noAck: true)
            for i in 0..<20 { #expect(try await next(consumer).bodyString == "before-\(i)") }
            // The publish waits in the client, which honours the notice; nothing reached the queue.
            #expect(try await eventually { await publisher.statistics().heldPublishes == 1 })
            #expect(published.withLock { $0 } == false, "a publish completed during the alarm")
            #expect(try await server.withBroker { $0.queueInfo("work")! } == (0, 0, 1))

            _ = try await server.withBroker { $0.diskFreeLimitOverride = 0 }
            #expect(await flow.next() == .unblocked)
            try await pending.value
            #expect(try await next(consumer).bodyString == "during-alarm")
            await publisher.close()
            await consumerConnection.close()
        }
    }
}

extension FaultTests {
    /// The outside check's case: a publisher that honours the blocked notice still has publishes in flight that it
    /// wrote before reading it. They stay unread in the socket, not dropped, and a client that closes by sending
    /// `close` and waiting for `closeOk` gets every one of them confirmed first (protocol §7, §9.3).
    @Test("publishes in flight at an alarm are read once it clears, and a close waits for their confirms")
    func inFlightPublishesSurviveAnAlarmAndAClose() async throws {
        try await withBroker { server, config in
            let admin = try await BrokerConnection.connect(config)
            try await admin.declareQueue("inflight", durable: true)
            let raw = try RawSocket(port: server.port)
            let opened = try raw.handshake()
            guard case .authOk? = opened.last else {
                Issue.record("no authOk: \(opened)")
                return
            }
            raw.send(.confirmSelect(requestId: 1))
            #expect(try raw.receive() == .ok(requestId: 1))
            _ = try await server.withBroker { $0.diskFreeLimitOverride = UInt64.max }  // no disk is that large
            guard case .connectionBlocked? = try raw.receive() else {
                Issue.record("no blocked notice")
                return
            }
            // Well past the 1 MiB grace: 3,000 persistent 1 KiB publishes, then the close, in one go (the client
            // wrote them before it read the notice). The send blocks once the socket buffers fill, so it runs aside.
            let count = 3000
            let persistent = RawProperties(MessageProperties(persistent: true))
            var frames = ByteBuffer()
            for _ in 0..<count {
                ClientMessage.publish(Publish(exchange: "", routingKey: "inflight", properties: persistent,
                                              body: ByteBuffer(repeating: 0x61, count: 1024))).encode(into: &frames)
            }
            ClientMessage.close(Close(code: .normal, reason: "done")).encode(into: &frames)
            let bytes = Array(frames.readableBytesView)
            let sending = Task { try await offThePool { raw.send(bytes) } }
            // The broker stops reading the connection once it is past the grace, with part of it read.
            let stopped = try await eventually(timeout: .seconds(30)) {
                try await admin.list("connections").contains { $0["name"]?.stringValue == "raw" && $0["state"]?.stringValue == "blocked" }
            }
            #expect(stopped, "the connection was never blocked")
            let readSoFar = try await admin.declareQueue("inflight", passive: true)
            #expect(readSoFar.messageCount < count, "all \(count) publishes were read during the alarm")

            _ = try await server.withBroker { $0.diskFreeLimitOverride = 0 }
            let answers = try await offThePool { try raw.receiveUntilClosed() }
            try await sending.value
            // Unblocked, the confirms of every publish, and only then closeOk (the grace's confirms may come first).
            #expect(answers.contains(.connectionUnblocked))
            #expect(answers.last == .closeOk)
            let confirmed = answers.compactMap { frame -> UInt64? in
                if case .confirmAck(let confirm) = frame { return confirm.sequence } else { return nil }
            }
            #expect(confirmed.last == UInt64(count), "confirms up to \(confirmed.last ?? 0) of \(count) before closeOk")
            #expect(!answers.contains { if case .confirmNack = $0 { true } else { false } })
            #expect(try await admin.declareQueue("inflight", passive: true).messageCount == count)
            await admin.close()
        }
    }
}

@Suite("The peak buffer: paging past half the memory limit", .timeLimit(.minutes(2)))
struct PagingTests {
    @Test("a burst larger than the memory limit is absorbed on disk, memory stays bounded, and drains in order")
    func burstIsPaged() async throws {
        let limit = 4_000_000
        // Small segments, so pages are read back from closed, oldest segments that their reads then let go.
        try await withBroker(segmentSize: 256 << 10, memoryLimit: limit) { server, config in
            try await withConnection(config) { c in
                try await c.declareQueue("burst")
                try await c.enableConfirms()
                // 20 MB of transient messages, five times the limit, with no consumer: all confirmed, none blocked.
                try await withThrowingTaskGroup(of: Void.self) { group in
                    for p in 0..<4 {
                        group.addTask {
                            for i in 0..<5000 {
                                let n = p * 5000 + i
                                try await c.publish(routingKey: "burst", body: "\(n):" + String(repeating: "p", count: 1000))
                            }
                        }
                    }
                    try await group.waitForAll()
                }
                let held = try await server.withBroker { $0.bufferedBytes }
                #expect(held < limit, "\(held) bytes held in memory for a 20 MB backlog")
                #expect(try await server.withBroker { $0.queueInfo("burst")?.ready } == 20_000)
                // Drain: every message, intact, each producer's messages in publish order.
                let consumer = try await c.consume(queue: "burst", prefetch: 500)
                var last = [Int](repeating: -1, count: 4)
                var count = 0
                while count < 20_000 {
                    let m = try await next(consumer)  // throws after 5 s without a message: one was lost
                    let text = m.bodyString
                    guard let n = Int(text.prefix(while: { $0 != ":" })), text.hasSuffix(String(repeating: "p", count: 1000)) else {
                        Issue.record("corrupt message \(text.prefix(20))")
                        break
                    }
                    #expect(n > last[n / 5000], "out of order: \(n) after \(last[n / 5000])")
                    last[n / 5000] = n
                    try await m.ack()
                    count += 1
                }
                #expect(count == 20_000)
                #expect(try await eventually { try await server.withBroker { $0.bufferedBytes } == 0 })
            }
        }
    }

    @Test("paged persistent messages in a durable queue survive a restart once, with no duplicates")
    func pagedPersistent() async throws {
        let dir = temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        try await withBroker(dataDirectory: dir, memoryLimit: 1_000_000) { _, config in
            try await withConnection(config) { c in
                try await c.declareQueue("durable-burst", durable: true)
                try await c.enableConfirms()
                for i in 0..<3000 {
                    try await c.publish(routingKey: "durable-burst", body: "\(i):" + String(repeating: "d", count: 1000),
                                        properties: MessageProperties(persistent: true))
                }
            }
        }
        // Paged out of a durable queue, a persistent message keeps only its own record: one write per message.
        let logBytes = segmentBytes(dir)
        #expect(logBytes < 3000 * 1_200, "\(logBytes) bytes of log for 3000 messages of ~1 KiB: paged messages written twice?")
        try await withBroker(dataDirectory: dir, memoryLimit: 1_000_000) { server, config in
            #expect(try await server.withBroker { $0.queueInfo("durable-burst")?.ready } == 3000)
            // Recovery read the 3 MB backlog back within the limit: most of it stays paged, nothing was rewritten.
            #expect(try await server.withBroker { $0.bufferedBytes } < 1_000_000)
            #expect(try await server.withBroker { $0.queue(named: "durable-burst")?.pagedCount ?? 0 } > 2000)
            #expect(segmentBytes(dir) <= logBytes)
            try await withConnection(config) { c in
                var got: [Int] = []
                while let m = try await c.get(queue: "durable-burst", noAck: true) {
                    got.append(Int(m.bodyString.prefix(while: { $0 != ":" })) ?? -1)
                }
                #expect(got == Array(0..<3000))
            }
        }
    }
}

/// Bytes in the log segments of a data directory.
func segmentBytes(_ dataDirectory: String) -> Int {
    let log = dataDirectory + "/log"
    let names = (try? FileManager.default.contentsOfDirectory(atPath: log)) ?? []
    return names.filter { $0.hasSuffix(".seg") }.reduce(0) { total, name in
        total + ((try? FileManager.default.attributesOfItem(atPath: log + "/" + name)[.size] as? Int) ?? 0)
    }
}
