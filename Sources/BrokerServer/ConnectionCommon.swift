import Logging
import NIOCore

// What both protocol front ends (ConnectionHandler, AMQPConnectionHandler) do the same way.

/// Reasons to stop reading a connection's socket; each is lifted on its own, and the socket is read again when
/// none is left.
struct ReadPauses: OptionSet {
    let rawValue: UInt8
    /// A memory or disk alarm blocks this publisher (``Session/pauseReading()``).
    static let alarm = ReadPauses(rawValue: 1)
    /// The peer does not read what we write.
    static let output = ReadPauses(rawValue: 2)
    /// Its password is being checked.
    static let authentication = ReadPauses(rawValue: 4)

    /// Adds a reason; the first one turns reading off.
    mutating func pause(_ reason: ReadPauses, _ context: ChannelHandlerContext?) {
        let wasReading = isEmpty
        insert(reason)
        if wasReading, let context { try? context.channel.syncOptions?.setOption(.autoRead, value: false) }
    }

    /// Lifts a reason; when none is left, reading resumes.
    mutating func resume(_ reason: ReadPauses, _ context: ChannelHandlerContext?) {
        guard contains(reason) else { return }
        remove(reason)
        if isEmpty, let context {
            try? context.channel.syncOptions?.setOption(.autoRead, value: true)
            context.read()
        }
    }
}

/// The peer's address as listings and logs show it.
func peerDescription(_ context: ChannelHandlerContext) -> String {
    context.channel.remoteAddress.map { "\($0.ipAddress ?? "?"):\($0.port ?? 0)" } ?? "unknown"
}

/// One line per opened connection when it ends (its logger carries client, user, peer and connection id);
/// connections refused before they opened are logged where they are refused.
func logConnectionClosed(_ logger: Logger, openedAt: NIODeadline?, reason: String?) {
    guard let openedAt else {
        if let reason { logger.info("connection ended before it opened", metadata: ["reason": "\(reason)"]) }
        return
    }
    let seconds = Double((NIODeadline.now() - openedAt).nanoseconds) / 1e9
    logger.info("connection closed", metadata: [
        "reason": "\(reason ?? "the client dropped the connection without closing it")",
        "duration_s": "\((seconds * 1000).rounded() / 1000)",
    ])
}

extension HeartbeatMonitor {
    /// Schedules `check` for when the monitor next has something to do.
    func scheduleCheck(on eventLoop: any EventLoop, _ check: @escaping @Sendable () -> Void) -> Scheduled<Void> {
        let delay = nanosUntilNextCheck(nowNanos: NIODeadline.now().uptimeNanoseconds.asInt64)
        return eventLoop.scheduleTask(in: .nanoseconds(delay), check)
    }
}
