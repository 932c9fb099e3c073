@testable import BrokerServer
import Testing
import WireProtocol

@Suite("Login gate, with times passed in")
struct LoginGateTests {
    static let second: Int64 = 1_000_000_000

    static func attempt(_ id: UInt64, _ address: String = "10.0.0.9", _ user: String = "guest") -> LoginGate.Attempt {
        LoginGate.Attempt(id: id, address: address, user: user)
    }

    @Test("at most `concurrency` checks run; the rest wait in order")
    func boundedConcurrency() {
        var gate = LoginGate(concurrency: 2)
        #expect(gate.submit(Self.attempt(1), now: 0) == [.verify(1)])
        #expect(gate.submit(Self.attempt(2), now: 0) == [.verify(2)])
        #expect(gate.submit(Self.attempt(3), now: 0) == [])
        #expect(gate.waitingCount == 1)
        #expect(gate.finished(Self.attempt(1), succeeded: true, now: 1).next == [.verify(3)])
    }

    @Test("once a pair has failed, its queued attempts wait behind everyone else's, and never take the last slot")
    func suspectsWaitBehind() {
        var gate = LoginGate(concurrency: 2)
        // A burst for guest arrives before any of it has failed, then a legitimate login for svc.
        _ = gate.submit(Self.attempt(1), now: 0)
        _ = gate.submit(Self.attempt(2), now: 0)
        for id in 3...50 { #expect(gate.submit(Self.attempt(UInt64(id)), now: 0) == []) }
        #expect(gate.submit(Self.attempt(99, "10.0.0.9", "svc"), now: 0) == [])
        // The first failure makes the rest of the burst suspect: svc goes next, ahead of 48 waiting attempts.
        let first = gate.finished(Self.attempt(1), succeeded: false, now: Self.second)
        #expect(first.next == [.verify(99)])
        // With only suspects waiting and one slot busy, the last slot stays free for a clean attempt.
        #expect(gate.finished(Self.attempt(99, "10.0.0.9", "svc"), succeeded: true, now: Self.second).next == [])
        #expect(gate.finished(Self.attempt(2), succeeded: false, now: Self.second).next == [.verify(3)])
        #expect(gate.submit(Self.attempt(100, "10.0.0.7", "other"), now: Self.second) == [.verify(100)])
    }

    @Test("a connection that goes while its check runs keeps the slot until the check ends, then the next one starts")
    func withdrawWhileRunning() {
        final class Started { var ids: [UInt64] = [] }
        let started = Started()
        let scheduler = LoginScheduler(gate: LoginGate(concurrency: 1), now: { 0 })
        let first = scheduler.submit(address: "10.0.0.9", user: "a", start: { started.ids.append($0) }, refuse: { _ in })
        let second = scheduler.submit(address: "10.0.0.8", user: "b", start: { started.ids.append($0) }, refuse: { _ in })
        #expect(started.ids == [first])
        scheduler.withdraw(first)  // its client gave up while PBKDF2 ran
        #expect(scheduler.runningCount == 1 && scheduler.waitingCount == 1)
        // Before: the withdrawal forgot the running check, its end freed nothing, and the second never started.
        _ = scheduler.finished(first, succeeded: true)
        #expect(started.ids == [first, second])
        // A waiting one that goes is simply dropped; one abandoned before it ran frees its slot, counting nothing.
        let third = scheduler.submit(address: "10.0.0.7", user: "c", start: { started.ids.append($0) }, refuse: { _ in })
        scheduler.withdraw(third)
        #expect(scheduler.waitingCount == 0)
        scheduler.abandon(second)
        #expect(scheduler.runningCount == 0 && scheduler.recentFailures(from: "10.0.0.8") == 0)
    }

    @Test("many failures for one user do not make other users from the same address suspect")
    func oneUserGuessed() {
        var gate = LoginGate(concurrency: 1, addressThreshold: 3)
        for id in 1...20 {
            _ = gate.submit(Self.attempt(UInt64(id)), now: 0)
            _ = gate.finished(Self.attempt(UInt64(id)), succeeded: false, now: 0)
        }
        #expect(gate.isSuspect(Self.attempt(30), now: 1))
        #expect(!gate.isSuspect(Self.attempt(31, "10.0.0.9", "svc"), now: 1))
    }

    @Test("a full queue refuses suspects at once and makes room for a clean attempt by refusing the oldest suspect")
    func fullQueue() {
        var gate = LoginGate(concurrency: 1, queueLimit: 3)
        _ = gate.submit(Self.attempt(1), now: 0)
        _ = gate.finished(Self.attempt(1), succeeded: false, now: 0)  // guest from 10.0.0.9 is now suspect
        _ = gate.submit(Self.attempt(2), now: 0)  // runs (only slot, nothing clean waiting)
        for id in 3...5 { _ = gate.submit(Self.attempt(UInt64(id)), now: 0) }
        guard case .refuse(6, let error)? = gate.submit(Self.attempt(6), now: 0).first else {
            Issue.record("a suspect past the queue limit was not refused")
            return
        }
        #expect(error.code == .accessRefused && error.message.contains("too many failed logins"))
        let decisions = gate.submit(Self.attempt(7, "10.0.0.7", "svc"), now: 0)
        #expect(decisions.count == 1)
        if case .refuse(3, _)? = decisions.first {} else { Issue.record("expected the oldest suspect refused: \(decisions)") }
        #expect(gate.waitingCount == 3)
    }

    @Test("an address that keeps failing is answered later and later, up to 2 s; the window forgets it")
    func delaysAndWindow() {
        var gate = LoginGate(concurrency: 1, windowSeconds: 60, addressThreshold: 3)
        var delays: [Int64] = []
        for id in 1...30 {
            _ = gate.submit(Self.attempt(UInt64(id), "10.0.0.9", "user\(id)"), now: Int64(id))
            delays.append(gate.finished(Self.attempt(UInt64(id), "10.0.0.9", "user\(id)"), succeeded: false, now: Int64(id)).answerDelay)
        }
        #expect(delays.prefix(2) == [0, 0])
        #expect(delays[2] == Self.second / 10 && delays[3] == Self.second / 5)
        #expect(delays.last == 2 * Self.second)
        // Failures for many different users from one address make every new user from there suspect, but not
        // from elsewhere.
        #expect(gate.isSuspect(Self.attempt(40, "10.0.0.9", "new"), now: 31))
        #expect(!gate.isSuspect(Self.attempt(41, "10.0.0.8", "new"), now: 31))
        // A minute later the address starts afresh.
        #expect(!gate.isSuspect(Self.attempt(42, "10.0.0.9", "new"), now: 31 + 61 * Self.second))
        #expect(gate.recentFailures(from: "10.0.0.9", now: 31 + 61 * Self.second) == 0)
    }
}

@Suite("Memory trimmer")
struct MemoryTrimmerTests {
    @Test("trims once after the connection count falls by a quarter of its peak (and at least 100), not while steady")
    func decisions() {
        var trimmer = MemoryTrimmer()
        // The counts a 10-second timer would see, and what the trimmer decides at each.
        let counts = [50, 10, 10_000, 8_000, 7_000, 7_000, 6_950]
        let decisions = counts.map { trimmer.shouldTrim(connections: $0) }
        // 10 fell by 40 (under 100); 8,000 by 20%; 7,000 by 30%: trim; then the peak starts again from 7,000.
        #expect(decisions == [false, false, false, false, true, false, false])
    }
}
