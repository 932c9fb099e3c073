import NIOCore
import TestSupport
import Testing
import WireProtocol

@Suite("Malformed input")
struct MalformedTests {
    static func frame(_ type: UInt8, _ payload: [UInt8]) -> Frame {
        Frame(type: type, payload: ByteBuffer(bytes: payload))
    }

    static func error(_ body: () throws -> Void) -> BrokerError? {
        do {
            try body()
            return nil
        } catch let error as BrokerError {
            return error
        } catch {
            Issue.record("expected BrokerError, got \(error)")
            return nil
        }
    }

    @Test("an oversized length is refused before buffering the payload")
    func oversized() {
        var decoder = FrameDecoder(maxFrameSize: 4096, expectsMagic: false)
        var buffer = ByteBuffer()
        buffer.writeInteger(UInt32(1_000_000))
        buffer.writeInteger(UInt8(0x20))
        let error = Self.error { _ = try decoder.decode(buffer: &buffer) }
        #expect(error?.code == .frameTooLarge)
    }

    @Test("a frame's declared length reserves memory only as its bytes arrive")
    func partialReservation() throws {
        var reader = FrameReader(decoder: FrameDecoder(maxFrameSize: 8 << 20, expectsMagic: false))
        // A length prefix claiming 8 MiB and a few bytes: before, 8 MiB were allocated at once.
        var head = ByteBuffer()
        head.writeInteger(UInt32((8 << 20) - 4))
        head.writeBytes([0x20, 1, 2, 3])
        reader.append(head)
        #expect(try reader.next() == nil)
        #expect(reader.reservedBytes <= FrameReader.reservationAhead, "\(reader.reservedBytes) bytes reserved for 8 bytes received")
        // The rest arriving in pieces completes the same frame, whole.
        let total = 8 << 20
        var sent = 8
        var chunk = 0
        while sent < total {
            let size = min(300_000, total - sent)
            reader.append(ByteBuffer(repeating: UInt8(truncatingIfNeeded: chunk), count: size))
            sent += size
            chunk += 1
            if sent < total {
                #expect(try reader.next() == nil)
                #expect(reader.reservedBytes <= 2 * sent + FrameReader.reservationAhead)
            }
        }
        let frame = try #require(try reader.next())
        #expect(frame.type == 0x20 && frame.payload.readableBytes == total - 5)
        #expect(reader.bufferedBytes == 0)
    }

    @Test("a zero length is a frame error")
    func zeroLength() {
        var decoder = FrameDecoder(expectsMagic: false)
        var buffer = ByteBuffer(bytes: [0, 0, 0, 0, 1])
        #expect(Self.error { _ = try decoder.decode(buffer: &buffer) }?.code == .frameError)
    }

    @Test("wrong magic bytes are refused")
    func badMagic() {
        var decoder = FrameDecoder(expectsMagic: true)
        var buffer = ByteBuffer(string: "GET / HTTP/1.1\r\n")
        #expect(Self.error { _ = try decoder.decode(buffer: &buffer) }?.code == .frameError)
    }

    @Test("unknown frame types and wrong-direction frames are refused")
    func unknownTypes() {
        #expect(Self.error { _ = try ClientMessage.decode(Self.frame(0x7F, [])) }?.code == .unknownFrame)
        #expect(Self.error { _ = try ClientMessage.decode(Self.frame(FrameType.deliver.rawValue, [])) }?.code == .unknownFrame)
        #expect(Self.error { _ = try ServerMessage.decode(Self.frame(FrameType.publish.rawValue, [])) }?.code == .unknownFrame)
    }

    @Test("trailing bytes are a frame error", arguments: Samples.client.filter { if case .publish = $0 { false } else { true } })
    func trailingBytes(_ message: ClientMessage) throws {
        var frame = try Samples.frame(of: message)
        frame.payload.writeInteger(UInt8(0))
        #expect(Self.error { _ = try ClientMessage.decode(frame) }?.code == .frameError)
    }

    @Test("every truncation of every client frame fails cleanly or decodes a shorter body", arguments: Samples.client)
    func truncations(_ message: ClientMessage) throws {
        let frame = try Samples.frame(of: message)
        let payload = Array(frame.payload.readableBytesView)
        for length in 0..<payload.count {
            let cut = Self.frame(frame.type, Array(payload[0..<length]))
            do {
                let decoded = try ClientMessage.decode(cut)
                // Only a publish, whose body runs to the end of the frame, may decode when cut inside its body.
                guard case .publish = decoded else {
                    Issue.record("\(message.frameType) truncated to \(length) bytes decoded as \(decoded)")
                    continue
                }
            } catch {
                #expect(error.code == .frameError || error.code == .invalidArgument)
            }
        }
    }

    @Test("every truncation of every server frame fails cleanly or decodes a shorter body", arguments: Samples.server)
    func serverTruncations(_ message: ServerMessage) throws {
        let frame = try Samples.frame(of: message)
        let payload = Array(frame.payload.readableBytesView)
        for length in 0..<payload.count {
            do {
                _ = try ServerMessage.decode(Self.frame(frame.type, Array(payload[0..<length])))
            } catch {
                #expect(error.code == .frameError)
            }
        }
    }

    @Test("invalid UTF-8 in a name is a frame error")
    func invalidUTF8() {
        var payload: [UInt8] = [0, 0, 0, 1]  // request id
        payload += [2, 0xC3, 0x28]  // shortstr with an invalid sequence
        payload += [0]  // flags
        payload += [0, 0, 0, 0]  // arguments
        #expect(Self.error { _ = try ClientMessage.decode(Self.frame(FrameType.queueDeclare.rawValue, payload)) }?.code == .frameError)
    }

    @Test("undefined flag bits are refused")
    func undefinedFlags() {
        var payload: [UInt8] = [0, 0, 0, 1, 1, 0x71]
        payload += [0x80]  // queue flags with an undefined bit
        payload += [0, 0, 0, 0]
        #expect(Self.error { _ = try ClientMessage.decode(Self.frame(FrameType.queueDeclare.rawValue, payload)) }?.code == .frameError)
    }

    @Test("deeply nested tables are refused, not recursed without bound")
    func deepNesting() {
        var value = FieldValue.int(1)
        for _ in 0..<40 { value = .table(["n": value]) }
        var buffer = ByteBuffer()
        buffer.writeFieldTable(["deep": value])
        #expect(Self.error { _ = try buffer.readFieldTable() }?.code == .frameError)
    }

    @Test("table lengths beyond the frame are refused")
    func tableLengthLies() {
        var buffer = ByteBuffer()
        buffer.writeInteger(UInt32(1000))
        buffer.writeBytes([1, 2, 3])
        #expect(Self.error { _ = try buffer.readFieldTable() }?.code == .frameError)
    }

    @Test("random bytes never trap", arguments: 0..<4)
    func randomBytes(seed: Int) {
        var rng = SplitMix(seed: UInt64(seed))
        for _ in 0..<2000 {
            let type = FrameType.allCases.randomElement(using: &rng)!.rawValue
            let payload = (0..<Int.random(in: 0..<48, using: &rng)).map { _ in UInt8.random(in: 0...255, using: &rng) }
            _ = try? ClientMessage.decode(Self.frame(type, payload))
            _ = try? ServerMessage.decode(Self.frame(type, payload))
            _ = try? RawProperties(MessageProperties()).decode()
            var buffer = ByteBuffer(bytes: payload)
            _ = try? buffer.readRawProperties().decode()
        }
    }

    @Test("names are validated")
    func nameRules() {
        #expect(Self.error { try NameRules.validateName("", kind: "queue") }?.code == .invalidArgument)
        #expect(Self.error { try NameRules.validateName(String(repeating: "a", count: 256), kind: "queue") }?.code == .invalidArgument)
        #expect(Self.error { try NameRules.validateName("a\nb", kind: "queue") }?.code == .invalidArgument)
        #expect(Self.error { try NameRules.validateName("trips.v2:ü", kind: "queue") } == nil)
    }
}

extension MalformedTests {
    @Test("an arguments table over 64 KiB is refused from its length, naming the limit")
    func oversizedArguments() {
        var arguments: FieldTable = [:]
        for i in 0..<2_000 { arguments["x-pad-\(i)"] = .string(String(repeating: "p", count: 40)) }
        var buffer = ByteBuffer()
        ClientMessage.queueDeclare(QueueDeclare(requestId: 1, name: "q", arguments: arguments)).encode(into: &buffer)
        var reader = FrameReader(decoder: FrameDecoder(maxFrameSize: 1 << 24, expectsMagic: false))
        reader.append(buffer)
        let error = Self.error {
            guard let frame = try reader.next() else { return }
            _ = try ClientMessage.decode(frame)
        }
        #expect(error?.code == .invalidArgument)
        #expect(error?.message.contains("65536") == true, "\(String(describing: error))")
        // At the limit's side: a small table still decodes.
        var small = ByteBuffer()
        ClientMessage.queueDeclare(QueueDeclare(requestId: 1, name: "q", arguments: ["x-max-length": .int(5)])).encode(into: &small)
        var ok = FrameReader(decoder: FrameDecoder(maxFrameSize: 1 << 24, expectsMagic: false))
        ok.append(small)
        #expect(Self.error { _ = try ClientMessage.decode(try #require(try ok.next())) } == nil)
    }
}
