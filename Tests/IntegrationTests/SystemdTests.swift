import BrokerClient
import Foundation
import Testing
import WireProtocol
#if canImport(Glibc)
import Glibc
#endif

/// A datagram socket standing in for systemd's notification socket: what brokerd sends with sd_notify arrives here.
final class NotifySocket {
    let path: String
    let descriptor: Int32

    init() throws {
        path = FileManager.default.temporaryDirectory.appendingPathComponent("brokerd-notify-\(UUID().uuidString.prefix(8))").path
        descriptor = socket(AF_UNIX, Int32(SOCK_DGRAM.rawValue), 0)
        guard descriptor >= 0 else { throw POSIXError(.init(rawValue: errno) ?? .EIO) }
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &address.sun_path) { raw in
            for (i, byte) in path.utf8.prefix(raw.count - 1).enumerated() { raw[i] = byte }
        }
        let bound = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(descriptor, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        guard bound == 0 else { throw POSIXError(.init(rawValue: errno) ?? .EIO) }
        var timeout = timeval(tv_sec: 5, tv_usec: 0)  // a receive never waits longer
        setsockopt(descriptor, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
    }

    /// The next notification, or nil after 5 s of silence.
    func receive() -> String? {
        var buffer = [UInt8](repeating: 0, count: 4096)
        let count = recv(descriptor, &buffer, buffer.count, 0)
        return count > 0 ? String(decoding: buffer.prefix(count), as: UTF8.self) : nil
    }

    deinit {
        close(descriptor)
        unlink(path)
    }
}

@Suite("brokerd under systemd: notify, watchdog, socket activation", .serialized, .timeLimit(.minutes(2)))
struct SystemdTests {
    @Test("READY=1 once it serves, STATUS and WATCHDOG=1 at half the watchdog interval, STOPPING=1 on SIGTERM")
    func notifyAndWatchdog() async throws {
        let notify = try NotifySocket()
        let dataDirectory = DaemonTests.temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: dataDirectory) }
        let (process, port, _) = try DaemonTests.startDaemon(dataDirectory: dataDirectory,
                                                             environment: ["NOTIFY_SOCKET": notify.path, "WATCHDOG_USEC": "600000"])
        defer { DaemonTests.stop(process) }
        let ready = try #require(notify.receive())
        #expect(ready.contains("READY=1"))
        #expect(ready.contains("STATUS=ready: 0 connections, 0 queues"))
        // Ready means serving: a client is accepted at once.
        let client = try await BrokerConnection.connect(ClientConfiguration(port: port))
        try await client.declareQueue("seen-in-status")
        // Pings sent while the client connected may be queued on the socket: read until one reports the queue.
        let start = ContinuousClock.now
        var current = false
        while !current, ContinuousClock.now - start < .seconds(5), let message = notify.receive() {
            current = message.contains("WATCHDOG=1") && message.contains("1 connections, 1 queues")
        }
        #expect(current, "no watchdog ping with the current status within 5 s")
        // From then on, pings keep the 300 ms period (half of WATCHDOG_USEC): about five in 1.5 s, three even
        // on a loaded machine.
        let cadenceStart = ContinuousClock.now
        var pings = 0
        while ContinuousClock.now - cadenceStart < .milliseconds(1500), let message = notify.receive() {
            if message.contains("WATCHDOG=1") { pings += 1 }
        }
        #expect(pings >= 3, "\(pings) pings in 1.5 s at a 300 ms period")
        await client.close()

        kill(process.processIdentifier, SIGTERM)
        var stopping = false
        while let message = notify.receive() {
            if message.contains("STOPPING=1") {
                stopping = true
                break
            }
        }
        #expect(stopping)
        process.waitUntilExit()
        #expect(process.terminationStatus == 0)
    }

    @Test("socket activation: brokerd adopts the listening socket systemd passes and serves on it")
    func socketActivation() async throws {
        let activator = "/usr/bin/systemd-socket-activate"
        try #require(FileManager.default.isExecutableFile(atPath: activator),
                     "systemd-socket-activate (Debian package systemd) is needed; .ci/run installs it")
        let dataDirectory = DaemonTests.temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: dataDirectory) }
        let log = FileManager.default.temporaryDirectory.appendingPathComponent("brokerd-activated-\(UUID().uuidString).txt")
        _ = FileManager.default.createFile(atPath: log.path, contents: nil)
        defer { try? FileManager.default.removeItem(at: log) }
        // systemd-socket-activate binds the port itself, so the test can only pick one that is free now
        // (freePort) and hand it over: another process may take it in between. Then the activator fails to bind
        // and exits, and the test tries a fresh port; it never talks to a listener it did not start.
        var client: BrokerConnection?
        var port = 0
        var pid: pid_t = 0
        for _ in 0..<5 where client == nil {
            port = try Self.freePort()
            // --port 1 would fail to bind if brokerd ignored the activated socket.
            pid = try Self.spawn(activator, ["-l", "127.0.0.1:\(port)", try DaemonTests.executable("brokerd").path,
                                             "--port", "1", "--data-dir", dataDirectory.path, "--log-target", "stderr"],
                                 stderr: log.path)
            // systemd-socket-activate listens first and execs brokerd (same PID) on the first connection.
            for _ in 0..<200 where client == nil {
                if Self.exited(pid) {
                    pid = 0  // reaped: never signal that number again
                    break
                }
                client = try? await BrokerConnection.connect(ClientConfiguration(port: port))
                if client == nil { try await Task.sleep(for: .milliseconds(50)) }
            }
            if client == nil && pid != 0 {
                Self.stop(pid)
                pid = 0
            }
        }
        defer { if pid != 0 { Self.stop(pid) } }
        let connected = try #require(client, "no broker on the activated socket; log:\n\((try? String(contentsOf: log, encoding: .utf8)) ?? "")")
        let status = try await connected.status()
        #expect(status["socket_activated"] == .bool(true))
        #expect(status["listeners"] == .array([.string("127.0.0.1:\(port)")]))
        await connected.close()
        let text = (try? String(contentsOf: log, encoding: .utf8)) ?? ""
        #expect(text.contains("using sockets from systemd"))
    }

    /// Starts a program with posix_spawn rather than Foundation's Process, for two reasons that both hang a test
    /// run: children of the test process inherit a mask blocking most signals (SIGTERM, SIGCHLD), which this
    /// clears; and systemd-socket-activate closes every inherited descriptor, including the one Process watches
    /// to learn that a child exited, after which Process waits for it with a blocking waitpid on its single
    /// monitor thread and every other Process in the run stalls.
    static func spawn(_ path: String, _ arguments: [String], stderr: String) throws -> pid_t {
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
        posix_spawn_file_actions_addopen(&actions, 1, "/dev/null", O_WRONLY, 0)
        posix_spawn_file_actions_addopen(&actions, 2, stderr, O_WRONLY | O_APPEND, 0)
        var attributes = posix_spawnattr_t()
        posix_spawnattr_init(&attributes)
        defer { posix_spawnattr_destroy(&attributes) }
        var none = sigset_t()
        sigemptyset(&none)
        posix_spawnattr_setsigmask(&attributes, &none)
        posix_spawnattr_setflags(&attributes, Int16(POSIX_SPAWN_SETSIGMASK))
        let argv = ([path] + arguments).map { strdup($0) } + [nil]
        defer { for pointer in argv { free(pointer) } }
        var pid: pid_t = 0
        let result = posix_spawn(&pid, path, &actions, &attributes, argv, environ)
        guard result == 0 else { throw POSIXError(.init(rawValue: result) ?? .EIO) }
        return pid
    }

    /// Whether the child `pid` has exited (and is reaped now).
    static func exited(_ pid: pid_t) -> Bool {
        var status: Int32 = 0
        return waitpid(pid, &status, WNOHANG) == pid
    }

    /// SIGTERM, then SIGKILL after 5 s, and reap: only the process this test started.
    static func stop(_ pid: pid_t) {
        kill(pid, SIGTERM)
        var status: Int32 = 0
        for _ in 0..<250 {
            if waitpid(pid, &status, WNOHANG) == pid { return }
            usleep(20_000)
        }
        kill(pid, SIGKILL)
        waitpid(pid, &status, 0)
    }

    /// A port nothing listens on right now (reserved, then released for systemd-socket-activate to bind).
    static func freePort() throws -> Int {
        let reserved = try ReservedPort()
        defer { reserved.release() }
        return reserved.port
    }
}
