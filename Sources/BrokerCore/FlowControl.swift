public import Logging
public import WireProtocol
import BrokerStorage
import Foundation
import NIOCore

// Flow control of publishers: resource alarms (free disk, memory) and the memory accounting behind them.
extension Broker {
    /// Sets or clears one resource's alarm. While any alarm is on, every connection has been told
    /// (`connectionBlocked`), and a connection that keeps publishing past its grace (``Session/publishGraceBytes``)
    /// is no longer read; when the last alarm clears, `connectionUnblocked` and reading resumes.
    public func setAlarm(_ source: AlarmSource, _ reason: String?) {
        guard alarms[source] != reason else { return }
        let wasOn = !alarms.isEmpty
        alarms[source] = reason
        if let reason {
            logger.warning("alarm: blocking publishers", metadata: ["resource": "\(source.rawValue)", "reason": "\(reason)"])
            if !wasOn {
                for session in sessions.values {
                    session.write(.connectionBlocked(reason: reason))
                    session.applyAlarm(true)
                }
            }
        } else if wasOn && alarms.isEmpty {
            logger.notice("alarm cleared: publishers unblocked", metadata: ["resource": "\(source.rawValue)"])
            for session in sessions.values {
                session.write(.connectionUnblocked)
                session.applyAlarm(false)
            }
        }
        flush()
    }

    func checkMemory() {
        guard memoryLimit > 0 else { return }
        if bufferedBytes > memoryLimit {
            if alarms[.memory] == nil {
                setAlarm(.memory, "messages held in memory (\(bufferedBytes / 1_000_000) MB) are above the memory limit of \(memoryLimit / 1_000_000) MB")
            }
        } else if alarms[.memory] != nil && bufferedBytes < memoryLimit / 10 * 9 {
            setAlarm(.memory, nil)
        }
    }

    /// A connection published past its grace during an alarm: stop reading it once this read cycle is done.
    func pauseAfterCycle(_ session: Session) { toPause.append(session) }
}

/// The count of bytes held in messages. A separate object, held strongly by queues and sessions: counting into it
/// costs one add, where going through their unowned reference to the broker costs a reference-count check.
final class MemoryCounter {
    var bytes = 0
    var limit = 0 {
        didSet { pagingThreshold = limit / 2 }
    }
    /// Above this, messages joining a backlog are paged out to the log (half the limit; 0: never).
    var pagingThreshold = 0
    /// Set when the count passes the limit; the broker raises the alarm at the end of the read cycle.
    var overLimit = false

    @inline(__always)
    func add(_ delta: Int) {
        bytes &+= delta
        if limit > 0 && bytes > limit { overLimit = true }
    }
}
