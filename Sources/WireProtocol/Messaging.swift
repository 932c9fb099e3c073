public import NIOCore

/// Client → server: one message, with routing, properties and body in a single frame.
public struct Publish: Hashable, Sendable {
    public var exchange: String
    public var routingKey: String
    /// Return the message to the publisher if no queue receives it.
    public var mandatory: Bool
    public var properties: RawProperties
    public var body: ByteBuffer
    public init(exchange: String, routingKey: String, mandatory: Bool = false, properties: RawProperties = .empty, body: ByteBuffer) {
        self.exchange = exchange
        self.routingKey = routingKey
        self.mandatory = mandatory
        self.properties = properties
        self.body = body
    }
    public func encode(into buffer: inout ByteBuffer) {
        buffer.writeInteger(UInt8(mandatory ? 1 : 0))
        buffer.writeShortString(exchange)
        buffer.writeShortString(routingKey)
        buffer.writeRawProperties(properties)
        buffer.writeImmutableBuffer(body)
    }
    public static func decode(from buffer: inout ByteBuffer) throws(BrokerError) -> Publish {
        let flags = try buffer.readFlags("publish flags", allowed: 0b1)
        let exchange = try buffer.readShortString("exchange")
        let routingKey = try buffer.readShortString("routing key")
        let properties = try buffer.readRawProperties()
        // The same structural check as the broker's fast path (``PublishView/init(parsing:)``): one set of checks
        // whichever way a publish is decoded.
        try properties.validateStructure()
        let body = buffer.readSlice(length: buffer.readableBytes) ?? ByteBuffer()
        return Publish(exchange: exchange, routingKey: routingKey, mandatory: flags & 1 != 0, properties: properties, body: body)
    }
}

/// Server → client: a message pushed to a consumer.
public struct Deliver: Hashable, Sendable {
    public var consumerTag: UInt32
    public var deliveryTag: UInt64
    public var redelivered: Bool
    public var exchange: String
    public var routingKey: String
    public var properties: RawProperties
    public var body: ByteBuffer
    public init(consumerTag: UInt32, deliveryTag: UInt64, redelivered: Bool, exchange: String, routingKey: String,
                properties: RawProperties, body: ByteBuffer) {
        self.consumerTag = consumerTag
        self.deliveryTag = deliveryTag
        self.redelivered = redelivered
        self.exchange = exchange
        self.routingKey = routingKey
        self.properties = properties
        self.body = body
    }
    /// Encodes a whole Deliver frame from its parts, without building the struct (the broker's hot path).
    @inlinable
    public static func writeFrame(into buffer: inout ByteBuffer, consumerTag: UInt32, deliveryTag: UInt64, redelivered: Bool,
                                  exchange: String, routingKey: String, properties: RawProperties, body: ByteBuffer) {
        let start = buffer.beginFrame(.deliver)
        buffer.writeMultipleIntegers(consumerTag, deliveryTag, UInt8(redelivered ? 1 : 0))
        buffer.writeShortString(exchange)
        buffer.writeShortString(routingKey)
        buffer.writeRawProperties(properties)
        buffer.writeImmutableBuffer(body)
        buffer.endFrame(at: start)
    }
    public func encode(into buffer: inout ByteBuffer) {
        buffer.writeMultipleIntegers(consumerTag, deliveryTag, UInt8(redelivered ? 1 : 0))
        buffer.writeShortString(exchange)
        buffer.writeShortString(routingKey)
        buffer.writeRawProperties(properties)
        buffer.writeImmutableBuffer(body)
    }
    public static func decode(from buffer: inout ByteBuffer) throws(BrokerError) -> Deliver {
        let consumerTag: UInt32 = try buffer.readInt("consumer tag")
        let deliveryTag: UInt64 = try buffer.readInt("delivery tag")
        let flags = try buffer.readFlags("deliver flags", allowed: 0b1)
        let exchange = try buffer.readShortString("exchange")
        let routingKey = try buffer.readShortString("routing key")
        let properties = try buffer.readRawProperties()
        let body = buffer.readSlice(length: buffer.readableBytes) ?? ByteBuffer()
        return Deliver(consumerTag: consumerTag, deliveryTag: deliveryTag, redelivered: flags & 1 != 0, exchange: exchange,
                       routingKey: routingKey, properties: properties, body: body)
    }
}

/// Server → client: the answer to `get` when the queue had a message.
public struct GetOk: Hashable, Sendable {
    public var requestId: UInt32
    public var deliveryTag: UInt64
    public var redelivered: Bool
    /// Messages left in the queue after this one.
    public var messageCount: UInt32
    public var exchange: String
    public var routingKey: String
    public var properties: RawProperties
    public var body: ByteBuffer
    public init(requestId: UInt32, deliveryTag: UInt64, redelivered: Bool, messageCount: UInt32, exchange: String,
                routingKey: String, properties: RawProperties, body: ByteBuffer) {
        self.requestId = requestId
        self.deliveryTag = deliveryTag
        self.redelivered = redelivered
        self.messageCount = messageCount
        self.exchange = exchange
        self.routingKey = routingKey
        self.properties = properties
        self.body = body
    }
    public func encode(into buffer: inout ByteBuffer) {
        buffer.writeMultipleIntegers(requestId, deliveryTag, UInt8(redelivered ? 1 : 0), messageCount)
        buffer.writeShortString(exchange)
        buffer.writeShortString(routingKey)
        buffer.writeRawProperties(properties)
        buffer.writeImmutableBuffer(body)
    }
    public static func decode(from buffer: inout ByteBuffer) throws(BrokerError) -> GetOk {
        let requestId: UInt32 = try buffer.readInt("request id")
        let deliveryTag: UInt64 = try buffer.readInt("delivery tag")
        let flags = try buffer.readFlags("get flags", allowed: 0b1)
        let count: UInt32 = try buffer.readInt("message count")
        let exchange = try buffer.readShortString("exchange")
        let routingKey = try buffer.readShortString("routing key")
        let properties = try buffer.readRawProperties()
        let body = buffer.readSlice(length: buffer.readableBytes) ?? ByteBuffer()
        return GetOk(requestId: requestId, deliveryTag: deliveryTag, redelivered: flags & 1 != 0, messageCount: count,
                     exchange: exchange, routingKey: routingKey, properties: properties, body: body)
    }
}

/// Server → client: a mandatory message that no queue received, returned to its publisher.
public struct Returned: Hashable, Sendable {
    public var code: BrokerError.Code
    public var text: String
    public var exchange: String
    public var routingKey: String
    public var properties: RawProperties
    public var body: ByteBuffer
    public init(code: BrokerError.Code, text: String, exchange: String, routingKey: String, properties: RawProperties, body: ByteBuffer) {
        self.code = code
        self.text = text
        self.exchange = exchange
        self.routingKey = routingKey
        self.properties = properties
        self.body = body
    }
    public func encode(into buffer: inout ByteBuffer) {
        buffer.writeInteger(code.rawValue)
        buffer.writeShortString(text)
        buffer.writeShortString(exchange)
        buffer.writeShortString(routingKey)
        buffer.writeRawProperties(properties)
        buffer.writeImmutableBuffer(body)
    }
    public static func decode(from buffer: inout ByteBuffer) throws(BrokerError) -> Returned {
        let code = BrokerError.Code(rawValue: try buffer.readInt("code"))
        let text = try buffer.readShortString("text")
        let exchange = try buffer.readShortString("exchange")
        let routingKey = try buffer.readShortString("routing key")
        let properties = try buffer.readRawProperties()
        let body = buffer.readSlice(length: buffer.readableBytes) ?? ByteBuffer()
        return Returned(code: code, text: text, exchange: exchange, routingKey: routingKey, properties: properties, body: body)
    }
}

public struct Consume: Hashable, Sendable {
    public var requestId: UInt32
    public var queue: String
    /// Deliveries count as acknowledged when sent.
    public var noAck: Bool
    /// No other consumer may consume from the queue while this one exists.
    public var exclusive: Bool
    /// Most unacknowledged deliveries this consumer holds at once; 0 is unlimited.
    public var prefetch: UInt16
    public var arguments: FieldTable
    public init(requestId: UInt32, queue: String, noAck: Bool = false, exclusive: Bool = false, prefetch: UInt16 = 0,
                arguments: FieldTable = [:]) {
        self.requestId = requestId
        self.queue = queue
        self.noAck = noAck
        self.exclusive = exclusive
        self.prefetch = prefetch
        self.arguments = arguments
    }
    public func encode(into buffer: inout ByteBuffer) {
        buffer.writeInteger(requestId)
        buffer.writeShortString(queue)
        buffer.writeMultipleIntegers(UInt8((noAck ? 1 : 0) | (exclusive ? 2 : 0)), prefetch)
        buffer.writeFieldTable(arguments)
    }
    public static func decode(from buffer: inout ByteBuffer) throws(BrokerError) -> Consume {
        let requestId: UInt32 = try buffer.readInt("request id")
        let queue = try buffer.readShortString("queue")
        let flags = try buffer.readFlags("consume flags", allowed: 0b11)
        let prefetch: UInt16 = try buffer.readInt("prefetch")
        return Consume(requestId: requestId, queue: queue, noAck: flags & 1 != 0, exclusive: flags & 2 != 0, prefetch: prefetch,
                       arguments: try buffer.readArguments())
    }
}

public struct ConsumeOk: Hashable, Sendable {
    public var requestId: UInt32
    public var consumerTag: UInt32
    public init(requestId: UInt32, consumerTag: UInt32) {
        self.requestId = requestId
        self.consumerTag = consumerTag
    }
    public func encode(into buffer: inout ByteBuffer) { buffer.writeMultipleIntegers(requestId, consumerTag) }
    public static func decode(from buffer: inout ByteBuffer) throws(BrokerError) -> ConsumeOk {
        ConsumeOk(requestId: try buffer.readInt("request id"), consumerTag: try buffer.readInt("consumer tag"))
    }
}

public struct Cancel: Hashable, Sendable {
    public var requestId: UInt32
    public var consumerTag: UInt32
    public init(requestId: UInt32, consumerTag: UInt32) {
        self.requestId = requestId
        self.consumerTag = consumerTag
    }
    public func encode(into buffer: inout ByteBuffer) { buffer.writeMultipleIntegers(requestId, consumerTag) }
    public static func decode(from buffer: inout ByteBuffer) throws(BrokerError) -> Cancel {
        Cancel(requestId: try buffer.readInt("request id"), consumerTag: try buffer.readInt("consumer tag"))
    }
}

/// Server → client: the broker cancelled a consumer (its queue was deleted).
public struct ConsumerCancelled: Hashable, Sendable {
    public var consumerTag: UInt32
    public var code: BrokerError.Code
    public var reason: String
    public init(consumerTag: UInt32, code: BrokerError.Code, reason: String) {
        self.consumerTag = consumerTag
        self.code = code
        self.reason = reason
    }
    public func encode(into buffer: inout ByteBuffer) {
        buffer.writeMultipleIntegers(consumerTag, code.rawValue)
        buffer.writeShortString(reason)
    }
    public static func decode(from buffer: inout ByteBuffer) throws(BrokerError) -> ConsumerCancelled {
        ConsumerCancelled(consumerTag: try buffer.readInt("consumer tag"), code: BrokerError.Code(rawValue: try buffer.readInt("code")),
                          reason: try buffer.readShortString("reason"))
    }
}

/// Client → server: settles deliveries. `ack` uses `requeue` never; `reject` never uses `multiple`.
public struct Settle: Hashable, Sendable {
    /// The delivery tag; with `multiple`, every outstanding tag up to and including it (0 with `multiple`: all).
    public var deliveryTag: UInt64
    public var multiple: Bool
    public var requeue: Bool
    public init(deliveryTag: UInt64, multiple: Bool = false, requeue: Bool = false) {
        self.deliveryTag = deliveryTag
        self.multiple = multiple
        self.requeue = requeue
    }
    public func encode(into buffer: inout ByteBuffer) {
        buffer.writeMultipleIntegers(deliveryTag, UInt8((multiple ? 1 : 0) | (requeue ? 2 : 0)))
    }
    static func decode(from buffer: inout ByteBuffer, allowed: UInt8) throws(BrokerError) -> Settle {
        let tag: UInt64 = try buffer.readInt("delivery tag")
        let flags = try buffer.readFlags("settle flags", allowed: allowed)
        return Settle(deliveryTag: tag, multiple: flags & 1 != 0, requeue: flags & 2 != 0)
    }
}

public struct Get: Hashable, Sendable {
    public var requestId: UInt32
    public var queue: String
    public var noAck: Bool
    public init(requestId: UInt32, queue: String, noAck: Bool = false) {
        self.requestId = requestId
        self.queue = queue
        self.noAck = noAck
    }
    public func encode(into buffer: inout ByteBuffer) {
        buffer.writeInteger(requestId)
        buffer.writeShortString(queue)
        buffer.writeInteger(UInt8(noAck ? 1 : 0))
    }
    public static func decode(from buffer: inout ByteBuffer) throws(BrokerError) -> Get {
        let requestId: UInt32 = try buffer.readInt("request id")
        let queue = try buffer.readShortString("queue")
        let flags = try buffer.readFlags("get flags", allowed: 0b1)
        return Get(requestId: requestId, queue: queue, noAck: flags & 1 != 0)
    }
}

/// Server → client: publisher confirm. `ack` with `multiple` confirms every outstanding sequence number up to
/// and including `sequence`; a nack carries the reason.
public struct Confirm: Hashable, Sendable {
    public var sequence: UInt64
    public var multiple: Bool
    /// For nacks: why the broker did not take the message. `.normal` for acks.
    public var code: BrokerError.Code
    public var text: String
    public init(sequence: UInt64, multiple: Bool, code: BrokerError.Code = .normal, text: String = "") {
        self.sequence = sequence
        self.multiple = multiple
        self.code = code
        self.text = text
    }
    public func encodeAck(into buffer: inout ByteBuffer) { buffer.writeMultipleIntegers(sequence, UInt8(multiple ? 1 : 0)) }
    public func encodeNack(into buffer: inout ByteBuffer) {
        buffer.writeMultipleIntegers(sequence, UInt8(multiple ? 1 : 0), code.rawValue)
        buffer.writeShortString(text)
    }
    static func decodeAck(from buffer: inout ByteBuffer) throws(BrokerError) -> Confirm {
        let sequence: UInt64 = try buffer.readInt("sequence")
        let flags = try buffer.readFlags("confirm flags", allowed: 0b1)
        return Confirm(sequence: sequence, multiple: flags & 1 != 0)
    }
    static func decodeNack(from buffer: inout ByteBuffer) throws(BrokerError) -> Confirm {
        let sequence: UInt64 = try buffer.readInt("sequence")
        let flags = try buffer.readFlags("confirm flags", allowed: 0b1)
        let code = BrokerError.Code(rawValue: try buffer.readInt("code"))
        return Confirm(sequence: sequence, multiple: flags & 1 != 0, code: code, text: try buffer.readShortString("text"))
    }
}
