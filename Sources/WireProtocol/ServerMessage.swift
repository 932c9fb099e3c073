public import NIOCore

/// Every frame the server sends (docs/protocol.md, "Methods").
public enum ServerMessage: Hashable, Sendable {
    case helloOk(HelloOk)
    case authOk(AuthOk)
    case heartbeat
    case close(Close)
    case closeOk
    /// A request succeeded and has nothing to return.
    case ok(requestId: UInt32)
    case queueDeclareOk(QueueDeclareOk)
    /// A request succeeded and returns a count (queue delete, purge: messages removed).
    case countOk(requestId: UInt32, count: UInt32)
    case consumeOk(ConsumeOk)
    case deliver(Deliver)
    case getOk(GetOk)
    case getEmpty(requestId: UInt32)
    case returned(Returned)
    case confirmAck(Confirm)
    case confirmNack(Confirm)
    case consumerCancelled(ConsumerCancelled)
    /// The broker stopped reading this connection's publishes (an alarm: free disk below the limit).
    case connectionBlocked(reason: String)
    /// The alarm is over; publishes are read again.
    case connectionUnblocked
    case statusOk(requestId: UInt32, status: FieldTable)
    /// The result of a `manage` request.
    case manageOk(requestId: UInt32, result: FieldTable)
    /// Protocol 1.1: advice, such as a deprecated message version (sent only on 1.1 connections).
    case notice(Notice)
    case error(ErrorFrame)

    public var frameType: FrameType {
        switch self {
        case .helloOk: .helloOk
        case .authOk: .authOk
        case .heartbeat: .heartbeat
        case .close: .close
        case .closeOk: .closeOk
        case .ok: .ok
        case .queueDeclareOk: .queueDeclareOk
        case .countOk: .countOk
        case .consumeOk: .consumeOk
        case .deliver: .deliver
        case .getOk: .getOk
        case .getEmpty: .getEmpty
        case .returned: .returned
        case .confirmAck: .confirmAck
        case .confirmNack: .confirmNack
        case .consumerCancelled: .consumerCancelled
        case .connectionBlocked: .connectionBlocked
        case .connectionUnblocked: .connectionUnblocked
        case .statusOk: .statusOk
        case .manageOk: .manageOk
        case .notice: .notice
        case .error: .error
        }
    }

    /// Appends the whole frame (length, type, payload) to `buffer`.
    public func encode(into buffer: inout ByteBuffer) {
        let start = buffer.beginFrame(frameType)
        switch self {
        case .helloOk(let m): m.encode(into: &buffer)
        case .authOk(let m): m.encode(into: &buffer)
        case .heartbeat, .closeOk, .connectionUnblocked: break
        case .connectionBlocked(let reason): buffer.writeShortString(reason)
        case .close(let m): m.encode(into: &buffer)
        case .ok(let requestId), .getEmpty(let requestId): buffer.writeInteger(requestId)
        case .queueDeclareOk(let m): m.encode(into: &buffer)
        case .countOk(let requestId, let count): buffer.writeMultipleIntegers(requestId, count)
        case .consumeOk(let m): m.encode(into: &buffer)
        case .deliver(let m): m.encode(into: &buffer)
        case .getOk(let m): m.encode(into: &buffer)
        case .returned(let m): m.encode(into: &buffer)
        case .confirmAck(let m): m.encodeAck(into: &buffer)
        case .confirmNack(let m): m.encodeNack(into: &buffer)
        case .consumerCancelled(let m): m.encode(into: &buffer)
        case .statusOk(let requestId, let status):
            buffer.writeInteger(requestId)
            buffer.writeFieldTable(status)
        case .manageOk(let requestId, let result):
            buffer.writeInteger(requestId)
            buffer.writeFieldTable(result)
        case .notice(let m): m.encode(into: &buffer)
        case .error(let m): m.encode(into: &buffer)
        }
        buffer.endFrame(at: start)
    }

    /// Decodes a frame's payload; the counterpart of ``ClientMessage/decode(_:)``.
    public static func decode(_ frame: Frame) throws(BrokerError) -> ServerMessage {
        var payload = frame.payload
        guard let type = FrameType(rawValue: frame.type) else {
            throw BrokerError(.unknownFrame, "unknown frame type 0x\(String(frame.type, radix: 16))")
        }
        let message: ServerMessage
        switch type {
        case .helloOk: message = .helloOk(try .decode(from: &payload))
        case .authOk: message = .authOk(try .decode(from: &payload))
        case .heartbeat: message = .heartbeat
        case .close: message = .close(try .decode(from: &payload))
        case .closeOk: message = .closeOk
        case .ok: message = .ok(requestId: try payload.readInt("request id"))
        case .queueDeclareOk: message = .queueDeclareOk(try .decode(from: &payload))
        case .countOk: message = .countOk(requestId: try payload.readInt("request id"), count: try payload.readInt("count"))
        case .consumeOk: message = .consumeOk(try .decode(from: &payload))
        case .deliver: message = .deliver(try .decode(from: &payload))
        case .getOk: message = .getOk(try .decode(from: &payload))
        case .getEmpty: message = .getEmpty(requestId: try payload.readInt("request id"))
        case .returned: message = .returned(try .decode(from: &payload))
        case .confirmAck: message = .confirmAck(try .decodeAck(from: &payload))
        case .confirmNack: message = .confirmNack(try .decodeNack(from: &payload))
        case .consumerCancelled: message = .consumerCancelled(try .decode(from: &payload))
        case .connectionBlocked: message = .connectionBlocked(reason: try payload.readShortString("reason"))
        case .connectionUnblocked: message = .connectionUnblocked
        case .statusOk: message = .statusOk(requestId: try payload.readInt("request id"), status: try payload.readFieldTable("status"))
        case .manageOk: message = .manageOk(requestId: try payload.readInt("request id"), result: try payload.readFieldTable("result"))
        case .notice: message = .notice(try .decode(from: &payload))
        case .error: message = .error(try .decode(from: &payload))
        case .hello, .authenticate, .exchangeDeclare, .exchangeDelete, .queueDeclare, .queueDelete, .queuePurge, .queueBind,
            .queueUnbind, .publish, .confirmSelect, .consume, .cancel, .ack, .nack, .reject, .get, .status, .manage:
            throw BrokerError(.unknownFrame, "frame type 0x\(String(frame.type, radix: 16)) is sent only by clients")
        }
        try payload.requireFullyConsumed(type)
        return message
    }
}
