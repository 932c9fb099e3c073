public import NIOCore

/// The optional properties of a message, present by bitmask (docs/protocol.md, "Properties").
public struct MessageProperties: Hashable, Sendable {
    public var messageId: String?
    public var correlationId: String?
    public var replyTo: String?
    public var contentType: String?
    /// The declared message type, for example `trip.requested`.
    public var type: String?
    /// The version of ``type``'s schema, so consumers can handle old and new producers side by side.
    public var typeVersion: UInt16?
    /// Milliseconds since the Unix epoch.
    public var timestamp: Int64?
    /// Time to live in milliseconds.
    public var expiration: UInt32?
    /// Whether the message should be written to disk when routed to a durable queue.
    public var persistent: Bool
    public var priority: UInt8?
    public var headers: FieldTable?
    /// The minor version of ``type`` (protocol 1.1; ``typeVersion`` is the major). Absent means 0.
    public var typeMinorVersion: UInt16?

    public init(
        messageId: String? = nil, correlationId: String? = nil, replyTo: String? = nil, contentType: String? = nil,
        type: String? = nil, typeVersion: UInt16? = nil, timestamp: Int64? = nil, expiration: UInt32? = nil,
        persistent: Bool = false, priority: UInt8? = nil, headers: FieldTable? = nil, typeMinorVersion: UInt16? = nil
    ) {
        self.messageId = messageId
        self.correlationId = correlationId
        self.replyTo = replyTo
        self.contentType = contentType
        self.type = type
        self.typeVersion = typeVersion
        self.timestamp = timestamp
        self.expiration = expiration
        self.persistent = persistent
        self.priority = priority
        self.headers = headers
        self.typeMinorVersion = typeMinorVersion
    }

    /// Presence bits, in the order their fields are written.
    public enum Bit {
        public static let messageId: UInt16 = 1 << 0
        public static let correlationId: UInt16 = 1 << 1
        public static let replyTo: UInt16 = 1 << 2
        public static let contentType: UInt16 = 1 << 3
        public static let type: UInt16 = 1 << 4
        public static let typeVersion: UInt16 = 1 << 5
        public static let timestamp: UInt16 = 1 << 6
        public static let expiration: UInt16 = 1 << 7
        public static let persistent: UInt16 = 1 << 8
        public static let priority: UInt16 = 1 << 9
        public static let headers: UInt16 = 1 << 10
        /// Protocol 1.1.
        public static let typeMinorVersion: UInt16 = 1 << 11
        /// Every bit version 1.1 defines; fields of higher bits follow these and are skipped by length.
        public static let known: UInt16 = (1 << 12) - 1
    }

    /// Checks the limits encoding must respect: strings of at most 255 bytes, an encoded block of at most 65,535.
    public func validate() throws(BrokerError) {
        _ = try RawProperties(validating: self)
    }

    func validateStrings() throws(BrokerError) {
        for (name, value) in [
            ("message id", messageId), ("correlation id", correlationId), ("reply-to", replyTo),
            ("content type", contentType), ("type", type),
        ] {
            if let value, value.utf8.count > NameRules.maxShortStringBytes {
                throw BrokerError(.invalidArgument, "\(name) is \(value.utf8.count) bytes; the limit is 255")
            }
        }
        if let headers { for key in headers.keys { try NameRules.validateKey(key, kind: "header name") } }
    }
}

/// A properties block as it travels on the wire: `u16 length`, then (if the length is not 0) `u16 flags` and the
/// present fields. The broker forwards it untouched; only clients decode it into ``MessageProperties``.
public struct RawProperties: Hashable, Sendable {
    /// The block's bytes after its u16 length prefix (flags and fields), or empty when there are no properties.
    public var bytes: ByteBuffer

    public static let empty = RawProperties(unchecked: ByteBuffer())

    @usableFromInline
    init(unchecked bytes: ByteBuffer) { self.bytes = bytes }

    /// Encodes properties.
    public init(_ properties: MessageProperties) {
        var buffer = ByteBuffer()
        var flags: UInt16 = 0
        if properties.messageId != nil { flags |= MessageProperties.Bit.messageId }
        if properties.correlationId != nil { flags |= MessageProperties.Bit.correlationId }
        if properties.replyTo != nil { flags |= MessageProperties.Bit.replyTo }
        if properties.contentType != nil { flags |= MessageProperties.Bit.contentType }
        if properties.type != nil { flags |= MessageProperties.Bit.type }
        if properties.typeVersion != nil { flags |= MessageProperties.Bit.typeVersion }
        if properties.timestamp != nil { flags |= MessageProperties.Bit.timestamp }
        if properties.expiration != nil { flags |= MessageProperties.Bit.expiration }
        if properties.persistent { flags |= MessageProperties.Bit.persistent }
        if properties.priority != nil { flags |= MessageProperties.Bit.priority }
        if properties.headers != nil { flags |= MessageProperties.Bit.headers }
        if properties.typeMinorVersion != nil { flags |= MessageProperties.Bit.typeMinorVersion }
        guard flags != 0 else {
            self.bytes = buffer
            return
        }
        buffer.writeInteger(flags)
        if let v = properties.messageId { buffer.writeShortString(v) }
        if let v = properties.correlationId { buffer.writeShortString(v) }
        if let v = properties.replyTo { buffer.writeShortString(v) }
        if let v = properties.contentType { buffer.writeShortString(v) }
        if let v = properties.type { buffer.writeShortString(v) }
        if let v = properties.typeVersion { buffer.writeInteger(v) }
        if let v = properties.timestamp { buffer.writeInteger(v) }
        if let v = properties.expiration { buffer.writeInteger(v) }
        if let v = properties.priority { buffer.writeInteger(v) }
        if let v = properties.headers { buffer.writeFieldTable(v) }
        if let v = properties.typeMinorVersion { buffer.writeInteger(v) }
        self.bytes = buffer
    }

    /// Encodes properties after checking their limits (the client's path: encode once, refuse what cannot travel).
    public init(validating properties: MessageProperties) throws(BrokerError) {
        try properties.validateStrings()
        self.init(properties)
        if bytes.readableBytes > Int(UInt16.max) {
            throw BrokerError(.invalidArgument, "properties encode to \(bytes.readableBytes) bytes; the limit is 65535")
        }
    }

    /// The presence flags (0 when there are no properties).
    @inlinable
    public var flags: UInt16 { bytes.getInteger(at: bytes.readerIndex, as: UInt16.self) ?? 0 }

    /// Whether the persistent bit is set.
    @inlinable
    public var isPersistent: Bool { flags & MessageProperties.Bit.persistent != 0 }

    /// Decodes the block into typed properties. Fields of unknown higher bits are skipped.
    public func decode() throws(BrokerError) -> MessageProperties {
        var buffer = self.bytes
        var properties = MessageProperties()
        guard buffer.readableBytes > 0 else { return properties }
        let flags = try buffer.readInt("property flags", as: UInt16.self)
        typealias Bit = MessageProperties.Bit
        if flags & Bit.messageId != 0 { properties.messageId = try buffer.readShortString("message id") }
        if flags & Bit.correlationId != 0 { properties.correlationId = try buffer.readShortString("correlation id") }
        if flags & Bit.replyTo != 0 { properties.replyTo = try buffer.readShortString("reply-to") }
        if flags & Bit.contentType != 0 { properties.contentType = try buffer.readShortString("content type") }
        if flags & Bit.type != 0 { properties.type = try buffer.readShortString("type") }
        if flags & Bit.typeVersion != 0 { properties.typeVersion = try buffer.readInt("type version") }
        if flags & Bit.timestamp != 0 { properties.timestamp = try buffer.readInt("timestamp") }
        if flags & Bit.expiration != 0 { properties.expiration = try buffer.readInt("expiration") }
        properties.persistent = flags & Bit.persistent != 0
        if flags & Bit.priority != 0 { properties.priority = try buffer.readInt("priority") }
        if flags & Bit.headers != 0 { properties.headers = try buffer.readFieldTable("headers") }
        if flags & Bit.typeMinorVersion != 0 { properties.typeMinorVersion = try buffer.readInt("type minor version") }
        if flags & ~Bit.known == 0 { try buffer.requireFullyConsumed("properties") }
        return properties
    }

    /// The message type and its version, without building anything else: what a contract checks per message.
    /// nil type when the block has no type; the version's major and minor are nil when absent.
    public func typeAndVersion() throws(BrokerError) -> (type: String?, major: UInt16?, minor: UInt16?) {
        var buffer = self.bytes
        guard buffer.readableBytes > 0 else { return (nil, nil, nil) }
        let flags = try buffer.readInt("property flags", as: UInt16.self)
        typealias Bit = MessageProperties.Bit
        guard flags & (Bit.type | Bit.typeVersion | Bit.typeMinorVersion) != 0 else { return (nil, nil, nil) }
        // The short strings before the type, skipped by their lengths (no array literal: this runs per message).
        var skip = flags & (Bit.messageId | Bit.correlationId | Bit.replyTo | Bit.contentType)
        while skip != 0 {
            skip &= skip - 1
            let length = try buffer.readInt("property length", as: UInt8.self)
            guard buffer.readSlice(length: Int(length)) != nil else { throw BrokerError(.frameError, "truncated properties") }
        }
        let type = flags & Bit.type != 0 ? try buffer.readShortString("type") : nil
        let major: UInt16? = flags & Bit.typeVersion != 0 ? try buffer.readInt("type version") : nil
        guard flags & Bit.typeMinorVersion != 0 else { return (type, major, nil) }
        if flags & Bit.timestamp != 0 { _ = try buffer.readInt("timestamp", as: Int64.self) }
        if flags & Bit.expiration != 0 { _ = try buffer.readInt("expiration", as: UInt32.self) }
        if flags & Bit.priority != 0 { _ = try buffer.readInt("priority", as: UInt8.self) }
        if flags & Bit.headers != 0 { _ = try buffer.readFieldTable("headers") }
        return (type, major, try buffer.readInt("type minor version"))
    }

    /// Checks the structure of a received block without building strings or tables: the broker forwards
    /// properties untouched, and a malformed block must be refused here rather than reach a consumer.
    public func validateStructure() throws(BrokerError) {
        guard bytes.readableBytes > 0 else { return }
        _ = try decode()
    }
}

extension ByteBuffer {
    /// Reads a properties block (`u16 length` + bytes) as a slice.
    @inlinable
    public mutating func readRawProperties() throws(BrokerError) -> RawProperties {
        let length = try self.readInt("properties length", as: UInt16.self)
        guard Int(length) <= self.readableBytes, let slice = self.readSlice(length: Int(length)) else {
            throw BrokerError(.frameError, "truncated frame: properties claim \(length) bytes, \(self.readableBytes) left")
        }
        if length == 1 { throw BrokerError(.frameError, "properties block of 1 byte cannot hold its flags") }
        return RawProperties(unchecked: slice)
    }

    /// Writes a properties block (`u16 length` + bytes).
    @inlinable
    public mutating func writeRawProperties(_ properties: RawProperties) {
        self.writeInteger(UInt16(truncatingIfNeeded: properties.bytes.readableBytes))
        self.writeImmutableBuffer(properties.bytes)
    }
}

extension MessageProperties {
    /// The properties that are set, as a table with snake_case keys (management listings, brokerctl).
    public var table: FieldTable {
        var table: FieldTable = [:]
        if let v = messageId { table["message_id"] = .string(v) }
        if let v = correlationId { table["correlation_id"] = .string(v) }
        if let v = replyTo { table["reply_to"] = .string(v) }
        if let v = contentType { table["content_type"] = .string(v) }
        if let v = type { table["type"] = .string(v) }
        if let v = typeVersion { table["type_version"] = .int(Int64(v)) }
        if let v = timestamp { table["timestamp"] = .int(v) }
        if let v = expiration { table["expiration"] = .int(Int64(v)) }
        if persistent { table["persistent"] = .bool(true) }
        if let v = priority { table["priority"] = .int(Int64(v)) }
        if let v = headers { table["headers"] = .table(v) }
        if let v = typeMinorVersion { table["type_minor_version"] = .int(Int64(v)) }
        return table
    }
}
