public import NIOCore

/// The part of a message that travels unchanged from `publish` to `deliver`, `getOk` and `returned`:
/// `shortstr exchange, shortstr routingKey, properties, body` (docs/protocol.md §9, §10).
///
/// The broker keeps a message as this one slice of the publisher's read buffer and writes it back out as is: no
/// strings are built, nothing is re-encoded, and a fanned-out message shares its bytes across queues.
public struct MessageEnvelope: Hashable, Sendable {
    /// The envelope's bytes.
    public var bytes: ByteBuffer
    /// Length of the two names at the start, with their length bytes: where routing looks; -1 for a paged-out
    /// stand-in. 16 bits (at most 2 + 255 + 255), which keeps a queue's entry per message at 64 bytes.
    @usableFromInline let storedNamesLength: Int16
    @inlinable public var namesLength: Int { Int(storedNamesLength) }
    /// The properties' presence flags (0 without properties), so checks like "persistent" need no decoding.
    public let propertyFlags: UInt16

    /// Parses an envelope, checking every length and the structure of the properties block, without building the
    /// names (see ``names()``). Inlinable so that it compiles into the broker's hot modules (see ``FrameReader``).
    @inlinable
    public init(parsing bytes: ByteBuffer) throws(BrokerError) {
        var reader = bytes
        let exchangeLength = Int(try reader.readInt("exchange", as: UInt8.self))
        guard exchangeLength <= reader.readableBytes else { throw BrokerError(.frameError, "truncated frame: exchange claims \(exchangeLength) bytes") }
        reader.moveReaderIndex(forwardBy: exchangeLength)
        let keyLength = Int(try reader.readInt("routing key", as: UInt8.self))
        guard keyLength <= reader.readableBytes else { throw BrokerError(.frameError, "truncated frame: routing key claims \(keyLength) bytes") }
        reader.moveReaderIndex(forwardBy: keyLength)
        let properties = try reader.readRawProperties()
        if properties.bytes.readableBytes > 0 { try properties.validateStructure() }
        self.bytes = bytes
        self.storedNamesLength = Int16(2 + exchangeLength + keyLength)
        self.propertyFlags = properties.flags
    }

    /// Encodes an envelope.
    public init(exchange: String, routingKey: String, properties: RawProperties = .empty, body: ByteBuffer) {
        var buffer = ByteBuffer()
        buffer.writeShortString(exchange)
        buffer.writeShortString(routingKey)
        let namesLength = buffer.readableBytes
        buffer.writeRawProperties(properties)
        buffer.writeImmutableBuffer(body)
        self.bytes = buffer
        self.storedNamesLength = Int16(namesLength)  // two short strings: at most 512
        self.propertyFlags = properties.flags
    }

    /// A stand-in for an envelope the broker paged out to its log (the queue entry holding it says where). It
    /// shares one empty buffer, so it allocates nothing, and keeps the original property flags (the queue's
    /// bookkeeping of expirations reads them).
    public init(pagedOutWith propertyFlags: UInt16) {
        self.bytes = Self.noBytes
        self.storedNamesLength = -1
        self.propertyFlags = propertyFlags
    }

    private static let noBytes = ByteBuffer()

    /// Whether this is a stand-in for a paged-out envelope.
    @inlinable
    public var isPaged: Bool { storedNamesLength < 0 }

    /// The exchange and routing key, with their UTF-8 checked.
    public func names() throws(BrokerError) -> (exchange: String, routingKey: String) {
        var reader = bytes
        return (try reader.readShortString("exchange"), try reader.readShortString("routing key"))
    }

    /// The properties block (after its length).
    public var properties: RawProperties {
        var reader = bytes
        reader.moveReaderIndex(forwardBy: namesLength)
        return (try? reader.readRawProperties()) ?? .empty  // checked by init(parsing:)
    }

    /// The body.
    public var body: ByteBuffer {
        var reader = bytes
        reader.moveReaderIndex(forwardBy: namesLength)
        let length = Int(reader.readInteger(as: UInt16.self) ?? 0)
        reader.moveReaderIndex(forwardBy: min(length, reader.readableBytes))
        return reader
    }

    /// The body's length in bytes.
    public var bodyLength: Int {
        let propertiesLength = Int(bytes.getInteger(at: bytes.readerIndex + namesLength, as: UInt16.self) ?? 0)
        return bytes.readableBytes - namesLength - 2 - propertiesLength
    }

    public var isPersistent: Bool { propertyFlags & MessageProperties.Bit.persistent != 0 }

    /// Whether the names equal `names` byte for byte (the route cache's check).
    @inlinable
    public func namesEqual(_ names: [UInt8]) -> Bool {
        guard names.count == namesLength else { return false }
        return bytes.withUnsafeReadableBytes { raw in
            names.withUnsafeBytes { cached in
                UnsafeRawBufferPointer(rebasing: raw[0..<namesLength]).elementsEqual(cached)
            }
        }
    }

    /// The names' bytes, to remember for ``namesEqual(_:)``.
    public var nameBytes: [UInt8] { bytes.getBytes(at: bytes.readerIndex, length: namesLength) ?? [] }
}

/// A `publish` frame as the broker reads it: the mandatory flag and the envelope.
public struct PublishView: Sendable {
    public var mandatory: Bool
    public var envelope: MessageEnvelope

    public init(mandatory: Bool, envelope: MessageEnvelope) {
        self.mandatory = mandatory
        self.envelope = envelope
    }

    /// Parses a `publish` payload (docs/protocol.md §9.1).
    @inlinable
    public init(parsing payload: ByteBuffer) throws(BrokerError) {
        var reader = payload
        let flags = try reader.readFlags("publish flags", allowed: 0b1)
        self.mandatory = flags & 1 != 0
        self.envelope = try MessageEnvelope(parsing: reader)
    }

    /// The view of a decoded ``Publish``.
    public init(_ publish: Publish) {
        self.mandatory = publish.mandatory
        self.envelope = MessageEnvelope(exchange: publish.exchange, routingKey: publish.routingKey, properties: publish.properties,
                                        body: publish.body)
    }
}

extension Deliver {
    /// Encodes a whole `deliver` frame around an envelope in one reservation and one copy (the broker's hot path:
    /// profiling showed ByteBuffer's per-field writes at ~2/3 of the cost of a delivery).
    @inlinable
    public static func writeFrame(into buffer: inout ByteBuffer, consumerTag: UInt32, deliveryTag: UInt64, redelivered: Bool,
                                  envelope: MessageEnvelope) {
        let headerSize = 18  // length 4, type 1, consumer tag 4, delivery tag 8, flags 1
        let total = headerSize + envelope.bytes.readableBytes
        buffer.writeWithUnsafeMutableBytes(minimumWritableBytes: total) { out in
            out.storeBytes(of: UInt32(truncatingIfNeeded: total - 4).bigEndian, toByteOffset: 0, as: UInt32.self)
            out.storeBytes(of: FrameType.deliver.rawValue, toByteOffset: 4, as: UInt8.self)
            out.storeBytes(of: consumerTag.bigEndian, toByteOffset: 5, as: UInt32.self)
            out.storeBytes(of: deliveryTag.bigEndian, toByteOffset: 9, as: UInt64.self)
            out.storeBytes(of: UInt8(redelivered ? 1 : 0), toByteOffset: 17, as: UInt8.self)
            envelope.bytes.withUnsafeReadableBytes { source in
                UnsafeMutableRawBufferPointer(rebasing: out[headerSize..<total]).copyMemory(from: source)
            }
            return total
        }
    }
}

extension GetOk {
    /// Encodes a whole `getOk` frame around an envelope.
    public static func writeFrame(into buffer: inout ByteBuffer, requestId: UInt32, deliveryTag: UInt64, redelivered: Bool,
                                  messageCount: UInt32, envelope: MessageEnvelope) {
        let start = buffer.writerIndex
        buffer.writeMultipleIntegers(UInt32(0), FrameType.getOk.rawValue, requestId, deliveryTag, UInt8(redelivered ? 1 : 0), messageCount)
        buffer.writeImmutableBuffer(envelope.bytes)
        buffer.setInteger(UInt32(truncatingIfNeeded: buffer.writerIndex - start - 4), at: start)
    }
}

extension Returned {
    /// Encodes a whole `returned` frame around an envelope.
    public static func writeFrame(into buffer: inout ByteBuffer, code: BrokerError.Code, text: String, envelope: MessageEnvelope) {
        let start = buffer.writerIndex
        buffer.writeMultipleIntegers(UInt32(0), FrameType.returned.rawValue, code.rawValue)
        buffer.writeShortString(text)
        buffer.writeImmutableBuffer(envelope.bytes)
        buffer.setInteger(UInt32(truncatingIfNeeded: buffer.writerIndex - start - 4), at: start)
    }
}
