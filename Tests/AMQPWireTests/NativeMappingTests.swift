import AMQPWire
import NIOCore
import Testing
import WireProtocol

/// Properties and header values between AMQP and the native protocol (docs/amqp.md, "Properties"), and the
/// frames written around a native envelope.
@Suite("AMQP ⇄ native mapping")
struct NativeMappingTests {
    static let amqp = AMQPBasicProperties(
        contentType: "application/json", contentEncoding: "gzip",
        headers: ["n": .int32(5), "s": .string("x"), "b": .bool(true), "nested": .table(["k": .int64(1 << 40)]),
                  "x-type-version": .int32(2), "x-type-minor-version": .uint8(3)],
        deliveryMode: 2, priority: 4, correlationId: "c", replyTo: "r", expiration: "1500", messageId: "m", timestamp: 1_700_000_000,
        type: "trip.requested", userId: "guest", appId: "trip", clusterId: "eu")

    @Test("AMQP → native → AMQP keeps every property; the native side sees the type version and the AMQP-only ones as headers")
    func roundTrip() throws {
        let native = try AMQPNativeMapping.nativeProperties(Self.amqp)
        #expect(native.persistent && native.priority == 4 && native.expiration == 1500 && native.timestamp == 1_700_000_000_000)
        #expect(native.typeVersion == 2 && native.typeMinorVersion == 3 && native.type == "trip.requested")
        #expect(native.headers?["x-amqp-content-encoding"] == .string("gzip") && native.headers?["x-amqp-cluster-id"] == .string("eu"))
        #expect(native.headers?["x-type-version"] == nil)
        let back = AMQPNativeMapping.amqpProperties(native)
        var expected = Self.amqp
        // Integers come back as the narrowest of I and l; the version headers as I.
        expected.headers = ["b": .bool(true), "n": .int32(5), "nested": .table(["k": .int64(1 << 40)]), "s": .string("x"),
                            "x-type-version": .int32(2), "x-type-minor-version": .int32(3)]
        #expect(back == expected)
    }

    @Test("values without a native counterpart: non-UTF-8 strings are bytes, decimals and floats doubles, void an empty byte string")
    func values() {
        #expect(AMQPValue.longString([0xFF, 0xFE]).native == .bytes([0xFF, 0xFE]))
        #expect(AMQPValue.decimal(scale: 2, value: 150).native == .double(1.5))
        #expect(AMQPValue.float(0.5).native == .double(0.5))
        #expect(AMQPValue.void.native == .bytes([]))
        #expect(AMQPValue.timestamp(42).native == .int(42))
        #expect(AMQPValue(native: .int(Int64(Int32.max) + 1)) == .int64(Int64(Int32.max) + 1))
        #expect(AMQPValue(native: .int(-1)) == .int32(-1))
    }

    @Test("refused: an expiration that is not whole milliseconds, a version header out of range (406 each)")
    func refusals() {
        for properties in [AMQPBasicProperties(expiration: "soon"), AMQPBasicProperties(expiration: "-5"),
                           AMQPBasicProperties(headers: ["x-type-version": .int64(70000)]),
                           AMQPBasicProperties(headers: ["x-type-version": .string("2")])] {
            #expect(throws: AMQPWireError.self) { try AMQPNativeMapping.nativeProperties(properties) }
            do {
                _ = try AMQPNativeMapping.nativeProperties(properties)
            } catch {
                #expect(error.code == .preconditionFailed)
            }
        }
    }

    @Test("basic.deliver around a native envelope reads back as method, header and bodies split at frame-max")
    func deliverFrames() throws {
        let body = ByteBuffer(bytes: (0..<10_000).map { UInt8(truncatingIfNeeded: $0) })
        let native = MessageProperties(messageId: "m", persistent: true, headers: ["k": .string("v")])
        let envelope = MessageEnvelope(exchange: "ride.trips", routingKey: "trip.requested", properties: RawProperties(native), body: body)
        var buffer = ByteBuffer()
        AMQPFrameWriter.writeDeliver(into: &buffer, channel: 3, consumerTag: "ctag", deliveryTag: 9, redelivered: true, envelope: envelope,
                                     frameMax: 4096)
        var frames: [AMQPFrame] = []
        while let frame = try AMQPFrame.read(from: &buffer, maxFrameSize: 4096) { frames.append(frame) }
        #expect(buffer.readableBytes == 0)
        #expect(frames.map(\.kind) == [.method, .header, .body, .body, .body])
        #expect(frames.allSatisfy { $0.channel == 3 })
        let method = try AMQPMethod.read(from: frames[0].payload)
        #expect(method.signature.name == "basic.deliver" && method.string("consumer-tag") == "ctag")
        #expect(method.integer("delivery-tag") == 9 && method.bool("redelivered"))
        #expect(method.string("exchange") == "ride.trips" && method.string("routing-key") == "trip.requested")
        let header = try AMQPContentHeader.read(from: frames[1].payload)
        #expect(header.bodySize == 10_000 && header.properties.messageId == "m" && header.properties.deliveryMode == 2)
        #expect(header.properties.headers == ["k": .string("v")])
        var joined = ByteBuffer()
        for frame in frames.dropFirst(2) { joined.writeImmutableBuffer(frame.payload) }
        #expect(joined == body)
    }

    @Test("the one-reservation deliver (no properties or persistent only, one body frame) writes the same frames as the general one",
          arguments: [false, true])
    func simpleDeliver(persistent: Bool) throws {
        let envelope = MessageEnvelope(exchange: "x", routingKey: "key", properties: RawProperties(MessageProperties(persistent: persistent)),
                                       body: ByteBuffer(string: "sixteen bytes!!!"))
        var fast = ByteBuffer()
        AMQPFrameWriter.writeDeliver(into: &fast, channel: 2, consumerTag: "amq.ctag-1", deliveryTag: 42, redelivered: false,
                                     envelope: envelope, frameMax: 4096)
        var frames: [AMQPFrame] = []
        while let frame = try AMQPFrame.read(from: &fast, maxFrameSize: 4096) { frames.append(frame) }
        #expect(fast.readableBytes == 0 && frames.map(\.kind) == [.method, .header, .body])
        let method = try AMQPMethod.read(from: frames[0].payload)
        #expect(method.signature.name == "basic.deliver" && method.string("consumer-tag") == "amq.ctag-1")
        #expect(method.integer("delivery-tag") == 42 && !method.bool("redelivered"))
        #expect(method.string("exchange") == "x" && method.string("routing-key") == "key")
        let header = try AMQPContentHeader.read(from: frames[1].payload)
        #expect(header.bodySize == 16 && header.properties == AMQPBasicProperties(deliveryMode: persistent ? 2 : nil))
        #expect(String(buffer: frames[2].payload) == "sixteen bytes!!!")
    }
}
