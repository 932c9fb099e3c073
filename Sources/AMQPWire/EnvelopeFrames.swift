public import NIOCore
public import WireProtocol

/// Writes AMQP frames straight into an output buffer: methods, and the three content-carrying methods a broker
/// sends (`basic.deliver`, `basic.get-ok`, `basic.return`) around a native ``MessageEnvelope``.
///
/// A native envelope starts with the exchange and routing key as two `u8`-length-prefixed strings, which is how
/// AMQP encodes a `shortstr`: the method frame copies those bytes as they are. The properties are translated
/// (``AMQPNativeMapping``); a message without properties skips the translation. The body is split into frames of
/// at most `frameMax - 8` bytes.
public enum AMQPFrameWriter {
    /// The class and method ids of the methods written here.
    static let basicDeliver: (UInt16, UInt16) = (60, 60)
    static let basicGetOk: (UInt16, UInt16) = (60, 71)
    static let basicReturn: (UInt16, UInt16) = (60, 50)

    /// One method frame.
    public static func writeMethod(_ method: AMQPMethod, channel: UInt16, into buffer: inout ByteBuffer) throws(AMQPWireError) {
        let start = beginFrame(.method, channel: channel, into: &buffer)
        try method.write(to: &buffer)
        endFrame(start, into: &buffer)
    }

    /// `basic.deliver` with its content.
    public static func writeDeliver(into buffer: inout ByteBuffer, channel: UInt16, consumerTag: String, deliveryTag: UInt64,
                                    redelivered: Bool, envelope: MessageEnvelope, frameMax: UInt32) {
        if writeSimpleDeliver(into: &buffer, channel: channel, consumerTag: consumerTag, deliveryTag: deliveryTag,
                              redelivered: redelivered, envelope: envelope, frameMax: frameMax) { return }
        let start = beginFrame(.method, channel: channel, into: &buffer)
        buffer.writeMultipleIntegers(basicDeliver.0, basicDeliver.1)
        writeShortString(consumerTag, into: &buffer)
        buffer.writeMultipleIntegers(deliveryTag, UInt8(redelivered ? 1 : 0))
        writeNames(of: envelope, into: &buffer)
        endFrame(start, into: &buffer)
        writeContent(of: envelope, channel: channel, frameMax: frameMax, into: &buffer)
    }

    /// The hot path of ``writeDeliver(into:channel:consumerTag:deliveryTag:redelivered:envelope:frameMax:)``: a
    /// message with no properties but persistence and a body that fits one frame is written as its three frames in
    /// one reservation, with the names and body copied once (as the native `deliver` is). False, having written
    /// nothing, for any other message.
    private static func writeSimpleDeliver(into buffer: inout ByteBuffer, channel: UInt16, consumerTag: String, deliveryTag: UInt64,
                                           redelivered: Bool, envelope: MessageEnvelope, frameMax: UInt32) -> Bool {
        let flags = envelope.propertyFlags
        guard flags == 0 || flags == MessageProperties.Bit.persistent else { return false }
        let tagLength = consumerTag.utf8.count
        let names = envelope.namesLength
        // The envelope: names, u16 properties length, properties (0 or 2 bytes of flags), body.
        let propertiesLength = Int(envelope.bytes.getInteger(at: envelope.bytes.readerIndex + names, as: UInt16.self) ?? 0)
        let bodyOffset = names + 2 + propertiesLength
        let bodyLength = envelope.bytes.readableBytes - bodyOffset
        guard tagLength <= 255, bodyLength > 0, bodyLength <= Int(frameMax) - AMQPFrame.overhead else { return false }
        let methodSize = 4 + 1 + tagLength + 8 + 1 + names
        let headerSize = 14 + (flags == 0 ? 0 : 1)
        let total = (7 + methodSize + 1) + (7 + headerSize + 1) + (7 + bodyLength + 1)
        buffer.writeWithUnsafeMutableBytes(minimumWritableBytes: total) { out in
            var at = 0
            func byte(_ value: UInt8) { out.storeBytes(of: value, toByteOffset: at, as: UInt8.self); at += 1 }
            func short(_ value: UInt16) { out.storeBytes(of: value.bigEndian, toByteOffset: at, as: UInt16.self); at += 2 }
            func long(_ value: UInt32) { out.storeBytes(of: value.bigEndian, toByteOffset: at, as: UInt32.self); at += 4 }
            func longlong(_ value: UInt64) { out.storeBytes(of: value.bigEndian, toByteOffset: at, as: UInt64.self); at += 8 }
            func copy(_ source: UnsafeRawBufferPointer) {
                UnsafeMutableRawBufferPointer(rebasing: out[at..<(at + source.count)]).copyMemory(from: source)
                at += source.count
            }
            envelope.bytes.withUnsafeReadableBytes { raw in
                // Method frame.
                byte(AMQPFrame.Kind.method.rawValue); short(channel); long(UInt32(methodSize))
                short(basicDeliver.0); short(basicDeliver.1)
                byte(UInt8(tagLength))
                var tag = consumerTag
                tag.withUTF8 { copy(UnsafeRawBufferPointer($0)) }
                longlong(deliveryTag); byte(redelivered ? 1 : 0)
                copy(UnsafeRawBufferPointer(rebasing: raw[0..<names]))
                byte(AMQPFrame.frameEnd)
                // Content header: class, weight, body size, flags (delivery-mode 2 when persistent).
                byte(AMQPFrame.Kind.header.rawValue); short(channel); long(UInt32(headerSize))
                short(AMQPContentHeader.basicClass); short(0); longlong(UInt64(bodyLength))
                if flags == 0 { short(0) } else { short(1 << 12); byte(2) }
                byte(AMQPFrame.frameEnd)
                // Body.
                byte(AMQPFrame.Kind.body.rawValue); short(channel); long(UInt32(bodyLength))
                copy(UnsafeRawBufferPointer(rebasing: raw[bodyOffset..<(bodyOffset + bodyLength)]))
                byte(AMQPFrame.frameEnd)
            }
            return total
        }
        return true
    }

    /// `basic.get-ok` with its content.
    public static func writeGetOk(into buffer: inout ByteBuffer, channel: UInt16, deliveryTag: UInt64, redelivered: Bool,
                                  messageCount: UInt32, envelope: MessageEnvelope, frameMax: UInt32) {
        let start = beginFrame(.method, channel: channel, into: &buffer)
        buffer.writeMultipleIntegers(basicGetOk.0, basicGetOk.1, deliveryTag, UInt8(redelivered ? 1 : 0))
        writeNames(of: envelope, into: &buffer)
        buffer.writeInteger(messageCount)
        endFrame(start, into: &buffer)
        writeContent(of: envelope, channel: channel, frameMax: frameMax, into: &buffer)
    }

    /// `basic.return` with its content.
    public static func writeReturn(into buffer: inout ByteBuffer, channel: UInt16, replyCode: UInt16, replyText: String,
                                   envelope: MessageEnvelope, frameMax: UInt32) {
        let start = beginFrame(.method, channel: channel, into: &buffer)
        buffer.writeMultipleIntegers(basicReturn.0, basicReturn.1, replyCode)
        writeShortString(replyText, into: &buffer)
        writeNames(of: envelope, into: &buffer)
        endFrame(start, into: &buffer)
        writeContent(of: envelope, channel: channel, frameMax: frameMax, into: &buffer)
    }

    /// A heartbeat frame.
    public static func writeHeartbeat(into buffer: inout ByteBuffer) {
        buffer.writeMultipleIntegers(AMQPFrame.Kind.heartbeat.rawValue, UInt16(0), UInt32(0), AMQPFrame.frameEnd)
    }

    // MARK: - Parts

    private static func beginFrame(_ kind: AMQPFrame.Kind, channel: UInt16, into buffer: inout ByteBuffer) -> Int {
        let start = buffer.writerIndex
        buffer.writeMultipleIntegers(kind.rawValue, channel, UInt32(0))
        return start
    }

    private static func endFrame(_ start: Int, into buffer: inout ByteBuffer) {
        buffer.setInteger(UInt32(truncatingIfNeeded: buffer.writerIndex - start - 7), at: start + 3)
        buffer.writeInteger(AMQPFrame.frameEnd)
    }

    /// A short string known to fit (names the broker made or checked: at most 255 bytes).
    private static func writeShortString(_ text: String, into buffer: inout ByteBuffer) {
        let utf8 = text.utf8
        let length = min(utf8.count, 255)
        buffer.writeInteger(UInt8(length))
        buffer.writeBytes(utf8.prefix(length))
    }

    /// The envelope's exchange and routing key: already two short strings.
    private static func writeNames(of envelope: MessageEnvelope, into buffer: inout ByteBuffer) {
        buffer.writeImmutableBuffer(envelope.bytes.getSlice(at: envelope.bytes.readerIndex, length: envelope.namesLength) ?? ByteBuffer())
    }

    /// The content header (translated properties) and the body frames.
    private static func writeContent(of envelope: MessageEnvelope, channel: UInt16, frameMax: UInt32, into buffer: inout ByteBuffer) {
        let body = envelope.body
        let start = beginFrame(.header, channel: channel, into: &buffer)
        buffer.writeMultipleIntegers(AMQPContentHeader.basicClass, UInt16(0), UInt64(body.readableBytes))
        writeProperties(of: envelope, into: &buffer)
        endFrame(start, into: &buffer)
        let chunk = Int(frameMax) - AMQPFrame.overhead
        var rest = body
        while rest.readableBytes > 0, let part = rest.readSlice(length: min(chunk, rest.readableBytes)) {
            buffer.writeMultipleIntegers(AMQPFrame.Kind.body.rawValue, channel, UInt32(part.readableBytes))
            buffer.writeImmutableBuffer(part)
            buffer.writeInteger(AMQPFrame.frameEnd)
        }
    }

    private static func writeProperties(of envelope: MessageEnvelope, into buffer: inout ByteBuffer) {
        typealias Bit = MessageProperties.Bit
        switch envelope.propertyFlags {
        case 0:
            buffer.writeInteger(UInt16(0))
        case Bit.persistent:
            buffer.writeMultipleIntegers(UInt16(1 << 12), UInt8(2))  // delivery-mode 2 alone
        default:
            // The envelope's properties were checked when it was published (MessageEnvelope(parsing:)).
            let native = (try? envelope.properties.decode()) ?? MessageProperties()
            let amqp = AMQPNativeMapping.amqpProperties(native)
            let mark = buffer.writerIndex
            do {
                try amqp.write(to: &buffer)
            } catch {
                // Unreachable: native strings are at most 255 bytes and tables at most 16 deep. Send none rather
                // than a malformed header.
                buffer.moveWriterIndex(to: mark)
                buffer.writeInteger(UInt16(0))
            }
        }
    }
}

extension AMQPMethod {
    /// `connection.close`, or `channel.close` with `channel` set: the reply code, its text (cut to fit a short
    /// string) and the ids of the method that caused it (0 when none did).
    public static func close(channel: Bool, code: UInt16, text: String, classId: UInt16 = 0, methodId: UInt16 = 0) -> AMQPMethod {
        AMQPMethod(channel ? "channel.close" : "connection.close", [
            "reply-code": .short(code), "reply-text": .shortString(text.amqpShortText),
            "class-id": .short(classId), "method-id": .short(methodId),
        ])
    }

    /// A `bit` argument (false when absent).
    public func bool(_ name: String) -> Bool {
        if case .bit(let v)? = self[name] { return v }
        return false
    }

    /// A `shortstr` argument ("" when absent).
    public func string(_ name: String) -> String {
        if case .shortString(let v)? = self[name] { return v }
        return ""
    }

    /// A `table` argument (empty when absent).
    public func table(_ name: String) -> AMQPTable {
        if case .table(let v)? = self[name] { return v }
        return AMQPTable()
    }

    /// An integer argument of any width (0 when absent).
    public func integer(_ name: String) -> UInt64 {
        switch self[name] {
        case .octet(let v)?: UInt64(v)
        case .short(let v)?: UInt64(v)
        case .long(let v)?: UInt64(v)
        case .longlong(let v)?, .timestamp(let v)?: v
        default: 0
        }
    }

    /// The method's class and method ids.
    public var ids: (classId: UInt16, methodId: UInt16) { (signature.classId, signature.methodId) }
}
