public import Logging
public import Metrics
public import NIOCore
public import WireProtocol

/// One address a client may connect to.
public struct Endpoint: Sendable, Hashable, CustomStringConvertible {
    public var host: String
    public var port: Int
    public init(host: String, port: Int = 5680) {
        self.host = host
        self.port = port
    }
    public var description: String { "\(host):\(port)" }
}

/// Where and how a client connects, and how it recovers when the connection drops.
public struct ClientConfiguration: Sendable {
    /// Addresses to try in turn, first to last (at the first connect and on every reconnect). Never empty.
    public var endpoints: [Endpoint] {
        didSet { if endpoints.isEmpty { endpoints = [Endpoint(host: "127.0.0.1")] } }
    }
    /// The first endpoint's host.
    public var host: String {
        get { endpoints[0].host }
        set { endpoints[0].host = newValue }
    }
    /// The first endpoint's port.
    public var port: Int {
        get { endpoints[0].port }
        set { endpoints[0].port = newValue }
    }
    public var user: String
    public var password: String
    /// Shown in the broker's logs and connection listings, and in this client's log metadata and metrics.
    public var clientName: String
    /// Heartbeat interval to ask for, in seconds; 0 takes the server's proposal.
    public var heartbeatSeconds: UInt16
    /// Largest frame this client accepts; 0 (the default) takes the server's. The server refuses a value below
    /// its own limit, because any delivery may be that large (docs/protocol.md §4).
    public var maxFrameSize: UInt32
    /// Time allowed for TCP connect plus handshake, per attempt.
    public var connectTimeout: Duration
    /// Time allowed for a request's answer (declare, bind, get...), including any wait for a reconnect.
    /// Publisher confirms are not bounded by it.
    public var requestTimeout: Duration
    /// Time a publish may wait to be sent while the connection recovers or the broker blocks publishers.
    public var publishTimeout: Duration
    /// Protocol versions offered, in any order; the server picks the highest it speaks.
    public var versions: [ProtocolVersion]
    /// Automatic recovery after a dropped connection; nil turns it off (the connection then fails for good).
    public var recovery: RecoveryPolicy?
    /// With confirms on: re-send publishes still awaiting their confirm when the connection dropped, once it is
    /// back (at-least-once: the broker may then hold the message twice; the message id is the same). When false,
    /// such publishes fail with `connectionClosed` instead.
    public var republishUnconfirmed: Bool
    /// Graceful shutdown (``BrokerConnection/run()`` under a `ServiceGroup`): how long to wait for in-flight
    /// deliveries to be settled and publishes to be confirmed before closing anyway.
    public var shutdownTimeout: Duration
    /// How long ``BrokerConnection/close()`` waits for the broker's `closeOk` when publishes may still be unread by
    /// it: publishes awaiting their confirms, or (without confirms) any publish while the broker blocks publishers.
    /// The broker answers `closeOk` only after confirming every publish sent before the `close`, and during an
    /// alarm it reads them only once the alarm clears (docs/protocol.md §9.3). Past the timeout the socket is closed
    /// and the publishes still unconfirmed fail. A close with nothing in flight waits at most 2 seconds. Default 30 s.
    public var closeTimeout: Duration = .seconds(30)
    /// Where the connection logs; its metadata carries the client name and the broker's connection id.
    public var logger: Logger
    /// Where the connection's counters go (`brokerd_client_*_total`, labelled `client`); nil uses the process's
    /// bootstrapped `MetricsSystem` (a no-op until one is bootstrapped).
    public var metricsFactory: (any MetricsFactory)?
    /// TLS to the broker; nil connects over plain TCP. Default nil.
    public var tls: ClientTLS?
    /// The protocol spoken to the broker: brokerd's own (the default), or AMQP 0-9-1, to brokerd's AMQP listener or a
    /// RabbitMQ node (docs/client.md, "AMQP 0-9-1"). The API is the same; `status` and `manage` need the native one.
    public var wireProtocol: BrokerProtocol = .native

    public init(host: String = "127.0.0.1", port: Int = 5680, user: String = "guest", password: String = "guest",
                clientName: String = "swift-client", heartbeatSeconds: UInt16 = 0, maxFrameSize: UInt32 = 0,
                connectTimeout: Duration = .seconds(10), requestTimeout: Duration = .seconds(30),
                publishTimeout: Duration = .seconds(30), versions: [ProtocolVersion] = ProtocolVersion.supported,
                recovery: RecoveryPolicy? = .default, republishUnconfirmed: Bool = true, shutdownTimeout: Duration = .seconds(10),
                logger: Logger = Logger(label: "brokerd.client")) {
        self.endpoints = [Endpoint(host: host, port: port)]
        self.user = user
        self.password = password
        self.clientName = clientName
        self.heartbeatSeconds = heartbeatSeconds
        self.maxFrameSize = maxFrameSize
        self.connectTimeout = connectTimeout
        self.requestTimeout = requestTimeout
        self.publishTimeout = publishTimeout
        self.versions = versions
        self.recovery = recovery
        self.republishUnconfirmed = republishUnconfirmed
        self.shutdownTimeout = shutdownTimeout
        self.logger = logger
    }

    /// A configuration from a URL: `brokerd://user:password@host:port` (native, default port 5680) or
    /// `amqp://user:password@host:port/` (AMQP 0-9-1, default port 5672; the virtual host, if given, must be `/`).
    /// User and password default to guest; percent-escapes are decoded. Several hosts may be given separated by
    /// commas (`amqp://guest:guest@node1:5672,node2:5672`): they are the endpoints, tried in turn.
    public init(url: String, clientName: String = "swift-client") throws(BrokerError) {
        self.init(clientName: clientName)
        let pieces = url.split(separator: "://", maxSplits: 1)
        guard pieces.count == 2 else {
            throw BrokerError(.invalidArgument, "'\(url)' is not a broker URL: expected brokerd://host:port or amqp://user:password@host:port")
        }
        let scheme = pieces[0].lowercased()
        let defaultPort: Int
        switch scheme {
        case "brokerd":
            wireProtocol = .native
            defaultPort = 5680
        case "amqp":
            wireProtocol = .amqp
            defaultPort = 5672
        default:
            throw BrokerError(.invalidArgument, "unknown URL scheme '\(scheme)': use brokerd:// or amqp:// (amqps is not supported; use tls with brokerd://)")
        }
        var rest = String(pieces[1])
        if let slash = rest.firstIndex(of: "/") {
            let path = Self.percentDecoded(rest[rest.index(after: slash)...])
            guard path.isEmpty || path == "/" else {
                throw BrokerError(.invalidArgument, "virtual host '\(path)' in '\(url)': brokerd and this client use the default virtual host '/' only")
            }
            rest = String(rest[..<slash])
        }
        if let at = rest.lastIndex(of: "@") {
            let credentials = rest[..<at]
            rest = String(rest[rest.index(after: at)...])
            let parts = credentials.split(separator: ":", maxSplits: 1, omittingEmptySubsequences: false)
            user = Self.percentDecoded(parts[0])
            if parts.count > 1 { password = Self.percentDecoded(parts[1]) }
        }
        var endpoints: [Endpoint] = []
        for host in rest.split(separator: ",") {
            if let colon = host.lastIndex(of: ":"), !host.hasSuffix("]") {
                guard let port = Int(host[host.index(after: colon)...]), (1...65535).contains(port) else {
                    throw BrokerError(.invalidArgument, "bad port in '\(host)' of '\(url)'")
                }
                endpoints.append(Endpoint(host: String(host[..<colon]), port: port))
            } else {
                endpoints.append(Endpoint(host: String(host), port: defaultPort))
            }
        }
        if !endpoints.isEmpty { self.endpoints = endpoints.map { Endpoint(host: $0.host.isEmpty ? "127.0.0.1" : $0.host, port: $0.port) } }
        if endpoints.isEmpty { self.endpoints = [Endpoint(host: "127.0.0.1", port: defaultPort)] }
    }

    /// `%2F` and the like decoded (an invalid escape is kept as it is).
    static func percentDecoded(_ text: Substring) -> String {
        var bytes: [UInt8] = []
        var utf8 = Array(text.utf8)[...]
        while let byte = utf8.popFirst() {
            if byte == UInt8(ascii: "%"), utf8.count >= 2,
               let value = UInt8(String(decoding: utf8.prefix(2), as: UTF8.self), radix: 16) {
                bytes.append(value)
                utf8 = utf8.dropFirst(2)
            } else {
                bytes.append(byte)
            }
        }
        return String(decoding: bytes, as: UTF8.self)
    }

    /// A configuration that tries `endpoints` in turn (an empty list means the default, 127.0.0.1:5680).
    public init(endpoints: [Endpoint], user: String = "guest", password: String = "guest", clientName: String = "swift-client") {
        self.init(user: user, password: password, clientName: clientName)
        // Observers do not run in an initializer, so the non-empty rule is applied here too.
        if !endpoints.isEmpty { self.endpoints = endpoints }
    }
}

/// TLS from the client to the broker (a broker started with `--tls-cert`).
public struct ClientTLS: Sendable, Hashable {
    /// PEM file of the certificate authorities to trust for the broker's certificate; nil trusts the system's.
    public var caFile: String?
    /// The name the broker's certificate must carry (and sent as SNI); nil uses the endpoint's host.
    public var serverName: String?
    /// Check that the certificate is for that name. Turn off only for certificates issued to an IP address your
    /// trust store cannot match, never to silence an error you do not understand.
    public var verifyHostname: Bool
    /// A client certificate and its key (PEM), for brokers that require one (`--tls-client-ca`).
    public var certificateFile: String?
    public var keyFile: String?

    public init(caFile: String? = nil, serverName: String? = nil, verifyHostname: Bool = true,
                certificateFile: String? = nil, keyFile: String? = nil) {
        self.caFile = caFile
        self.serverName = serverName
        self.verifyHostname = verifyHostname
        self.certificateFile = certificateFile
        self.keyFile = keyFile
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
    /// Which of the connection's sockets delivered it: a delivery tag is valid only on that one.
    let epoch: UInt64

    /// The body as UTF-8 text.
    public var bodyString: String { String(buffer: body) }

    /// Acknowledges this delivery (and, with `multiple`, every earlier one on the connection).
    public func ack(multiple: Bool = false) async throws {
        try await connection.settle(epoch: epoch, deliveryTag: deliveryTag, multiple: multiple, .ack)
    }

    /// Negatively acknowledges; with `requeue` the message goes back to the head of its queue, marked redelivered.
    public func nack(multiple: Bool = false, requeue: Bool = true) async throws {
        try await connection.settle(epoch: epoch, deliveryTag: deliveryTag, multiple: multiple, .nack(requeue: requeue))
    }

    /// Rejects this one delivery.
    public func reject(requeue: Bool = false) async throws {
        try await connection.settle(epoch: epoch, deliveryTag: deliveryTag, multiple: false, .reject(requeue: requeue))
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

/// The protocol a client speaks to its broker (``ClientConfiguration/wireProtocol``).
public enum BrokerProtocol: String, Sendable, CaseIterable {
    /// brokerd's own binary protocol (docs/protocol.md).
    case native
    /// AMQP 0-9-1 (docs/amqp.md): brokerd's AMQP listener, or RabbitMQ.
    case amqp
}
