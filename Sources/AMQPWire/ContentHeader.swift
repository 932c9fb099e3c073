public import NIOCore

/// The properties of a `basic` message (class 60), in the order and with the flag bits of the specification:
/// flag bit 15 is the first property (content-type), bit 2 the last (cluster-id); bit 0 would announce another
/// flag word, which class 60 never needs (a peer that sets it is refused).
public struct AMQPBasicProperties: Hashable, Sendable {
    public var contentType: String?
    public var contentEncoding: String?
    public var headers: AMQPTable?
    /// 1 transient, 2 persistent.
    public var deliveryMode: UInt8?
    public var priority: UInt8?
    public var correlationId: String?
    public var replyTo: String?
    /// Per-message TTL in milliseconds, as text (RabbitMQ's convention).
    public var expiration: String?
    public var messageId: String?
    /// Seconds since 1970.
    public var timestamp: UInt64?
    public var type: String?
    public var userId: String?
    public var appId: String?
    public var clusterId: String?

    public init(contentType: String? = nil, contentEncoding: String? = nil, headers: AMQPTable? = nil, deliveryMode: UInt8? = nil,
                priority: UInt8? = nil, correlationId: String? = nil, replyTo: String? = nil, expiration: String? = nil,
                messageId: String? = nil, timestamp: UInt64? = nil, type: String? = nil, userId: String? = nil,
                appId: String? = nil, clusterId: String? = nil) {
        self.contentType = contentType
        self.contentEncoding = contentEncoding
        self.headers = headers
        self.deliveryMode = deliveryMode
        self.priority = priority
        self.correlationId = correlationId
        self.replyTo = replyTo
        self.expiration = expiration
        self.messageId = messageId
        self.timestamp = timestamp
        self.type = type
        self.userId = userId
        self.appId = appId
        self.clusterId = clusterId
    }
}

/// A content header frame's payload: the class, the body's size, and the properties.
public struct AMQPContentHeader: Hashable, Sendable {
    /// The `basic` class.
    public static let basicClass: UInt16 = 60

    public var classId: UInt16
    public var bodySize: UInt64
    public var properties: AMQPBasicProperties

    public init(classId: UInt16 = Self.basicClass, bodySize: UInt64, properties: AMQPBasicProperties = AMQPBasicProperties()) {
        self.classId = classId
        self.bodySize = bodySize
        self.properties = properties
    }

    public func write(to buffer: inout ByteBuffer) throws(AMQPWireError) {
        buffer.writeMultipleIntegers(classId, UInt16(0), bodySize)
        try properties.write(to: &buffer)
    }
}

extension AMQPBasicProperties {
    /// Writes the property flags and the present properties (a content header's part after the body size).
    public func write(to buffer: inout ByteBuffer) throws(AMQPWireError) {
        let p = self
        var flags: UInt16 = 0
        func bit(_ present: Bool, _ position: UInt16) { if present { flags |= 1 << position } }
        bit(p.contentType != nil, 15)
        bit(p.contentEncoding != nil, 14)
        bit(p.headers != nil, 13)
        bit(p.deliveryMode != nil, 12)
        bit(p.priority != nil, 11)
        bit(p.correlationId != nil, 10)
        bit(p.replyTo != nil, 9)
        bit(p.expiration != nil, 8)
        bit(p.messageId != nil, 7)
        bit(p.timestamp != nil, 6)
        bit(p.type != nil, 5)
        bit(p.userId != nil, 4)
        bit(p.appId != nil, 3)
        bit(p.clusterId != nil, 2)
        buffer.writeInteger(flags)
        if let v = p.contentType { try buffer.writeAMQPShortString(v) }
        if let v = p.contentEncoding { try buffer.writeAMQPShortString(v) }
        if let v = p.headers { try buffer.writeAMQPTable(v) }
        if let v = p.deliveryMode { buffer.writeInteger(v) }
        if let v = p.priority { buffer.writeInteger(v) }
        if let v = p.correlationId { try buffer.writeAMQPShortString(v) }
        if let v = p.replyTo { try buffer.writeAMQPShortString(v) }
        if let v = p.expiration { try buffer.writeAMQPShortString(v) }
        if let v = p.messageId { try buffer.writeAMQPShortString(v) }
        if let v = p.timestamp { buffer.writeInteger(v) }
        if let v = p.type { try buffer.writeAMQPShortString(v) }
        if let v = p.userId { try buffer.writeAMQPShortString(v) }
        if let v = p.appId { try buffer.writeAMQPShortString(v) }
        if let v = p.clusterId { try buffer.writeAMQPShortString(v) }
    }
}

extension AMQPContentHeader {
    /// Reads a whole content header payload; anything left over, a truncated field or an unknown flag is an error.
    public static func read(from payload: ByteBuffer) throws(AMQPWireError) -> AMQPContentHeader {
        var buffer = payload
        guard let (classId, weight, bodySize, flags) = buffer.readMultipleIntegers(as: (UInt16, UInt16, UInt64, UInt16).self) else {
            throw AMQPWireError(.frameError, "a content header shorter than its 14 fixed bytes")
        }
        guard weight == 0 else { throw AMQPWireError(.frameError, "a content header's weight must be 0, not \(weight)") }
        guard flags & 0b11 == 0 else {
            throw AMQPWireError(.frameError, "content header property flags 0x\(String(flags, radix: 16)) set a bit that class \(classId) does not define")
        }
        func has(_ position: UInt16) -> Bool { flags & (1 << position) != 0 }
        func byte(_ what: String) throws(AMQPWireError) -> UInt8 {
            guard let value = buffer.readInteger(as: UInt8.self) else { throw AMQPWireError(.frameError, "content header: truncated \(what)") }
            return value
        }
        var p = AMQPBasicProperties()
        do throws(AMQPWireError) {
            if has(15) { p.contentType = try buffer.readAMQPShortString("content-type") }
            if has(14) { p.contentEncoding = try buffer.readAMQPShortString("content-encoding") }
            if has(13) { p.headers = try buffer.readAMQPTable("headers") }
            if has(12) { p.deliveryMode = try byte("delivery-mode") }
            if has(11) { p.priority = try byte("priority") }
            if has(10) { p.correlationId = try buffer.readAMQPShortString("correlation-id") }
            if has(9) { p.replyTo = try buffer.readAMQPShortString("reply-to") }
            if has(8) { p.expiration = try buffer.readAMQPShortString("expiration") }
            if has(7) { p.messageId = try buffer.readAMQPShortString("message-id") }
            if has(6) {
                guard let value = buffer.readInteger(as: UInt64.self) else { throw AMQPWireError(.frameError, "content header: truncated timestamp") }
                p.timestamp = value
            }
            if has(5) { p.type = try buffer.readAMQPShortString("type") }
            if has(4) { p.userId = try buffer.readAMQPShortString("user-id") }
            if has(3) { p.appId = try buffer.readAMQPShortString("app-id") }
            if has(2) { p.clusterId = try buffer.readAMQPShortString("cluster-id") }
        } catch {
            // A malformed property is a malformed frame (a connection exception, as RabbitMQ treats it).
            throw AMQPWireError(.frameError, error.text)
        }
        guard buffer.readableBytes == 0 else {
            throw AMQPWireError(.frameError, "\(buffer.readableBytes) bytes after the content header's last property")
        }
        return AMQPContentHeader(classId: classId, bodySize: bodySize, properties: p)
    }
}
