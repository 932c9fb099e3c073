public import NIOCore
public import WireProtocol

/// Where and how a client connects.
public struct ClientConfiguration: Sendable {
    public var host: String
    public var port: Int
    public var user: String
    public var password: String
    /// Shown in the broker's logs and connection listings.
    public var clientName: String
    /// Heartbeat interval to ask for, in seconds; 0 takes the server's proposal.
    public var heartbeatSeconds: UInt16
    /// Largest frame this client accepts; 0 takes the server's.
    public var maxFrameSize: UInt32
    /// Time allowed for TCP connect plus handshake.
    public var connectTimeout: Duration
    /// Time allowed for a request's answer (declare, bind, get...). Publisher confirms are not bounded by it.
    public var requestTimeout: Duration
    /// Protocol versions offered, in any order; the server picks the highest it speaks.
    public var versions: [ProtocolVersion]

    public init(host: String = "127.0.0.1", port: Int = 5680, user: String = "guest", password: String = "guest",
                clientName: String = "swift-client", heartbeatSeconds: UInt16 = 0, maxFrameSize: UInt32 = 0,
                connectTimeout: Duration = .seconds(10), requestTimeout: Duration = .seconds(30),
                versions: [ProtocolVersion] = ProtocolVersion.supported) {
        self.host = host
        self.port = port
        self.user = user
        self.password = password
        self.clientName = clientName
        self.heartbeatSeconds = heartbeatSeconds
        self.maxFrameSize = maxFrameSize
        self.connectTimeout = connectTimeout
        self.requestTimeout = requestTimeout
        self.versions = versions
    }
}

/// A message received by `get` or a consumer.
public struct Message: Sendable {
    public var deliveryTag: UInt64
    public var redelivered: Bool
    public var exchange: String
    public var routingKey: String
    public var properties: MessageProperties
    public var body: ByteBuffer
    /// For `get`: messages left in the queue after this one.
    public var messageCount: UInt32?
    /// The connection the message arrived on; acks go back through it.
    public let connection: BrokerConnection

    /// The body as UTF-8 text.
    public var bodyString: String { String(buffer: body) }

    /// Acknowledges this delivery (and, with `multiple`, every earlier one on the connection).
    public func ack(multiple: Bool = false) async throws {
        try await connection.ack(deliveryTag, multiple: multiple)
    }

    /// Negatively acknowledges; with `requeue` the message goes back to the head of its queue, marked redelivered.
    public func nack(multiple: Bool = false, requeue: Bool = true) async throws {
        try await connection.nack(deliveryTag, multiple: multiple, requeue: requeue)
    }

    /// Rejects this one delivery.
    public func reject(requeue: Bool = false) async throws {
        try await connection.reject(deliveryTag, requeue: requeue)
    }
}

/// A mandatory message the broker could not route, returned to its publisher.
public struct ReturnedMessage: Sendable {
    public var code: BrokerError.Code
    public var text: String
    public var exchange: String
    public var routingKey: String
    public var properties: MessageProperties
    public var body: ByteBuffer
}

/// What a queue declaration reports.
public struct QueueInfo: Sendable, Hashable {
    public var name: String
    public var messageCount: UInt32
    public var consumerCount: UInt32
}

/// A flow-control notice from the broker.
public enum FlowEvent: Sendable, Hashable {
    case blocked(reason: String)
    case unblocked
}
