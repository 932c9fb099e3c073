import AMQPWire
import NIOCore
import Testing

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
