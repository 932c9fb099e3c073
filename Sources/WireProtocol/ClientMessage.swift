public import NIOCore

/// Every frame a client sends (docs/protocol.md, "Methods").
public enum ClientMessage: Hashable, Sendable {
    case hello(Hello)
    case authenticate(Authenticate)
    case heartbeat
    case close(Close)
    case closeOk
    case exchangeDeclare(ExchangeDeclare)
    case exchangeDelete(ExchangeDelete)
    case queueDeclare(QueueDeclare)
    case queueDelete(QueueDelete)
    case queuePurge(QueuePurge)
    case queueBind(QueueBinding)
    case queueUnbind(QueueBinding)
    case publish(Publish)
    case confirmSelect(requestId: UInt32)
    case consume(Consume)
    case cancel(Cancel)
    case ack(Settle)
    case nack(Settle)
    case reject(Settle)
    case get(Get)
    /// Management: broker status (admin only).
    case status(requestId: UInt32)
    /// Management: one named method with a table of arguments (admin only; docs/protocol.md §11).
    case manage(Manage)

    public var frameType: FrameType {
        switch self {
        case .hello: .hello
        case .authenticate: .authenticate
        case .heartbeat: .heartbeat
        case .close: .close
        case .closeOk: .closeOk
        case .exchangeDeclare: .exchangeDeclare
        case .exchangeDelete: .exchangeDelete
        case .queueDeclare: .queueDeclare
        case .queueDelete: .queueDelete
        case .queuePurge: .queuePurge
        case .queueBind: .queueBind
        case .queueUnbind: .queueUnbind
        case .publish: .publish
        case .confirmSelect: .confirmSelect
        case .consume: .consume
        case .cancel: .cancel
        case .ack: .ack
        case .nack: .nack
        case .reject: .reject
        case .get: .get
        case .status: .status
        case .manage: .manage
        }
    }

    /// Appends the whole frame (length, type, payload) to `buffer`.
    public func encode(into buffer: inout ByteBuffer) {
        let start = buffer.beginFrame(frameType)
        switch self {
        case .hello(let m): m.encode(into: &buffer)
        case .authenticate(let m): m.encode(into: &buffer)
        case .heartbeat, .closeOk: break
        case .close(let m): m.encode(into: &buffer)
        case .exchangeDeclare(let m): m.encode(into: &buffer)
        case .exchangeDelete(let m): m.encode(into: &buffer)
        case .queueDeclare(let m): m.encode(into: &buffer)
        case .queueDelete(let m): m.encode(into: &buffer)
        case .queuePurge(let m): m.encode(into: &buffer)
        case .queueBind(let m), .queueUnbind(let m): m.encode(into: &buffer)
        case .publish(let m): m.encode(into: &buffer)
        case .confirmSelect(let requestId), .status(let requestId): buffer.writeInteger(requestId)
        case .consume(let m): m.encode(into: &buffer)
        case .cancel(let m): m.encode(into: &buffer)
        case .ack(let m), .nack(let m), .reject(let m): m.encode(into: &buffer)
        case .get(let m): m.encode(into: &buffer)
        case .manage(let m): m.encode(into: &buffer)
        }
        buffer.endFrame(at: start)
    }

    /// Decodes a frame's payload. Fails with `unknownFrame` for a type this version does not define (or one only
    /// the server sends) and with `frameError` unless the payload is consumed exactly.
    public static func decode(_ frame: Frame) throws(BrokerError) -> ClientMessage {
        var payload = frame.payload
        guard let type = FrameType(rawValue: frame.type) else {
            throw BrokerError(.unknownFrame, "unknown frame type 0x\(String(frame.type, radix: 16))")
        }
        let message: ClientMessage
        switch type {
        case .hello: message = .hello(try .decode(from: &payload))
        case .authenticate: message = .authenticate(try .decode(from: &payload))
        case .heartbeat: message = .heartbeat
        case .close: message = .close(try .decode(from: &payload))
        case .closeOk: message = .closeOk
        case .exchangeDeclare: message = .exchangeDeclare(try .decode(from: &payload))
        case .exchangeDelete: message = .exchangeDelete(try .decode(from: &payload))
        case .queueDeclare: message = .queueDeclare(try .decode(from: &payload))
        case .queueDelete: message = .queueDelete(try .decode(from: &payload))
        case .queuePurge: message = .queuePurge(try .decode(from: &payload))
        case .queueBind: message = .queueBind(try .decode(from: &payload))
        case .queueUnbind: message = .queueUnbind(try .decode(from: &payload))
        case .publish: message = .publish(try .decode(from: &payload))
        case .confirmSelect: message = .confirmSelect(requestId: try payload.readInt("request id"))
        case .consume: message = .consume(try .decode(from: &payload))
        case .cancel: message = .cancel(try .decode(from: &payload))
        case .ack:
            let settle = try Settle.decode(from: &payload, allowed: 0b01)
            message = .ack(settle)
        case .nack: message = .nack(try Settle.decode(from: &payload, allowed: 0b11))
        case .reject:
            let settle = try Settle.decode(from: &payload, allowed: 0b10)
            message = .reject(settle)
        case .get: message = .get(try .decode(from: &payload))
        case .status: message = .status(requestId: try payload.readInt("request id"))
        case .manage: message = .manage(try .decode(from: &payload))
        case .helloOk, .authOk, .ok, .queueDeclareOk, .countOk, .consumeOk, .deliver, .getOk, .getEmpty, .returned,
            .confirmAck, .confirmNack, .consumerCancelled, .connectionBlocked, .connectionUnblocked, .statusOk, .manageOk, .notice, .error:
            throw BrokerError(.unknownFrame, "frame type 0x\(String(frame.type, radix: 16)) is sent only by the server")
        }
        try payload.requireFullyConsumed(type)
        return message
    }
}
