import BrokerCore
import Foundation
import NIOCore
import Testing
import WireProtocol

/// The JSON parser and the schema checker that contracts use to validate bodies, and the contract path that
/// applies them. The verdicts of the shared cases are also checked against Python's jsonschema
/// (scripts/check-json-schema-cases.py, run by CI), so both sides are held to an independent implementation.
@Suite("JSON Schema")
struct JSONSchemaTests {
    struct Case: Decodable {
        struct Test: Decodable {
            var data: JSONValue
            var valid: Bool
        }
        var description: String
        var schema: JSONValue
        var tests: [Test]
    }

    static func cases(_ name: String) -> [Case] {
        let file = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .appendingPathComponent("Fixtures/\(name)")
        do {
            return try JSONDecoder().decode([Case].self, from: Data(contentsOf: file))
        } catch {
            Issue.record("cannot read \(file.path): \(error)")
            return []
        }
    }

    @Test("every shared case gets the verdict jsonschema gives (draft-07 and 2020-12; the draft-07 dialect's own cases)",
          arguments: [("json-schema-cases.json", JSONSchema.Dialect.common, 100), ("json-schema-draft07-cases.json", .draft07, 15)])
    func sharedCases(file: String, dialect: JSONSchema.Dialect, least: Int) throws {
        var checked = 0
        for c in Self.cases(file) {
            let schema = try JSONSchema(c.schema, dialect: dialect)
            for test in c.tests {
                let failure = schema.check(test.data)
                #expect((failure == nil) == test.valid, "\(c.description): \(test.data.jsonText) -> \(failure?.description ?? "valid")")
                checked += 1
            }
        }
        #expect(checked >= least)
    }

    @Test("a failure names where in the body and which rule", arguments: [
        (#"{"pickup": {"latitude": 95}}"#, "/pickup/latitude: 95 is more than the maximum 90"),
        (#"{"pickup": {}}"#, "/pickup: the required member 'latitude' is missing"),
        (#"{"pickup": {"latitude": "north"}}"#, #"/pickup/latitude: "north" is a string, not number"#),
        (#"{"stops": [{"latitude": 1}, {"latitude": -91}]}"#, "/stops/1/latitude: -91 is less than the minimum -90"),
        (#"{"fare": "gold"}"#, #"/fare: "gold" is not one of "standard", "xl""#),
        (#"{"a/b": 1}"#, "the body: the member 'a/b' is not allowed"),
        (#"[]"#, "the body: an array of 0 is an array, not object"),
    ])
    func failureTexts(body: String, text: String) throws {
        let schema = try JSONSchema(try JSONValue.parse(#"""
            {"type": "object", "additionalProperties": false,
             "properties": {"pickup": {"$ref": "#/$defs/point"}, "stops": {"type": "array", "items": {"$ref": "#/$defs/point"}},
                            "fare": {"enum": ["standard", "xl"]}},
             "$defs": {"point": {"type": "object", "required": ["latitude"],
                                 "properties": {"latitude": {"type": "number", "minimum": -90, "maximum": 90}}}}}
            """#))
        let failure = try #require(schema.check(try JSONValue.parse(body)))
        #expect(failure.description == text)
    }

    @Test("what cannot be checked as written is refused when compiled, naming where", arguments: [
        (#"{"prefixItems": [{}]}"#, "schema root: 'prefixItems' exists only in draft 2020-12"),
        (#"{"properties": {"a": {"minimum": "1"}}}"#, "schema /properties/a/minimum: 'minimum' must be a number"),
        (#"{"properties": {"a": {"maxLenght": 3}}}"#, "schema /properties/a: the keyword 'maxLenght' is not supported"),
        (##"{"$ref": "#/$defs/missing"}"##, "schema /$ref: '#/$defs/missing' points at nothing"),
        (#"{"$ref": "https://example.com/s.json"}"#, "only references within the schema are supported"),
        (##"{"$ref": "#/$defs/a", "type": "object", "$defs": {"a": {}}}"##, "'$ref' must stand alone"),
        (##"{"$defs": {"a": {"$ref": "#/$defs/b"}, "b": {"$ref": "#/$defs/a"}}, "$ref": "#/$defs/a"}"##, "references that only point at each other"),
        (#"{"pattern": "(unclosed"}"#, "'(unclosed' is not a regular expression"),
        (#"{"items": [{"type": "string"}]}"#, "'items' as an array means different things"),
        (#"{"type": "text"}"#, "'text' is not a JSON Schema type"),
        (#"{"required": ["a", "a"]}"#, "'required' must list distinct member names"),
        (#"{"multipleOf": 0}"#, "'multipleOf' must be more than 0"),
        (#"{"minLength": -1}"#, "'minLength' must be a non-negative integer"),
        (#"{"anyOf": []}"#, "'anyOf' must be a non-empty array of schemas"),
        (#"3"#, "a schema is an object or a boolean"),
        (#"{"$defs": {"unused": {"type": 7}}}"#, "schema /$defs/unused/type"),
    ])
    func compileErrors(schema: String, text: String) throws {
        do {
            _ = try JSONSchema(try JSONValue.parse(schema))
            Issue.record("\(schema) compiled")
        } catch let error as JSONSchema.CompileError {
            #expect(error.description.contains(text), "\(error.description)")
        }
    }

    @Test("a hostile body costs bounded work: uniqueItems over 200,000 items by hashing, an exponentially branching schema cut off by the step budget", .timeLimit(.minutes(5)))
    func boundedWork() throws {
        let unique = try JSONSchema(.object(["uniqueItems": .bool(true)]))
        var items = (0..<200_000).map { JSONValue.number(Double($0)) }
        #expect(unique.check(.array(items)) == nil)
        items.append(.number(5))
        #expect(unique.check(.array(items))?.reason == "items 5 and 200000 are equal, and the items must be unique")

        // Each level checks its items twice (the first branch fails only after the whole subtree): 2^depth steps.
        let branching = try JSONSchema(try JSONValue.parse(##"{"anyOf": [{"items": {"$ref": "#"}, "contains": false}, {"items": {"$ref": "#"}}]}"##))
        func nested(_ depth: Int) -> JSONValue { depth == 0 ? .array([]) : .array([nested(depth - 1)]) }
        #expect(branching.check(nested(4)) == nil, "a shallow body is checked normally")
        let failure = try #require(branching.check(nested(60)))
        #expect(failure.reason.contains("too complex to check against the schema (more than 1000000 steps)"), "\(failure)")
    }

    @Test("the parser reads RFC 8259 JSON: escapes, surrogate pairs, numbers, nesting")
    func parsing() throws {
        let value = try JSONValue.parse(#" {"a": [1, -0.5, 2e3, 1E-2, true, false, null], "s": "tab\t \"q\" \u00e9 \ud83d\ude95 \/", "": {}} "#)
        #expect(value == .object([
            "a": .array([.number(1), .number(-0.5), .number(2000), .number(0.01), .bool(true), .bool(false), .null]),
            "s": .string("tab\t \"q\" é 🚕 /"),
            "": .object([:]),
        ]))
        #expect(try JSONValue.parse(value.jsonText) == value, "what jsonText writes parses back to the same value")
        #expect(try JSONValue.parse(#"{"k": 1, "k": 2}"#) == .object(["k": .number(2)]), "the last duplicate wins")
    }

    @Test("malformed input is an error with an offset, never a trap", arguments: [
        ("", "unexpected end of input"), ("{", "expected a member name"), (#"{"a" 1}"#, "expected ':'"),
        ("[1,]", "unexpected character ']'"), ("[1 2]", "expected ',' or ']'"), ("01", "unexpected text after"),
        ("-", "a number needs digits"), ("1.", "a fraction needs digits"), ("1e", "an exponent needs digits"),
        ("tru", "truncated literal"), ("nul1", "invalid literal"), (#""abc"#, "unterminated string"),
        ("\"a\u{01}b\"", "control character"), (#""\x""#, "invalid escape"), (#""\u12G4""#, "invalid hex digit"),
        (#""\ud83d""#, "without its low surrogate"), (#""\ude95""#, "without its high surrogate"),
        ("1e999", "number out of range"), ("{} {}", "unexpected text after"),
    ])
    func malformed(text: String, reason: String) {
        do {
            _ = try JSONValue.parse(text)
            Issue.record("\(text) parsed")
        } catch {
            #expect(error.reason.contains(reason), "\(text): \(error)")
        }
    }

    @Test("invalid UTF-8 in a string and nesting past the limit are refused")
    func hostileBytes() throws {
        let bad: [UInt8] = Array(#"{"a": ""#.utf8) + [0xC3, 0x28] + Array(#""}"#.utf8)
        #expect(throws: JSONValue.ParseError.self) { try bad.withUnsafeBytes { try JSONValue.parse($0) } }
        let deep = String(repeating: "[", count: 100_000) + String(repeating: "]", count: 100_000)
        do {
            _ = try JSONValue.parse(deep)
            Issue.record("100,000 levels parsed")
        } catch {
            #expect(error.reason.contains("nested deeper than 128"))
        }
        let ok = String(repeating: "[", count: 100) + String(repeating: "]", count: 100)
        _ = try JSONValue.parse(ok)
    }
}

// MARK: - On the publish path

extension ContractTests {
    static let pointSchema = try! JSONValue.parse(#"""
        {"type": "object", "required": ["tripId", "fareClass"],
         "properties": {"tripId": {"type": "string", "minLength": 1}, "fareClass": {"enum": ["standard", "xl"]}}}
        """#)  // a literal this file controls

    static func schemaContract(validate: Bool) -> ExchangeContract {
        ExchangeContract(exchange: "ride.trips", types: [
            MessageTypeContract(name: "trip.requested", versions: [
                TypeVersionContract(version: ContractVersion(1, 2)),
                TypeVersionContract(version: ContractVersion(2, 0), schema: pointSchema),
            ], validatesPayload: validate),
        ])
    }

    static func publish(_ h: Harness, _ session: Session, major: UInt16, body: String) throws {
        let properties = MessageProperties(type: "trip.requested", typeVersion: major)
        try h.send(session, .publish(Publish(exchange: "ride.trips", routingKey: "trip.requested",
                                             properties: RawProperties(properties), body: ByteBuffer(string: body))))
    }

    @Test("a type that validates: a matching body is routed, a body off its schema or not JSON is refused naming the rule; versions without a schema are not checked")
    func schemaValidation() throws {
        let (h, session, transport) = try Self.setUp()
        try Self.apply(h, session, Self.schemaContract(validate: true))
        #expect(Self.error(transport.take(), request: 3) == nil)
        try Self.publish(h, session, major: 2, body: #"{"tripId": "t1", "fareClass": "xl"}"#)           // 1: accepted
        try Self.publish(h, session, major: 2, body: #"{"tripId": "t1", "fareClass": "gold"}"#)         // 2: off schema
        try Self.publish(h, session, major: 2, body: #"{"tripId": "t1""#)                               // 3: not JSON
        try Self.publish(h, session, major: 1, body: "anything at all")                                  // 4: 1.x has no schema
        let nacks = Self.nacks(transport.take())
        #expect(nacks.map(\.sequence) == [2, 3])
        #expect(nacks.allSatisfy { $0.code == .contractViolation })
        #expect(nacks.first?.text == #"trip.requested 2.0 on exchange 'ride.trips': the body does not match the schema: /fareClass: "gold" is not one of "standard", "xl""#)
        #expect(nacks.last?.text.contains("the body is not JSON (expected ',' or '}' in an object at byte 15)") == true, "\(nacks.last?.text ?? "")")
        #expect(h.broker.queueInfo("dispatcher.trips")?.ready == 2, "the accepted ones, and only those, are queued")
    }

    @Test("validation is opt-in: without validate, the schema is kept (and shown) but bodies are not parsed")
    func schemaOptIn() throws {
        let (h, session, transport) = try Self.setUp()
        try Self.apply(h, session, Self.schemaContract(validate: false))
        try Self.publish(h, session, major: 2, body: "not json")
        #expect(Self.nacks(transport.take()).isEmpty)
        #expect(h.broker.queueInfo("dispatcher.trips")?.ready == 1)
    }

    @Test("a schema that does not compile is refused at apply (INVALID_ARGUMENT naming the type, version and place), and the old contract holds")
    func badSchema() throws {
        let (h, session, transport) = try Self.setUp()
        var contract = Self.schemaContract(validate: false)
        contract.types[0].versions[1].schema = .object(["properties": .object(["tripId": .object(["maxLenght": .number(3)])])])
        try Self.apply(h, session, contract)
        let error = try #require(Self.error(transport.take(), request: 3))
        #expect(error.code == .invalidArgument)
        #expect(error.text.hasPrefix("trip.requested 2.0: the schema /properties/tripId: the keyword 'maxLenght' is not supported"), "\(error.text)")
        try Self.publish(h, session, major: 2, body: "{}")
        #expect(Self.nacks(transport.take()).isEmpty, "the contract before the refused apply (no schema) still holds")
    }
}
