import NIOCore
import TestSupport
import Testing
import WireProtocol

@Suite("Codec round trips")
struct CodecTests {
    @Test("every frame type has a sample")
    func samplesCoverEveryFrameType() {
        let covered = Set(Samples.client.map(\.frameType) + Samples.server.map(\.frameType))
        #expect(covered == Set(FrameType.allCases))
    }

    @Test("client frames round-trip", arguments: Samples.client)
    func clientRoundTrip(_ message: ClientMessage) throws {
        let frame = try Samples.frame(of: message)
        #expect(try ClientMessage.decode(frame) == message)
    }

    @Test("server frames round-trip", arguments: Samples.server)
    func serverRoundTrip(_ message: ServerMessage) throws {
        let frame = try Samples.frame(of: message)
        #expect(try ServerMessage.decode(frame) == message)
    }

    @Test("properties round-trip through the raw block")
    func propertiesRoundTrip() throws {
        #expect(try Samples.raw.decode() == Samples.properties)
        #expect(Samples.raw.isPersistent)
        #expect(try RawProperties(MessageProperties()).decode() == MessageProperties())
        #expect(RawProperties(MessageProperties()).bytes.readableBytes == 0)
    }

    @Test("a 16-byte publish costs well under 40 bytes of framing")
    func publishOverhead() {
        var buffer = ByteBuffer()
        ClientMessage.publish(Publish(exchange: "", routingKey: "q", body: ByteBuffer(repeating: 7, count: 16))).encode(into: &buffer)
        #expect(buffer.readableBytes - 16 == 11)
    }

    @Test("unknown property bits are skipped by length")
    func unknownPropertyBitsSkipped() throws {
        // A newer peer sets bit 12 and appends its field after the known ones.
        var block = ByteBuffer()
        block.writeInteger(MessageProperties.Bit.messageId | (1 << 12))
        block.writeInteger(UInt8(2))
        block.writeString("id")
        block.writeBytes([1, 2, 3])  // the unknown field
        var frame = ByteBuffer()
        frame.writeInteger(UInt16(block.readableBytes))
        frame.writeBuffer(&block)
        let raw = try frame.readRawProperties()
        #expect(try raw.decode().messageId == "id")
    }

    @Test("version negotiation picks the highest common version")
    func versionNegotiation() {
        let v1_2 = ProtocolVersion(major: 1, minor: 2)
        #expect(ProtocolVersion.negotiate(offered: [.v1_0, .v1_1]) == .v1_1)
        #expect(ProtocolVersion.negotiate(offered: [v1_2, .v1_0]) == .v1_0)
        #expect(ProtocolVersion.negotiate(offered: [.v1_0]) == .v1_0, "a 1.0 client still connects")
        #expect(ProtocolVersion.negotiate(offered: [.v1_0, v1_2], supported: [.v1_0, v1_2]) == v1_2)
        #expect(ProtocolVersion.negotiate(offered: [ProtocolVersion(major: 2, minor: 0)]) == nil)
    }
}

@Suite("Stream splitting")
struct SplitTests {
    /// Decodes a byte stream delivered in the given chunk boundaries.
    static func decode(_ bytes: [UInt8], splits: [Int], magic: Bool) throws -> [ClientMessage] {
        var reader = FrameReader(decoder: FrameDecoder(maxFrameSize: 1 << 20, expectsMagic: magic))
        var out: [ClientMessage] = []
        var start = 0
        for end in splits + [bytes.count] where end >= start {
            reader.append(ByteBuffer(bytes: bytes[start..<end]))
            start = end
            while let frame = try reader.next() { out.append(try ClientMessage.decode(frame)) }
        }
        #expect(reader.bufferedBytes == 0)
        return out
    }

    @Test("any single split of the stream decodes the same")
    func everySingleSplit() throws {
        var stream = ByteBuffer(bytes: protocolMagic)
        var frames = Samples.encode(Samples.client)
        stream.writeBuffer(&frames)
        let bytes = Array(stream.readableBytesView)
        for split in 0...bytes.count {
            #expect(try Self.decode(bytes, splits: [split], magic: true) == Samples.client)
        }
    }

    @Test("byte-at-a-time delivery decodes the same")
    func byteAtATime() throws {
        let bytes = Array(Samples.encode(Samples.client).readableBytesView)
        #expect(try Self.decode(bytes, splits: Array(0..<bytes.count), magic: false) == Samples.client)
    }

    @Test("random chunkings of a long stream of varied frames decode the same", arguments: 0..<8)
    func randomChunkings(seed: Int) throws {
        var rng = SplitMix(seed: UInt64(seed) &* 7919)
        var messages: [ClientMessage] = []
        for i in 0..<300 {
            let size = [0, 1, 3, 16, 200, 5000, 70000].randomElement(using: &rng)!
            messages.append(.publish(Publish(exchange: "x", routingKey: "k\(i)", body: ByteBuffer(repeating: UInt8(i % 251), count: size))))
            if i % 7 == 0 { messages.append(.heartbeat) }
        }
        var stream = ByteBuffer(bytes: protocolMagic)
        var frames = Samples.encode(messages)
        stream.writeBuffer(&frames)
        let bytes = Array(stream.readableBytesView)
        var splits: [Int] = []
        var at = 0
        while at < bytes.count {
            at += Int.random(in: 1...9000, using: &rng)
            if at < bytes.count { splits.append(at) }
        }
        #expect(try Self.decode(bytes, splits: splits, magic: true) == messages)
    }

    @Test("server stream split at every byte decodes the same")
    func serverStreamEverySplit() throws {
        let bytes = Array(Samples.encode(Samples.server).readableBytesView)
        for split in 0...bytes.count {
            var reader = FrameReader(decoder: FrameDecoder(maxFrameSize: 1 << 20, expectsMagic: false))
            reader.append(ByteBuffer(bytes: bytes[0..<split]))
            var out: [ServerMessage] = []
            while let frame = try reader.next() { out.append(try ServerMessage.decode(frame)) }
            reader.append(ByteBuffer(bytes: bytes[split...]))
            while let frame = try reader.next() { out.append(try ServerMessage.decode(frame)) }
            #expect(out == Samples.server)
        }
    }
}

@Suite("Message envelopes: the broker's pass-through path")
struct EnvelopeTests {
    @Test("frames written around an envelope equal the frames encoded field by field")
    func sameBytes() throws {
        let envelope = MessageEnvelope(exchange: "trips", routingKey: "trip.eu", properties: Samples.raw, body: Samples.body)
        var viaEnvelope = ByteBuffer()
        Deliver.writeFrame(into: &viaEnvelope, consumerTag: 3, deliveryTag: 99, redelivered: true, envelope: envelope)
        GetOk.writeFrame(into: &viaEnvelope, requestId: 5, deliveryTag: 100, redelivered: false, messageCount: 7, envelope: envelope)
        Returned.writeFrame(into: &viaEnvelope, code: .noRoute, text: "NO_ROUTE", envelope: envelope)
        let expected = Samples.encode([
            ServerMessage.deliver(Deliver(consumerTag: 3, deliveryTag: 99, redelivered: true, exchange: "trips", routingKey: "trip.eu",
                                          properties: Samples.raw, body: Samples.body)),
            .getOk(GetOk(requestId: 5, deliveryTag: 100, redelivered: false, messageCount: 7, exchange: "trips", routingKey: "trip.eu",
                         properties: Samples.raw, body: Samples.body)),
            .returned(Returned(code: .noRoute, text: "NO_ROUTE", exchange: "trips", routingKey: "trip.eu", properties: Samples.raw,
                               body: Samples.body)),
        ])
        #expect(viaEnvelope == expected)
    }

    @Test("a parsed publish exposes its names, properties and body")
    func parsePublish() throws {
        var payload = ByteBuffer()
        Publish(exchange: "x", routingKey: "k.é", mandatory: true, properties: Samples.raw, body: Samples.body).encode(into: &payload)
        let view = try PublishView(parsing: payload)
        #expect(view.mandatory)
        #expect(try view.envelope.names() == ("x", "k.é"))
        #expect(try view.envelope.properties.decode() == Samples.properties)
        #expect(view.envelope.body == Samples.body)
        #expect(view.envelope.isPersistent)
        #expect(view.envelope.namesEqual(MessageEnvelope(exchange: "x", routingKey: "k.é", body: ByteBuffer()).nameBytes))
        #expect(!view.envelope.namesEqual(MessageEnvelope(exchange: "x", routingKey: "k.e", body: ByteBuffer()).nameBytes))
    }

    @Test("every truncation of a publish payload is refused or parses a shorter body, never traps")
    func truncatedPublish() throws {
        var payload = ByteBuffer()
        Publish(exchange: "x", routingKey: "key", properties: Samples.raw, body: Samples.body).encode(into: &payload)
        let bytes = Array(payload.readableBytesView)
        let bodyStart = bytes.count - Samples.body.readableBytes
        for length in 0..<bytes.count {
            let cut = ByteBuffer(bytes: bytes[0..<length])
            if length >= bodyStart {
                #expect(try PublishView(parsing: cut).envelope.body.readableBytes == length - bodyStart)
            } else {
                #expect(throws: BrokerError.self) { try PublishView(parsing: cut) }
            }
        }
    }

    @Test("invalid UTF-8 in a name is caught when the names are read")
    func invalidNames() throws {
        var payload = ByteBuffer(bytes: [0, 1, 0xFF, 1, 0x41, 0, 0])
        let view = try PublishView(parsing: payload)
        #expect(throws: BrokerError.self) { try view.envelope.names() }
        payload = ByteBuffer(bytes: [0x02, 0, 0, 0, 0])
        #expect(throws: BrokerError.self) { try PublishView(parsing: payload) }  // undefined flag bit
    }
}

/// Codable over field tables (the typed management rows).
@Suite struct FieldTableCodingTests {
    struct Row: Codable, Equatable {
        struct Inner: Codable, Equatable {
            var flag: Bool
            var ratio: Double
        }
        var name: String
        var count: Int64
        var small: UInt16
        var optional: String?
        var bytes: [UInt8]
        var inner: Inner
        var list: [Inner]
        var names: [String]
        var raw: FieldTable
    }

    @Test func roundTrip() throws {
        let row = Row(name: "q", count: -5, small: 7, optional: nil, bytes: [0, 255], inner: .init(flag: true, ratio: 0.5),
                      list: [.init(flag: false, ratio: 2)], names: ["a", "b"], raw: ["x": .array([.int(1)])])
        let table = try FieldTableEncoder().encode(row)
        #expect(table["name"] == .string("q"))
        #expect(table["count"] == .int(-5))
        #expect(table["optional"] == nil)
        #expect(table["bytes"] == .bytes([0, 255]))
        #expect(table["inner"] == .table(["flag": .bool(true), "ratio": .double(0.5)]))
        #expect(table["list"] == .array([.table(["flag": .bool(false), "ratio": .double(2)])]))
        #expect(table["raw"] == .table(["x": .array([.int(1)])]))
        #expect(try FieldTableDecoder().decode(Row.self, from: table) == row)
    }

    @Test func mismatchesAreErrorsNotTraps() {
        var table: FieldTable = ["name": .int(1), "count": .int(1), "small": .int(1), "bytes": .bytes([]),
                                 "inner": .table(["flag": .bool(true), "ratio": .int(1)]), "list": .array([]), "names": .array([]),
                                 "raw": .table([:])]
        #expect(throws: DecodingError.self) { try FieldTableDecoder().decode(Row.self, from: table) }
        table["name"] = .string("ok")
        table["small"] = .int(70_000)  // does not fit UInt16
        #expect(throws: DecodingError.self) { try FieldTableDecoder().decode(Row.self, from: table) }
        table["small"] = .int(1)
        table["inner"] = nil
        #expect(throws: DecodingError.self) { try FieldTableDecoder().decode(Row.self, from: table) }
    }
}
