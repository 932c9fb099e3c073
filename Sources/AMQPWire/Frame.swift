public import NIOCore

/// AMQP 0-9-1's framing (the specification's section 4.2.3; facts from RabbitMQ's machine-readable definition,
/// rabbitmq-codegen's amqp-rabbitmq-0.9.1.json): `type:u8 channel:u16 size:u32 payload[size] 0xCE`.
///
/// The second front end on brokerd's core (issue 16) reads and writes these; like WireProtocol it depends on
/// NIOCore only, so it tests without sockets.
public struct AMQPFrame: Hashable, Sendable {
    /// The frame types (constants FRAME-METHOD, FRAME-HEADER, FRAME-BODY, FRAME-HEARTBEAT).
    public enum Kind: UInt8, Hashable, Sendable {
        case method = 1
        case header = 2
        case body = 3
        case heartbeat = 8
    }

    public var kind: Kind
    public var channel: UInt16
    public var payload: ByteBuffer

    public init(kind: Kind, channel: UInt16, payload: ByteBuffer) {
        self.kind = kind
        self.channel = channel
        self.payload = payload
    }

    /// The octet every frame ends with (FRAME-END).
    public static let frameEnd: UInt8 = 0xCE
    /// Header (7 bytes) and end octet: what a frame costs beyond its payload.
    public static let overhead = 8
    /// The smallest frame-max a peer may negotiate (FRAME-MIN-SIZE).
    public static let minimumFrameMax: UInt32 = 4096

    /// What a client sends first: `AMQP` 0 0 9 1.
    public static let protocolHeader: [UInt8] = [0x41, 0x4D, 0x51, 0x50, 0, 0, 9, 1]

    public func write(to buffer: inout ByteBuffer) {
        buffer.writeMultipleIntegers(kind.rawValue, channel, UInt32(payload.readableBytes))
        buffer.writeImmutableBuffer(payload)
        buffer.writeInteger(Self.frameEnd)
    }

    /// Reads one frame if `buffer` holds all of it; nil (and nothing consumed) if not yet. Every length is checked
    /// against `maxFrameSize` (the negotiated frame-max, which counts the whole frame) before anything is buffered.
    public static func read(from buffer: inout ByteBuffer, maxFrameSize: UInt32) throws(AMQPWireError) -> AMQPFrame? {
        guard let (type, channel, size) = buffer.getMultipleIntegers(at: buffer.readerIndex, as: (UInt8, UInt16, UInt32).self) else {
            return nil
        }
        guard let kind = Kind(rawValue: type) else {
            throw AMQPWireError(.frameError, "unknown frame type \(type)")
        }
        guard UInt64(size) + UInt64(overhead) <= UInt64(maxFrameSize) else {
            throw AMQPWireError(.frameError, "a frame of \(UInt64(size) + UInt64(overhead)) bytes is larger than the negotiated frame-max \(maxFrameSize)")
        }
        let total = Int(size) + overhead
        guard buffer.readableBytes >= total else { return nil }
        guard buffer.getInteger(at: buffer.readerIndex + total - 1, as: UInt8.self) == frameEnd else {
            throw AMQPWireError(.frameError, "a frame does not end with 0xCE (frame-end)")
        }
        buffer.moveReaderIndex(forwardBy: 7)
        // Both reads are within the bytes just checked to be there.
        let payload = buffer.readSlice(length: Int(size))!
        buffer.moveReaderIndex(forwardBy: 1)
        if kind == .heartbeat && (channel != 0 || size != 0) {
            throw AMQPWireError(.frameError, "a heartbeat frame must be empty and on channel 0")
        }
        return AMQPFrame(kind: kind, channel: channel, payload: payload)
    }
}

/// Why AMQP bytes could not be read: the reply code the protocol prescribes (a connection exception for framing
/// and syntax) and a readable text.
public struct AMQPWireError: Error, Hashable, Sendable, CustomStringConvertible {
    /// AMQP 0-9-1 reply codes (the specification's constants).
    public enum Code: UInt16, Hashable, Sendable {
        case contentTooLarge = 311
        case noRoute = 312
        case noConsumers = 313
        case connectionForced = 320
        case invalidPath = 402
        case accessRefused = 403
        case notFound = 404
        case resourceLocked = 405
        case preconditionFailed = 406
        case frameError = 501
        case syntaxError = 502
        case commandInvalid = 503
        case channelError = 504
        case unexpectedFrame = 505
        case resourceError = 506
        case notAllowed = 530
        case notImplemented = 540
        case internalError = 541

        /// A hard error closes the connection; a soft one only the channel.
        public var closesConnection: Bool {
            switch self {
            case .contentTooLarge, .noRoute, .noConsumers, .accessRefused, .notFound, .resourceLocked, .preconditionFailed: false
            default: true
            }
        }
    }

    public var code: Code
    public var text: String

    public init(_ code: Code, _ text: String) {
        self.code = code
        self.text = text
    }

    public var description: String { "\(code.rawValue) \(text)" }
}
