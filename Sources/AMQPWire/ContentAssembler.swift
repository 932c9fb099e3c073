public import NIOCore

/// Puts one channel's frames back together into commands: a method alone, or a content-carrying method
/// (`basic.publish`) with its content header and as many body frames as the header's size says, in that order and
/// nothing between (the specification's 4.2.6). A pure state machine: the listener feeds it each frame of its
/// channel and acts on what comes out.
public struct AMQPContentAssembler: Sendable {
    /// A whole command.
    public enum Command: Hashable, Sendable {
        case method(AMQPMethod)
        case content(AMQPMethod, AMQPContentHeader, ByteBuffer)
    }

    private enum State: Sendable {
        case idle
        case awaitingHeader(AMQPMethod)
        case awaitingBody(AMQPMethod, AMQPContentHeader, ByteBuffer)
    }

    private var state = State.idle
    /// The largest body accepted; a header announcing more is refused before any body is buffered.
    public let maximumBodySize: UInt64

    public init(maximumBodySize: UInt64) { self.maximumBodySize = maximumBodySize }

    /// Whether a content-carrying method is waiting for the rest of its content.
    public var isAssembling: Bool {
        if case .idle = state { return false }
        return true
    }

    /// Feeds one frame of this channel (not heartbeats: those are the connection's). Returns a command when one
    /// is complete. Frames out of order are `unexpected-frame` (a connection exception); a body larger than the
    /// limit is `precondition-failed` (a channel exception, as RabbitMQ answers for its max message size).
    public mutating func feed(_ frame: AMQPFrame) throws(AMQPWireError) -> Command? {
        switch (state, frame.kind) {
        case (.idle, .method):
            let method = try AMQPMethod.read(from: frame.payload)
            guard method.signature.content else { return .method(method) }
            state = .awaitingHeader(method)
            return nil
        case (.awaitingHeader(let method), .header):
            let header = try AMQPContentHeader.read(from: frame.payload)
            guard header.classId == method.signature.classId else {
                state = .idle
                throw AMQPWireError(.frameError, "a content header of class \(header.classId) after \(method.signature.name)")
            }
            guard header.bodySize <= maximumBodySize else {
                state = .idle
                throw AMQPWireError(.preconditionFailed, "message size \(header.bodySize) is larger than the maximum \(maximumBodySize)")
            }
            if header.bodySize == 0 {
                state = .idle
                return .content(method, header, ByteBuffer())
            }
            var body = ByteBuffer()
            body.reserveCapacity(Int(min(header.bodySize, 1 << 20)))
            state = .awaitingBody(method, header, body)
            return nil
        case (.awaitingBody(let method, let header, var body), .body):
            guard UInt64(body.readableBytes) + UInt64(frame.payload.readableBytes) <= header.bodySize else {
                state = .idle
                throw AMQPWireError(.frameError, "body frames of \(method.signature.name) carry more than the \(header.bodySize) bytes its header announced")
            }
            body.writeImmutableBuffer(frame.payload)
            guard UInt64(body.readableBytes) == header.bodySize else {
                state = .awaitingBody(method, header, body)
                return nil
            }
            state = .idle
            return .content(method, header, body)
        case (.idle, .header), (.idle, .body):
            throw AMQPWireError(.unexpectedFrame, "a \(frame.kind) frame with no content-carrying method before it")
        case (.awaitingHeader(let method), _):
            state = .idle
            throw AMQPWireError(.unexpectedFrame, "expected the content header of \(method.signature.name), got a \(frame.kind) frame")
        case (.awaitingBody(let method, _, _), _):
            state = .idle
            throw AMQPWireError(.unexpectedFrame, "expected body frames of \(method.signature.name), got a \(frame.kind) frame")
        case (.idle, .heartbeat):
            throw AMQPWireError(.unexpectedFrame, "a heartbeat frame on a channel")
        }
    }
}
