import BrokerStorage
import Foundation
import TOMLKit

/// brokerd's settings as an operator gives them: from a TOML file (`--config`), from flags, or not at all. Every
/// field is optional; a flag wins over the file, the file over the default (docs/operations.md, "Configuration").
///
/// The file's keys are the flags' names with `_` for `-`:
/// ```toml
/// host = "127.0.0.1"
/// port = 5680
/// amqp_port = 5672
/// data_dir = "/var/lib/brokerd"
/// memory_limit = 2_000_000_000
/// ```
public struct BrokerSettings: Decodable, Equatable, Sendable {
    public var host: String?
    public var port: Int?
    /// The AMQP 0-9-1 listener's port (off when unset).
    public var amqpPort: Int?
    public var dataDir: String?
    public var heartbeat: Int?
    public var maxFrameSize: Int?
    public var fsync: String?
    public var fsyncIntervalMs: Int?
    public var diskFreeLimit: Int?
    public var memoryLimit: Int?
    public var logLevel: String?
    public var logTarget: String?
    public var logFormat: String?
    public var maxConnections: Int?
    public var maxConnectionsPerUser: Int?
    public var tlsCert: String?
    public var tlsKey: String?
    public var tlsClientCA: String?

    enum CodingKeys: String, CodingKey, CaseIterable {
        case host, port, heartbeat, fsync
        case dataDir = "data_dir"
        case amqpPort = "amqp_port"
        case maxFrameSize = "max_frame_size"
        case fsyncIntervalMs = "fsync_interval_ms"
        case diskFreeLimit = "disk_free_limit"
        case memoryLimit = "memory_limit"
        case logLevel = "log_level"
        case logTarget = "log_target"
        case logFormat = "log_format"
        case maxConnections = "max_connections"
        case maxConnectionsPerUser = "max_connections_per_user"
        case tlsCert = "tls_cert"
        case tlsKey = "tls_key"
        case tlsClientCA = "tls_client_ca"
    }

    /// Every key a file may hold.
    public static var keys: [String] { CodingKeys.allCases.map(\.rawValue) }
    public static let logLevels = ["trace", "debug", "info", "notice", "warning", "error", "critical"]
    public static let logTargets = ["auto", "stderr", "journal"]
    public static let logFormats = LogFormat.allCases.map(\.rawValue)

    public init() {}

    /// `self` (flags) over `file`.
    public func over(_ file: BrokerSettings) -> BrokerSettings {
        var merged = self
        merged.host = host ?? file.host
        merged.port = port ?? file.port
        merged.amqpPort = amqpPort ?? file.amqpPort
        merged.dataDir = dataDir ?? file.dataDir
        merged.heartbeat = heartbeat ?? file.heartbeat
        merged.maxFrameSize = maxFrameSize ?? file.maxFrameSize
        merged.fsync = fsync ?? file.fsync
        merged.fsyncIntervalMs = fsyncIntervalMs ?? file.fsyncIntervalMs
        merged.diskFreeLimit = diskFreeLimit ?? file.diskFreeLimit
        merged.memoryLimit = memoryLimit ?? file.memoryLimit
        merged.logLevel = logLevel ?? file.logLevel
        merged.logTarget = logTarget ?? file.logTarget
        merged.logFormat = logFormat ?? file.logFormat
        merged.maxConnections = maxConnections ?? file.maxConnections
        merged.maxConnectionsPerUser = maxConnectionsPerUser ?? file.maxConnectionsPerUser
        merged.tlsCert = tlsCert ?? file.tlsCert
        merged.tlsKey = tlsKey ?? file.tlsKey
        merged.tlsClientCA = tlsClientCA ?? file.tlsClientCA
        return merged
    }

    /// Checks every value that is set; `name` turns a key into how the operator wrote it (`--port` or `port`).
    /// Returns the first problem, or nil.
    public func problem(naming name: (String) -> String) -> String? {
        if let host, host.isEmpty { return "\(name("host")) must not be empty" }
        if let port, !(0...65535).contains(port) { return "\(name("port")) must be between 0 and 65535, got \(port)" }
        if let amqpPort, !(0...65535).contains(amqpPort) { return "\(name("amqp_port")) must be between 0 and 65535, got \(amqpPort)" }
        if let amqpPort, let port, amqpPort == port, port != 0 {
            return "\(name("amqp_port")) and \(name("port")) are both \(port): the two listeners need different ports"
        }
        if let dataDir, dataDir.isEmpty { return "\(name("data_dir")) must not be empty" }
        if let heartbeat, !(0...3600).contains(heartbeat) { return "\(name("heartbeat")) must be from 0 to 3600 seconds, got \(heartbeat)" }
        if let maxFrameSize, !(4096...(1 << 30)).contains(maxFrameSize) {
            return "\(name("max_frame_size")) must be from 4096 bytes to 1 GiB, got \(maxFrameSize)"
        }
        if let fsync, FsyncPolicy(rawValue: fsync) == nil { return "\(name("fsync")) must be one of always, interval, never; got '\(fsync)'" }
        if let fsyncIntervalMs, fsyncIntervalMs < 1 { return "\(name("fsync_interval_ms")) must be at least 1" }
        if let diskFreeLimit, diskFreeLimit < 0 { return "\(name("disk_free_limit")) must not be negative" }
        if let memoryLimit, memoryLimit < 0 { return "\(name("memory_limit")) must not be negative" }
        if let maxConnections, !(0...1_000_000).contains(maxConnections) {
            return "\(name("max_connections")) must be from 0 (no limit) to 1000000, got \(maxConnections)"
        }
        if let maxConnectionsPerUser, !(0...1_000_000).contains(maxConnectionsPerUser) {
            return "\(name("max_connections_per_user")) must be from 0 (no limit) to 1000000, got \(maxConnectionsPerUser)"
        }
        if (tlsCert == nil) != (tlsKey == nil) {
            return "\(name("tls_cert")) and \(name("tls_key")) go together: give both, or neither for plain TCP"
        }
        if tlsClientCA != nil && tlsCert == nil {
            return "\(name("tls_client_ca")) needs \(name("tls_cert")) and \(name("tls_key")) (client certificates are checked over TLS only)"
        }
        for (key, value) in [("tls_cert", tlsCert), ("tls_key", tlsKey), ("tls_client_ca", tlsClientCA)] {
            if let value, value.isEmpty { return "\(name(key)) must not be empty" }
        }
        if let logLevel, !Self.logLevels.contains(logLevel) {
            return "\(name("log_level")) must be one of \(Self.logLevels.joined(separator: ", ")); got '\(logLevel)'"
        }
        if let logFormat, !Self.logFormats.contains(logFormat) {
            return "\(name("log_format")) must be one of \(Self.logFormats.joined(separator: ", ")); got '\(logFormat)'"
        }
        if let logTarget, !Self.logTargets.contains(logTarget) {
            return "\(name("log_target")) must be one of \(Self.logTargets.joined(separator: ", ")); got '\(logTarget)'"
        }
        return nil
    }

    /// The server configuration these settings give, defaults filling what is unset. Assumes ``problem(naming:)``
    /// found nothing.
    public var serverConfiguration: ServerConfiguration {
        var configuration = ServerConfiguration()
        if let host { configuration.host = host }
        if let port { configuration.port = port }
        if let amqpPort { configuration.amqpPort = amqpPort }
        if let dataDir { configuration.dataDirectory = dataDir }
        if let heartbeat { configuration.heartbeatSeconds = UInt16(clamping: heartbeat) }
        if let maxFrameSize { configuration.maxFrameSize = UInt32(clamping: maxFrameSize) }
        if let fsync, let policy = FsyncPolicy(rawValue: fsync) { configuration.fsyncPolicy = policy }
        if let fsyncIntervalMs { configuration.fsyncIntervalMilliseconds = fsyncIntervalMs }
        if let diskFreeLimit { configuration.diskFreeLimit = UInt64(clamping: diskFreeLimit) }
        if let memoryLimit { configuration.memoryLimit = memoryLimit }
        if let maxConnections { configuration.maxConnections = maxConnections }
        if let maxConnectionsPerUser { configuration.maxConnectionsPerUser = maxConnectionsPerUser }
        if let tlsCert, let tlsKey { configuration.tls = ServerTLS(certificateFile: tlsCert, keyFile: tlsKey, clientCAFile: tlsClientCA) }
        return configuration
    }

    /// Reads a settings file. Unknown keys, values of the wrong type and invalid values are errors that name the
    /// file, the key and (for syntax errors) the line.
    public static func load(path: String) throws(SettingsError) -> BrokerSettings {
        guard let data = FileManager.default.contents(atPath: path) else {
            throw SettingsError("cannot read the configuration file \(path) (missing, or not readable by this user)")
        }
        return try parse(String(decoding: data, as: UTF8.self), source: path)
    }

    static let stringKeys: Set<String> = ["host", "data_dir", "fsync", "log_level", "log_target", "log_format", "tls_cert", "tls_key", "tls_client_ca"]

    static func wrongType(_ key: String) -> String {
        "'\(key)' must be \(stringKeys.contains(key) ? "a string, in quotes" : "an integer (digits, _ allowed: 100_000_000)")"
    }

    /// Parses a settings document; `source` names it in errors.
    public static func parse(_ text: String, source: String) throws(SettingsError) -> BrokerSettings {
        let settings: BrokerSettings
        do {
            settings = try TOMLDecoder(strictDecoding: true).decode(BrokerSettings.self, from: text)
        } catch let error as TOMLParseError {
            throw SettingsError("\(source): line \(error.source.begin.line), column \(error.source.begin.column): \(error.description)")
        } catch let error as UnexpectedKeysError {
            let unknown = error.keys.keys.sorted().joined(separator: ", ")
            throw SettingsError("\(source): unknown key \(unknown); known keys: \(keys.joined(separator: ", "))")
        } catch let DecodingError.typeMismatch(_, context) {
            throw SettingsError("\(source): \(wrongType(context.codingPath.last?.stringValue ?? "?"))")
        } catch let DecodingError.keyNotFound(key, _) {
            // TOMLKit reports a present key of the wrong type as not found.
            throw SettingsError("\(source): \(wrongType(key.stringValue))")
        } catch {
            throw SettingsError("\(source): \(error)")
        }
        if let problem = settings.problem(naming: { "'\($0)'" }) { throw SettingsError("\(source): \(problem)") }
        return settings
    }
}

/// A configuration problem, said so an operator can fix it.
public struct SettingsError: Error, CustomStringConvertible {
    public let description: String
    init(_ description: String) { self.description = description }
}
