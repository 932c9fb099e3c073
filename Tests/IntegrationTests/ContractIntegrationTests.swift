import BrokerClient
import BrokerServer
import Foundation
import Synchronization
import Testing
import WireProtocol

/// Message contracts end to end: BrokerClient and brokerctl against a real broker, across a restart.
@Suite("Message contracts over the wire", .timeLimit(.minutes(2)))
struct ContractIntegrationTests {
    static let contract = ExchangeContract(exchange: "ride.trips", types: [
        MessageTypeContract(name: "trip.requested", versions: [
            TypeVersionContract(version: ContractVersion(1, 0), status: .deprecated, sunset: "2027-06-30", replacement: "trip.requested 2.0"),
            TypeVersionContract(version: ContractVersion(2, 1)),
        ]),
        MessageTypeContract(name: "trip.cancelled", versions: [
            TypeVersionContract(version: ContractVersion(1, 0), status: .deprecated, sunset: "2027-01-31")]),
    ])

    static func properties(_ type: String, _ major: UInt16, _ minor: UInt16 = 0) -> MessageProperties {
        MessageProperties(type: type, typeVersion: major, persistent: true, typeMinorVersion: minor)
    }

    @Test("a contract applied by the client refuses and accepts publishes, warns a deprecated publisher through notices, counts it in the census, and survives a restart")
    func clientAndRestart() async throws {
        let dir = temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        try await withBroker(dataDirectory: dir) { _, config in
            try await withConnection(config) { admin in
                try await admin.declareExchange("ride.trips", type: .topic, durable: true)
                try await admin.declareQueue("dispatcher.trips", durable: true)
                try await admin.bind(queue: "dispatcher.trips", exchange: "ride.trips", key: "trip.#")
                #expect(try await admin.applyContract(Self.contract).isEmpty)
                #expect(try await admin.contract(of: "ride.trips") == Self.contract)

                var v1 = config
                v1.clientName = "trip-service-v1"
                try await withConnection(v1) { trip in
                    #expect(trip.protocolVersion == .v1_1)
                    let notices = Mutex<[Notice]>([])
                    let collector = Task { for await notice in trip.notices { notices.withLock { $0.append(notice) } } }
                    defer { collector.cancel() }
                    try await trip.enableConfirms()
                    for _ in 0..<3 {
                        try await trip.publish(exchange: "ride.trips", routingKey: "trip.requested", body: "{}", properties: Self.properties("trip.requested", 1))
                    }
                    try await trip.publish(exchange: "ride.trips", routingKey: "trip.requested", body: "{}", properties: Self.properties("trip.requested", 2, 3))
                    // Refused with the contract's words, as a confirm failure.
                    do {
                        try await trip.publish(exchange: "ride.trips", routingKey: "trip.requested", body: "{}", properties: Self.properties("trip.requested", 3))
                        Issue.record("an undeclared major was accepted")
                    } catch let error as BrokerError {
                        #expect(error.code == .contractViolation)
                        #expect(error.message.contains("trip.requested 3.0 is not declared on exchange 'ride.trips'; the contract allows 1.0 (deprecated, sunset 2027-06-30), 2.1"), "\(error)")
                    }
                    // Notices arrive in order: once trip.cancelled's is in, a second one for trip.requested would be too.
                    try await trip.publish(exchange: "ride.trips", routingKey: "trip.cancelled", body: "{}", properties: Self.properties("trip.cancelled", 1))
                    let deadline = ContinuousClock.now + .seconds(20)
                    while notices.withLock({ $0.count < 2 }) && ContinuousClock.now < deadline { try await Task.sleep(for: .milliseconds(10)) }
                    let seen = notices.withLock { $0 }
                    #expect(seen.map(\.messageType) == ["trip.requested", "trip.cancelled"])
                    #expect(seen.first?.sunset == "2027-06-30" && seen.first?.replacement == "trip.requested 2.0")

                    let census = try await admin.contractCensus(exchange: "ride.trips")
                    let old = try #require(census.first { $0.version == "1.0" && $0.type == "trip.requested" })
                    #expect(old.client == "trip-service-v1" && old.messages == 3 && old.connected && old.status == "deprecated")
                    #expect(census.first { $0.version == "2.3" }?.status == "current")
                    #expect(old.connection == Int64(trip.connectionId))

                    // Retiring 1.x while it is in use: refused, naming the client.
                    var retired = Self.contract
                    retired.types[0].versions[0].status = .retired
                    do {
                        try await admin.applyContract(retired)
                        Issue.record("retiring a version in use was accepted without force")
                    } catch let error as BrokerError {
                        #expect(error.code == .preconditionFailed)
                        #expect(error.message.contains("'trip-service-v1'"), "\(error)")
                    }
                }
                // Its connection closed: history, not a blocker.
                var retired = Self.contract
                retired.types[0].versions[0].status = .retired
                #expect(try await admin.applyContract(retired).isEmpty)
                #expect(try await admin.contractCensus().first { $0.client == "trip-service-v1" }?.connected == false)
                #expect(try await admin.listQueues().first { $0.name == "dispatcher.trips" }?.messagesReady == 5)
            }
        }
        // The contract is part of the durable definitions.
        try await withBroker(dataDirectory: dir) { _, config in
            try await withConnection(config) { c in
                let contract = try await c.contract(of: "ride.trips")
                #expect(contract.types[0].versions[0].status == .retired)
                try await c.enableConfirms()
                await expectBrokerError(.contractViolation) {
                    try await c.publish(exchange: "ride.trips", routingKey: "trip.requested", body: "{}", properties: Self.properties("trip.requested", 1))
                }
                try await c.publish(exchange: "ride.trips", routingKey: "trip.requested", body: "{}", properties: Self.properties("trip.requested", 2))
                try await c.deleteContract(of: "ride.trips")
                try await c.publish(exchange: "ride.trips", routingKey: "trip.requested", body: "untyped")
            }
        }
        try await withBroker(dataDirectory: dir) { _, config in
            try await withConnection(config) { c in
                await expectBrokerError(.notFound) { _ = try await c.contract(of: "ride.trips") }
                let remaining = try await c.listContracts()
                #expect(remaining.isEmpty)
            }
        }
    }

    @Test("an unconfirmed publisher's refused message is an error on the errors stream, and nothing is routed")
    func unconfirmed() async throws {
        try await withBroker { _, config in
            try await withConnection(config) { c in
                try await c.declareExchange("ride.trips", type: .topic)
                try await c.declareQueue("q")
                try await c.bind(queue: "q", exchange: "ride.trips", key: "#")
                try await c.applyContract(Self.contract)
                try await c.publish(exchange: "ride.trips", routingKey: "x", body: "no type")
                var errors = c.errors.makeAsyncIterator()
                let error = await errors.next()
                #expect(error?.code == .contractViolation)
                #expect(error?.message.contains("must carry a type") == true, "\(String(describing: error))")
                #expect(try await c.listQueues().first { $0.name == "q" }?.messagesReady == 0)
            }
        }
    }

    @Test("consumers state the majors they accept through the client: each gets only those, and the census lists them")
    func acceptingConsumers() async throws {
        try await withBroker { _, config in
            try await withConnection(config) { admin in
                try await admin.declareExchange("ride.trips", type: .topic)
                try await admin.declareQueue("dispatcher.trips")
                try await admin.bind(queue: "dispatcher.trips", exchange: "ride.trips", key: "trip.#")
                try await admin.applyContract(Self.contract)
                var named = config
                named.clientName = "dispatcher-v2"
                try await withConnection(named) { dispatcher in
                    let v2 = try await dispatcher.consume(queue: "dispatcher.trips", accepting: [AcceptedVersions("trip.requested", major: 2)])
                    let v1 = try await dispatcher.consume(queue: "dispatcher.trips", accepting: [AcceptedVersions("trip.requested", majors: 1...1)])
                    try await admin.enableConfirms()
                    for (major, minor) in [(1, 0), (2, 1), (2, 5), (1, 0), (2, 0)] as [(UInt16, UInt16)] {
                        try await admin.publish(exchange: "ride.trips", routingKey: "trip.requested", body: "\(major).\(minor)",
                                                properties: Self.properties("trip.requested", major, minor))
                    }
                    var got2: [String] = []
                    for try await message in v2 {
                        got2.append(message.bodyString)
                        try await message.ack()
                        if got2.count == 3 { break }
                    }
                    var got1: [String] = []
                    for try await message in v1 {
                        got1.append(message.bodyString)
                        try await message.ack()
                        if got1.count == 2 { break }
                    }
                    #expect(got2 == ["2.1", "2.5", "2.0"])
                    #expect(got1 == ["1.0", "1.0"])
                    let rows = try await admin.contractCensus(exchange: "ride.trips").filter { $0.role == "consumer" }
                    #expect(rows.map(\.version).sorted() == ["1", "2"])
                    #expect(rows.allSatisfy { $0.client == "dispatcher-v2" && $0.queue == "dispatcher.trips" && $0.exchange == "ride.trips" })
                    #expect(rows.first { $0.version == "2" }?.messages == 3)
                }
            }
        }
    }
}
