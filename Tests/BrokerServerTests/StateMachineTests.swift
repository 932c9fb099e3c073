@testable import BrokerServer
import Logging
import NIOCore
import Testing
import WireProtocol

@Suite("Connection state machine, without a channel")
struct StateMachineTests {
    static func machine() -> ConnectionStateMachine {
        ConnectionStateMachine(maxFrameSize: 1 << 20, heartbeatSeconds: 30, serverName: "brokerd test")
    }

    static let auth = Authenticate(user: "guest", password: "guest", maxFrameSize: 65536, heartbeatSeconds: 10)

    @Test("hello, authenticate, success, then frames are forwarded")
    func happyPath() {
        var m = Self.machine()
        #expect(m.received(.hello(Hello(clientName: "t"))) == .send(.helloOk(HelloOk(
            version: .v1_0, maxFrameSize: 1 << 20, heartbeatSeconds: 30, serverName: "brokerd test", mechanisms: ["PLAIN"]))))
        let tuning = Tuning(version: .v1_0, maxFrameSize: 65536, heartbeatSeconds: 10)
        #expect(m.received(.authenticate(Self.auth)) == .verify(Self.auth, tuning))
        let early = ClientMessage.queuePurge(QueuePurge(requestId: 1, name: "q"))
        #expect(m.received(early) == .hold(early))
        #expect(m.authenticated(connectionId: 7) == .open(AuthOk(connectionId: 7, maxFrameSize: 65536, heartbeatSeconds: 10), tuning))
        #expect(m.isOpen)
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
