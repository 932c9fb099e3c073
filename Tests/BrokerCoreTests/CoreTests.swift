import BrokerCore
import NIOCore
import Testing
import WireProtocol

/// Collects what the broker writes to a session, decoded. A real transport's role without a socket.
final class CapturingTransport: SessionTransport {
    var frames: [ServerMessage] = []
    var batches = 0
    var isWritable = true
    var resumeRequests = 0
    func resumeSoon() { resumeRequests += 1 }
    var reading = true
    func setReading(_ reading: Bool) { self.reading = reading }
    var closedWith: (BrokerError.Code, String)?
    func closeConnection(code: BrokerError.Code, reason: String) { closedWith = (code, reason) }

    func send(_ buffer: ByteBuffer) {
        batches += 1
        var reader = FrameReader(decoder: FrameDecoder(maxFrameSize: 1 << 24, expectsMagic: false))
        reader.append(buffer)
        while let frame = try? reader.next() {
            if let message = try? ServerMessage.decode(frame) { frames.append(message) }
        }
    }

    var deliveries: [Deliver] { frames.compactMap { if case .deliver(let d) = $0 { d } else { nil } } }
    var bodies: [String] { deliveries.map { String(buffer: $0.body) } }
    func take() -> [ServerMessage] {
        defer { frames.removeAll() }
        return frames
    }
}

/// A broker with sessions, driven the way the server drives it: frames in, `flush()` at the end of a read cycle.
struct Harness {
    let broker = Broker(users: UserStore())
    var user: User { broker.users.user(named: "guest")! }

    func connect() -> (Session, CapturingTransport) {
        let transport = CapturingTransport()
        return (broker.openSession(user: user, clientName: "test", peer: "local", transport: transport), transport)
    }

    func send(_ session: Session, _ messages: ClientMessage...) throws {
        for m in messages { try session.handle(m) }
        broker.flush()
    }

    func publish(_ session: Session, exchange: String = "", key: String, _ body: String, mandatory: Bool = false) throws {
        try send(session, .publish(Publish(exchange: exchange, routingKey: key, mandatory: mandatory, body: ByteBuffer(string: body))))
    }

    func declare(_ session: Session, queue: String, exclusive: Bool = false, autoDelete: Bool = false) throws {
        try send(session, .queueDeclare(QueueDeclare(requestId: 1, name: queue, exclusive: exclusive, autoDelete: autoDelete)))
    }

    func consume(_ session: Session, queue: String, prefetch: UInt16 = 0, noAck: Bool = false) throws {
        try send(session, .consume(Consume(requestId: 2, queue: queue, noAck: noAck, prefetch: prefetch)))
    }
}

@Suite("Memory per message")
struct FootprintTests {
    @Test("a queue entry stays at 64 bytes and a paged-out stand-in carries no bytes of its own")
    func entrySize() {
        // The peak buffer's bound is this entry times the backlog: 1 M paged messages cost 64 MB of entries.
        #expect(MemoryLayout<QueuedMessage>.stride <= 64)
        let standIn = MessageEnvelope(pagedOutWith: MessageProperties.Bit.expiration)
        #expect(standIn.isPaged)
        #expect(standIn.bytes.readableBytes == 0)
        #expect(standIn.propertyFlags == MessageProperties.Bit.expiration)
    }
}

@Suite("Topic matching")
struct TopicTests {
    @Test("patterns", arguments: [
        ("trip.*.created", "trip.eu.created", true),
        ("trip.*.created", "trip.created", false),
        ("trip.*.created", "trip.eu.west.created", false),
        ("trip.#", "trip", true),
        ("trip.#", "trip.eu.created", true),
        ("#", "anything.at.all", true),
        ("#", "", true),
        ("#.created", "trip.eu.created", true),
        ("#.created", "created", true),
        ("trip.#.created", "trip.created", true),
        ("trip.#.created", "trip.a.b.c.created", true),
        ("trip.#.created", "trip.a.b.c.cancelled", false),
        ("*", "one", true),
        ("*", "one.two", false),
        ("*.*", "one.two", true),
        ("#.#", "a.b", true),
        ("a.*.#", "a", false),
        ("a.*.#", "a.b", true),
        ("exact", "exact", true),
        ("exact", "exactly", false),
        ("", "", true),
    ])
    func matches(pattern: String, key: String, expected: Bool) {
        #expect(TopicPattern.matches(pattern: pattern, routingKey: key) == expected)
    }
}

@Suite("Queue and consumer state")
struct CoreTests {
    @Test("consumers get messages round-robin")
    func roundRobin() throws {
        let h = Harness()
        let (s, t) = h.connect()
        try h.declare(s, queue: "work")
        try h.consume(s, queue: "work")
        try h.consume(s, queue: "work")
        _ = t.take()
        for i in 1...4 { try h.publish(s, key: "work", "m\(i)") }
        let tags = t.deliveries.map(\.consumerTag)
        #expect(tags.count == 4)
        #expect(Set(tags).count == 2)
        #expect(tags[0] == tags[2] && tags[1] == tags[3] && tags[0] != tags[1])
    }

    @Test("prefetch bounds unacknowledged deliveries and an ack frees credit")
    func prefetch() throws {
        let h = Harness()
        let (s, t) = h.connect()
        try h.declare(s, queue: "q")
        try h.consume(s, queue: "q", prefetch: 2)
        for i in 1...5 { try h.publish(s, key: "q", "m\(i)") }
        #expect(t.bodies == ["m1", "m2"])
        #expect(h.broker.queueInfo("q")?.ready == 3)
        let first = t.deliveries[0].deliveryTag
        try h.send(s, .ack(Settle(deliveryTag: first)))
        #expect(t.bodies == ["m1", "m2", "m3"])
        let third = t.deliveries[2].deliveryTag
        try h.send(s, .ack(Settle(deliveryTag: third, multiple: true)))
        #expect(t.bodies == ["m1", "m2", "m3", "m4", "m5"])
        #expect(h.broker.queueInfo("q")?.unacked == 2)
    }

    @Test("a nack with requeue puts the message back at the head, marked redelivered")
    func nackRequeue() throws {
        let h = Harness()
        let (s, t) = h.connect()
        try h.declare(s, queue: "q")
        for i in 1...3 { try h.publish(s, key: "q", "m\(i)") }
        try h.consume(s, queue: "q", prefetch: 1)
        #expect(t.bodies == ["m1"])
        try h.send(s, .nack(Settle(deliveryTag: t.deliveries[0].deliveryTag, requeue: true)))
        let second = t.deliveries[1]
        #expect(String(buffer: second.body) == "m1")
        #expect(second.redelivered)
        try h.send(s, .reject(Settle(deliveryTag: second.deliveryTag, requeue: false)))
        #expect(t.bodies == ["m1", "m1", "m2"])
        #expect(t.deliveries[2].redelivered == false)
    }

    @Test("closing a session returns its unacknowledged messages to the head in order")
    func closeRequeues() throws {
        let h = Harness()
        let (a, ta) = h.connect()
        let (b, tb) = h.connect()
        try h.declare(a, queue: "q")
        for i in 1...4 { try h.publish(a, key: "q", "m\(i)") }
        try h.consume(a, queue: "q", prefetch: 3)
        #expect(ta.bodies == ["m1", "m2", "m3"])
        try h.send(a, .ack(Settle(deliveryTag: ta.deliveries[1].deliveryTag)))  // m2 acked, which frees credit for m4
        #expect(ta.bodies == ["m1", "m2", "m3", "m4"])
        try h.publish(b, key: "q", "m5")
        h.broker.closeSession(a)
        try h.consume(b, queue: "q")
        #expect(tb.bodies == ["m1", "m3", "m4", "m5"])
        #expect(tb.deliveries.map(\.redelivered) == [true, true, true, false])
    }

    @Test("an unwritable connection gets no deliveries until it drains")
    func writability() throws {
        let h = Harness()
        let (s, t) = h.connect()
        try h.declare(s, queue: "q")
        try h.consume(s, queue: "q", noAck: true)
        t.isWritable = false
        for i in 1...3 { try h.publish(s, key: "q", "m\(i)") }
        #expect(t.deliveries.isEmpty)
        t.isWritable = true
        h.broker.sessionBecameWritable(s)
        #expect(t.bodies == ["m1", "m2", "m3"])
    }

    @Test("a deep backlog is delivered in bounded batches, each resumed after the previous is written")
    func boundedBatches() throws {
        let h = Harness()
        let (s, t) = h.connect()
        try h.declare(s, queue: "q")
        let body = String(repeating: "x", count: 10_000)
        for _ in 0..<300 { try h.publish(s, key: "q", body) }  // ~3 MB backlog
        try h.consume(s, queue: "q", noAck: true)
        #expect(t.deliveries.count > 50 && t.deliveries.count < 300)
        #expect(t.resumeRequests == 1)
        var rounds = 0
        while t.deliveries.count < 300 && rounds < 10 {
            h.broker.sessionBecameWritable(s)
            rounds += 1
        }
        #expect(t.deliveries.count == 300)
        #expect(rounds >= 2)
    }

    @Test("confirms of one read cycle are coalesced into one multiple ack")
    func coalescedConfirms() throws {
        let h = Harness()
        let (s, t) = h.connect()
        try h.declare(s, queue: "q")
        try h.send(s, .confirmSelect(requestId: 9))
        _ = t.take()
        for i in 1...3 { try s.handle(.publish(Publish(exchange: "", routingKey: "q", body: ByteBuffer(string: "m\(i)")))) }
        h.broker.flush()
        #expect(t.take() == [.confirmAck(Confirm(sequence: 3, multiple: true))])
    }

    @Test("a refused publish is nacked after the acks before it")
    func nackOrdering() throws {
        let h = Harness()
        let (s, t) = h.connect()
        try h.send(s, .confirmSelect(requestId: 9))
        _ = t.take()
        try s.handle(.publish(Publish(exchange: "", routingKey: "nowhere", body: ByteBuffer())))
        try s.handle(.publish(Publish(exchange: "missing", routingKey: "k", body: ByteBuffer())))
        try s.handle(.publish(Publish(exchange: "", routingKey: "nowhere", body: ByteBuffer())))
        h.broker.flush()
        let frames = t.take()
        #expect(frames.count == 3)
        #expect(frames.first == .confirmAck(Confirm(sequence: 1, multiple: true)))
        guard case .confirmNack(let nack) = frames[1] else {
            Issue.record("expected a nack, got \(frames[1])")
            return
        }
        #expect(nack.sequence == 2 && nack.code == .notFound)
        #expect(frames.last == .confirmAck(Confirm(sequence: 3, multiple: true)))
    }

    @Test("an exclusive queue goes with its connection; an auto-delete queue with its last consumer")
    func lifetimes() throws {
        let h = Harness()
        let (s, t) = h.connect()
        try h.declare(s, queue: "mine", exclusive: true)
        try h.declare(s, queue: "auto", autoDelete: true)
        try h.consume(s, queue: "auto")
        let tag = t.frames.compactMap { if case .consumeOk(let ok) = $0 { ok.consumerTag } else { nil } }.last!
        try h.send(s, .cancel(Cancel(requestId: 5, consumerTag: tag)))
        #expect(h.broker.queueInfo("auto") == nil)
        #expect(h.broker.queueInfo("mine") != nil)
        h.broker.closeSession(s)
        #expect(h.broker.queueInfo("mine") == nil)
    }

    @Test("an auto-delete exchange goes with its last binding")
    func autoDeleteExchange() throws {
        let h = Harness()
        let (s, _) = h.connect()
        try h.declare(s, queue: "q")
        try h.send(s, .exchangeDeclare(ExchangeDeclare(requestId: 1, name: "x", kind: .fanout, autoDelete: true)))
        try h.send(s, .queueBind(QueueBinding(requestId: 2, queue: "q", exchange: "x", bindingKey: "")))
        #expect(h.broker.exchangeExists("x"))
        try h.send(s, .queueUnbind(QueueBinding(requestId: 3, queue: "q", exchange: "x", bindingKey: "")))
        #expect(!h.broker.exchangeExists("x"))
    }

    @Test("a fanned-out message reaches each queue once, even when bound twice")
    func topicDedup() throws {
        let h = Harness()
        let (s, t) = h.connect()
        try h.declare(s, queue: "q")
        try h.send(s, .exchangeDeclare(ExchangeDeclare(requestId: 1, name: "t", kind: .topic)))
        try h.send(s, .queueBind(QueueBinding(requestId: 2, queue: "q", exchange: "t", bindingKey: "a.*")))
        try h.send(s, .queueBind(QueueBinding(requestId: 3, queue: "q", exchange: "t", bindingKey: "#")))
        try h.publish(s, exchange: "t", key: "a.b", "once")
        #expect(h.broker.queueInfo("q")?.ready == 1)
        _ = t
    }

    @Test("TTL runs on the broker's clock: a manual clock expires messages without any sleep")
    func manualClockTTL() throws {
        let h = Harness()
        final class ManualClock { var nanos: UInt64 = 1_000_000_000 }
        let clock = ManualClock()
        h.broker.now = { clock.nanos }
        let (s, _) = h.connect()
        try h.send(s, .queueDeclare(QueueDeclare(requestId: 1, name: "ttl", arguments: ["x-message-ttl": .int(1000)])))
        try h.publish(s, key: "ttl", "old")
        clock.nanos += 600_000_000
        try h.publish(s, key: "ttl", "young")
        #expect(h.broker.queueInfo("ttl")?.ready == 2)
        clock.nanos += 500_000_000  // "old" is 1.1 s old, "young" 0.5 s
        h.broker.sweep()
        #expect(h.broker.queueInfo("ttl")?.ready == 1)
        clock.nanos += 600_000_000
        h.broker.sweep()
        #expect(h.broker.queueInfo("ttl")?.ready == 0)
    }

    @Test("a message dead-lettered back into its own queue on expiry goes round once, then is dropped")
    func deadLetterCycleOnTheManualClock() throws {
        let h = Harness()
        final class ManualClock { var nanos: UInt64 = 1_000_000_000 }
        let clock = ManualClock()
        h.broker.now = { clock.nanos }
        let (s, t) = h.connect()
        try h.send(s, .queueDeclare(QueueDeclare(requestId: 1, name: "loop", arguments: [
            "x-message-ttl": .int(50), "x-dead-letter-exchange": .string(""), "x-dead-letter-routing-key": .string("loop"),
        ])))
        try h.publish(s, key: "loop", "round")
        clock.nanos += 60_000_000
        h.broker.sweep()
        #expect(h.broker.queueInfo("loop")?.ready == 1)  // expired once, dead-lettered back in
        clock.nanos += 60_000_000
        h.broker.sweep()
        #expect(h.broker.queueInfo("loop")?.ready == 0)  // the second death in the same queue breaks the cycle
        clock.nanos += 60_000_000
        h.broker.sweep()
        #expect(h.broker.queueInfo("loop")?.ready == 0)
        try h.consume(s, queue: "loop", noAck: true)
        #expect(t.deliveries.isEmpty)
    }

    @Test("a retry loop through a TTL queue goes on as long as a consumer rejects: x-death counts the rounds")
    func retryLoopWithRejections() throws {
        let h = Harness()
        final class ManualClock { var nanos: UInt64 = 1_000_000_000 }
        let clock = ManualClock()
        h.broker.now = { clock.nanos }
        let (s, t) = h.connect()
        try h.send(s, .queueDeclare(QueueDeclare(requestId: 1, name: "work", arguments: [
            "x-dead-letter-exchange": .string(""), "x-dead-letter-routing-key": .string("retry"),
        ])))
        try h.send(s, .queueDeclare(QueueDeclare(requestId: 2, name: "retry", arguments: [
            "x-message-ttl": .int(50), "x-dead-letter-exchange": .string(""), "x-dead-letter-routing-key": .string("work"),
        ])))
        try h.publish(s, key: "work", "job")
        try h.consume(s, queue: "work")
        for round in 1...4 {
            #expect(t.deliveries.count == round)
            guard let delivery = t.deliveries.last else { return }
            try h.send(s, .reject(Settle(deliveryTag: delivery.deliveryTag, requeue: false)))
            #expect(h.broker.queueInfo("retry")?.ready == 1, "round \(round): the rejected message waits in the retry queue")
            clock.nanos += 60_000_000
            h.broker.sweep()
            h.broker.flush()
        }
        #expect(t.deliveries.count == 5)
        let properties = try t.deliveries[4].properties.decode()
        guard case .array(let deaths)? = properties.headers?["x-death"] else {
            Issue.record("no x-death header")
            return
        }
        let rejected = deaths.compactMap { value -> Int64? in
            guard case .table(let entry) = value, entry["queue"] == .string("work"), entry["reason"] == .string("rejected") else { return nil }
            return entry["count"]?.intValue
        }
        #expect(rejected == [4])
    }

    @Test("the memory counter follows messages in and out of queues and unacked sets")
    func memoryAccounting() throws {
        let h = Harness()
        let (s, t) = h.connect()
        try h.declare(s, queue: "q")
        for _ in 0..<10 { try h.publish(s, key: "q", String(repeating: "x", count: 100)) }
        let held = h.broker.bufferedBytes
        #expect(held > 1000)
        try h.consume(s, queue: "q", prefetch: 5)
        #expect(h.broker.bufferedBytes == held)  // five ready, five unacked
        try h.send(s, .ack(Settle(deliveryTag: 0, multiple: true)))
        try h.send(s, .ack(Settle(deliveryTag: 0, multiple: true)))
        #expect(t.deliveries.count == 10)
        #expect(h.broker.bufferedBytes == 0)
    }

    @Test("under an alarm every connection is still read; one that keeps publishing past its grace is paused")
    func alarmGrace() throws {
        let h = Harness()
        let (worker, workerTransport) = h.connect()
        let (flooder, flooderTransport) = h.connect()
        try h.declare(worker, queue: "q")
        try h.publish(worker, key: "q", "a publisher too")
        h.broker.setAlarm(.memory, "test alarm")
        #expect(workerTransport.take().contains { if case .connectionBlocked = $0 { true } else { false } })
        #expect(workerTransport.reading && flooderTransport.reading)
        // A connection that has published keeps being read: its acks free memory.
        try h.consume(worker, queue: "q", prefetch: 1)
        #expect(workerTransport.deliveries.count == 1)
        try h.send(worker, .ack(Settle(deliveryTag: 1, multiple: false)))
        #expect(h.broker.bufferedBytes == 0)
        // One that ignores the notice gets its grace, then is no longer read.
        let body = String(repeating: "f", count: 10_000)
        var sent = 0
        while flooderTransport.reading && sent < 2 * Session.publishGraceBytes {
            try h.publish(flooder, key: "nowhere", body)
            sent += body.utf8.count
        }
        #expect(!flooderTransport.reading)
        #expect(sent > Session.publishGraceBytes && sent <= Session.publishGraceBytes + 2 * body.utf8.count)
        #expect(workerTransport.reading)
        h.broker.setAlarm(.memory, nil)
        #expect(flooderTransport.reading)
    }

    @Test("management: admin only, unknown methods refused, move stops at a full destination without losing anything")
    func management() throws {
        let h = Harness()
        let (admin, t) = h.connect()
        try h.declare(admin, queue: "src")
        try h.send(admin, .queueDeclare(QueueDeclare(requestId: 1, name: "dst",
                                                     arguments: ["x-max-length": .int(2), "x-overflow": .string("reject-publish")])))
        for i in 0..<5 { try h.publish(admin, key: "src", "m\(i)") }
        _ = t.take()
        func manage(_ session: Session, _ method: String, _ arguments: FieldTable = [:]) throws -> ServerMessage? {
            try h.send(session, .manage(Manage(requestId: 9, method: method, arguments: arguments)))
            return t.take().last
        }
        guard case .manageOk(_, let moved)? = try manage(admin, "queue.move", ["source": .string("src"), "destination": .string("dst")]) else {
            Issue.record("move failed")
            return
        }
        #expect(moved["moved"] == .int(2) && moved["remaining"] == .int(3))
        #expect(moved["stopped"]?.stringValue?.contains("full") == true)
        guard case .manageOk(_, let peeked)? = try manage(admin, "queue.peek", ["queue": .string("src"), "count": .int(10)]),
              case .array(let rows)? = peeked["rows"] else {
            Issue.record("peek failed")
            return
        }
        #expect(rows.compactMap { if case .table(let r) = $0, case .bytes(let b)? = r["body"] { String(decoding: b, as: UTF8.self) } else { nil } }
                == ["m2", "m3", "m4"])
        #expect(h.broker.queueInfo("src")?.ready == 3 && h.broker.queueInfo("dst")?.ready == 2)

        guard case .error(let unknown)? = try manage(admin, "queue.teleport") else { Issue.record("no error"); return }
        #expect(unknown.code == .unknownFrame && unknown.text.contains("queue.move"))
        guard case .error(let missing)? = try manage(admin, "queue.peek") else { Issue.record("no error"); return }
        #expect(missing.code == .invalidArgument && missing.text.contains("'queue'"))

        h.broker.users.add(User(name: "app", password: PasswordHash(password: "x", rounds: 1), isAdmin: false))
        let app = h.broker.openSession(user: h.broker.users.user(named: "app")!, clientName: "app", peer: "local", transport: t)
        guard case .error(let refused)? = try manage(app, "list.queues") else { Issue.record("no error"); return }
        #expect(refused.code == .accessRefused)
    }

    @Test("passwords are stored salted and hashed")
    func passwordStorage() {
        let a = PasswordHash(password: "secret")
        let b = PasswordHash(password: "secret")
        #expect(a.salt != b.salt && a.hash != b.hash)
        #expect(!a.hash.isEmpty && a.hash != Array("secret".utf8))
        #expect(a.verify("secret") && !a.verify("Secret"))
    }

    @Test("the default user is refused from outside loopback and wrong passwords are refused")
    func authRules() {
        let store = UserStore()
        let guest = store.user(named: "guest")
        #expect((try? UserStore.authenticate(guest, password: "guest", fromLoopback: true).get())?.name == "guest")
        #expect(throws: BrokerError.self) { try UserStore.authenticate(guest, password: "guest", fromLoopback: false).get() }
        #expect(throws: BrokerError.self) { try UserStore.authenticate(guest, password: "nope", fromLoopback: true).get() }
        #expect(throws: BrokerError.self) { try UserStore.authenticate(nil, password: "guest", fromLoopback: true).get() }
    }
}
