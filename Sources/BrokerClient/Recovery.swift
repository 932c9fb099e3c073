public import WireProtocol

/// How a connection reconnects after it drops: exponential backoff with jitter, bounded by an attempt budget.
///
/// Attempt `n` (from 1) waits `min(maximumDelay, initialDelay × multiplier^(n-1))`, shortened by a random part of
/// up to `jitter` of itself, so that many clients of a restarted broker do not reconnect in lockstep. With several
/// endpoints, attempt `n` goes to endpoint `n mod count`: they are tried in turn.
public struct RecoveryPolicy: Sendable, Hashable {
    public var initialDelay: Duration
    public var maximumDelay: Duration
    public var multiplier: Double
    /// The fraction (0...1) of each delay that is random.
    public var jitter: Double
    /// Attempts before the connection gives up with a terminal error; nil retries for ever.
    public var maximumAttempts: Int?

    public init(initialDelay: Duration = .milliseconds(100), maximumDelay: Duration = .seconds(10), multiplier: Double = 2,
                jitter: Double = 0.5, maximumAttempts: Int? = nil) {
        self.initialDelay = initialDelay
        self.maximumDelay = maximumDelay
        self.multiplier = max(1, multiplier)
        self.jitter = min(1, max(0, jitter))
        self.maximumAttempts = maximumAttempts
    }

    /// Reconnect for ever, starting at 100 ms and backing off to 10 s.
    public static let `default` = RecoveryPolicy()

    /// Whether attempt `attempt` (from 1) is within the budget.
    public func allows(attempt: Int) -> Bool {
        guard let maximumAttempts else { return true }
        return attempt <= maximumAttempts
    }

    /// The wait before attempt `attempt` (from 1); `random` is uniform in 0..<1.
    public func delay(attempt: Int, random: Double) -> Duration {
        let initial = Self.seconds(initialDelay)
        let maximum = Self.seconds(maximumDelay)
        let exponent = Double(max(0, min(attempt - 1, 64)))
        var seconds = min(maximum, initial * pow(multiplier, exponent))
        seconds -= seconds * jitter * min(max(random, 0), 1)
        return .nanoseconds(Int64(max(0, seconds) * 1e9))
    }

    static func seconds(_ duration: Duration) -> Double {
        Double(duration.components.seconds) + Double(duration.components.attoseconds) / 1e18
    }
}

/// What happens to a connection, for a service to observe (``BrokerConnection/events``).
public enum ConnectionEvent: Sendable, Hashable {
    /// The connection dropped; requests in flight failed, consumers and unconfirmed publishes wait for recovery.
    case disconnected(BrokerError)
    /// Reconnect attempt `attempt` (from 1) is scheduled after `lastError`.
    case reconnecting(attempt: Int, lastError: BrokerError)
    /// Reconnected: topology redeclared, consumers resumed, waiting publishes sent.
    case recovered
    /// The broker refused part of the recovery (for example a queue redeclared with other arguments meanwhile).
    /// Recovery goes on without it; a consumer that could not resume ends with this error.
    case recoveryError(BrokerError)
    /// The connection is gone for good (recovery off, an unrecoverable error, or the retry budget spent).
    case failed(BrokerError)
    /// The caller closed the connection.
    case closed
}

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif
