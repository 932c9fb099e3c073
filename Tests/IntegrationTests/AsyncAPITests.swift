import BrokerClient
import BrokerCore
import Foundation
import NIOCore
import Testing
import WireProtocol

/// AsyncAPI 3.0 export and apply (issue 15, part 4): what a broker declares and enforces, written as a document
/// that validates against the AsyncAPI schema, and read back into the same declarations.
@Suite("AsyncAPI documents", .timeLimit(.minutes(2)))
struct AsyncAPITests {
    static let fixtures = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .appendingPathComponent("Fixtures")

    /// The AsyncAPI 3.0.0 schema (Tests/Fixtures/README.md), compiled by brokerd's own checker.
    static let asyncAPISchema: Result<JSONSchema, any Error> = Result {
        let text = try String(contentsOf: fixtures.appendingPathComponent("asyncapi-3.0.0.json"), encoding: .utf8)
        return try JSONSchema(try JSONValue.parse(text), dialect: .draft07)
    }

    static func expectValid(_ document: JSONValue, sourceLocation: SourceLocation = #_sourceLocation) throws {
        let schema = try asyncAPISchema.get()
        let failure = schema.check(document)
        #expect(failure == nil, "not a valid AsyncAPI 3.0.0 document: \(failure?.description ?? "")", sourceLocation: sourceLocation)
    }

    static let tripSchema: JSONValue = .object([
        "type": "object", "required": .array(["tripId", "fareClass"]),
        "properties": .object(["tripId": .object(["type": "string"]), "fareClass": .object(["enum": .array(["standard", "xl"])])]),
    ])

    static let contracts = [
        ExchangeContract(exchange: "ride.trips", types: [
            MessageTypeContract(name: "trip.cancelled", versions: [TypeVersionContract(version: ContractVersion(1))]),
            MessageTypeContract(name: "trip.requested", versions: [
                TypeVersionContract(version: ContractVersion(1, 3), status: .deprecated, sunset: "2027-06-30", replacement: "trip.requested 2.0"),
                TypeVersionContract(version: ContractVersion(2, 0), schema: tripSchema),
            ], validatesPayload: true),
        ]),
    ]

    static let document = AsyncAPIDocument(
        title: "ride", version: "2.1.0", server: "127.0.0.1:5680",
        exchanges: [AsyncAPIDocument.Exchange(name: "ride.dispatch", kind: .fanout), AsyncAPIDocument.Exchange(name: "ride.trips", kind: .topic)],
        queues: [AsyncAPIDocument.Queue(name: "dispatcher.trips", arguments: ["x-dead-letter-exchange": "ride.dispatch", "x-message-ttl": .number(60000)]),
                 AsyncAPIDocument.Queue(name: "trip.dispatched", durable: false, autoDelete: true)],
        bindings: [AsyncAPIDocument.Binding(exchange: "ride.trips", queue: "dispatcher.trips", routingKey: "trip.#"),
                   AsyncAPIDocument.Binding(exchange: "ride.dispatch", queue: "trip.dispatched", routingKey: "")],
        contracts: contracts)

    @Test("a document is valid against the AsyncAPI 3.0.0 schema and reads back into the same declarations")
    func roundTrip() throws {
        let json = Self.document.json
        try Self.expectValid(json)
        let back = try AsyncAPIDocument(json: json)
        #expect(back.exchanges == Self.document.exchanges)
        #expect(back.queues == Self.document.queues)
        #expect(Set(back.bindings) == Set(Self.document.bindings))
        #expect(back.contracts == Self.document.contracts)
        #expect(back.title == "ride" && back.version == "2.1.0")
        // What a reader sees: the deprecated version is marked so, and the operations list the messages.
        let message = json.value(atPointer: "/components/messages/trip.requested.v1")
        #expect(message?.value(atPointer: "/deprecated") == .bool(true))
        #expect(message?.value(atPointer: "/name") == "trip.requested")
        #expect(json.value(atPointer: "/components/messages/trip.requested.v2/payload") == Self.tripSchema)
        #expect(json.value(atPointer: "/operations/publish.ride.trips/action") == "send")
        if case .array(let refs)? = json.value(atPointer: "/operations/consume.dispatcher.trips/messages") {
            #expect(refs.count == 3, "every message of the bound exchange can reach the queue")
        } else {
            Issue.record("consume.dispatcher.trips lists no messages")
        }
    }

    @Test("the document is the one pinned in Tests/Fixtures/asyncapi-export.json (which CI validates with Python's jsonschema too)")
    func pinned() throws {
        let file = Self.fixtures.appendingPathComponent("asyncapi-export.json")
        if ProcessInfo.processInfo.environment["BROKERD_WRITE_FIXTURES"] == "1" {
            let encoder = JSONEncoder()
            encoder.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
            try (encoder.encode(Self.document.json) + Data("\n".utf8)).write(to: file)
        }
        let pinned = try JSONValue.parse(try String(contentsOf: file, encoding: .utf8))
        #expect(pinned == Self.document.json, "regenerate with BROKERD_WRITE_FIXTURES=1 swift test --filter AsyncAPITests if the mapping changed on purpose")
    }

    @Test("the ride services' document (Sources/RideContracts/ride.asyncapi.json) is valid AsyncAPI 3.0.0")
    func rideDocument() throws {
        let file = Self.fixtures.deletingLastPathComponent().deletingLastPathComponent()
            .appendingPathComponent("Sources/RideContracts/ride.asyncapi.json")
        let json = try JSONValue.parse(try String(contentsOf: file, encoding: .utf8))
        try Self.expectValid(json)
        #expect(try AsyncAPIDocument(json: json).contracts.count == 2)
    }

    @Test("the schema check is real: documents that break AsyncAPI's rules fail it")
    func schemaCatchesMistakes() throws {
        let schema = try Self.asyncAPISchema.get()
        guard case .object(var root) = Self.document.json else { Issue.record("not an object"); return }
        root["asyncapi"] = "2.6.0"
        #expect(schema.check(.object(root)) != nil, "asyncapi must be 3.0.0")
        guard case .object(var root2) = Self.document.json else { return }
        root2["info"] = .object(["title": "no version"])
        #expect(schema.check(.object(root2)) != nil, "info.version is required")
        let badOperation = Self.document.json.value(atPointer: "")
        if case .object(var root3)? = badOperation, case .object(var operations)? = root3["operations"] {
            operations["publish.ride.trips"] = .object(["action": "publish", "channel": .object(["$ref": "#/channels/exchange.ride.trips"])])
            root3["operations"] = .object(operations)
            #expect(schema.check(.object(root3)) != nil, "action is send or receive")
        }
    }

    @Test("documents brokerd cannot act on are refused naming the place", arguments: [
        (#"{"info": {}}"#, "asyncapi: missing"),
        (#"{"asyncapi": "2.6.0"}"#, "version 2.6.0; this reads AsyncAPI 3.x"),
        (#"{"asyncapi": "3.0.0", "channels": {"c": {"bindings": {"amqp": {"is": "routingKey", "exchange": {"name": "h", "type": "headers"}}}}}}"#,
         "channels.c: exchange type 'headers'"),
        (#"{"asyncapi": "3.0.0", "channels": {"c": {"address": "x", "messages": {"m": {"name": "t"}}}}}"#,
         "channels.c.messages.m: a message needs 'x-brokerd-version'"),
        (##"{"asyncapi": "3.0.0", "channels": {"c": {"address": "x", "messages": {"m": {"$ref": "#/components/messages/gone"}}}}}"##,
         "'#/components/messages/gone' points at nothing"),
        (#"{"asyncapi": "3.0.0", "channels": {"c": {"address": "x", "messages": {"m": {"name": "t", "x-brokerd-version": "1", "x-brokerd-status": "old"}}}}}"#,
         "'x-brokerd-status' is 'old'"),
    ])
    func refusals(text: String, problem: String) throws {
        do {
            _ = try AsyncAPIDocument(json: try JSONValue.parse(text))
            Issue.record("accepted: \(text)")
        } catch let error as BrokerError {
            #expect(error.code == .invalidArgument)
            #expect(error.message.contains(problem), "\(error.message)")
        }
    }

    @Test("export from a live broker, apply to a fresh one: the same topology and contracts, enforced there")
    func exportApply() async throws {
        var exported: JSONValue = .null
        try await withBroker { _, config in
            try await withConnection(config) { c in
                try await c.apply(Self.document)
                exported = try await c.exportAsyncAPI(title: "ride", version: "2.1.0", server: "127.0.0.1:5680").json
            }
        }
        try Self.expectValid(exported)
        #expect(exported == Self.document.json, "what the broker exports is what was applied")
        try await withBroker { _, config in
            try await withConnection(config) { c in
                try await c.apply(try AsyncAPIDocument(json: exported))
                #expect(try await c.exportAsyncAPI(title: "ride", version: "2.1.0", server: "127.0.0.1:5680").json == exported)
                // Applying again changes nothing (a service may apply its document at every start).
                try await c.apply(try AsyncAPIDocument(json: exported))
                // And the contract is enforced: 2.x bodies are validated.
                try await c.enableConfirms()
                try await c.publish(exchange: "ride.trips", routingKey: "trip.requested", body: #"{"tripId": "t1", "fareClass": "xl"}"#,
                                    properties: MessageProperties(type: "trip.requested", typeVersion: 2))
                await expectBrokerError(.contractViolation) {
                    try await c.publish(exchange: "ride.trips", routingKey: "trip.requested", body: #"{"tripId": "t1"}"#,
                                        properties: MessageProperties(type: "trip.requested", typeVersion: 2))
                }
                #expect(try await c.listQueues().first { $0.name == "dispatcher.trips" }?.messagesReady == 1)
            }
        }
    }
}
