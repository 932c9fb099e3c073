public import NIOCore

/// `notice` (0xA9, protocol 1.1): the broker advises the client, once per connection and per subject. Version
/// 1.1 defines one kind, `deprecated`: the connection published a message type's version that its exchange's
/// contract deprecates (docs/contracts.md). A notice asks for nothing back; a client logs it and carries on.
public struct Notice: Hashable, Sendable {
    /// `deprecated`; later minors may add kinds, which a client treats as informational.
    public var kind: String
    public var exchange: String
    public var messageType: String
    /// The version used, `major.minor`.
    public var version: String
    /// When the version will be refused (`YYYY-MM-DD`), or empty.
    public var sunset: String
    /// What to use instead, or empty.
    public var replacement: String
    /// The whole advice as a sentence, for logs.
    public var text: String

    public init(kind: String, exchange: String, messageType: String, version: String, sunset: String = "",
                replacement: String = "", text: String) {
        self.kind = kind
        self.exchange = exchange
        self.messageType = messageType
        self.version = version
        self.sunset = sunset
        self.replacement = replacement
        self.text = text
    }

    public func encode(into buffer: inout ByteBuffer) {
        for field in [kind, exchange, messageType, version, sunset, replacement] { buffer.writeShortString(field) }
        buffer.writeLongString(text)
    }

    public static func decode(from buffer: inout ByteBuffer) throws(BrokerError) -> Notice {
        Notice(kind: try buffer.readShortString("kind"), exchange: try buffer.readShortString("exchange"),
               messageType: try buffer.readShortString("message type"), version: try buffer.readShortString("version"),
               sunset: try buffer.readShortString("sunset"), replacement: try buffer.readShortString("replacement"),
               text: try buffer.readLongString("text"))
    }
}
