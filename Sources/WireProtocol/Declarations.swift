public import NIOCore

/// How an exchange routes (docs/protocol.md, "Exchanges").
public enum ExchangeKind: UInt8, Hashable, Sendable, CaseIterable, CustomStringConvertible {
    case direct = 0
    case fanout = 1
    case topic = 2
    public var description: String {
        switch self {
        case .direct: "direct"
        case .fanout: "fanout"
        case .topic: "topic"
        }
    }
    public init?(name: String) {
        guard let kind = Self.allCases.first(where: { $0.description == name }) else { return nil }
        self = kind
    }
}

public struct ExchangeDeclare: Hashable, Sendable {
    public var requestId: UInt32
    public var name: String
    public var kind: ExchangeKind
    public var durable: Bool
    public var autoDelete: Bool
    public var passive: Bool
    public var arguments: FieldTable
    public init(requestId: UInt32, name: String, kind: ExchangeKind, durable: Bool = false, autoDelete: Bool = false,
                passive: Bool = false, arguments: FieldTable = [:]) {
        self.requestId = requestId
        self.name = name
        self.kind = kind
        self.durable = durable
        self.autoDelete = autoDelete
        self.passive = passive
        self.arguments = arguments
    }
    public func encode(into buffer: inout ByteBuffer) {
        buffer.writeInteger(requestId)
        buffer.writeShortString(name)
        let flags: UInt8 = (durable ? 1 : 0) | (autoDelete ? 2 : 0) | (passive ? 4 : 0)
        buffer.writeMultipleIntegers(kind.rawValue, flags)
        buffer.writeFieldTable(arguments)
    }
    public static func decode(from buffer: inout ByteBuffer) throws(BrokerError) -> ExchangeDeclare {
        let requestId: UInt32 = try buffer.readInt("request id")
        let name = try buffer.readShortString("exchange")
        let rawKind = try buffer.readInt("exchange type", as: UInt8.self)
        guard let kind = ExchangeKind(rawValue: rawKind) else {
            throw BrokerError(.invalidArgument, "unknown exchange type \(rawKind); known: 0 direct, 1 fanout, 2 topic")
        }
        let flags = try buffer.readFlags("exchange flags", allowed: 0b111)
        return ExchangeDeclare(requestId: requestId, name: name, kind: kind, durable: flags & 1 != 0, autoDelete: flags & 2 != 0,
                               passive: flags & 4 != 0, arguments: try buffer.readArguments())
    }
}

public struct ExchangeDelete: Hashable, Sendable {
    public var requestId: UInt32
    public var name: String
    public var ifUnused: Bool
    public init(requestId: UInt32, name: String, ifUnused: Bool = false) {
        self.requestId = requestId
        self.name = name
        self.ifUnused = ifUnused
    }
    public func encode(into buffer: inout ByteBuffer) {
        buffer.writeInteger(requestId)
        buffer.writeShortString(name)
        buffer.writeInteger(UInt8(ifUnused ? 1 : 0))
    }
    public static func decode(from buffer: inout ByteBuffer) throws(BrokerError) -> ExchangeDelete {
        let requestId: UInt32 = try buffer.readInt("request id")
        let name = try buffer.readShortString("exchange")
        let flags = try buffer.readFlags("delete flags", allowed: 0b1)
        return ExchangeDelete(requestId: requestId, name: name, ifUnused: flags & 1 != 0)
    }
}

public struct QueueDeclare: Hashable, Sendable {
    public var requestId: UInt32
    /// Empty asks the server to generate a unique name.
    public var name: String
    public var durable: Bool
    public var exclusive: Bool
    public var autoDelete: Bool
    public var passive: Bool
    public var arguments: FieldTable
    public init(requestId: UInt32, name: String, durable: Bool = false, exclusive: Bool = false, autoDelete: Bool = false,
                passive: Bool = false, arguments: FieldTable = [:]) {
        self.requestId = requestId
        self.name = name
        self.durable = durable
        self.exclusive = exclusive
        self.autoDelete = autoDelete
        self.passive = passive
        self.arguments = arguments
    }
    public func encode(into buffer: inout ByteBuffer) {
        buffer.writeInteger(requestId)
        buffer.writeShortString(name)
        let flags: UInt8 = (durable ? 1 : 0) | (exclusive ? 2 : 0) | (autoDelete ? 4 : 0) | (passive ? 8 : 0)
        buffer.writeInteger(flags)
        buffer.writeFieldTable(arguments)
    }
    public static func decode(from buffer: inout ByteBuffer) throws(BrokerError) -> QueueDeclare {
        let requestId: UInt32 = try buffer.readInt("request id")
        let name = try buffer.readShortString("queue")
        let flags = try buffer.readFlags("queue flags", allowed: 0b1111)
        return QueueDeclare(requestId: requestId, name: name, durable: flags & 1 != 0, exclusive: flags & 2 != 0,
                            autoDelete: flags & 4 != 0, passive: flags & 8 != 0, arguments: try buffer.readArguments())
    }
}

public struct QueueDeclareOk: Hashable, Sendable {
    public var requestId: UInt32
    public var name: String
    public var messageCount: UInt32
    public var consumerCount: UInt32
    public init(requestId: UInt32, name: String, messageCount: UInt32, consumerCount: UInt32) {
        self.requestId = requestId
        self.name = name
        self.messageCount = messageCount
        self.consumerCount = consumerCount
    }
    public func encode(into buffer: inout ByteBuffer) {
        buffer.writeInteger(requestId)
        buffer.writeShortString(name)
        buffer.writeMultipleIntegers(messageCount, consumerCount)
    }
    public static func decode(from buffer: inout ByteBuffer) throws(BrokerError) -> QueueDeclareOk {
        QueueDeclareOk(requestId: try buffer.readInt("request id"), name: try buffer.readShortString("queue"),
                       messageCount: try buffer.readInt("message count"), consumerCount: try buffer.readInt("consumer count"))
    }
}

public struct QueueDelete: Hashable, Sendable {
    public var requestId: UInt32
    public var name: String
    public var ifUnused: Bool
    public var ifEmpty: Bool
    public init(requestId: UInt32, name: String, ifUnused: Bool = false, ifEmpty: Bool = false) {
        self.requestId = requestId
        self.name = name
        self.ifUnused = ifUnused
        self.ifEmpty = ifEmpty
    }
    public func encode(into buffer: inout ByteBuffer) {
        buffer.writeInteger(requestId)
        buffer.writeShortString(name)
        buffer.writeInteger(UInt8((ifUnused ? 1 : 0) | (ifEmpty ? 2 : 0)))
    }
    public static func decode(from buffer: inout ByteBuffer) throws(BrokerError) -> QueueDelete {
        let requestId: UInt32 = try buffer.readInt("request id")
        let name = try buffer.readShortString("queue")
        let flags = try buffer.readFlags("delete flags", allowed: 0b11)
        return QueueDelete(requestId: requestId, name: name, ifUnused: flags & 1 != 0, ifEmpty: flags & 2 != 0)
    }
}

/// A request that names one queue and nothing else (purge).
public struct QueuePurge: Hashable, Sendable {
    public var requestId: UInt32
    public var name: String
    public init(requestId: UInt32, name: String) {
        self.requestId = requestId
        self.name = name
    }
    public func encode(into buffer: inout ByteBuffer) {
        buffer.writeInteger(requestId)
        buffer.writeShortString(name)
    }
    public static func decode(from buffer: inout ByteBuffer) throws(BrokerError) -> QueuePurge {
        QueuePurge(requestId: try buffer.readInt("request id"), name: try buffer.readShortString("queue"))
    }
}

/// Bind or unbind a queue to an exchange with a binding key.
public struct QueueBinding: Hashable, Sendable {
    public var requestId: UInt32
    public var queue: String
    public var exchange: String
    public var bindingKey: String
    public var arguments: FieldTable
    public init(requestId: UInt32, queue: String, exchange: String, bindingKey: String, arguments: FieldTable = [:]) {
        self.requestId = requestId
        self.queue = queue
        self.exchange = exchange
        self.bindingKey = bindingKey
        self.arguments = arguments
    }
    public func encode(into buffer: inout ByteBuffer) {
        buffer.writeInteger(requestId)
        buffer.writeShortString(queue)
        buffer.writeShortString(exchange)
        buffer.writeShortString(bindingKey)
        buffer.writeFieldTable(arguments)
    }
    public static func decode(from buffer: inout ByteBuffer) throws(BrokerError) -> QueueBinding {
        QueueBinding(requestId: try buffer.readInt("request id"), queue: try buffer.readShortString("queue"),
                     exchange: try buffer.readShortString("exchange"), bindingKey: try buffer.readShortString("binding key"),
                     arguments: try buffer.readArguments())
    }
}
