public import NIOCore
public import WireProtocol

/// Puts one channel's frames back together into commands: a method alone, or `basic.publish` with its content
/// header and as many body frames as the header's size says, in that order and nothing between (the
/// specification's 4.2.6). A pure state machine: the listener feeds it each frame of its channel and acts on what
/// comes out.
///
/// A publish comes out as the native ``MessageEnvelope`` the broker keeps (the hot path): the envelope's buffer is
/// allocated once, at the content header, with the exact size of names, properties and body, and the body frames
/// are copied into it; no method, header or properties value is built when the message has no properties other
/// than delivery-mode (what throughput-minded publishers send). Other properties are translated by the caller's
/// `translate` (user-id checks and direct reply-to need the channel), called once per such message.
public struct AMQPContentAssembler: Sendable {
    /// A whole command.
    public enum Command: Sendable {
        case method(AMQPMethod)
        case publish(AMQPPublish)
    }

    private enum State: Sendable {
        case idle
        case awaitingHeader(AMQPPublish.Fields)
        case awaitingBody(AMQPPublish.Fields, envelope: ByteBuffer, remaining: Int, bodySize: Int)
    }

    private var state = State.idle
    /// The largest body accepted; a header announcing more is refused before any body is buffered.
    public let maximumBodySize: UInt64

    public init(maximumBodySize: UInt64) { self.maximumBodySize = maximumBodySize }

    /// Whether a publish is waiting for the rest of its content.
    public var isAssembling: Bool {
        if case .idle = state { return false }
        return true
    }

    /// Feeds one frame of this channel (not heartbeats: those are the connection's). Returns a command when one
    /// is complete. Frames out of order are `unexpected-frame` (a connection exception); a body larger than the
    /// limit is `precondition-failed` (a channel exception, as RabbitMQ answers for its max message size).
    public mutating func feed(_ frame: AMQPFrame,
                              translate: (AMQPBasicProperties) throws(AMQPWireError) -> RawProperties) throws(AMQPWireError) -> Command? {
        switch (state, frame.kind) {
        case (.idle, .method):
            if let fields = try AMQPPublish.Fields(reading: frame.payload) {
                state = .awaitingHeader(fields)
                return nil
            }
            let method = try AMQPMethod.read(from: frame.payload)
            guard !method.signature.content else {
                throw AMQPWireError(.commandInvalid, "\(method.signature.name) is not a method a client sends")
            }
            return .method(method)
        case (.awaitingHeader(let fields), .header):
            state = .idle
            var payload = frame.payload
            guard let (classId, weight, bodySize, flags) = payload.readMultipleIntegers(as: (UInt16, UInt16, UInt64, UInt16).self) else {
                throw AMQPWireError(.frameError, "a content header shorter than its 14 fixed bytes")
            }
            guard classId == AMQPContentHeader.basicClass else {
                throw AMQPWireError(.frameError, "a content header of class \(classId) after basic.publish")
            }
            guard weight == 0 else { throw AMQPWireError(.frameError, "a content header's weight must be 0, not \(weight)") }
            guard bodySize <= maximumBodySize else {
                throw AMQPWireError(.preconditionFailed, "message size \(bodySize) is larger than the maximum \(maximumBodySize)")
            }
            let properties: RawProperties
            if flags == 0 && payload.readableBytes == 0 {
                properties = .empty
            } else if flags == 1 << 12, payload.readableBytes == 1, let mode = payload.readInteger(as: UInt8.self) {
                properties = mode == 2 ? Self.persistentOnly : .empty  // delivery-mode alone
            } else {
                properties = try translate(try AMQPContentHeader.read(from: frame.payload).properties)
            }
            let size = Int(bodySize)
            var envelope = ByteBufferAllocator().buffer(capacity: fields.names.readableBytes + 2 + properties.bytes.readableBytes + size)
            envelope.writeImmutableBuffer(fields.names)
            envelope.writeRawProperties(properties)
            if size == 0 { return .publish(try AMQPPublish(fields, envelope)) }
            state = .awaitingBody(fields, envelope: envelope, remaining: size, bodySize: size)
            return nil
        case (.awaitingBody(let fields, var envelope, let remaining, let bodySize), .body):
            let length = frame.payload.readableBytes
            guard length <= remaining else {
                state = .idle
                throw AMQPWireError(.frameError, "body frames of basic.publish carry more than the \(bodySize) bytes its header announced")
            }
            state = .idle  // the buffer is uniquely held below, so the append does not copy it
            envelope.writeImmutableBuffer(frame.payload)
            guard length == remaining else {
                state = .awaitingBody(fields, envelope: envelope, remaining: remaining - length, bodySize: bodySize)
                return nil
            }
            return .publish(try AMQPPublish(fields, envelope))
        case (.idle, .header), (.idle, .body):
            throw AMQPWireError(.unexpectedFrame, "a \(frame.kind) frame with no content-carrying method before it")
        case (.awaitingHeader, _):
            state = .idle
            throw AMQPWireError(.unexpectedFrame, "expected the content header of basic.publish, got a \(frame.kind) frame")
        case (.awaitingBody, _):
            state = .idle
            throw AMQPWireError(.unexpectedFrame, "expected body frames of basic.publish, got a \(frame.kind) frame")
        case (.idle, .heartbeat):
            throw AMQPWireError(.unexpectedFrame, "a heartbeat frame on a channel")
        }
    }

    /// The native properties of a persistent message with no other property.
    private static let persistentOnly = RawProperties(MessageProperties(persistent: true))
}

/// A whole `basic.publish`: its flags and the native envelope (exchange, routing key, properties, body).
public struct AMQPPublish: Sendable {
    public var exchange: String
    public var mandatory: Bool
    public var immediate: Bool
    public var envelope: MessageEnvelope

    init(_ fields: Fields, _ envelope: ByteBuffer) throws(AMQPWireError) {
        self.exchange = fields.exchange
        self.mandatory = fields.mandatory
        self.immediate = fields.immediate
        do {
            self.envelope = try MessageEnvelope(parsing: envelope)
        } catch {
            throw AMQPWireError(.frameError, error.message)
        }
    }

    /// `basic.publish`'s arguments, read in place: the exchange and routing key stay the two short strings they
    /// are on the wire (a native envelope starts with the same bytes).
    struct Fields: Sendable {
        var names: ByteBuffer
        var exchange: String
        var mandatory: Bool
        var immediate: Bool

        /// nil when the payload is another method; a truncated or padded `basic.publish` is a syntax error.
        init?(reading payload: ByteBuffer) throws(AMQPWireError) {
            var buffer = payload
            guard buffer.readInteger(as: UInt32.self) == 0x003C_0028 else { return nil }  // class 60, method 40
            func truncated() -> AMQPWireError { AMQPWireError(.syntaxError, "basic.publish: truncated arguments") }
            guard buffer.readInteger(as: UInt16.self) != nil else { throw truncated() }  // reserved-1 (ticket)
            let namesStart = buffer.readerIndex
            guard let exchangeLength = buffer.readInteger(as: UInt8.self), let exchangeBytes = buffer.readSlice(length: Int(exchangeLength)),
                  let keyLength = buffer.readInteger(as: UInt8.self), buffer.readSlice(length: Int(keyLength)) != nil,
                  let bits = buffer.readInteger(as: UInt8.self) else { throw truncated() }
            guard buffer.readableBytes == 0 else {
                throw AMQPWireError(.syntaxError, "basic.publish: \(buffer.readableBytes) bytes after its last argument")
            }
            // Both slices are within the payload just read.
            self.names = payload.getSlice(at: namesStart, length: 2 + Int(exchangeLength) + Int(keyLength))!
            self.exchange = String(buffer: exchangeBytes)
            self.mandatory = bits & 1 != 0
            self.immediate = bits & 2 != 0
        }
    }
}
