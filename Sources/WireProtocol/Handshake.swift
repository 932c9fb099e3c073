public import NIOCore

extension ByteBuffer {
    /// Reads a flags byte, refusing bits the protocol version does not define.
    @inlinable
    mutating func readFlags(_ field: StaticString, allowed: UInt8) throws(BrokerError) -> UInt8 {
        let flags = try self.readInt(field, as: UInt8.self)
        if flags & ~allowed != 0 {
            throw BrokerError(.frameError, "\(field) has undefined bits set: 0x\(String(flags, radix: 16))")
        }
        return flags
    }
}

/// Client → server, first frame after the magic: the versions the client speaks.
public struct Hello: Hashable, Sendable {
    public var versions: [ProtocolVersion]
    public var clientName: String
    public init(versions: [ProtocolVersion] = ProtocolVersion.supported, clientName: String) {
        self.versions = versions
        self.clientName = clientName
    }
    public func encode(into buffer: inout ByteBuffer) {
        buffer.writeInteger(UInt8(truncatingIfNeeded: versions.count))
        for v in versions.prefix(255) { buffer.writeInteger(v.rawValue) }
        buffer.writeShortString(clientName)
    }
    public static func decode(from buffer: inout ByteBuffer) throws(BrokerError) -> Hello {
        let count = try buffer.readInt("version count", as: UInt8.self)
        var versions: [ProtocolVersion] = []
        for _ in 0..<count { versions.append(ProtocolVersion(rawValue: try buffer.readInt("version"))) }
        return Hello(versions: versions, clientName: try buffer.readShortString("client name"))
    }
}

/// Server → client: the chosen version and the server's proposed limits.
public struct HelloOk: Hashable, Sendable {
    public var version: ProtocolVersion
    public var maxFrameSize: UInt32
    public var heartbeatSeconds: UInt16
    public var serverName: String
    public var mechanisms: [String]
    public init(version: ProtocolVersion, maxFrameSize: UInt32, heartbeatSeconds: UInt16, serverName: String, mechanisms: [String]) {
        self.version = version
        self.maxFrameSize = maxFrameSize
        self.heartbeatSeconds = heartbeatSeconds
        self.serverName = serverName
        self.mechanisms = mechanisms
    }
    public func encode(into buffer: inout ByteBuffer) {
        buffer.writeMultipleIntegers(version.rawValue, maxFrameSize, heartbeatSeconds)
        buffer.writeShortString(serverName)
        buffer.writeInteger(UInt8(truncatingIfNeeded: mechanisms.count))
        for m in mechanisms.prefix(255) { buffer.writeShortString(m) }
    }
    public static func decode(from buffer: inout ByteBuffer) throws(BrokerError) -> HelloOk {
        let version = ProtocolVersion(rawValue: try buffer.readInt("version"))
        let maxFrameSize: UInt32 = try buffer.readInt("max frame size")
        let heartbeat: UInt16 = try buffer.readInt("heartbeat")
        let serverName = try buffer.readShortString("server name")
        let count = try buffer.readInt("mechanism count", as: UInt8.self)
        var mechanisms: [String] = []
        for _ in 0..<count { mechanisms.append(try buffer.readShortString("mechanism")) }
        return HelloOk(version: version, maxFrameSize: maxFrameSize, heartbeatSeconds: heartbeat, serverName: serverName, mechanisms: mechanisms)
    }
}

/// Client → server: credentials and the client's limits.
public struct Authenticate: Hashable, Sendable {
    public var mechanism: String
    public var user: String
    public var password: String
    /// The largest frame the client accepts; 0 takes the server's.
    public var maxFrameSize: UInt32
    /// The heartbeat interval the client wants in seconds; 0 takes the server's.
    public var heartbeatSeconds: UInt16
    public init(mechanism: String = "PLAIN", user: String, password: String, maxFrameSize: UInt32 = 0, heartbeatSeconds: UInt16 = 0) {
        self.mechanism = mechanism
        self.user = user
        self.password = password
        self.maxFrameSize = maxFrameSize
        self.heartbeatSeconds = heartbeatSeconds
    }
    public func encode(into buffer: inout ByteBuffer) {
        buffer.writeShortString(mechanism)
        buffer.writeShortString(user)
        buffer.writeShortString(password)
        buffer.writeMultipleIntegers(maxFrameSize, heartbeatSeconds)
    }
    public static func decode(from buffer: inout ByteBuffer) throws(BrokerError) -> Authenticate {
        Authenticate(
            mechanism: try buffer.readShortString("mechanism"), user: try buffer.readShortString("user"),
            password: try buffer.readShortString("password"), maxFrameSize: try buffer.readInt("max frame size"),
            heartbeatSeconds: try buffer.readInt("heartbeat"))
    }
}

/// Server → client: authentication succeeded; the limits now in force.
public struct AuthOk: Hashable, Sendable {
    public var connectionId: UInt64
    public var maxFrameSize: UInt32
    public var heartbeatSeconds: UInt16
    public init(connectionId: UInt64, maxFrameSize: UInt32, heartbeatSeconds: UInt16) {
        self.connectionId = connectionId
        self.maxFrameSize = maxFrameSize
        self.heartbeatSeconds = heartbeatSeconds
    }
    public func encode(into buffer: inout ByteBuffer) {
        buffer.writeMultipleIntegers(connectionId, maxFrameSize, heartbeatSeconds)
    }
    public static func decode(from buffer: inout ByteBuffer) throws(BrokerError) -> AuthOk {
        AuthOk(connectionId: try buffer.readInt("connection id"), maxFrameSize: try buffer.readInt("max frame size"),
               heartbeatSeconds: try buffer.readInt("heartbeat"))
    }
}

/// Either direction: the sender is closing the connection, with a code and a reason. The receiver answers
/// `closeOk` and closes.
public struct Close: Hashable, Sendable {
    public var code: BrokerError.Code
    public var reason: String
    public init(code: BrokerError.Code, reason: String) {
        self.code = code
        self.reason = reason
    }
    public func encode(into buffer: inout ByteBuffer) {
        buffer.writeInteger(code.rawValue)
        buffer.writeLongString(reason)
    }
    public static func decode(from buffer: inout ByteBuffer) throws(BrokerError) -> Close {
        Close(code: BrokerError.Code(rawValue: try buffer.readInt("code")), reason: try buffer.readLongString("reason"))
    }
}

/// Server → client: a request failed. The connection stays open.
public struct ErrorFrame: Hashable, Sendable {
    /// The failed request's id, or 0 when the error is about a publish (which has no id).
    public var requestId: UInt32
    public var code: BrokerError.Code
    public var text: String
    public init(requestId: UInt32, code: BrokerError.Code, text: String) {
        self.requestId = requestId
        self.code = code
        self.text = text
    }
    public var error: BrokerError { BrokerError(code, text) }
    public func encode(into buffer: inout ByteBuffer) {
        buffer.writeMultipleIntegers(requestId, code.rawValue)
        buffer.writeLongString(text)
    }
    public static func decode(from buffer: inout ByteBuffer) throws(BrokerError) -> ErrorFrame {
        ErrorFrame(requestId: try buffer.readInt("request id"), code: BrokerError.Code(rawValue: try buffer.readInt("code")),
                   text: try buffer.readLongString("text"))
    }
}

/// The release of brokerd (server, client library and tools share it): what `brokerd --version` and
/// `brokerctl --version` print, and what the server names itself in `helloOk`.
public let brokerdVersion = "0.1.0"
