public import Logging
import Foundation
import WireProtocol
#if canImport(Glibc)
import Glibc
#endif

/// How brokerd writes log lines to stderr (`--log-format`, TOML `log_format`).
public enum LogFormat: String, Sendable, CaseIterable {
    /// For people: `2026-12-03T17:24:46.123456Z info [BrokerServer] connection closed client=trip reason="…"`.
    case text
    /// One JSON object per line (`time`, `level`, `label`, `source`, `message`, then the metadata), for log shippers.
    case json
    /// logfmt (`time=… level=info source=BrokerServer msg="connection closed" client=trip …`), values quoted when
    /// they hold spaces, quotes, `=` or control characters.
    case logfmt
}

/// A swift-log handler writing one line per event to stderr in a ``LogFormat``, with microsecond UTC timestamps.
///
/// swift-log's `StreamLogHandler` prints whole seconds in local time and only one layout; operators' log shippers
/// want sub-second times and a structured format, so brokerd has its own. Each line is written with one
/// `write(2)`, so lines from different threads do not interleave.
public struct BrokerLogHandler: LogHandler {
    public var logLevel: Logger.Level = .info
    public var metadata: Logger.Metadata = [:]
    public var metadataProvider: Logger.MetadataProvider?
    private let label: String
    private let format: LogFormat
    private let sink: @Sendable (String) -> Void

    /// A handler writing to stderr.
    public init(label: String, format: LogFormat) {
        self.init(label: label, format: format) { line in
            var line = line
            line.withUTF8 { bytes in
                var offset = 0
                while offset < bytes.count {
                    let n = Glibc.write(STDERR_FILENO, bytes.baseAddress! + offset, bytes.count - offset)  // count > 0
                    if n < 0 && errno == EINTR { continue }
                    if n <= 0 { return }
                    offset += n
                }
            }
        }
    }

    /// A handler handing each finished line (with its newline) to `sink`: tests, other destinations.
    public init(label: String, format: LogFormat, sink: @escaping @Sendable (String) -> Void) {
        self.label = label
        self.format = format
        self.sink = sink
    }

    public subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    public func log(level: Logger.Level, message: Logger.Message, metadata explicit: Logger.Metadata?, source: String,
                    file: String, function: String, line: UInt) {
        var all = metadata
        if let provided = metadataProvider?.get() { all.merge(provided) { _, new in new } }
        if let explicit { all.merge(explicit) { _, new in new } }
        sink(Self.render(time: Self.timestamp(), level: level, label: label, source: source, message: "\(message)",
                         metadata: all, format: format))
    }

    // MARK: - Rendering

    /// One line, newline included. Metadata keys are sorted, so lines are stable for tests and diffs.
    static func render(time: String, level: Logger.Level, label: String, source: String, message: String,
                       metadata: Logger.Metadata, format: LogFormat) -> String {
        let fields = metadata.keys.sorted().map { ($0, Self.flatten(metadata[$0] ?? "")) }
        switch format {
        case .text:
            let meta = fields.map { "\($0.0)=\(logfmtValue($0.1))" }.joined(separator: " ")
            return "\(time) \(level) \(label): [\(source)] \(message)\(meta.isEmpty ? "" : " " + meta)\n"
        case .logfmt:
            var parts = ["time=\(time)", "level=\(level)", "label=\(logfmtValue(label))", "source=\(logfmtValue(source))",
                         "msg=\(logfmtValue(message))"]
            parts += fields.map { "\(logfmtKey($0.0))=\(logfmtValue($0.1))" }
            return parts.joined(separator: " ") + "\n"
        case .json:
            var parts = [("time", time), ("level", "\(level)"), ("label", label), ("source", source), ("message", message)]
            // Metadata never replaces the five fixed fields.
            let fixed = Set(parts.map(\.0))
            parts += fields.filter { !fixed.contains($0.0) }
            return "{" + parts.map { "\(jsonString($0.0)):\(jsonString($0.1))" }.joined(separator: ",") + "}\n"
        }
    }

    private static func flatten(_ value: Logger.Metadata.Value) -> String {
        switch value {
        case .string(let s): s
        case .stringConvertible(let c): c.description
        case .array, .dictionary: value.description
        }
    }

    /// A logfmt value: bare when it is one plain word, quoted and escaped otherwise.
    public static func logfmtValue(_ value: String) -> String {
        let needsQuotes = value.isEmpty || value.unicodeScalars.contains { $0 == " " || $0 == "\"" || $0 == "=" || $0 == "\\" || $0.value < 0x20 || $0.value == 0x7F }
        return needsQuotes ? quoted(value, forJSON: false) : value
    }

    /// logfmt keys are bare words: anything else becomes `_`.
    private static func logfmtKey(_ key: String) -> String {
        String(key.unicodeScalars.map { $0 == " " || $0 == "=" || $0 == "\"" || $0.value < 0x21 ? "_" : Character($0) })
    }

    /// A JSON string literal.
    public static func jsonString(_ value: String) -> String { quoted(value, forJSON: true) }

    /// `value` in double quotes with JSON's escapes (which logfmt readers accept too); for JSON also U+2028 and
    /// U+2029, which some JavaScript parsers take as newlines.
    private static func quoted(_ value: String, forJSON: Bool) -> String {
        JSONValue.quoted(value, escapingLineSeparators: forJSON)
    }

    /// Now, as RFC 3339 UTC with microseconds: `2026-12-03T17:24:46.123456Z`.
    static func timestamp() -> String {
        var now = timespec()
        clock_gettime(CLOCK_REALTIME, &now)
        return timestamp(seconds: now.tv_sec, microseconds: Int(now.tv_nsec / 1000))
    }

    static func timestamp(seconds: Int, microseconds: Int) -> String {
        var seconds = time_t(seconds)
        var parts = tm()
        gmtime_r(&seconds, &parts)
        return String(format: "%04d-%02d-%02dT%02d:%02d:%02d.%06dZ", Int(parts.tm_year) + 1900, Int(parts.tm_mon) + 1,
                      Int(parts.tm_mday), Int(parts.tm_hour), Int(parts.tm_min), Int(parts.tm_sec), microseconds)
    }
}
