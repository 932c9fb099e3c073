import AMQPWire
import Foundation
import NIOCore
import Testing
import WireProtocol

/// AMQP 0-9-1's frames, field tables and content headers: round trips, streams split anywhere, and malformed
/// input refused with the reply code the specification prescribes, never a trap.
@Suite("AMQP 0-9-1 wire")
struct AMQPWireTests {
    static let table: AMQPTable = [
        "bool": .bool(true), "i8": .int8(-8), "u8": .uint8(200), "i16": .int16(-300), "u16": .uint16(60000),
        "i32": .int32(-70000), "u32": .uint32(4_000_000_000), "i64": .int64(-1 << 40), "f": .float(1.5), "d": .double(-2.25),
        "dec": .decimal(scale: 2, value: 12345), "s": .string("héllo"), "raw": .longString([0xFF, 0x00]),
        "ts": .timestamp(1_796_083_200), "void": .void, "bytes": .bytes([1, 2, 3]),
        "nested": .table(["x-death": .array([.table(["count": .int64(2), "queue": .string("q")]), .int32(1), .void])]),
    ]

    @Test("a field table with every value type round-trips, in order, to the same bytes")
    func tableRoundTrip() throws {
        var buffer = ByteBuffer()
        try buffer.writeAMQPTable(Self.table)
        let bytes = buffer
        let back = try buffer.readAMQPTable("test")
        #expect(back == Self.table)
        #expect(back.entries.map(\.name) == Self.table.entries.map(\.name), "order kept")
        #expect(buffer.readableBytes == 0)
        var again = ByteBuffer()
        try again.writeAMQPTable(back)
        #expect(again == bytes)
        #expect(back["s"]?.stringValue == "héllo" && back["u32"]?.integerValue == 4_000_000_000)
    }

    @Test("known bytes: what RabbitMQ's clients send for {\"x-message-ttl\": 60000 as I} and a long string")
    func knownBytes() throws {
        var buffer = ByteBuffer()
        try buffer.writeAMQPTable(["x-message-ttl": .int32(60000), "a": .string("b")])
        let expected: [UInt8] = [0, 0, 0, 27,
                                 13] + Array("x-message-ttl".utf8) + [UInt8(ascii: "I"), 0, 0, 0xEA, 0x60,
                                 1, UInt8(ascii: "a"), UInt8(ascii: "S"), 0, 0, 0, 1, UInt8(ascii: "b")]
        #expect(Array(buffer.readableBytesView) == expected)
    }

    @Test("malformed tables are syntax errors naming the field", arguments: [
        ([0, 0, 0, 9, 1, 0x61, 0x53, 0, 0, 0, 9, 0, 0] as [UInt8], "a long string of 9 bytes is longer than its frame"),
        ([0, 0, 0, 3, 1, 0x61, 0x51], "unknown field type 'Q'"),
        ([0, 0, 0, 4, 1, 0x61, 0x49, 0], "truncated field value"),
        ([0, 0, 0, 40, 1], "a table of 40 bytes is longer than its frame"),
        ([0, 0], "truncated table"),
    ])
    func malformedTables(bytes: [UInt8], text: String) {
        var buffer = ByteBuffer(bytes: bytes)
        do {
            _ = try buffer.readAMQPTable("args")
            Issue.record("\(bytes) read")
        } catch {
            #expect(error.code == .syntaxError)
            #expect(error.text.contains(text), "\(error)")
        }
    }

    @Test("tables nested past the limit are refused, not recursed into")
    func deepNesting() throws {
        var value = AMQPValue.void
        for _ in 0..<40 { value = .table(["n": value]) }
        var buffer = ByteBuffer()
        try buffer.writeAMQPTable(["deep": value])
        do {
            _ = try buffer.readAMQPTable("args")
            Issue.record("40 levels read")
        } catch {
            #expect(error.text.contains("nested deeper than 32"))
        }
    }

    @Test("frames round-trip and are read from a stream split at every byte")
    func frames() throws {
        var header = ByteBuffer()
        try AMQPContentHeader(bodySize: 5, properties: AMQPBasicProperties(contentType: "text/plain", deliveryMode: 2)).write(to: &header)
        let frames = [
            AMQPFrame(kind: .method, channel: 1, payload: ByteBuffer(bytes: [0, 60, 0, 40, 0, 0])),
            AMQPFrame(kind: .header, channel: 1, payload: header),
            AMQPFrame(kind: .body, channel: 1, payload: ByteBuffer(string: "hello")),
            AMQPFrame(kind: .heartbeat, channel: 0, payload: ByteBuffer()),
        ]
        var stream = ByteBuffer()
        for frame in frames { frame.write(to: &stream) }
        let bytes = Array(stream.readableBytesView)
        for split in 1..<bytes.count {
            var buffer = ByteBuffer()
            var read: [AMQPFrame] = []
            for chunk in [Array(bytes[..<split]), Array(bytes[split...])] {
                buffer.writeBytes(chunk)
                while let frame = try AMQPFrame.read(from: &buffer, maxFrameSize: 131_072) { read.append(frame) }
            }
            #expect(read == frames, "split at \(split)")
        }
    }

    @Test("bad frames are frame errors: unknown type, over frame-max (before buffering), a wrong end octet, a heartbeat with a payload", arguments: [
        ([9, 0, 1, 0, 0, 0, 0, 0xCE] as [UInt8], "unknown frame type 9"),
        ([1, 0, 1, 0, 1, 0, 0], "larger than the negotiated frame-max 4096"),
        ([3, 0, 1, 0, 0, 0, 1, 0x41, 0xCD], "does not end with 0xCE"),
        ([8, 0, 0, 0, 0, 0, 1, 0x41, 0xCE], "a heartbeat frame must be empty"),
    ])
    func badFrames(bytes: [UInt8], text: String) {
        var buffer = ByteBuffer(bytes: bytes)
        do {
            _ = try AMQPFrame.read(from: &buffer, maxFrameSize: 4096)
            Issue.record("\(bytes) read")
        } catch {
            #expect(error.code == .frameError && error.code.closesConnection)
            #expect(error.text.contains(text), "\(error)")
        }
    }

    @Test("content headers: every property round-trips; none at all is 14 bytes; leftovers and continuation flags are refused")
    func contentHeaders() throws {
        let all = AMQPBasicProperties(contentType: "application/json", contentEncoding: "gzip", headers: ["k": .int32(1)], deliveryMode: 2,
                                      priority: 9, correlationId: "c-1", replyTo: "amq.rabbitmq.reply-to", expiration: "60000",
                                      messageId: "m-1", timestamp: 1_796_083_200, type: "trip.requested", userId: "guest",
                                      appId: "trip", clusterId: "")
        for properties in [all, AMQPBasicProperties(), AMQPBasicProperties(messageId: "only")] {
            var buffer = ByteBuffer()
            try AMQPContentHeader(bodySize: 1 << 33, properties: properties).write(to: &buffer)
            let back = try AMQPContentHeader.read(from: buffer)
            #expect(back.properties == properties && back.bodySize == 1 << 33 && back.classId == 60)
        }
        var empty = ByteBuffer()
        try AMQPContentHeader(bodySize: 0).write(to: &empty)
        #expect(empty.readableBytes == 14)

        var extra = empty
        extra.writeInteger(UInt8(0))
        #expect(throws: AMQPWireError.self) { try AMQPContentHeader.read(from: extra) }
        let continued = ByteBuffer(bytes: [0, 60, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1])
        do {
            _ = try AMQPContentHeader.read(from: continued)
            Issue.record("a continuation flag was accepted")
        } catch {
            #expect(error.code == .frameError && error.text.contains("does not define"))
        }
        let truncated = ByteBuffer(bytes: [0, 60, 0, 0, 0, 0, 0, 0, 0, 0, 0, 5, 0x80, 0, 9, 0x61])
        #expect(throws: AMQPWireError.self) { try AMQPContentHeader.read(from: truncated) }
    }

    @Test("short strings over 255 bytes are refused when written")
    func longShortString() {
        var buffer = ByteBuffer()
        #expect(throws: AMQPWireError.self) { try buffer.writeAMQPShortString(String(repeating: "x", count: 256)) }
    }
}

// MARK: - Methods

extension AMQPWireTests {
    /// A value of each type that is not the type's zero, so a dropped argument shows.
    static func sample(_ type: AMQPArgumentType, _ index: Int) -> AMQPArgument {
        switch type {
        case .octet: .octet(UInt8(index + 1))
        case .short: .short(UInt16(1000 + index))
        case .long: .long(UInt32(100_000 + index))
        case .longlong: .longlong(UInt64(1) << 40 + UInt64(index))
        case .shortString: .shortString("arg\(index)")
        case .longString: .longString(Array("long \(index)".utf8))
        case .bit: .bit(index % 2 == 0)
        case .table: .table(["k\(index)": .int32(Int32(index))])
        case .timestamp: .timestamp(1_796_083_200)
        }
    }

    @Test("every method of the specification round-trips with every argument set")
    func everyMethod() throws {
        #expect(AMQPMethodSignature.all.count == 64)
        for signature in AMQPMethodSignature.all {
            var values: [String: AMQPArgument] = [:]
            for (index, argument) in signature.arguments.enumerated() { values[argument.name] = Self.sample(argument.type, index) }
            let method = AMQPMethod(signature.name, values)
            var buffer = ByteBuffer()
            try method.write(to: &buffer)
            let back = try AMQPMethod.read(from: buffer)
            #expect(back == method, "\(signature.name)")
            #expect(back.signature.name == signature.name)
        }
    }

    @Test("known bytes: consecutive bits pack into one octet, low bit first (queue.declare durable + auto-delete; basic.publish mandatory)")
    func bitPacking() throws {
        var declare = ByteBuffer()
        try AMQPMethod("queue.declare", ["queue": .shortString("q"), "durable": .bit(true), "auto-delete": .bit(true)]).write(to: &declare)
        // class 50, method 10, ticket 0, "q", bits passive(0) durable(1) exclusive(2) auto-delete(3) nowait(4), empty table
        #expect(Array(declare.readableBytesView) == [0, 50, 0, 10, 0, 0, 1, UInt8(ascii: "q"), 0b0000_1010, 0, 0, 0, 0])
        var publish = ByteBuffer()
        try AMQPMethod("basic.publish", ["exchange": .shortString(""), "routing-key": .shortString("rk"), "mandatory": .bit(true)]).write(to: &publish)
        #expect(Array(publish.readableBytesView) == [0, 60, 0, 40, 0, 0, 0, 2, UInt8(ascii: "r"), UInt8(ascii: "k"), 0b01])
        #expect(try AMQPMethod.read(from: publish)["mandatory"] == .bit(true))
        #expect(AMQPMethodSignature.named("basic.publish")?.content == true)
        #expect(AMQPMethodSignature.find(classId: 85, methodId: 10)?.name == "confirm.select")
    }

    @Test("bad method frames: unknown methods are command-invalid, truncated or padded ones syntax errors", arguments: [
        ([0, 60, 0, 99] as [UInt8], AMQPWireError.Code.commandInvalid, "unknown method 60.99"),
        ([0, 30, 0, 10, 0, 0], .commandInvalid, "unknown method 30.10"),
        ([0, 60], .frameError, "shorter than its class and method ids"),
        ([0, 60, 0, 40, 0, 0, 0, 2, 0x72], .syntaxError, "basic.publish routing-key: truncated short string"),
        ([0, 60, 0, 40, 0, 0, 0, 0], .syntaxError, "truncated argument 'mandatory'"),
        ([0, 20, 0, 41, 9], .syntaxError, "channel.close-ok: 1 bytes after its last argument"),
    ])
    func badMethods(bytes: [UInt8], code: AMQPWireError.Code, text: String) {
        do {
            _ = try AMQPMethod.read(from: ByteBuffer(bytes: bytes))
            Issue.record("\(bytes) read")
        } catch {
            #expect(error.code == code)
            #expect(error.text.contains(text), "\(error)")
        }
    }
}

// MARK: - Held to an independent client

extension AMQPWireTests {
    struct PikaEntry: Decodable {
        var pika: String
        var hex: String
        var arguments: [[Value]]

        enum Value: Decodable {
            case text(String), number(UInt64), flag(Bool), table([String: String])
            init(from decoder: any Decoder) throws {
                let c = try decoder.singleValueContainer()
                if let b = try? c.decode(Bool.self) { self = .flag(b) }
                else if let n = try? c.decode(UInt64.self) { self = .number(n) }
                else if let s = try? c.decode(String.self) { self = .text(s) }
                else { self = .table(try c.decode([String: String].self)) }
            }
        }
    }

    static func bytes(hex: String) -> [UInt8] {
        var out: [UInt8] = []
        var index = hex.startIndex
        while index < hex.endIndex {
            let next = hex.index(index, offsetBy: 2)
            out.append(UInt8(hex[index..<next], radix: 16) ?? 0)
            index = next
        }
        return out
    }

    @Test("every method as pika encodes it (Tests/Fixtures/amqp-methods.json, checked against pika by CI) reads to the same arguments and writes back to the same bytes")
    func pikaBytes() throws {
        let file = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .appendingPathComponent("Fixtures/amqp-methods.json")
        let entries = try JSONDecoder().decode([PikaEntry].self, from: Data(contentsOf: file))
        #expect(entries.count == AMQPMethodSignature.all.count, "pika and AMQPWire know the same methods")
        for entry in entries {
            let bytes = Self.bytes(hex: entry.hex)
            let method = try AMQPMethod.read(from: ByteBuffer(bytes: bytes))
            #expect(method.arguments.count == entry.arguments.count, "\(entry.pika)")
            for (argument, pair) in zip(method.arguments, entry.arguments) {
                guard pair.count == 2 else { Issue.record("\(entry.pika): malformed fixture pair"); continue }
                let expected: AMQPArgument? = switch (argument, pair[1]) {
                case (.octet, .number(let n)): .octet(UInt8(n))
                case (.short, .number(let n)): .short(UInt16(n))
                case (.long, .number(let n)): .long(UInt32(n))
                case (.longlong, .number(let n)): .longlong(n)
                case (.shortString, .text(let s)): .shortString(s)
                case (.longString, .text(let s)): .longString(Array(s.utf8))
                case (.bit, .flag(let b)): .bit(b)
                case (.table, .table(let t)): .table(AMQPTable(t.sorted { $0.key < $1.key }.map { ($0.key, AMQPValue.string($0.value)) }))
                default: nil
                }
                #expect(argument == expected, "\(entry.pika): \(argument) vs the fixture's \(pair)")
            }
            var written = ByteBuffer()
            try method.write(to: &written)
            #expect(Array(written.readableBytesView) == bytes, "\(entry.pika) writes the bytes pika wrote")
        }
    }
}

// MARK: - Content assembly

extension AMQPWireTests {
    static func frame(_ method: AMQPMethod) throws -> AMQPFrame {
        var payload = ByteBuffer()
        try method.write(to: &payload)
        return AMQPFrame(kind: .method, channel: 1, payload: payload)
    }

    static func header(_ size: UInt64, classId: UInt16 = 60) throws -> AMQPFrame {
        var payload = ByteBuffer()
        try AMQPContentHeader(classId: classId, bodySize: size, properties: AMQPBasicProperties(deliveryMode: 2)).write(to: &payload)
        return AMQPFrame(kind: .header, channel: 1, payload: payload)
    }

    static func body(_ text: String) -> AMQPFrame { AMQPFrame(kind: .body, channel: 1, payload: ByteBuffer(string: text)) }

    @Test("a publish is assembled from its method, header and any number of body frames into a native envelope; methods without content pass straight through")
    func assembly() throws {
        var assembler = AMQPContentAssembler(maximumBodySize: 1 << 20)
        let publish = AMQPMethod("basic.publish", ["exchange": .shortString("ride"), "routing-key": .shortString("q"), "mandatory": .bit(true)])
        #expect(try assembler.feed(try Self.frame(publish), translate: Self.noTranslation) == nil)
        #expect(assembler.isAssembling)
        #expect(try assembler.feed(try Self.header(11), translate: Self.noTranslation) == nil)
        #expect(try assembler.feed(Self.body("hello "), translate: Self.noTranslation) == nil)
        guard case .publish(let command)? = try assembler.feed(Self.body("world"), translate: Self.noTranslation) else {
            Issue.record("no command")
            return
        }
        #expect(command.exchange == "ride" && command.mandatory && !command.immediate)
        #expect(try command.envelope.names() == ("ride", "q"))
        #expect(command.envelope.isPersistent && String(buffer: command.envelope.body) == "hello world", "delivery-mode 2 alone: persistent")
        #expect(!assembler.isAssembling)
        // An empty body completes at its header; other properties go through the translation.
        _ = try assembler.feed(try Self.frame(publish), translate: Self.noTranslation)
        var header = ByteBuffer()
        try AMQPContentHeader(bodySize: 0, properties: AMQPBasicProperties(messageId: "m")).write(to: &header)
        var translated: [AMQPBasicProperties] = []
        guard case .publish(let empty)? = try assembler.feed(AMQPFrame(kind: .header, channel: 1, payload: header), translate: { (properties: AMQPBasicProperties) throws(AMQPWireError) -> RawProperties in
            translated.append(properties)
            return RawProperties(try AMQPNativeMapping.nativeProperties(properties))
        }) else { Issue.record("no command"); return }
        #expect(empty.envelope.bodyLength == 0 && translated.map(\.messageId) == ["m"])
        #expect(try empty.envelope.properties.decode().messageId == "m")
        let ack = AMQPMethod("basic.ack", ["delivery-tag": .longlong(7), "multiple": .bit(true)])
        guard case .method(let passed)? = try assembler.feed(try Self.frame(ack), translate: Self.noTranslation) else { Issue.record("no method"); return }
        #expect(passed == ack)
    }

    /// A translation the test does not expect to be called.
    static func noTranslation(_ properties: AMQPBasicProperties) throws(AMQPWireError) -> RawProperties {
        Issue.record("translation called for \(properties)")
        return .empty
    }

    @Test("frames out of order and oversized content are refused with the reply code the protocol prescribes")
    func assemblyErrors() throws {
        let publish = AMQPMethod("basic.publish")
        func expectError(_ frames: [AMQPFrame], _ code: AMQPWireError.Code, _ text: String, sourceLocation: SourceLocation = #_sourceLocation) {
            var assembler = AMQPContentAssembler(maximumBodySize: 100)
            do {
                for frame in frames { _ = try assembler.feed(frame) { _ throws(AMQPWireError) in .empty } }
                Issue.record("accepted", sourceLocation: sourceLocation)
            } catch {
                #expect(error.code == code && error.text.contains(text), "\(error)", sourceLocation: sourceLocation)
            }
        }
        expectError([Self.body("x")], .unexpectedFrame, "no content-carrying method before it")
        expectError([try Self.frame(publish), try Self.frame(publish)], .unexpectedFrame, "expected the content header of basic.publish")
        expectError([try Self.frame(publish), try Self.header(3), try Self.frame(publish)], .unexpectedFrame, "expected body frames")
        expectError([try Self.frame(publish), try Self.header(3), Self.body("toolong")], .frameError, "more than the 3 bytes")
        expectError([try Self.frame(publish), try Self.header(101)], .preconditionFailed, "message size 101 is larger than the maximum 100")
        expectError([try Self.frame(publish), try Self.header(1, classId: 50)], .frameError, "a content header of class 50")
    }
}

// MARK: - Authentication

extension AMQPWireTests {
    @Test("PLAIN and AMQPLAIN responses round-trip; the AMQPLAIN bytes are a field table's entries without its length")
    func credentials() throws {
        let credentials = AMQPCredentials(user: "trip", password: "s3cret é")
        for mechanism in ["PLAIN", "AMQPLAIN"] {
            #expect(try AMQPCredentials.read(mechanism: mechanism, response: try credentials.response(mechanism: mechanism)) == credentials)
        }
        #expect(try AMQPCredentials.read(mechanism: "PLAIN", response: Array("admin\u{0}guest\u{0}guest".utf8))
                == AMQPCredentials(user: "guest", password: "guest"), "an authzid is allowed and ignored")
        // What pika 1.4's table encoder writes for {LOGIN: guest, PASSWORD: guest}, after its 4-byte length
        // (checked by hand: pika.data.encode_table); the AMQPLAIN form that RabbitMQ's Java client sends.
        let pika: [UInt8] = [5] + Array("LOGIN".utf8) + [UInt8(ascii: "S"), 0, 0, 0, 5] + Array("guest".utf8)
            + [8] + Array("PASSWORD".utf8) + [UInt8(ascii: "S"), 0, 0, 0, 5] + Array("guest".utf8)
        #expect(try AMQPCredentials(user: "guest", password: "guest").response(mechanism: "AMQPLAIN") == pika)
    }

    @Test("malformed or unknown responses are access-refused, and never echo the password", arguments: [
        ("PLAIN", Array("guest-and-no-nul".utf8), "authzid NUL user NUL password"),
        ("PLAIN", [0, 0] + Array("secretpw".utf8), "needs a UTF-8 user name"),
        ("AMQPLAIN", [5] + Array("LOGIN".utf8) + [UInt8(ascii: "S"), 0, 0, 0, 9], "field table of LOGIN and PASSWORD"),
        ("AMQPLAIN", [5] + Array("LOGIN".utf8) + [UInt8(ascii: "S"), 0, 0, 0, 1, 0x61], "needs LOGIN and PASSWORD"),
        ("EXTERNAL", Array("secretpw".utf8), "unknown authentication mechanism 'EXTERNAL'; brokerd offers PLAIN AMQPLAIN"),
    ])
    func badCredentials(mechanism: String, response: [UInt8], text: String) {
        do {
            _ = try AMQPCredentials.read(mechanism: mechanism, response: response)
            Issue.record("accepted")
        } catch {
            #expect(error.code == .accessRefused && error.text.contains(text), "\(error)")
            #expect(!error.text.contains("secretpw"))
        }
    }
}
