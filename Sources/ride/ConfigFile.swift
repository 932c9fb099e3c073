import Foundation
import TOMLKit

/// A ride settings file (`ride <service> --config FILE`): the flags' names in snake_case, at the top level for every
/// service and in a `[trip]`, `[passenger]`, `[driver]`, `[dispatcher]` or `[notification]` table for one. A flag
/// given on the command line wins over the environment (`RIDE_` and the key in capitals: `RIDE_BROKER_PORT=5681`), the
/// environment over the file, the file over the built-in default.
///
///     broker_port = 5680
///     data_dir = "/var/lib/ride"
///     [trip]
///     passenger_url = "http://10.0.0.5:8081"
///     passenger_timeout_ms = 1500
struct RideConfigFile {
    enum Kind { case string, integer }
    static let keys: [String: Kind] = [
        "broker_host": .string, "broker_port": .integer, "broker_user": .string, "broker_password": .string, "broker_url": .string, "quorum_queues": .string,
        "host": .string, "port": .integer, "data_dir": .string, "retry_delay_ms": .integer, "dispatch_attempts": .integer,
        "assignment_hold_seconds": .integer, "passenger_url": .string, "passenger_timeout_ms": .integer, "trip_requested_version": .integer, "log_level": .string,
    ]
    static let sections: Set<String> = ["trip", "passenger", "driver", "dispatcher", "notification"]

    private var common: [String: any TOMLValueConvertible] = [:]
    private var perService: [String: [String: any TOMLValueConvertible]] = [:]
    /// `RIDE_*` variables, read once; checked before the file.
    private var environment: [String: String]

    init(environment: [String: String] = ProcessInfo.processInfo.environment) {
        self.environment = environment.filter { $0.key.hasPrefix("RIDE_") }
    }

    /// Reads and checks a file: unknown keys or sections, and values of the wrong type, are errors naming the file
    /// and the key (and the line, for syntax errors).
    static func load(path: String, environment: [String: String] = ProcessInfo.processInfo.environment) throws -> RideConfigFile {
        guard let data = FileManager.default.contents(atPath: path) else {
            throw ConfigError("cannot read the configuration file \(path) (missing, or not readable by this user)")
        }
        let table: TOMLTable
        do {
            table = try TOMLTable(string: String(decoding: data, as: UTF8.self))
        } catch let error as TOMLParseError {
            throw ConfigError("\(path): line \(error.source.begin.line), column \(error.source.begin.column): \(error.description)")
        }
        var file = RideConfigFile(environment: environment)
        for key in table.keys {
            guard let value = table[key] else { continue }
            if sections.contains(key) {
                guard let section = value.table else { throw ConfigError("\(path): '\(key)' must be a table ([\(key)])") }
                var values: [String: any TOMLValueConvertible] = [:]
                for inner in section.keys {
                    guard let innerValue = section[inner] else { continue }
                    try check(inner, innerValue, path: path, prefix: "\(key).")
                    values[inner] = innerValue
                }
                file.perService[key] = values
            } else {
                try check(key, value, path: path, prefix: "")
                file.common[key] = value
            }
        }
        return file
    }

    private static func check(_ key: String, _ value: any TOMLValueConvertible, path: String, prefix: String) throws {
        guard let kind = keys[key] else {
            throw ConfigError("\(path): unknown key '\(prefix)\(key)'; known keys: \(keys.keys.sorted().joined(separator: ", ")), "
                + "and the tables \(sections.sorted().map { "[\($0)]" }.joined(separator: " "))")
        }
        switch kind {
        case .string where value.string == nil: throw ConfigError("\(path): '\(prefix)\(key)' must be a string, in quotes")
        case .integer where value.int == nil: throw ConfigError("\(path): '\(prefix)\(key)' must be an integer")
        default: break
        }
    }

    func string(_ key: String, for service: String) -> String? {
        if let value = environment["RIDE_" + key.uppercased()] { return value }
        return (perService[service]?[key] ?? common[key])?.string
    }

    /// An integer setting; an environment value that is not an integer is an error naming the variable.
    func int(_ key: String, for service: String) throws -> Int? {
        let variable = "RIDE_" + key.uppercased()
        if let text = environment[variable] {
            guard let value = Int(text) else { throw ConfigError("\(variable)='\(text)' must be an integer") }
            return value
        }
        return (perService[service]?[key] ?? common[key])?.int
    }
}

struct ConfigError: Error, CustomStringConvertible {
    var description: String
    init(_ description: String) { self.description = description }
}
