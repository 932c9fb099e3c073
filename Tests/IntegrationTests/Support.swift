import BrokerClient
import BrokerCore
import BrokerServer
import Foundation
import Logging
import NIOCore
import Synchronization
import Testing
import WireProtocol

#if canImport(Glibc)
import Glibc
#endif

/// Runs `body` against a real broker on an ephemeral loopback port, shutting it down whether `body` succeeds or not.
/// `adjust` sets anything else of the server's configuration (TLS, limits).
func withBroker(users: UserStore = UserStore(), heartbeat: UInt16 = 0, maxFrameSize: UInt32 = 1 << 20, dataDirectory: String? = nil,
                segmentSize: Int = 64 << 20, memoryLimit: Int = 0, inMemory: Bool = false, logger: Logger? = nil,
                adjust: (inout ServerConfiguration) -> Void = { _ in },
                _ body: (BrokerServer, ClientConfiguration) async throws -> Void) async throws {
    // Each broker gets its own data directory (parallel-safe), removed afterwards unless the caller owns it.
    let directory = dataDirectory ?? temporaryDirectory()
    defer { if dataDirectory == nil { try? FileManager.default.removeItem(atPath: directory) } }
    var configuration = ServerConfiguration()
    configuration.dataDirectory = inMemory ? nil : directory
    configuration.segmentSize = segmentSize
    configuration.memoryLimit = memoryLimit
    configuration.host = "127.0.0.1"
    configuration.port = 0
    configuration.heartbeatSeconds = heartbeat
    configuration.maxFrameSize = maxFrameSize
    configuration.handshakeTimeoutSeconds = 5
    adjust(&configuration)
    let server = try await BrokerServer.start(configuration: configuration, users: users,
                                              logger: logger ?? Logger(label: "test", factory: { _ in SwiftLogNoOpLogHandler() }))
    var client = ClientConfiguration(port: server.port, clientName: "tests", connectTimeout: .seconds(5), requestTimeout: .seconds(5))
    client.logger = quietLogger
    do {
        try await body(server, client)
    } catch {
        await server.shutdown()
        throw error
    }
    await server.shutdown()
}

/// A logger that drops everything (clients in tests would otherwise log reconnect attempts to stdout).
let quietLogger = Logger(label: "test", factory: { _ in SwiftLogNoOpLogHandler() })

/// A client configuration without automatic recovery, for tests of what the broker does when a connection ends.
func withoutRecovery(_ configuration: ClientConfiguration) -> ClientConfiguration {
    var configuration = configuration
    configuration.recovery = nil
    configuration.logger = quietLogger
    return configuration
}

/// A fresh path under the system's temporary directory.
func temporaryDirectory() -> String {
    FileManager.default.temporaryDirectory.appendingPathComponent("brokerd-test-\(UUID().uuidString)").path
}

/// Connects a client, runs `body`, closes the client.
@discardableResult
func withConnection<T>(_ configuration: ClientConfiguration, _ body: (BrokerConnection) async throws -> T) async throws -> T {
    try await BrokerConnection.withConnection(configuration, body)
}

/// Expects `body` to throw a BrokerError with `code`.
func expectBrokerError(_ code: BrokerError.Code, _ body: () async throws -> Void,
                       sourceLocation: SourceLocation = #_sourceLocation) async {
    do {
        try await body()
        Issue.record("expected \(code), but the call succeeded", sourceLocation: sourceLocation)
    } catch let error as BrokerError {
        #expect(error.code == code, "\(error)", sourceLocation: sourceLocation)
    } catch {
        Issue.record("expected BrokerError \(code), got \(error)", sourceLocation: sourceLocation)
    }
}

/// The next message of a consumer, or a test failure after `timeout`.
func next(_ consumer: Consumer, timeout: Duration = .seconds(5)) async throws -> Message {
    try await withThrowingTaskGroup(of: Message?.self) { group in
        group.addTask {
            var iterator = consumer.makeAsyncIterator()
            return try await iterator.next()
        }
        group.addTask {
            try await Task.sleep(for: timeout)
            return nil
        }
        defer { group.cancelAll() }
        guard let first = try await group.next(), let message = first else {
            throw BrokerError(.timeout, "no delivery within \(timeout)")
        }
        return message
    }
}

/// Runs `publishers` concurrent loops until the task is cancelled or `publish` returns false: each loop takes the
/// next number from `nextNumber` and publishes it.
func publishNumbered(publishers: Int, nextNumber: @escaping @Sendable () -> Int,
                     _ publish: @escaping @Sendable (Int) async -> Bool) async {
    await withTaskGroup(of: Void.self) { group in
        for _ in 0..<publishers {
            group.addTask {
                while !Task.isCancelled {
                    if await !publish(nextNumber()) { return }
                }
            }
        }
    }
}

/// Polls `condition` until it holds or `timeout` passes.
func eventually(timeout: Duration = .seconds(20), _ condition: () async throws -> Bool) async throws -> Bool {
    let deadline = ContinuousClock.now + timeout
    while ContinuousClock.now < deadline {
        if try await condition() { return true }
        try await Task.sleep(for: .milliseconds(20))
    }
    return try await condition()
}

/// Runs blocking work (raw sockets waiting on the kernel) on a thread of its own: blocking one of the two threads
/// of Swift's cooperative pool would stall every other test's tasks meanwhile, and on a loaded machine push them
/// past their brokers' handshake timeouts.
func offThePool<T: Sendable>(_ work: @escaping @Sendable () throws -> T) async throws -> T {
    try await withCheckedThrowingContinuation { continuation in
        Thread { continuation.resume(with: Result { try work() }) }.start()
    }
}

/// A bare TCP client speaking raw bytes, for handshake and malformed-input tests. Blocking, with a receive timeout.
///
/// `@unchecked Sendable`: a test uses a socket from one thread at a time: its own task, or the thread of an
/// ``offThePool(_:)`` call it awaits; never both at once.
final class RawSocket: @unchecked Sendable {
    let fd: Int32

    init(port: Int) throws {
        fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = in_port_t(UInt16(port).bigEndian)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        var timeout = timeval(tv_sec: 5, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        let result = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        guard result == 0 else {
            close(fd)
            throw BrokerError(.connectionClosed, "raw connect failed: errno \(errno)")
        }
    }

    deinit { close(fd) }

    func send(_ bytes: [UInt8]) {
        _ = bytes.withUnsafeBytes { Glibc.send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
    }

    func send(_ message: ClientMessage) { send(wireBytes(message)) }

    private var reader = FrameReader(decoder: FrameDecoder(maxFrameSize: 1 << 24, expectsMagic: false))

    /// The next frame from the server, or nil when the server closed the connection (or the timeout passed).
    func receive() throws -> ServerMessage? {
        while true {
            if let frame = try reader.next() { return try ServerMessage.decode(frame) }
            var chunk = [UInt8](repeating: 0, count: 65536)
            let n = chunk.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
            if n <= 0 { return nil }
            reader.append(ByteBuffer(bytes: chunk[0..<n]))
        }
    }

    /// Frames until the server closes the connection.
    func receiveUntilClosed() throws -> [ServerMessage] {
        var frames: [ServerMessage] = []
        while let frame = try receive() { frames.append(frame) }
        return frames
    }

    /// Magic, hello and authenticate as guest; returns the server's answers.
    func handshake(heartbeat: UInt16 = 0, versions: [ProtocolVersion] = ProtocolVersion.supported) throws -> [ServerMessage] {
        send(protocolMagic)
        send(.hello(Hello(versions: versions, clientName: "raw")))
        guard let hello = try receive() else { return [] }
        guard case .helloOk = hello else { return [hello] }
        send(.authenticate(Authenticate(user: "guest", password: "guest", heartbeatSeconds: heartbeat)))
        guard let auth = try receive() else { return [hello] }
        return [hello, auth]
    }
}

/// The frames of `messages` as the bytes a client sends, for tests that write to a raw socket.
func wireBytes(_ messages: ClientMessage...) -> [UInt8] {
    var buffer = ByteBuffer()
    for message in messages { message.encode(into: &buffer) }
    return Array(buffer.readableBytesView)
}

/// Log lines a broker wrote, in logfmt (``BrokerLogHandler``), for tests of what operators see.
final class CapturedLog: Sendable {
    private let lines = Mutex<[String]>([])

    func append(_ line: String) { lines.withLock { $0.append(line) } }

    var logger: Logger {
        var logger = Logger(label: "brokerd") { label in
            var handler = BrokerLogHandler(label: label, format: .logfmt) { [self] line in self.append(line) }
            handler.logLevel = .debug
            return handler
        }
        logger.logLevel = .debug
        return logger
    }

    /// The lines whose message is `message` (`msg=` in logfmt).
    func lines(_ message: String) -> [String] {
        let key = "msg=" + BrokerLogHandler.logfmtValue(message) + " "
        return lines.withLock { $0.filter { $0.contains(key) } }
    }

    var all: [String] { lines.withLock { $0 } }
}

/// A loopback port bound by this process without listening: while it is held no one else can bind it, and a
/// connection to it is refused at once. Tests use it for "nothing is there" (instead of a port a stopped broker
/// just released, which another test may bind meanwhile).
final class ReservedPort: Sendable {
    let port: Int
    private let descriptor: Int32

    init() throws {
        let descriptor = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard descriptor >= 0 else { throw POSIXError(.init(rawValue: errno) ?? .EIO) }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        address.sin_port = 0
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        let ok = withUnsafeMutablePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { pointer in
                bind(descriptor, pointer, length) == 0 && getsockname(descriptor, pointer, &length) == 0
            }
        }
        guard ok else {
            let code = errno
            close(descriptor)
            throw POSIXError(.init(rawValue: code) ?? .EIO)
        }
        self.descriptor = descriptor
        self.port = Int(UInt16(bigEndian: address.sin_port))
    }

    /// Frees the port. Call it exactly once.
    func release() { _ = close(descriptor) }
}
