import BrokerCore
import NIOCore
import Testing
import WireProtocol

/// Consumers that state which major versions they accept (`x-accept-types`), with no sockets: who is handed what,
/// what happens to a message nobody accepts, the consumer rows of the census, and retirement that would strand one.
@Suite("Message contracts: consumers")
struct ContractConsumerTests {
    typealias C = ContractTests

    /// A consumer on `queue` with an accepted-versions list, on its own 1.1 connection.
    static func consumer(_ h: Harness, queue: String = "dispatcher.trips", accepts: String?, prefetch: UInt16 = 0, name: String = "dispatcher")
        throws -> (Session, CapturingTransport)
    {
        let transport = CapturingTransport()
        let session = h.broker.openSession(user: h.user, clientName: name, peer: "local", transport: transport, protocolVersion: .v1_1)
        let arguments: FieldTable = accepts.map { [AcceptedVersions.argument: .string($0)] } ?? [:]
        try h.send(session, .consume(Consume(requestId: 2, queue: queue, prefetch: prefetch, arguments: arguments)))
        return (session, transport)
    }

    /// The `major.minor` of each delivery, or `-` for an untyped one.
    static func versions(_ t: CapturingTransport) -> [String] {
        t.deliveries.map { d in
            guard let p = try? d.properties.decode(), let major = p.typeVersion else { return "-" }
            return "\(major).\(p.typeMinorVersion ?? 0)"
        }
    }

    static func publish(_ h: Harness, _ s: Session, _ versions: [(UInt16, UInt16)]) throws {
        for (major, minor) in versions { try C.publish(h, s, type: "trip.requested", major: major, minor: minor) }
    }

    @Test("each consumer is handed only the majors it accepts, any minor of them; untyped messages and types it does not list reach any consumer")
    func routedByVersion() throws {
        let (h, publisher, _) = try C.setUp()
        let (_, v1) = try Self.consumer(h, accepts: "trip.requested@1")
        let (_, v2) = try Self.consumer(h, accepts: "trip.requested@2")
        try Self.publish(h, publisher, [(1, 0), (2, 0), (1, 5), (2, 3), (2, 1), (1, 2)])
        #expect(Self.versions(v1) == ["1.0", "1.5", "1.2"])
        #expect(Self.versions(v2) == ["2.0", "2.3", "2.1"])

        // trip.cancelled is listed by neither: it goes round-robin like any message.
        for _ in 0..<2 { try C.publish(h, publisher, type: "trip.cancelled", major: 1, key: "trip.cancelled") }
        #expect(v1.deliveries.count + v2.deliveries.count == 8)
        #expect(v1.deliveries.count == 4 && v2.deliveries.count == 4)
        #expect(h.broker.queueInfo("dispatcher.trips")?.ready == 0)
    }

    /// `ride.trips` → `dispatcher.trips`, which dead-letters to the queue `parked`; a confirming publisher.
    static func deadLetterSetUp() throws -> (Harness, Session) {
        let h = Harness()
        let (s, _) = h.connect()
        try h.send(s, .exchangeDeclare(ExchangeDeclare(requestId: 1, name: "ride.trips", kind: .topic)))
        try h.send(s, .queueDeclare(QueueDeclare(requestId: 1, name: "parked")))
        try h.send(s, .queueDeclare(QueueDeclare(requestId: 1, name: "dispatcher.trips", arguments: [
            "x-dead-letter-exchange": .string(""), "x-dead-letter-routing-key": .string("parked"),
        ])))
        try h.send(s, .queueBind(QueueBinding(requestId: 2, queue: "dispatcher.trips", exchange: "ride.trips", bindingKey: "trip.#")))
        try h.send(s, .confirmSelect(requestId: 4))
        return (h, s)
    }

    /// The `x-death` reasons of each delivery.
    static func deathReasons(_ t: CapturingTransport) throws -> [String?] {
        try t.deliveries.map { d -> String? in
            guard case .array(let list)? = try d.properties.decode().headers?["x-death"], case .table(let entry)? = list.first else { return nil }
            return entry["reason"]?.stringValue
        }
    }

    @Test("a message no consumer accepts is dead-lettered with reason incompatible when the queue has a dead-letter exchange; order holds for the rest")
    func incompatibleDeadLettered() throws {
        let (h, s) = try Self.deadLetterSetUp()
        let (_, v2) = try Self.consumer(h, accepts: "trip.requested@2-3")
        try Self.publish(h, s, [(2, 0), (1, 4), (3, 0), (1, 0), (2, 9)])
        #expect(Self.versions(v2) == ["2.0", "3.0", "2.9"])
        #expect(h.broker.queueInfo("parked")?.ready == 2)

        let (_, parked) = try Self.consumer(h, queue: "parked", accepts: nil, name: "operator")
        #expect(Self.versions(parked) == ["1.4", "1.0"])
        #expect(try Self.deathReasons(parked) == ["incompatible", "incompatible"])
    }

    @Test("without a dead-letter exchange (or with x-incompatible hold) the message is held at the head, in order, until a consumer that accepts it subscribes")
    func incompatibleHeld() throws {
        let (h, publisher, _) = try C.setUp()
        let (_, v2) = try Self.consumer(h, accepts: "trip.requested@2")
        try Self.publish(h, publisher, [(2, 0), (1, 1), (2, 1)])
        #expect(Self.versions(v2) == ["2.0"], "the 2.1 behind the held 1.1 waits too: order is kept")
        #expect(h.broker.queueInfo("dispatcher.trips")?.ready == 2)

        let (_, v1) = try Self.consumer(h, accepts: "trip.requested@1", name: "dispatcher-old")
        #expect(Self.versions(v1) == ["1.1"])
        #expect(Self.versions(v2) == ["2.0", "2.1"])
        #expect(h.broker.queueInfo("dispatcher.trips")?.ready == 0)
    }

    @Test("x-incompatible hold keeps the message even with a dead-letter exchange; a bad value is refused naming the choices")
    func holdChosen() throws {
        let h = Harness()
        let (s, t) = h.connect()
        try h.send(s, .queueDeclare(QueueDeclare(requestId: 1, name: "jobs", arguments: [
            "x-dead-letter-exchange": .string(""), "x-incompatible": .string("hold"),
        ])))
        try h.send(s, .queueDeclare(QueueDeclare(requestId: 7, name: "jobs2", arguments: ["x-incompatible": .string("drop")])))
        let refusal = try #require(C.error(t.take(), request: 7))
        #expect(refusal.code == .invalidArgument)
        #expect(refusal.text.contains("'x-incompatible' must be one of dead-letter, hold, got 'drop'"), "\(refusal.text)")
        let (_, c) = try Self.consumer(h, queue: "jobs", accepts: "job@2")
        let properties = RawProperties(MessageProperties(type: "job", typeVersion: 1))
        try h.send(s, .publish(Publish(exchange: "", routingKey: "jobs", properties: properties, body: ByteBuffer(string: "x"))))
        #expect(c.deliveries.isEmpty)
        #expect(h.broker.queueInfo("jobs")?.ready == 1)
    }

    @Test("a message waits for the consumer that accepts it when that one has no credit: it is neither given to another nor dead-lettered")
    func waitsForCredit() throws {
        let (h, publisher, _) = try C.setUp()
        let (s1, v1) = try Self.consumer(h, accepts: "trip.requested@1", prefetch: 1)
        let (_, v2) = try Self.consumer(h, accepts: "trip.requested@2")
        try Self.publish(h, publisher, [(1, 0), (1, 1)])
        #expect(Self.versions(v1) == ["1.0"])
        #expect(v2.deliveries.isEmpty)
        try h.send(s1, .ack(Settle(deliveryTag: v1.deliveries[0].deliveryTag)))
        #expect(Self.versions(v1) == ["1.0", "1.1"])
        #expect(h.broker.queueInfo("dispatcher.trips")?.ready == 0)
    }

    @Test("when the only consumer accepting the head cancels, the queue goes on at once: the head is dead-lettered and the rest flows")
    func cancelReleases() throws {
        let (h, s) = try Self.deadLetterSetUp()
        let (s1, v1) = try Self.consumer(h, accepts: "trip.requested@1", prefetch: 1)
        let (_, v2) = try Self.consumer(h, accepts: "trip.requested@2")
        try Self.publish(h, s, [(1, 0), (1, 1), (2, 0)])
        #expect(Self.versions(v1) == ["1.0"])
        #expect(v2.deliveries.isEmpty, "2.0 is behind 1.1, which waits for the 1.x consumer's credit")
        let tag = try #require(v1.frames.lazy.compactMap { if case .consumeOk(let ok) = $0 { ok.consumerTag } else { nil } }.first)
        try h.send(s1, .cancel(Cancel(requestId: 5, consumerTag: tag)))
        #expect(Self.versions(v2) == ["2.0"])
        #expect(h.broker.queueInfo("parked")?.ready == 1)
        #expect(h.broker.queueInfo("dispatcher.trips")?.ready == 0)
    }

    @Test("consumers are in the census with their queue, accepted majors and deliveries; retiring the only major a live consumer accepts is refused naming it")
    func consumerCensus() throws {
        let (h, admin, adminTransport) = try C.setUp(clientName: "operator")
        h.broker.wallClock = { 1_780_000_000_000 }
        let (oldSession, _) = try Self.consumer(h, accepts: "trip.requested@1", name: "dispatcher-v1")
        let (_, both) = try Self.consumer(h, accepts: "trip.requested@1-2", name: "dispatcher-v2")
        // Round-robin among those that accept: 1.2 → v1, 2.0 → both, 1.0 → v1, 2.0 → both.
        let trip = h.broker.openSession(user: h.user, clientName: "trip", peer: "local", transport: CapturingTransport(), protocolVersion: .v1_1)
        try Self.publish(h, trip, [(1, 2), (2, 0), (1, 0), (2, 0)])
        #expect(Self.versions(both) == ["2.0", "2.0"])

        let rows = try C.census(h, admin, adminTransport).filter { $0["role"] == .string("consumer") }
        #expect(rows.count == 2)
        let old = try #require(rows.first { $0["client"] == .string("dispatcher-v1") })
        #expect(old["queue"] == .string("dispatcher.trips"))
        #expect(old["exchange"] == .string("ride.trips"))
        #expect(old["version"] == .string("1"))
        #expect(old["status"] == .string("deprecated"))
        #expect(old["messages"] == .int(2))
        #expect(old["connected"] == .bool(true))
        let new = try #require(rows.first { $0["client"] == .string("dispatcher-v2") })
        #expect(new["version"] == .string("1-2"))
        #expect(new["status"] == .string("current,deprecated"))
        #expect(new["messages"] == .int(2))

        // Retiring 1.x would leave dispatcher-v1 with nothing it accepts: refused, naming it (and not dispatcher-v2).
        var retired = C.contract
        retired.types[0].versions[0].status = .retired
        _ = adminTransport.take()
        try C.apply(h, admin, retired)
        let refusal = try #require(C.error(adminTransport.take(), request: 3))
        #expect(refusal.code == .preconditionFailed)
        #expect(refusal.text.contains("'dispatcher-v1' (connection \(oldSession.id), user guest) consumes queue 'dispatcher.trips' accepting only trip.requested@1"),
                "\(refusal.text)")
        #expect(!refusal.text.contains("dispatcher-v2"))

        // Once it (and the 1.x publisher) have gone (rows stay, not connected), the same change needs no force.
        h.broker.closeSession(oldSession)
        h.broker.closeSession(trip)
        let after = try C.census(h, admin, adminTransport)
        #expect(after.first { $0["client"] == .string("dispatcher-v1") && $0["role"] == .string("consumer") }?["connected"] == .bool(false))
        try C.apply(h, admin, retired)
        #expect(C.error(adminTransport.take(), request: 3) == nil)
    }

    @Test("a consumer accepting only deprecated majors of a contracted type is told once, on a 1.1 connection")
    func consumerNotice() throws {
        let (h, _, _) = try C.setUp()
        let (_, old) = try Self.consumer(h, accepts: "trip.requested@1")
        let notices = C.notices(old.take())
        #expect(notices.count == 1)
        #expect(notices.first?.text == "this consumer accepts only deprecated versions of trip.requested on exchange 'ride.trips' (1.x) and will be refused from 2027-06-30; use trip.requested 2.0")
        #expect(notices.first?.sunset == "2027-06-30")
        let (_, current) = try Self.consumer(h, accepts: "trip.requested@1-2")
        #expect(C.notices(current.take()).isEmpty)
    }

    @Test("bad accepted-version lists and unknown consume arguments are refused with INVALID_ARGUMENT naming the entry", arguments: [
        ("trip.requested", "is not like trip.requested@1"),
        ("trip.requested@", "is not like trip.requested@1"),
        ("trip.requested@2-1", "the range 2-1 is empty"),
        ("trip.requested@1,trip.requested@2", "lists 'trip.requested' twice"),
        ("@1", "is not like trip.requested@1"),
        ("a@1-2-3", "is not like trip.requested@1"),
    ])
    func badAccepts(text: String, expected: String) throws {
        let (h, _, _) = try C.setUp()
        let (_, t) = try Self.consumer(h, accepts: text)
        let error = try #require(C.error(t.take(), request: 2))
        #expect(error.code == .invalidArgument)
        #expect(error.text.contains(expected), "\(error.text)")
        #expect(h.broker.queueInfo("dispatcher.trips")?.consumers == 0)

        let (s, other) = h.connect()
        try h.send(s, .consume(Consume(requestId: 2, queue: "dispatcher.trips", arguments: ["x-priority": .int(1)])))
        #expect(C.error(other.take(), request: 2)?.text.contains("unknown consume argument 'x-priority'") == true)
    }

    @Test("accepted-version lists parse with spaces and print back", arguments: [
        ("trip.requested@1", [AcceptedVersions("trip.requested", major: 1)]),
        ("a@1-3, b.c@2", [AcceptedVersions("a", majors: 1...3), AcceptedVersions("b.c", major: 2)]),
        ("x@y@4", [AcceptedVersions("x@y", major: 4)]),
    ])
    func parse(text: String, expected: [AcceptedVersions]) throws {
        let parsed = try AcceptedVersions.parseList(text)
        #expect(parsed == expected)
        #expect(try AcceptedVersions.parseList(AcceptedVersions.listDescription(parsed)) == expected)
    }
}
