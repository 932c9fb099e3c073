public import NIOCore
public import WireProtocol

/// How a session's output is encoded for a protocol other than brokerd's own: one encoder per front end (the
/// AMQP 0-9-1 listener's channels implement it).
///
/// The core decides *what* a client is sent (a delivery, a confirm, a cancellation, an error, an alarm); the
/// encoder decides the bytes. A native session has no encoder (``Session/encoder`` is nil): its deliveries keep
/// the single-reservation ``Deliver/writeFrame(into:consumerTag:deliveryTag:redelivered:envelope:)`` inline,
/// without a dynamic call per message (docs/design.md, "Protocol front ends").
public protocol SessionEncoder: AnyObject {
    /// A message for one of the session's consumers.
    func writeDeliver(into buffer: inout ByteBuffer, consumer: QueueConsumer, deliveryTag: UInt64, redelivered: Bool,
                      envelope: MessageEnvelope)
    /// The answer to a get that found a message.
    func writeGetOk(into buffer: inout ByteBuffer, deliveryTag: UInt64, redelivered: Bool, messageCount: UInt32,
                    envelope: MessageEnvelope)
    /// A mandatory message no queue took.
    func writeReturned(into buffer: inout ByteBuffer, code: BrokerError.Code, text: String, envelope: MessageEnvelope)
    /// Anything else the core sends of its own accord: `getEmpty`, `confirmAck`/`confirmNack`,
    /// `consumerCancelled`, `error` (a failure not answering a request: requestId 0), `connectionBlocked`,
    /// `connectionUnblocked`, `notice`. A message the protocol has no counterpart for is dropped.
    func write(_ message: ServerMessage, into buffer: inout ByteBuffer)
}

/// Which front end a session belongs to (``Broker/openSession(user:clientName:peer:transport:protocolVersion:front:)``).
public struct SessionFront {
    /// The connection the session is a channel of (nil: the session is its own connection).
    public var connectionId: UInt64?
    public var encoder: (any SessionEncoder)?
    public var protocolName: String
    public var channel: UInt16

    /// brokerd's own protocol: one session per connection, encoded inline.
    public static var native: SessionFront { SessionFront(connectionId: nil, encoder: nil, protocolName: "native", channel: 0) }

    public init(connectionId: UInt64?, encoder: (any SessionEncoder)?, protocolName: String, channel: UInt16) {
        self.connectionId = connectionId
        self.encoder = encoder
        self.protocolName = protocolName
        self.channel = channel
    }
}
