@testable import BrokerServer
import BrokerStorage
import Logging
import NIOCore
import Testing
import WireProtocol

@Suite("Connection state machine, without a channel")
struct StateMachineTests {
    static func machine() -> ConnectionStateMachine {
        ConnectionStateMachine(maxFrameSize: 1 << 20, heartbeatSeconds: 30, serverName: "brokerd test")
    }

    /// Asks for frames larger than the server's 1 MiB, so the smaller (the server's) is in force.
    static let auth = Authenticate(user: "guest", password: "guest", maxFrameSize: 4 << 20, heartbeatSeconds: 10)

    @Test("a client offering only 1.0 gets 1.0 (protocol 1.1 is a compatible minor: old clients connect unchanged)")
    func oldClient() {
        var m = Self.machine()
        #expect(m.received(.hello(Hello(versions: [.v1_0], clientName: "old"))) == .send(.helloOk(HelloOk(
            version: .v1_0, maxFrameSize: 1 << 20, heartbeatSeconds: 30, serverName: "brokerd test", mechanisms: ["PLAIN"]))))
    }

    @Test("hello, authenticate, success, then frames are forwarded")
    func happyPath() {
        var m = Self.machine()
        #expect(m.received(.hello(Hello(clientName: "t"))) == .send(.helloOk(HelloOk(
            version: .v1_1, maxFrameSize: 1 << 20, heartbeatSeconds: 30, serverName: "brokerd test", mechanisms: ["PLAIN"]))))
        let tuning = Tuning(version: .v1_1, maxFrameSize: 1 << 20, heartbeatSeconds: 10)
        #expect(m.received(.authenticate(Self.auth)) == .verify(Self.auth, tuning))
        // While the password is checked nothing is decoded: pipelined frames wait for the open connection's path.
        #expect(!m.decodesFrames && m.acceptsFrames)
        #expect(m.authenticated(connectionId: 7) == .open(AuthOk(connectionId: 7, maxFrameSize: 1 << 20, heartbeatSeconds: 10), tuning))
        #expect(m.isOpen && m.decodesFrames)
        #expect(m.received(.heartbeat) == .forward(.heartbeat))
        #expect(m.received(.close(Close(code: .normal, reason: "bye"))) == .sendAndClose(.closeOk))
        #expect(!m.acceptsFrames)
        #expect(m.received(.heartbeat) == .none)
    }

    @Test("a frame other than hello first is refused")
    func wrongFirstFrame() {
        var m = Self.machine()
        guard case .sendAndClose(.close(let close)) = m.received(.heartbeat) else {
            Issue.record("expected close")
            return
        }
        #expect(close.code == .unexpectedFrame)
    }

    @Test("no common version is refused, naming both sides' versions")
    func versionRefusal() {
        var m = Self.machine()
        guard case .sendAndClose(.close(let close)) = m.received(.hello(Hello(versions: [ProtocolVersion(major: 3, minor: 1)], clientName: "t"))) else {
            Issue.record("expected close")
            return
        }
        #expect(close.code == .unsupportedVersion)
        #expect(close.reason.contains("3.1") && close.reason.contains("1.0"))
    }

    @Test("failed authentication closes with the refusal; a second hello is a protocol error")
    func authRefusedAndRepeats() {
        var m = Self.machine()
        _ = m.received(.hello(Hello(clientName: "t")))
        _ = m.received(.authenticate(Self.auth))
        #expect(m.refused(BrokerError(.accessRefused, "no")) == .sendAndClose(.close(Close(code: .accessRefused, reason: "no"))))
        #expect(m.authenticated(connectionId: 1) == .none)

        var again = Self.machine()
        _ = again.received(.hello(Hello(clientName: "t")))
        guard case .sendAndClose(.close(let close)) = again.received(.hello(Hello(clientName: "t"))) else {
            Issue.record("expected close")
            return
        }
        #expect(close.code == .unexpectedFrame)
    }

    @Test("a tiny client frame limit and unknown mechanisms are refused")
    func authArguments() {
        var m = Self.machine()
        _ = m.received(.hello(Hello(clientName: "t")))
        guard case .sendAndClose(.close(let close)) = m.received(.authenticate(Authenticate(user: "u", password: "p", maxFrameSize: 100))) else {
            Issue.record("expected close")
            return
        }
        #expect(close.code == .invalidArgument)

        // A limit below the server's message limit would let a delivery break it: refused, naming both sizes.
        var small = Self.machine()
        _ = small.received(.hello(Hello(clientName: "t")))
        guard case .sendAndClose(.close(let refusal)) = small.received(.authenticate(Authenticate(user: "u", password: "p", maxFrameSize: 4096))) else {
            Issue.record("expected close")
            return
        }
        #expect(refusal.code == .invalidArgument)
        #expect(refusal.reason.contains("4096") && refusal.reason.contains("\(1 << 20)"))
        // Exactly the server's limit, or 0, is accepted.
        for accepted: UInt32 in [1 << 20, 0] {
            var m = Self.machine()
            _ = m.received(.hello(Hello(clientName: "t")))
            let auth = Authenticate(user: "u", password: "p", maxFrameSize: accepted)
            #expect(m.received(.authenticate(auth)) == .verify(auth, Tuning(version: .v1_1, maxFrameSize: 1 << 20, heartbeatSeconds: 30)))
        }

        var n = Self.machine()
        _ = n.received(.hello(Hello(clientName: "t")))
        guard case .sendAndClose(.close(let close2)) = n.received(.authenticate(Authenticate(mechanism: "KERBEROS", user: "u", password: "p"))) else {
            Issue.record("expected close")
            return
        }
        #expect(close2.code == .accessRefused)
    }

    @Test("limits: 0 takes the other side's value, otherwise the smaller wins")
    func negotiation() {
        #expect(ConnectionStateMachine.negotiate(UInt16(0), UInt16(30)) == 30)
        #expect(ConnectionStateMachine.negotiate(UInt16(10), UInt16(30)) == 10)
        #expect(ConnectionStateMachine.negotiate(UInt16(60), UInt16(30)) == 30)
        #expect(ConnectionStateMachine.negotiate(UInt16(5), UInt16(0)) == 5)
        #expect(ConnectionStateMachine.negotiate(UInt32(0), UInt32(0)) == 0)
    }

    @Test("only the first failure produces a close")
    func failOnce() {
        var m = Self.machine()
        #expect(m.fail(.frameError, "bad") == .sendAndClose(.close(Close(code: .frameError, reason: "bad"))))
        #expect(m.fail(.frameError, "worse") == .none)
    }
}

@Suite("Heartbeat monitor, with times passed in")
struct HeartbeatTests {
    let second: Int64 = 1_000_000_000

    @Test("quiet for half an interval: send; silent peer for two intervals: dead")
    func verdicts() {
        var monitor = HeartbeatMonitor(intervalSeconds: 4, nowNanos: 0)
        #expect(monitor.check(nowNanos: 1 * second) == .fine)
        #expect(monitor.check(nowNanos: 2 * second) == .sendHeartbeat)
        monitor.lastSentNanos = 2 * second
        monitor.lastReceivedNanos = 3 * second
        #expect(monitor.check(nowNanos: 3 * second) == .fine)
        #expect(monitor.check(nowNanos: 11 * second) == .sendHeartbeat)
        #expect(monitor.check(nowNanos: 11 * second + 1) == .peerDead)
    }

    @Test("checks scheduled by the monitor close a silent peer at two intervals, not later, and keep heartbeats going")
    func scheduledChecks() {
        // Before: a fixed tick of H/2 found a peer silent since t=0 only at 2.5 × H (75 s for H = 30 s).
        var monitor = HeartbeatMonitor(intervalSeconds: 30, nowNanos: 0)
        var now: Int64 = 0
        var sent: [Int64] = []
        while true {
            now += monitor.nanosUntilNextCheck(nowNanos: now)
            let verdict = monitor.check(nowNanos: now)
            if verdict == .peerDead { break }
            if verdict == .sendHeartbeat {
                sent.append(now)
                monitor.lastSentNanos = now
            }
            #expect(now <= 61 * second, "still alive at \(now)")
            if now > 61 * second { return }
        }
        #expect(now > 60 * second && now <= 60 * second + 1_000_000, "declared dead at \(now)")
        #expect(sent == [15, 30, 45, 60].map { $0 * second })
        // A peer that keeps talking is never declared dead.
        var alive = HeartbeatMonitor(intervalSeconds: 30, nowNanos: 0)
        now = 0
        for _ in 0..<100 {
            now += alive.nanosUntilNextCheck(nowNanos: now)
            alive.lastReceivedNanos = now - second
            if alive.check(nowNanos: now) == .sendHeartbeat { alive.lastSentNanos = now }
            #expect(alive.check(nowNanos: now) != .peerDead)
        }
    }

    @Test("loopback detection decides where guest may log in from")
    func loopback() throws {
        #expect(ConnectionHandler.isLoopback(try SocketAddress(ipAddress: "127.0.0.1", port: 1)))
        #expect(ConnectionHandler.isLoopback(try SocketAddress(ipAddress: "127.8.9.10", port: 1)))
        #expect(ConnectionHandler.isLoopback(try SocketAddress(ipAddress: "::1", port: 1)))
        #expect(!ConnectionHandler.isLoopback(try SocketAddress(ipAddress: "10.0.0.1", port: 1)))
        #expect(!ConnectionHandler.isLoopback(try SocketAddress(ipAddress: "fe80::1", port: 1)))
        #expect(!ConnectionHandler.isLoopback(nil))
    }
}

@Suite("Journal fields")
struct JournalTests {
    @Test("log events become journal fields: priority by level, metadata as BROKERD_ fields named [A-Z0-9_]")
    func fields() {
        let fields = JournalLogHandler.fields(level: .warning, message: "alarm: blocking publishers",
                                              metadata: ["resource": "memory", "queue-name.x": "trips"], label: "brokerd.core",
                                              file: "Broker.swift", function: "setAlarm(_:_:)", line: 42)
        #expect(fields.contains("MESSAGE=alarm: blocking publishers"))
        #expect(fields.contains("PRIORITY=4"))
        #expect(fields.contains("SYSLOG_IDENTIFIER=brokerd"))
        #expect(fields.contains("CODE_LINE=42"))
        #expect(fields.contains("BROKERD_RESOURCE=memory"))
        #expect(fields.contains("BROKERD_QUEUE_NAME_X=trips"))
        #expect(JournalLogHandler.priority(.critical) == 2 && JournalLogHandler.priority(.debug) == 7)
        #expect(fields.allSatisfy { field in
            let name = field.prefix(while: { $0 != "=" })
            return !name.isEmpty && name.allSatisfy { $0.isUppercase || $0.isNumber || $0 == "_" }
        })
    }
}

@Suite("Settings file")
struct SettingsTests {
    @Test("a TOML document sets what it names; flags win; defaults fill the rest")
    func parseAndMerge() throws {
        let file = try BrokerSettings.parse("""
            # comments are fine
            host = "0.0.0.0"
            port = 5700
            data_dir = "/var/lib/brokerd"
            memory_limit = 2_000_000_000
            fsync = "interval"
            fsync_interval_ms = 20
            log_level = "notice"
            """, source: "test.toml")
        #expect(file.port == 5700 && file.dataDir == "/var/lib/brokerd" && file.memoryLimit == 2_000_000_000)
        var flags = BrokerSettings()
        flags.port = 6000
        let merged = flags.over(file)
        #expect(merged.port == 6000 && merged.host == "0.0.0.0" && merged.logLevel == "notice")
        let configuration = merged.serverConfiguration
        #expect(configuration.port == 6000 && configuration.host == "0.0.0.0")
        #expect(configuration.fsyncPolicy == .interval && configuration.fsyncIntervalMilliseconds == 20)
        #expect(configuration.heartbeatSeconds == 30, "unset: the default")
        #expect(BrokerSettings().serverConfiguration.dataDirectory == "brokerd-data")
    }

    @Test("errors name the file, the key and the fix", arguments: [
        ("prot = 1", "unknown key prot"),
        ("port = \"x\"", "'port' must be an integer"),
        ("host = 5", "'host' must be a string"),
        ("port = ", "line 1"),
        ("port = 70000", "'port' must be between 0 and 65535"),
        ("fsync = \"sometimes\"", "'fsync' must be one of always, interval, never"),
        ("log_target = \"syslog\"", "'log_target' must be one of auto, stderr, journal"),
    ])
    func errors(document: String, expected: String) {
        do {
            _ = try BrokerSettings.parse(document, source: "broken.toml")
            Issue.record("accepted: \(document)")
        } catch {
            #expect(error.description.hasPrefix("broken.toml: "))
            #expect(error.description.contains(expected), "\(error.description)")
        }
    }
}
