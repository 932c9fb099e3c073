import BrokerCore
import Logging
import NIOCore
import NIOPosix
import DequeModule
import WireProtocol

/// Schedules password checks so that a storm of failing logins cannot delay legitimate ones (issue 12: 3,000
/// wrong logins at once delayed good ones by 6.7 s, and timed some out with 503) nor grow without bound.
///
/// - At most `concurrency` checks run at once (PBKDF2 on the thread pool); the rest wait here, in arrival order.
/// - When a slot frees, the first waiting attempt that is not *suspect* goes first. An attempt is suspect when
///   its (address, user) pair failed within the window, or failures for `addressThreshold` different users came
///   from its address within the window (a guesser rotating user names) and this user has not logged in from
///   there within it. The decision is taken when the attempt
///   starts, not when it arrives, so a burst that arrived before its first failure is judged by that failure.
///   Suspect attempts never take the last free slot, so a clean attempt waits for at most one check.
/// - At most `queueLimit` attempts wait; past it a suspect arrival is refused at once (403, no hashing), and a
///   clean one displaces the oldest suspect.
/// - A failure from an address with `addressThreshold` or more recent failures is answered only after a delay
///   growing with their number (100 ms each past the threshold, at most 2 s): a brute-forcer that retries one at
///   a time is slowed without the broker spending CPU on it.
///
/// Pure bookkeeping with times passed in; owned by the broker's event loop.
struct LoginGate {
    struct Attempt {
        let id: UInt64
        let address: String
        let user: String
    }

    enum Decision: Equatable {
        /// Check this attempt's password now.
        case verify(UInt64)
        /// Refuse it without checking (the queue is full of suspects).
        case refuse(UInt64, BrokerError)
    }

    private struct Pair: Hashable {
        let address: String
        let user: String
    }

    let concurrency: Int
    let queueLimit: Int
    let windowNanos: Int64
    let addressThreshold: Int

    private(set) var running = 0
    private var waiting = Deque<Attempt>()
    /// Failures per address within the window: how many, the time of the latest, and the users they were for
    /// (at most `addressThreshold` of them are kept: enough to decide).
    private var addressFailures: [String: (count: Int, last: Int64, users: Set<String>)] = [:]
    /// Latest failure per (address, user).
    private var pairFailures: [Pair: Int64] = [:]
    /// Latest success per (address, user).
    private var pairSuccesses: [Pair: Int64] = [:]
    /// Bound on each bookkeeping table; stale entries are dropped past it.
    private let tableLimit = 100_000

    init(concurrency: Int, queueLimit: Int = 1024, windowSeconds: Int64 = 60, addressThreshold: Int = 5) {
        self.concurrency = max(1, concurrency)
        self.queueLimit = queueLimit
        self.windowNanos = windowSeconds * 1_000_000_000
        self.addressThreshold = addressThreshold
    }

    var waitingCount: Int { waiting.count }

    /// A new attempt: what to do now (possibly nothing yet, possibly refusing an older suspect).
    mutating func submit(_ attempt: Attempt, now: Int64) -> [Decision] {
        var decisions: [Decision] = []
        if waiting.count >= queueLimit {
            if isSuspect(attempt, now: now) {
                return [.refuse(attempt.id, Self.throttled(attempt.address))]
            }
            guard let index = waiting.firstIndex(where: { isSuspect($0, now: now) }) else {
                return [.refuse(attempt.id, BrokerError(.resourceError, "too many logins waiting for their password check; try again shortly"))]
            }
            let displaced = waiting.remove(at: index)
            decisions.append(.refuse(displaced.id, Self.throttled(displaced.address)))
        }
        waiting.append(attempt)
        return decisions + startNext(now: now)
    }

    /// An attempt's connection closed: forget it if it is still waiting (true). One whose check already runs keeps
    /// its slot until ``finished(_:succeeded:now:)`` or ``released(now:)``.
    mutating func withdraw(_ id: UInt64) -> Bool {
        guard let index = waiting.firstIndex(where: { $0.id == id }) else { return false }
        waiting.remove(at: index)
        return true
    }

    /// A started check ended without a verdict (its connection went before it could run): frees its slot and
    /// records nothing about the address.
    mutating func released(now: Int64) -> [Decision] {
        running -= 1
        return startNext(now: now)
    }

    /// A check finished. Returns the delay before answering a failure (nanoseconds, 0 for none) and what to start.
    mutating func finished(_ attempt: Attempt, succeeded: Bool, now: Int64) -> (answerDelay: Int64, next: [Decision]) {
        running -= 1
        let pair = Pair(address: attempt.address, user: attempt.user)
        var delay: Int64 = 0
        if succeeded {
            Self.remember(&pairSuccesses, pair, now, window: windowNanos, limit: tableLimit)
            pairFailures[pair] = nil
        } else {
            Self.remember(&pairFailures, pair, now, window: windowNanos, limit: tableLimit)
            var record = addressFailures[attempt.address] ?? (0, now, [])
            if now - record.last > windowNanos { record = (0, now, []) }
            record.count += 1
            record.last = now
            if record.users.count < addressThreshold { record.users.insert(attempt.user) }
            addressFailures[attempt.address] = record
            if addressFailures.count > tableLimit { addressFailures = addressFailures.filter { now - $0.value.last <= windowNanos } }
            if record.count >= addressThreshold {
                delay = min(2_000_000_000, Int64(record.count - addressThreshold + 1) * 100_000_000)
            }
        }
        return (delay, startNext(now: now))
    }

    /// Recent failures from an address (for the log).
    func recentFailures(from address: String, now: Int64) -> Int {
        guard let record = addressFailures[address], now - record.last <= windowNanos else { return 0 }
        return record.count
    }

    func isSuspect(_ attempt: Attempt, now: Int64) -> Bool {
        let pair = Pair(address: attempt.address, user: attempt.user)
        if let failed = pairFailures[pair], now - failed <= windowNanos { return true }
        if let record = addressFailures[attempt.address], now - record.last <= windowNanos, record.users.count >= addressThreshold {
            if let succeeded = pairSuccesses[pair], now - succeeded <= windowNanos { return false }
            return true
        }
        return false
    }

    private mutating func startNext(now: Int64) -> [Decision] {
        var started: [Decision] = []
        while running < concurrency, !waiting.isEmpty {
            if let index = waiting.firstIndex(where: { !isSuspect($0, now: now) }) {
                started.append(.verify(waiting.remove(at: index).id))
            } else if running < concurrency - 1 || (concurrency == 1 && running == 0) {
                // Only suspects wait: they may use every slot but the last.
                started.append(.verify(waiting.removeFirst().id))
            } else {
                break
            }
            running += 1
        }
        return started
    }

    /// Records `now` for `pair`, dropping entries older than the window once the table passes its bound.
    private static func remember(_ table: inout [Pair: Int64], _ pair: Pair, _ now: Int64, window: Int64, limit: Int) {
        table[pair] = now
        if table.count > limit { table = table.filter { now - $0.value <= window } }
    }

    static func throttled(_ address: String) -> BrokerError {
        BrokerError(.accessRefused, "login refused: too many failed logins from \(address); wait a minute and try again")
    }
}

/// Carries out a ``LoginGate``'s decisions on the broker's event loop: starts each check, refuses what the gate
/// refuses, and tells the gate when a check ends.
final class LoginScheduler {
    /// Runs the check; given the attempt's ticket (``submit`` may start it before it returns the ticket).
    typealias Start = (UInt64) -> Void
    typealias Refuse = (BrokerError) -> Void

    private var gate: LoginGate
    private var entries: [UInt64: (attempt: LoginGate.Attempt, start: Start, refuse: Refuse)] = [:]
    private var nextId: UInt64 = 0
    private let now: () -> Int64

    init(gate: LoginGate, now: @escaping () -> Int64) {
        self.gate = gate
        self.now = now
    }

    var waitingCount: Int { gate.waitingCount }
    var runningCount: Int { gate.running }

    /// Queues a check; `start` runs when its turn comes, `refuse` if the gate turns it away instead.
    func submit(address: String, user: String, start: @escaping Start, refuse: @escaping Refuse) -> UInt64 {
        nextId += 1
        let attempt = LoginGate.Attempt(id: nextId, address: address, user: user)
        entries[attempt.id] = (attempt, start, refuse)
        carryOut(gate.submit(attempt, now: now()))
        return attempt.id
    }

    /// The connection went away. A waiting check is dropped; a running one keeps its entry, so that its end
    /// still frees its slot (dropping it then leaked the slot: after one per core, no login was ever checked).
    func withdraw(_ id: UInt64) {
        guard gate.withdraw(id) else { return }
        entries.removeValue(forKey: id)
    }

    /// A started check that will not run after all (its connection went first): frees the slot, records nothing.
    func abandon(_ id: UInt64) {
        guard entries.removeValue(forKey: id) != nil else { return }
        carryOut(gate.released(now: now()))
    }

    /// A check ended; returns how long to wait before answering (nanoseconds).
    func finished(_ id: UInt64, succeeded: Bool) -> Int64 {
        guard let entry = entries.removeValue(forKey: id) else { return 0 }
        let (delay, next) = gate.finished(entry.attempt, succeeded: succeeded, now: now())
        carryOut(next)
        return delay
    }

    func recentFailures(from address: String) -> Int { gate.recentFailures(from: address, now: now()) }

    private func carryOut(_ decisions: [LoginGate.Decision]) {
        for decision in decisions {
            switch decision {
            case .verify(let id):
                entries[id]?.start(id)
            case .refuse(let id, let error):
                entries.removeValue(forKey: id)?.refuse(error)
            }
        }
    }
}

extension LoginScheduler {
    /// Runs one connection's password check, for either protocol front end: queued by the gate, PBKDF2 on the
    /// thread pool (it takes milliseconds; the event loop keeps moving messages), answered later after repeated
    /// failures from the address. `ticket` is told the check's ticket while it is pending (nil once it ended), so
    /// the connection can withdraw it if it goes away; `isGone` says it went meanwhile; `finish` gets the outcome
    /// on the event loop.
    func check(user name: String, password: String, channel: any Channel, broker: Broker, logger: Logger,
               ticket: @escaping (UInt64?) -> Void, isGone: @escaping () -> Bool,
               finish: @escaping (Result<User, BrokerError>) -> Void) {
        let eventLoop = channel.eventLoop
        let address = channel.remoteAddress?.ipAddress ?? "unknown"
        let fromLoopback = ConnectionHandler.isLoopback(channel.remoteAddress)
        let callbacks = NIOLoopBound((ticket: ticket, isGone: isGone, finish: finish, logins: self), eventLoop: eventLoop)
        ticket(submit(address: address, user: name, start: { id in
            let (ticket, isGone, finish, logins) = callbacks.value
            guard !isGone() else {
                logins.abandon(id)  // gone meanwhile: free the slot without counting a failure
                return
            }
            ticket(id)
            let user = broker.users.user(named: name)
            NIOThreadPool.singleton.runIfActive(eventLoop: eventLoop) {
                UserStore.authenticate(user, password: password, fromLoopback: fromLoopback)
            }.whenComplete { result in
                let (ticket, _, finish, logins) = callbacks.value
                ticket(nil)
                let outcome: Result<User, BrokerError> = switch result {
                case .success(let checked): checked
                case .failure(let error): .failure(BrokerError(.internalError, "authentication failed: \(error)"))
                }
                let succeeded = if case .success = outcome { true } else { false }
                let delay = logins.finished(id, succeeded: succeeded)
                if !succeeded {
                    let failures = logins.recentFailures(from: address)
                    // One line for the first failures from an address, then one per hundred: a storm does not flood the log.
                    if failures <= 3 || failures % 100 == 0 {
                        logger.warning("login failed", metadata: ["user": "\(name)", "recent_failures_from_address": "\(failures)"])
                    }
                }
                guard delay > 0, !succeeded else { return finish(outcome) }
                // Slow down an address that keeps failing: answer later, at no CPU cost.
                eventLoop.scheduleTask(in: .nanoseconds(delay)) { callbacks.value.finish(outcome) }
            }
        }, refuse: { error in
            let (ticket, _, finish, _) = callbacks.value
            ticket(nil)
            logger.warning("login refused without a check", metadata: ["user": "\(name)", "reason": "\(error.message)"])
            finish(.failure(error))
        }))
    }
}
