public import NIOCore

/// The bytes a client sends before its first frame: ASCII `BRKD`.
public let protocolMagic: [UInt8] = Array("BRKD".utf8)

/// A protocol version: major in the high byte, minor in the low byte (1.0 = 0x0100).
public struct ProtocolVersion: RawRepresentable, Hashable, Comparable, Sendable, CustomStringConvertible {
    public var rawValue: UInt16
    public init(rawValue: UInt16) { self.rawValue = rawValue }
    public init(major: UInt8, minor: UInt8) { self.rawValue = UInt16(major) << 8 | UInt16(minor) }
    public var major: UInt8 { UInt8(rawValue >> 8) }
    public var minor: UInt8 { UInt8(rawValue & 0xFF) }
    public var description: String { "\(major).\(minor)" }
    public static func < (a: Self, b: Self) -> Bool { a.rawValue < b.rawValue }

    public static let v1_0 = ProtocolVersion(major: 1, minor: 0)
    /// Adds the `notice` frame and the `typeMinorVersion` property (docs/protocol.md §5, §10).
    public static let v1_1 = ProtocolVersion(major: 1, minor: 1)
    /// The versions this build speaks, oldest first.
    public static let supported: [ProtocolVersion] = [.v1_0, .v1_1]

    /// The highest version both sides speak, or nil.
    public static func negotiate(offered: [ProtocolVersion], supported: [ProtocolVersion] = supported) -> ProtocolVersion? {
        offered.filter(supported.contains).max()
    }
}

/// Frame type codes (docs/protocol.md, "Frame types"). Client → server codes are below 0x80 and server → client
/// codes are 0x80 and above, except `heartbeat`, `close` and `closeOk` which both sides send.
public enum FrameType: UInt8, Sendable, CaseIterable {
    case hello = 0x01
    case authenticate = 0x02
    case heartbeat = 0x03
    case close = 0x04
    case closeOk = 0x05
    case exchangeDeclare = 0x10
    case exchangeDelete = 0x11
    case queueDeclare = 0x12
    case queueDelete = 0x13
    case queuePurge = 0x14
    case queueBind = 0x15
    case queueUnbind = 0x16
    case publish = 0x20
    case confirmSelect = 0x21
    case consume = 0x22
    case cancel = 0x23
    case ack = 0x24
    case nack = 0x25
    case reject = 0x26
    case get = 0x27
    case status = 0x40
    case manage = 0x41

    case helloOk = 0x81
    case authOk = 0x82
    case ok = 0x90
    case queueDeclareOk = 0x91
    case countOk = 0x92
    case consumeOk = 0x93
    case deliver = 0xA0
    case getOk = 0xA1
    case getEmpty = 0xA2
    case returned = 0xA3
    case confirmAck = 0xA4
    case confirmNack = 0xA5
    case consumerCancelled = 0xA6
    case connectionBlocked = 0xA7
    case connectionUnblocked = 0xA8
    /// Protocol 1.1: advice to the client (a deprecated message version); never sent on a 1.0 connection.
    case notice = 0xA9
    case statusOk = 0xB0
    case manageOk = 0xB1
    case error = 0xF0
}

/// One frame: `u32 length` (of type + payload), `u8 type`, payload. The payload is a slice of the read buffer.
public struct Frame: Sendable {
    public var type: UInt8
    public var payload: ByteBuffer

    public init(type: UInt8, payload: ByteBuffer) {
        self.type = type
        self.payload = payload
    }

    /// Bytes before the payload: the u32 length and the u8 type.
    public static let headerSize = 5
    /// The smallest maximum frame size a peer may negotiate.
    public static let minimumMaxSize: UInt32 = 4096
    /// The maximum frame size before the handshake has set one.
    public static let handshakeMaxSize: UInt32 = 65536
    /// Largest `arguments` table of a request (declare, bind, consume, manage), encoded: 64 KiB. docs/protocol.md §13.
    public static let maximumArgumentsBytes: UInt32 = 64 << 10
}

extension ByteBuffer {
    /// Starts a frame: reserves the length and writes the type. Finish it with ``endFrame(at:)``.
    @inlinable
    public mutating func beginFrame(_ type: FrameType) -> Int {
        let start = self.writerIndex
        self.writeMultipleIntegers(UInt32(0), type.rawValue)
        return start
    }

    /// Patches the length of the frame begun at `start`.
    @inlinable
    public mutating func endFrame(at start: Int) {
        self.setInteger(UInt32(truncatingIfNeeded: self.writerIndex - start - 4), at: start)
    }
}

/// Splits a byte stream into frames. Any split of the stream decodes the same; lengths are checked against
/// `maxFrameSize` before any byte of the payload is buffered, so a hostile length cannot make us allocate.
public struct FrameDecoder: NIOSingleStepByteToMessageDecoder {
    public typealias InboundOut = Frame

    /// The largest whole frame accepted (length prefix included).
    public var maxFrameSize: UInt32
    /// Whether the stream starts with ``protocolMagic`` (true on the server side).
    public var expectsMagic: Bool

    public init(maxFrameSize: UInt32 = Frame.handshakeMaxSize, expectsMagic: Bool) {
        self.maxFrameSize = maxFrameSize
        self.expectsMagic = expectsMagic
    }

    @inlinable  // compiled into the caller: see FrameReader
    public mutating func decode(buffer: inout ByteBuffer) throws -> Frame? {
        if expectsMagic {
            guard buffer.readableBytes >= protocolMagic.count else { return nil }
            let magic = buffer.readBytes(length: protocolMagic.count)
            guard magic == protocolMagic else {
                throw BrokerError(.frameError, "not a brokerd client: the stream must start with the bytes \"BRKD\"")
            }
            expectsMagic = false
        }
        guard let length = buffer.getInteger(at: buffer.readerIndex, as: UInt32.self) else { return nil }
        if length == 0 { throw BrokerError(.frameError, "frame length 0: a frame holds at least its type byte") }
        if UInt64(length) + 4 > UInt64(maxFrameSize) {
            throw BrokerError(.frameTooLarge, "frame of \(UInt64(length) + 4) bytes exceeds the maximum of \(maxFrameSize)")
        }
        guard buffer.readableBytes >= Int(length) + 4 else { return nil }
        buffer.moveReaderIndex(forwardBy: 4)
        // Both reads are within the bounds just checked.
        let type = buffer.readInteger(as: UInt8.self) ?? 0
        let payload = buffer.readSlice(length: Int(length) - 1) ?? ByteBuffer()
        return Frame(type: type, payload: payload)
    }

    public mutating func decodeLast(buffer: inout ByteBuffer, seenEOF: Bool) throws -> Frame? {
        try decode(buffer: &buffer)
    }
}
