public import BrokerStorage
import Foundation

/// The server's settings, each with its default. docs/operations.md lists them for operators.
public struct ServerConfiguration: Sendable {
    /// Address to listen on. Default `127.0.0.1`: reachable only from this machine until an operator opens it up.
    public var host: String = "127.0.0.1"
    /// TCP port. Default 5680; 0 picks a free port (tests).
    public var port: Int = 5680
    /// The broker's data directory, locked while the broker runs; nil keeps everything in memory (tests of
    /// behaviour that needs no disk). Default `./brokerd-data`.
    public var dataDirectory: String? = "brokerd-data"
    /// When the message log is flushed to disk (docs/operations.md, "Durability"). Default `always`.
    public var fsyncPolicy: FsyncPolicy = .always
    /// With `fsyncPolicy = .interval`: the longest time between flushes, in milliseconds. Default 100.
    public var fsyncIntervalMilliseconds: Int = 100
    /// Below this many free bytes on the data directory's file system, publishers are blocked. Default 50 MB.
    public var diskFreeLimit: UInt64 = 50_000_000
    /// Above this many bytes of messages held in memory, publishers are blocked until consumers bring it below
    /// 90% of it. Default: 40% of the machine's RAM (as RabbitMQ's memory high watermark); 0 disables.
    public var memoryLimit: Int = ServerConfiguration.defaultMemoryLimit
    /// Size at which the message log starts a new segment file. Default 64 MiB.
    public var segmentSize: Int = 64 << 20
    /// Largest frame accepted, length prefix included; bounds the size of one message. Default 8 MiB.
    public var maxFrameSize: UInt32 = 8 << 20
    /// Heartbeat interval the server proposes, in seconds; 0 disables heartbeats unless the client asks. Default 30.
    public var heartbeatSeconds: UInt16 = 30
    /// Time a new connection has to complete the handshake. Default 10 s.
    public var handshakeTimeoutSeconds: Int64 = 10
    /// Bytes a client may have sent past its `authenticate` frame while its password is being checked. The broker
    /// stops reading the socket during the check, so a well-behaved pipelining client stays far below this (at
    /// most one read, 64 KiB); more is refused with 506. Default 256 KiB.
    public var maxBytesHeldDuringAuth: Int = 256 << 10
    /// Most client connections at once; a connection past it is refused with 506 after its hello. 0: no limit.
    /// Default 0 (the operating system's file descriptor limit applies).
    public var maxConnections: Int = 0
    /// Most connections of one user at once; 0: no limit. Default 0.
    public var maxConnectionsPerUser: Int = 0

    /// TCP port of the AMQP 0-9-1 listener (docs/amqp.md), on the same `host`; nil: no AMQP listener. 0 picks a
    /// free port (tests). Default nil; `--amqp` turns it on at ``defaultAMQPPort``.
    public var amqpPort: Int?

    /// TLS on the listener; nil serves plain TCP. Default nil.
    public var tls: ServerTLS?

    /// Listening sockets already bound by systemd (socket activation, ``Systemd/activatedSockets()``). When
    /// not empty they are adopted instead of binding `host` and `port`. Default none.
    public var activatedSockets: [Int32] = []

    public static let defaultPort = 5680
    /// AMQP's registered port, as RabbitMQ uses it.
    public static let defaultAMQPPort = 5672

    /// 40% of physical memory.
    public static var defaultMemoryLimit: Int { Int(ProcessInfo.processInfo.physicalMemory / 10 * 4) }

    public init() {}
}

/// TLS for the broker's listener (docs/operations.md, "TLS"): every connection on it speaks TLS.
public struct ServerTLS: Sendable, Equatable {
    /// PEM file with the server's certificate chain (its certificate first).
    public var certificateFile: String
    /// PEM file with the certificate's private key.
    public var keyFile: String
    /// PEM file of certificate authorities whose client certificates are accepted. When set, a client must
    /// present a certificate signed by one of them (mutual TLS); when nil, clients are not asked for one.
    public var clientCAFile: String?

    public init(certificateFile: String, keyFile: String, clientCAFile: String? = nil) {
        self.certificateFile = certificateFile
        self.keyFile = keyFile
        self.clientCAFile = clientCAFile
    }
}
