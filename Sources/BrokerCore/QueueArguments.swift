public import WireProtocol

/// A queue's optional behaviour, from its declaration's `x-` arguments (docs/protocol.md §8.2, "Queue arguments").
public struct QueueArguments: Codable, Sendable, Equatable {
    public enum Overflow: String, Codable, Sendable, CaseIterable {
        /// Drop (or dead-letter) the oldest ready messages to make room.
        case dropHead = "drop-head"
        /// Refuse the new message: a `confirmNack` to a publisher in confirm mode.
        case rejectPublish = "reject-publish"
        /// Refuse the new message and dead-letter it (reason `maxlen`).
        case rejectPublishDLX = "reject-publish-dlx"
    }

    /// `x-max-length`: most ready messages.
    public var maxLength: Int?
    /// `x-max-length-bytes`: most bytes of ready message bodies.
    public var maxLengthBytes: Int?
    /// `x-overflow`.
    public var overflow: Overflow = .dropHead
    /// `x-message-ttl`: milliseconds a message may stay in the queue.
    public var messageTTL: UInt64?
    /// `x-expires`: milliseconds the queue may go unused (no consumer, no get, no declare) before it is deleted.
    public var expires: UInt64?
    /// `x-dead-letter-exchange`.
    public var deadLetterExchange: String?
    /// `x-dead-letter-routing-key`: replaces the message's routing key when it is dead-lettered.
    public var deadLetterRoutingKey: String?
    /// `x-delivery-limit`: a message delivered and returned more than this many times is dead-lettered (or dropped).
    public var deliveryLimit: Int?

    /// What a queue does with a message that none of its consumers accepts (their `x-accept-types` leave out its
    /// major version): docs/contracts.md, "Consumers".
    public enum Incompatible: String, Codable, Sendable, CaseIterable {
        /// Dead-letter it with reason `incompatible` (and go on with the next message).
        case deadLetter = "dead-letter"
        /// Keep it at the head, in order, until a consumer that accepts it subscribes.
        case hold
    }
    /// `x-incompatible`; nil for the default: dead-letter when the queue has a dead-letter exchange, else hold
    /// (a version mismatch never drops a message on its own).
    public var incompatible: Incompatible?

    /// What the queue does with an incompatible message, defaults applied.
    var incompatiblePolicy: Incompatible { incompatible ?? (deadLetterExchange == nil ? .hold : .deadLetter) }

    public init() {}

    /// The largest `x-message-ttl` and `x-expires` (and per-message `expiration`, a UInt32 on the wire):
    /// 4,294,967,295 ms, about 49.7 days, as RabbitMQ allows. docs/protocol.md §8.2.
    public static let maximumMilliseconds: Int64 = Int64(UInt32.max)
    /// The largest `x-max-length`, `x-max-length-bytes` and `x-delivery-limit`: 2^53, so any value survives a trip
    /// through JSON (metadata.json, `--format json`) unchanged.
    public static let maximumCount: Int64 = 1 << 53

    public static let known = ["x-max-length", "x-max-length-bytes", "x-overflow", "x-message-ttl", "x-expires",
                               "x-dead-letter-exchange", "x-dead-letter-routing-key", "x-delivery-limit", "x-incompatible"]

    /// Parses and checks declare arguments; an unknown argument or a value of the wrong type or range is refused
    /// with `INVALID_ARGUMENT` naming it.
    public init(_ table: FieldTable) throws(BrokerError) {
        for key in table.keys.sorted() where !Self.known.contains(key) {
            throw BrokerError(.invalidArgument, "unknown queue argument '\(key)'; known: \(Self.known.joined(separator: ", "))")
        }
        func integer(_ key: String, minimum: Int64, maximum: Int64 = Self.maximumCount) throws(BrokerError) -> Int64? {
            guard let value = table[key] else { return nil }
            guard let number = value.intValue else { throw BrokerError(.invalidArgument, "queue argument '\(key)' must be an integer") }
            guard number >= minimum, number <= maximum else {
                throw BrokerError(.invalidArgument, "queue argument '\(key)' must be from \(minimum) to \(maximum), got \(number)")
            }
            return number
        }
        func string(_ key: String) throws(BrokerError) -> String? {
            guard let value = table[key] else { return nil }
            guard let text = value.stringValue else { throw BrokerError(.invalidArgument, "queue argument '\(key)' must be a string") }
            return text
        }
        maxLength = try integer("x-max-length", minimum: 0).map { Int($0) }
        maxLengthBytes = try integer("x-max-length-bytes", minimum: 0).map { Int($0) }
        messageTTL = try integer("x-message-ttl", minimum: 0, maximum: Self.maximumMilliseconds).map { UInt64($0) }
        expires = try integer("x-expires", minimum: 1, maximum: Self.maximumMilliseconds).map { UInt64($0) }
        deliveryLimit = try integer("x-delivery-limit", minimum: 0).map { Int($0) }
        if let text = try string("x-overflow") {
            guard let value = Overflow(rawValue: text) else {
                throw BrokerError(.invalidArgument, "queue argument 'x-overflow' must be one of \(Overflow.allCases.map(\.rawValue).joined(separator: ", ")), got '\(text)'")
            }
            overflow = value
        }
        if let text = try string("x-incompatible") {
            guard let value = Incompatible(rawValue: text) else {
                throw BrokerError(.invalidArgument, "queue argument 'x-incompatible' must be one of \(Incompatible.allCases.map(\.rawValue).joined(separator: ", ")), got '\(text)'")
            }
            incompatible = value
        }
        deadLetterExchange = try string("x-dead-letter-exchange")
        if let name = deadLetterExchange, !name.isEmpty { try NameRules.validateName(name, kind: "dead-letter exchange") }
        deadLetterRoutingKey = try string("x-dead-letter-routing-key")
        if let key = deadLetterRoutingKey { try NameRules.validateKey(key, kind: "dead-letter routing key") }
        if deadLetterRoutingKey != nil && deadLetterExchange == nil {
            throw BrokerError(.invalidArgument, "'x-dead-letter-routing-key' needs 'x-dead-letter-exchange'")
        }
    }

    /// Arguments read back from the data directory, checked again: a definition an older broker accepted but the
    /// ranges now refuse keeps its queue (and its messages) with the offending arguments dropped. Returns the
    /// arguments to use and one line per argument dropped, for the log.
    public func revalidated() -> (arguments: QueueArguments, dropped: [String]) {
        var kept = self
        var dropped: [String] = []
        func check<T: BinaryInteger>(_ value: T?, _ key: String, _ range: ClosedRange<Int64>) -> T? {
            guard let value else { return nil }
            guard let wide = Int64(exactly: value), range.contains(wide) else {
                dropped.append("\(key)=\(value) is outside \(range.lowerBound)...\(range.upperBound)")
                return nil
            }
            return value
        }
        kept.maxLength = check(maxLength, "x-max-length", 0...Self.maximumCount)
        kept.maxLengthBytes = check(maxLengthBytes, "x-max-length-bytes", 0...Self.maximumCount)
        kept.messageTTL = check(messageTTL, "x-message-ttl", 0...Self.maximumMilliseconds)
        kept.expires = check(expires, "x-expires", 1...Self.maximumMilliseconds)
        kept.deliveryLimit = check(deliveryLimit, "x-delivery-limit", 0...Self.maximumCount)
        if kept.deadLetterRoutingKey != nil && kept.deadLetterExchange == nil {
            dropped.append("x-dead-letter-routing-key without x-dead-letter-exchange")
            kept.deadLetterRoutingKey = nil
        }
        return (kept, dropped)
    }

    var hasLimits: Bool { maxLength != nil || maxLengthBytes != nil }

    /// The arguments as a declare would give them (for listings).
    public var table: FieldTable {
        var table: FieldTable = [:]
        if let v = maxLength { table["x-max-length"] = .int(Int64(v)) }
        if let v = maxLengthBytes { table["x-max-length-bytes"] = .int(Int64(v)) }
        if hasLimits || overflow != .dropHead { table["x-overflow"] = .string(overflow.rawValue) }
        if let v = messageTTL { table["x-message-ttl"] = .int(Int64(clamping: v)) }
        if let v = expires { table["x-expires"] = .int(Int64(clamping: v)) }
        if let v = deadLetterExchange { table["x-dead-letter-exchange"] = .string(v) }
        if let v = deadLetterRoutingKey { table["x-dead-letter-routing-key"] = .string(v) }
        if let v = deliveryLimit { table["x-delivery-limit"] = .int(Int64(v)) }
        if let v = incompatible { table["x-incompatible"] = .string(v.rawValue) }
        return table
    }
}
