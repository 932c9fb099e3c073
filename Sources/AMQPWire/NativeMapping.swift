public import WireProtocol

/// How a message's properties and header values cross between AMQP 0-9-1 and brokerd's native protocol
/// (docs/amqp.md, "Properties"). Both directions are total: anything one side can say arrives on the other.
///
/// - The shared properties map one to one: message-id, correlation-id, reply-to, content-type, type, priority,
///   headers; delivery-mode 2 is `persistent`; expiration (AMQP: milliseconds as text) is a number of
///   milliseconds; timestamp (AMQP: seconds) is milliseconds natively (sub-second digits are dropped going back).
/// - AMQP's content-encoding, user-id, app-id and cluster-id have no native property: they travel as the native
///   headers ``contentEncodingHeader`` and so on, and come back out of the headers into their properties.
/// - The native type version (major, minor) has no AMQP property: it travels as the AMQP headers
///   ``typeVersionHeader`` and ``typeMinorVersionHeader`` (integers), read back into the native fields.
public enum AMQPNativeMapping {
    public static let contentEncodingHeader = "x-amqp-content-encoding"
    public static let userIdHeader = "x-amqp-user-id"
    public static let appIdHeader = "x-amqp-app-id"
    public static let clusterIdHeader = "x-amqp-cluster-id"
    public static let typeVersionHeader = "x-type-version"
    public static let typeMinorVersionHeader = "x-type-minor-version"

    /// The native properties for an AMQP message's. Refused (`precondition-failed`, as RabbitMQ answers) when the
    /// expiration is not a number of milliseconds or a header cannot travel natively.
    public static func nativeProperties(_ p: AMQPBasicProperties) throws(AMQPWireError) -> MessageProperties {
        var native = MessageProperties()
        native.messageId = p.messageId
        native.correlationId = p.correlationId
        native.replyTo = p.replyTo
        native.contentType = p.contentType
        native.type = p.type
        native.priority = p.priority
        native.persistent = p.deliveryMode == 2
        if let timestamp = p.timestamp {
            native.timestamp = timestamp <= UInt64(Int64.max / 1000) ? Int64(timestamp) * 1000 : Int64.max
        }
        if let expiration = p.expiration {
            guard let milliseconds = UInt32(expiration) else {
                throw AMQPWireError(.preconditionFailed, "invalid expiration '\(expiration)': must be a whole number of milliseconds below 2^32")
            }
            native.expiration = milliseconds
        }
        var headers: FieldTable = [:]
        if let table = p.headers {
            for (name, value) in table.entries {
                switch name {
                case typeVersionHeader:
                    native.typeVersion = try version(value, name)
                case typeMinorVersionHeader:
                    native.typeMinorVersion = try version(value, name)
                default:
                    headers[name] = value.native
                }
            }
        }
        if let v = p.contentEncoding { headers[contentEncodingHeader] = .string(v) }
        if let v = p.userId { headers[userIdHeader] = .string(v) }
        if let v = p.appId { headers[appIdHeader] = .string(v) }
        if let v = p.clusterId { headers[clusterIdHeader] = .string(v) }
        if p.headers != nil || !headers.isEmpty { native.headers = headers }
        do {
            try native.validate()
        } catch {
            throw AMQPWireError(.preconditionFailed, error.message)
        }
        return native
    }

    private static func version(_ value: AMQPValue, _ name: String) throws(AMQPWireError) -> UInt16 {
        guard let number = value.integerValue, let version = UInt16(exactly: number) else {
            throw AMQPWireError(.preconditionFailed, "header '\(name)' must be an integer from 0 to 65535")
        }
        return version
    }

    /// The AMQP properties for a native message's.
    public static func amqpProperties(_ native: MessageProperties) -> AMQPBasicProperties {
        var p = AMQPBasicProperties()
        p.messageId = native.messageId
        p.correlationId = native.correlationId
        p.replyTo = native.replyTo
        p.contentType = native.contentType
        p.type = native.type
        p.priority = native.priority
        if native.persistent { p.deliveryMode = 2 }
        if let timestamp = native.timestamp { p.timestamp = timestamp >= 0 ? UInt64(timestamp / 1000) : 0 }
        if let expiration = native.expiration { p.expiration = String(expiration) }
        var table = AMQPTable()
        var hasHeaders = false
        if let headers = native.headers {
            hasHeaders = true
            for name in headers.keys.sorted() {
                // The name comes from the table itself.
                let value = headers[name]!
                switch (name, value) {
                case (contentEncodingHeader, .string(let v)): p.contentEncoding = v
                case (userIdHeader, .string(let v)): p.userId = v
                case (appIdHeader, .string(let v)): p.appId = v
                case (clusterIdHeader, .string(let v)): p.clusterId = v
                default: table.entries.append((name, AMQPValue(native: value)))
                }
            }
        }
        if let v = native.typeVersion { table.entries.append((typeVersionHeader, .int32(Int32(v)))) }
        if let v = native.typeMinorVersion { table.entries.append((typeMinorVersionHeader, .int32(Int32(v)))) }
        if hasHeaders || !table.isEmpty { p.headers = table }
        return p
    }
}

extension AMQPValue {
    /// The native value for an AMQP one. Every integer type is an `int`; float and decimal are `double`s; a long
    /// string that is valid UTF-8 is a `string`, other bytes are `bytes`; a timestamp is an `int` (seconds); void
    /// (which the native tables cannot hold) is an empty `bytes`.
    public var native: FieldValue {
        switch self {
        case .bool(let v): .bool(v)
        case .int8, .uint8, .int16, .uint16, .int32, .uint32, .int64, .timestamp: .int(integerValue ?? Int64.max)
        case .float(let v): .double(Double(v))
        case .double(let v): .double(v)
        case .decimal(let scale, let value): .double(Double(value) / pow10(Int(scale)))
        case .longString(let bytes): String(validating: bytes, as: UTF8.self).map { .string($0) } ?? .bytes(bytes)
        case .array(let items): .array(items.map(\.native))
        case .table(let table): .table(table.native)
        case .void: .bytes([])
        case .bytes(let bytes): .bytes(bytes)
        }
    }

    /// The AMQP value for a native one: an `int` is a signed 32-bit integer (`I`) when it fits and 64-bit (`l`)
    /// otherwise, as pika and the Java client encode theirs.
    public init(native value: FieldValue) {
        switch value {
        case .bool(let v): self = .bool(v)
        case .int(let v): self = Int32(exactly: v).map { .int32($0) } ?? .int64(v)
        case .double(let v): self = .double(v)
        case .string(let v): self = .string(v)
        case .bytes(let v): self = .bytes(v)
        case .table(let v): self = .table(AMQPTable(native: v))
        case .array(let v): self = .array(v.map(AMQPValue.init(native:)))
        }
    }
}

private func pow10(_ n: Int) -> Double {
    var result = 1.0
    for _ in 0..<n { result *= 10 }
    return result
}

extension AMQPTable {
    /// The native table (a dictionary: AMQP's entry order is not kept; a repeated name keeps its last value).
    public var native: FieldTable {
        var table: FieldTable = [:]
        for (name, value) in entries { table[name] = value.native }
        return table
    }

    /// An AMQP table with the native table's entries, in sorted order (as the native encoding writes them).
    public init(native table: FieldTable) {
        // Each key comes from the table itself.
        self.init(table.keys.sorted().map { ($0, AMQPValue(native: table[$0]!)) })
    }
}
