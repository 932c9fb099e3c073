import BrokerCore
import NIOCore
import Testing
import WireProtocol

/// Message contracts in the core, with no sockets: what is refused and why, the census, the deprecation notices.
@Suite("Message contracts")
struct ContractTests {
    static let contract = ExchangeContract(exchange: "ride.trips", types: [
        MessageTypeContract(name: "trip.requested", versions: [
            TypeVersionContract(version: ContractVersion(1, 2), status: .deprecated, sunset: "2027-06-30", replacement: "trip.requested 2.0"),
            TypeVersionContract(version: ContractVersion(2, 0)),
        ]),
        MessageTypeContract(name: "trip.cancelled", versions: [TypeVersionContract(version: ContractVersion(1))]),
    ])

    /// A broker with `ride.trips` (topic) bound to `dispatcher.trips`, the contract applied, and a confirming
    /// publisher speaking protocol `version`.
    static func setUp(version: ProtocolVersion = .v1_1, clientName: String = "trip") throws
        -> (Harness, Session, CapturingTransport)
    {
        let h = Harness()
        let transport = CapturingTransport()
        let session = h.broker.openSession(user: h.user, clientName: clientName, peer: "local", transport: transport,
                                           protocolVersion: version)
        try h.send(session, .exchangeDeclare(ExchangeDeclare(requestId: 1, name: "ride.trips", kind: .topic)))
        try h.declare(session, queue: "dispatcher.trips")
        try h.send(session, .queueBind(QueueBinding(requestId: 2, queue: "dispatcher.trips", exchange: "ride.trips", bindingKey: "trip.#")))
        try apply(h, session, contract)
        try h.send(session, .confirmSelect(requestId: 4))
        _ = transport.take()
        return (h, session, transport)
    }

    static func apply(_ h: Harness, _ session: Session, _ contract: ExchangeContract, force: Bool = false) throws {
        try h.send(session, .manage(Manage(requestId: 3, method: "contract.apply",
                                           arguments: ["contract": .table(try FieldTableEncoder().encode(contract)), "force": .bool(force)])))
    }

    static func publish(_ h: Harness, _ session: Session, type: String?, major: UInt16? = nil, minor: UInt16? = nil,
                        key: String = "trip.requested") throws {
        let properties = MessageProperties(type: type, typeVersion: major, typeMinorVersion: minor)
        try h.send(session, .publish(Publish(exchange: "ride.trips", routingKey: key, properties: RawProperties(properties),
                                             body: ByteBuffer(string: "{}"))))
    }

    static func nacks(_ frames: [ServerMessage]) -> [Confirm] {
        frames.compactMap { if case .confirmNack(let c) = $0 { c } else { nil } }
    }

    static func notices(_ frames: [ServerMessage]) -> [Notice] {
        frames.compactMap { if case .notice(let n) = $0 { n } else { nil } }
    }

    @Test("refused with CONTRACT_VIOLATION and a text naming what the contract allows: no type, an unknown type, no version, an undeclared major",
          arguments: [
            (nil, nil, nil, "must carry a type and a type version; it accepts trip.requested 1.2 (deprecated, sunset 2027-06-30), 2.0; trip.cancelled 1.0"),
            ("trip.booked", 1, nil, "does not accept message type 'trip.booked'"),
            ("trip.requested", nil, nil, "message type 'trip.requested' on exchange 'ride.trips' needs a type version; the contract allows 1.2 (deprecated, sunset 2027-06-30), 2.0"),
            ("trip.requested", 3, 1, "trip.requested 3.1 is not declared on exchange 'ride.trips'; the contract allows 1.2 (deprecated, sunset 2027-06-30), 2.0"),
          ] as [(String?, UInt16?, UInt16?, String)])
    func refusals(type: String?, major: UInt16?, minor: UInt16?, text: String) throws {
        let (h, session, transport) = try Self.setUp()
        try Self.publish(h, session, type: type, major: major, minor: minor)
        let nacks = Self.nacks(transport.take())
        #expect(nacks.count == 1)
        #expect(nacks.first?.code == .contractViolation)
        #expect(nacks.first?.text.contains(text) == true, "\(nacks.first?.text ?? "")")
        #expect(h.broker.queueInfo("dispatcher.trips")?.ready == 0, "a refused message reaches no queue")
    }

    @Test("a declared major is accepted whatever its minor (older, newer or absent); the queue gets exactly the accepted ones")
    func minorsAccepted() throws {
        let (h, session, transport) = try Self.setUp()
        try Self.publish(h, session, type: "trip.requested", major: 2)
        try Self.publish(h, session, type: "trip.requested", major: 2, minor: 7)
        try Self.publish(h, session, type: "trip.cancelled", major: 1, minor: 0, key: "trip.cancelled")
        try Self.publish(h, session, type: "trip.requested", major: 9)
        let frames = transport.take()
        #expect(Self.nacks(frames).map(\.sequence) == [4])
        #expect(h.broker.queueInfo("dispatcher.trips")?.ready == 3)
    }

    @Test("a deprecated version is accepted and noticed once per connection, type and major, naming sunset and replacement; a 1.0 connection gets no notice frame")
    func deprecationNotices() throws {
        let (h, session, transport) = try Self.setUp()
        for minor in [0, 2, 3] as [UInt16] { try Self.publish(h, session, type: "trip.requested", major: 1, minor: minor) }
        let frames = transport.take()
        #expect(Self.nacks(frames).isEmpty)
        let notices = Self.notices(frames)
        #expect(notices.count == 1)
        #expect(notices.first == Notice(kind: "deprecated", exchange: "ride.trips", messageType: "trip.requested", version: "1.0",
                                        sunset: "2027-06-30", replacement: "trip.requested 2.0",
                                        text: "trip.requested 1.0 on exchange 'ride.trips' is deprecated and will be refused from 2027-06-30; use trip.requested 2.0"))
        // The notice goes before the confirm of the message that caused it.
        let noticeIndex = frames.firstIndex { if case .notice = $0 { true } else { false } }
        let ackIndex = frames.firstIndex { if case .confirmAck = $0 { true } else { false } }
        #expect(noticeIndex != nil && ackIndex != nil && noticeIndex! < ackIndex!)
        #expect(h.broker.queueInfo("dispatcher.trips")?.ready == 3)

        // A second connection is told again; a protocol 1.0 connection is not (it would not know the frame).
        let second = CapturingTransport()
        let other = h.broker.openSession(user: h.user, clientName: "trip-2", peer: "local", transport: second, protocolVersion: .v1_1)
        try Self.publish(h, other, type: "trip.requested", major: 1)
        #expect(Self.notices(second.take()).count == 1)
        let old = CapturingTransport()
        let legacy = h.broker.openSession(user: h.user, clientName: "trip-legacy", peer: "local", transport: old, protocolVersion: .v1_0)
        try Self.publish(h, legacy, type: "trip.requested", major: 1)
        let oldFrames = old.take()
        #expect(Self.notices(oldFrames).isEmpty)
        #expect(h.broker.queueInfo("dispatcher.trips")?.ready == 5)
    }

    static func census(_ h: Harness, _ session: Session, _ transport: CapturingTransport) throws -> [FieldTable] {
        _ = transport.take()
        try h.send(session, .manage(Manage(requestId: 9, method: "contract.census", arguments: ["exchange": .string("ride.trips")])))
        for frame in transport.take() {
            if case .manageOk(9, let result) = frame, case .array(let rows)? = result["rows"] {
                return rows.compactMap { if case .table(let t) = $0 { t } else { nil } }
            }
        }
        Issue.record("no census answer")
        return []
    }

    static func error(_ frames: [ServerMessage], request: UInt32) -> ErrorFrame? {
        frames.lazy.compactMap { if case .error(let e) = $0, e.requestId == request { e } else { nil } }.first
    }

    @Test("the census counts each connection's versions with its client name; retiring a version in use is refused naming the client, forced it is applied and says who breaks")
    func censusAndRetirement() throws {
        let (h, admin, adminTransport) = try Self.setUp(clientName: "operator")
        let v1 = CapturingTransport()
        let oldTrip = h.broker.openSession(user: h.user, clientName: "trip-v1", peer: "10.0.0.7:5123", transport: v1, protocolVersion: .v1_1)
        try h.send(oldTrip, .confirmSelect(requestId: 1))
        var clock: UInt64 = 1_780_000_000_000
        h.broker.wallClock = { clock }
        for _ in 0..<3 { try Self.publish(h, oldTrip, type: "trip.requested", major: 1, minor: 2) }
        clock += 5_000
        try Self.publish(h, oldTrip, type: "trip.requested", major: 1, minor: 2)
        try Self.publish(h, admin, type: "trip.requested", major: 2, minor: 0)

        var rows = try Self.census(h, admin, adminTransport)
        #expect(rows.count == 2)
        let old = try #require(rows.first { $0["version"] == .string("1.2") })
        #expect(old["client"] == .string("trip-v1"))
        #expect(old["connection"] == .int(Int64(oldTrip.id)))
        #expect(old["peer"] == .string("10.0.0.7:5123"))
        #expect(old["messages"] == .int(4))
        #expect(old["first_seen"] == .int(1_780_000_000_000))
        #expect(old["last_seen"] == .int(1_780_000_005_000))
        #expect(old["connected"] == .bool(true))
        #expect(old["status"] == .string("deprecated"))
        #expect(rows.first { $0["version"] == .string("2.0") }?["client"] == .string("operator"))

        // Retire 1.x: refused while trip-v1 is connected, naming it.
        var retired = Self.contract
        retired.types[0].versions[0].status = .retired
        _ = adminTransport.take()
        try Self.apply(h, admin, retired)
        let refusal = try #require(Self.error(adminTransport.take(), request: 3))
        #expect(refusal.code == .preconditionFailed)
        #expect(refusal.text.contains("'trip-v1' (connection \(oldTrip.id), user guest) publishes trip.requested 1.2"), "\(refusal.text)")
        _ = v1.take()
        try Self.publish(h, oldTrip, type: "trip.requested", major: 1)
        let stillAccepted = v1.take()
        #expect(Self.nacks(stillAccepted).isEmpty && stillAccepted.contains { if case .confirmAck = $0 { true } else { false } },
                "the refused apply changed nothing: \(stillAccepted)")

        // Forced: applied, the answer names who breaks, and 1.x is refused from now on.
        try Self.apply(h, admin, retired, force: true)
        let answer = adminTransport.take().compactMap { if case .manageOk(3, let r) = $0 { r } else { nil } }.first
        guard case .array(let broken)? = answer?["broken"], case .table(let row)? = broken.first else {
            Issue.record("no broken list in \(String(describing: answer))")
            return
        }
        #expect(row["client"] == .string("trip-v1"))
        try Self.publish(h, oldTrip, type: "trip.requested", major: 1)
        let nack = Self.nacks(v1.take()).first
        #expect(nack?.code == .contractViolation)
        #expect(nack?.text.contains("trip.requested 1.x is retired on exchange 'ride.trips' (use trip.requested 2.0); the contract allows 2.0") == true,
                "\(nack?.text ?? "")")

        // A closed connection stays in the census as history; retiring then needs no force.
        h.broker.closeSession(oldTrip)
        rows = try Self.census(h, admin, adminTransport)
        #expect(rows.first { $0["client"] == .string("trip-v1") }?["connected"] == .bool(false))
        var gone = retired
        gone.types[0].versions.removeFirst()
        try Self.apply(h, admin, gone)
        #expect(Self.error(adminTransport.take(), request: 3) == nil)
    }

    @Test("bad contracts are refused naming the problem, and change nothing", arguments: [
        (ExchangeContract(exchange: "ride.trips", types: []), "lists no message types"),
        (ExchangeContract(exchange: "ride.trips", types: [MessageTypeContract(name: "a", versions: [])]), "message type 'a' lists no versions"),
        (ExchangeContract(exchange: "ride.trips", types: [
            MessageTypeContract(name: "a", versions: [TypeVersionContract(version: ContractVersion(1))]),
            MessageTypeContract(name: "a", versions: [TypeVersionContract(version: ContractVersion(2))])]), "'a' is listed twice"),
        (ExchangeContract(exchange: "ride.trips", types: [MessageTypeContract(name: "a", versions: [
            TypeVersionContract(version: ContractVersion(1, 0)), TypeVersionContract(version: ContractVersion(1, 3))])]), "major version 1 twice"),
        (ExchangeContract(exchange: "ride.trips", types: [MessageTypeContract(name: "a", versions: [
            TypeVersionContract(version: ContractVersion(1), status: .deprecated, sunset: "next spring")])]), "sunset 'next spring' is not a date"),
        (ExchangeContract(exchange: "nowhere", types: [MessageTypeContract(name: "a", versions: [
            TypeVersionContract(version: ContractVersion(1))])]), "no exchange 'nowhere'"),
        (ExchangeContract(exchange: "amq.topic", types: [MessageTypeContract(name: "a", versions: [
            TypeVersionContract(version: ContractVersion(1))])]), "built-in exchange 'amq.topic' cannot carry a contract"),
    ] as [(ExchangeContract, String)])
    func badContracts(contract: ExchangeContract, text: String) throws {
        let (h, session, transport) = try Self.setUp()
        try Self.apply(h, session, contract)
        let error = try #require(Self.error(transport.take(), request: 3))
        #expect(error.text.contains(text), "\(error.text)")
        // The old contract still holds.
        try Self.publish(h, session, type: "trip.requested", major: 2)
        #expect(Self.nacks(transport.take()).isEmpty)
        try Self.publish(h, session, type: "a", major: 1)
        #expect(Self.nacks(transport.take()).count == 1)
    }

    @Test("a contract table that does not decode is an INVALID_ARGUMENT naming the field")
    func undecodable() throws {
        let (h, session, transport) = try Self.setUp()
        let table: FieldTable = ["exchange": .string("ride.trips"), "types": .array([.table(["name": .string("a"), "versions": .array([
            .table(["version": .string("one")])])])])]
        try h.send(session, .manage(Manage(requestId: 3, method: "contract.apply", arguments: ["contract": .table(table)])))
        let error = try #require(Self.error(transport.take(), request: 3))
        #expect(error.code == .invalidArgument)
        #expect(error.text.contains("'one' is not a version like 1.0 or 2"), "\(error.text)")
        #expect(error.text.contains("types[0].versions[0].version"), "\(error.text)")
    }

    @Test("deleting the contract opens the exchange to any message; an exchange without one never looks at types")
    func deleteContract() throws {
        let (h, session, transport) = try Self.setUp()
        try Self.publish(h, session, type: nil)
        #expect(Self.nacks(transport.take()).count == 1)
        try h.send(session, .manage(Manage(requestId: 5, method: "contract.delete", arguments: ["exchange": .string("ride.trips")])))
        #expect(Self.error(transport.take(), request: 5) == nil)
        try Self.publish(h, session, type: nil)
        try Self.publish(h, session, type: "anything", major: 42)
        #expect(Self.nacks(transport.take()).isEmpty)
        #expect(h.broker.queueInfo("dispatcher.trips")?.ready == 2)
    }
}

@Suite("Contract values")
struct ContractValueTests {
    @Test("versions parse from 2 and 2.1 and nothing else", arguments: [
        ("2", ContractVersion(2, 0)), ("2.1", ContractVersion(2, 1)), ("10.20", ContractVersion(10, 20)),
        ("", nil), ("2.", nil), (".1", nil), ("2.1.3", nil), ("v2", nil), ("-1", nil), ("70000", nil), ("1.+2", nil),
    ] as [(String, ContractVersion?)])
    func versions(text: String, expected: ContractVersion?) {
        #expect(ContractVersion(text) == expected)
    }

    @Test("typeMinorVersion (protocol 1.1) round-trips with every other property and is found by the contract reader")
    func minorProperty() throws {
        let all = MessageProperties(messageId: "m", correlationId: "c", replyTo: "r", contentType: "application/json", type: "trip.requested",
                                    typeVersion: 2, timestamp: 1, expiration: 5, persistent: true, priority: 3,
                                    headers: ["h": .string("v")], typeMinorVersion: 4)
        let raw = RawProperties(all)
        #expect(try raw.decode() == all)
        #expect(try raw.typeAndVersion() == ("trip.requested", 2, 4))
        #expect(try RawProperties(MessageProperties(type: "t")).typeAndVersion() == ("t", nil, nil))
        #expect(try RawProperties(MessageProperties(messageId: "x")).typeAndVersion() == (nil, nil, nil))
        #expect(try RawProperties.empty.typeAndVersion() == (nil, nil, nil))
    }
}
