import CSystemd
public import Logging
#if canImport(Glibc)
import Glibc
#endif

/// brokerd under systemd, through libsystemd (loaded at run time; CSystemd.h says why): readiness, status lines,
/// watchdog pings and stopping (`sd_notify`), sockets passed by socket activation (`sd_listen_fds_with_names`),
/// and logging to the journal with structured fields (`sd_journal_sendv`).
///
/// "Under systemd" is decided from the environment systemd sets (`NOTIFY_SOCKET`, `LISTEN_FDS`, `WATCHDOG_USEC`,
/// `JOURNAL_STREAM`), never from the parent process. Without them every call here does nothing, so the same
/// binary runs in a terminal logging to stderr.
public enum Systemd {
    /// Whether a service manager listens for notifications (`NOTIFY_SOCKET`, set for `Type=notify`).
    public static var isSupervised: Bool { getenv("NOTIFY_SOCKET") != nil }

    /// Sends `sd_notify` assignments (`READY=1`, `STATUS=...`); false if not supervised or it failed. The
    /// environment is kept (`unset_environment` 0): unsetting it would silence every later watchdog ping.
    @discardableResult
    public static func notify(_ assignments: String...) -> Bool {
        guard isSupervised else { return false }
        return csd_notify(0, assignments.joined(separator: "\n")) > 0
    }

    /// The interval within which systemd expects `WATCHDOG=1` (`WatchdogSec=`), or nil when there is no watchdog.
    public static func watchdogInterval() -> Duration? {
        var usec: UInt64 = 0
        guard csd_watchdog_enabled(0, &usec) > 0, usec > 0 else { return nil }
        return .microseconds(Int64(clamping: usec))
    }

    /// Listening sockets passed by socket activation, with their `FileDescriptorName=`s. Reads `LISTEN_FDS` once
    /// and unsets it, so processes the broker might start do not inherit the sockets' description.
    public static func activatedSockets() -> [(descriptor: Int32, name: String)] {
        guard getenv("LISTEN_FDS") != nil else { return [] }
        var names: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?
        let count = csd_listen_fds_with_names(1, &names)
        defer { csd_free_names(names) }
        guard count > 0 else { return [] }
        return (0..<Int(count)).map { index in
            let name = names.flatMap { $0[index] }.map { String(cString: $0) } ?? "unknown"
            return (descriptor: 3 + Int32(index), name: name)  // SD_LISTEN_FDS_START
        }
    }

    /// Whether journald is running here (its socket exists). libsystemd drops entries silently when it is not.
    public static var journalIsRunning: Bool { access("/run/systemd/journal/socket", F_OK) == 0 }

    /// Whether stderr is the journal: `JOURNAL_STREAM` names stderr's device and inode (systemd.exec(5)).
    public static var stderrIsJournal: Bool {
        guard let value = getenv("JOURNAL_STREAM").map({ String(cString: $0) }) else { return false }
        var info = stat()
        guard fstat(STDERR_FILENO, &info) == 0 else { return false }
        return value == "\(info.st_dev):\(info.st_ino)"
    }

    /// Reports readiness, then keeps STATUS= current and pings the watchdog at half its interval, each time after
    /// a liveness check (``BrokerServer/checkedStatusLine()``). Runs until cancelled.
    static func supervise(_ server: BrokerServer, logger: Logger) async {
        let first = (try? await server.checkedStatusLine()) ?? "starting"
        notify("READY=1", "STATUS=ready: " + first)
        let watchdog = watchdogInterval()
        let period = min(watchdog.map { $0 / 2 } ?? .seconds(5), .seconds(5))
        if let watchdog { logger.info("systemd watchdog on", metadata: ["interval": "\(watchdog)", "ping": "\(period)"]) }
        while !Task.isCancelled {
            do {
                try await Task.sleep(for: period)
                let line = try await server.checkedStatusLine()
                if watchdog != nil {
                    notify("WATCHDOG=1", "STATUS=" + line)
                } else {
                    notify("STATUS=" + line)
                }
            } catch {
                return  // cancelled (shutdown) or the loop is gone
            }
        }
    }
}

/// A swift-log handler that writes to the systemd journal with structured fields: `MESSAGE`, `PRIORITY`,
/// `SYSLOG_IDENTIFIER`, `CODE_FILE`/`CODE_LINE`/`CODE_FUNC`, `LOGGER`, and each metadata key as
/// `BROKERD_<KEY>` (journal field names are `[A-Z0-9_]`). Falls back to stderr if a send fails.
public struct JournalLogHandler: LogHandler {
    public var metadata: Logger.Metadata = [:]
    public var logLevel: Logger.Level = .info
    let label: String
    private var fallback: StreamLogHandler

    public init(label: String) {
        self.label = label
        self.fallback = StreamLogHandler.standardError(label: label)
    }

    public subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    public func log(event: LogEvent) {
        var merged = metadata
        if let extra = event.metadata { merged.merge(extra) { _, new in new } }
        let fields = Self.fields(level: event.level, message: "\(event.message)", metadata: merged, label: label, file: event.file,
                                 function: event.function, line: event.line)
        if Self.send(fields) < 0 {
            fallback.log(event: LogEvent(level: event.level, message: event.message, metadata: merged, source: event.source,
                                         file: event.file, function: event.function, line: event.line))
        }
    }

    /// The journal entry's fields as `NAME=value` strings.
    static func fields(level: Logger.Level, message: String, metadata: Logger.Metadata, label: String, file: String,
                       function: String, line: UInt) -> [String] {
        var fields = [
            "MESSAGE=" + message,
            "PRIORITY=\(priority(level))",
            "SYSLOG_IDENTIFIER=brokerd",
            "LOGGER=" + label,
            "CODE_FILE=" + file,
            "CODE_LINE=\(line)",
            "CODE_FUNC=" + function,
        ]
        for (key, value) in metadata.sorted(by: { $0.key < $1.key }) {
            fields.append("BROKERD_" + fieldName(key) + "=\(value)")
        }
        return fields
    }

    /// syslog priorities: 2 critical … 7 debug.
    static func priority(_ level: Logger.Level) -> Int {
        switch level {
        case .trace, .debug: 7
        case .info: 6
        case .notice: 5
        case .warning: 4
        case .error: 3
        case .critical: 2
        }
    }

    /// A metadata key as a journal field name: upper-case letters, digits and underscores.
    static func fieldName(_ key: String) -> String {
        String(key.uppercased().unicodeScalars.map { scalar -> Character in
            switch scalar {
            case "A"..."Z", "0"..."9": Character(scalar)
            default: "_"
            }
        })
    }

    /// One `sd_journal_sendv` call over the fields' bytes (a value may hold newlines: sendv takes them as is).
    static func send(_ fields: [String]) -> Int32 {
        var bytes: [UInt8] = []
        var ranges: [Range<Int>] = []
        for field in fields {
            let start = bytes.count
            bytes.append(contentsOf: field.utf8)
            ranges.append(start..<bytes.count)
        }
        return bytes.withUnsafeBytes { raw in
            guard let base = raw.baseAddress else { return -1 }
            // sendv only reads through these pointers; they point into `bytes`, alive for the whole call.
            let vectors = ranges.map { iovec(iov_base: UnsafeMutableRawPointer(mutating: base + $0.lowerBound), iov_len: $0.count) }
            return csd_journal_sendv(vectors, Int32(vectors.count))
        }
    }
}
