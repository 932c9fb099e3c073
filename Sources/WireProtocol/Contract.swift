/// A message contract: the message types an exchange accepts, each with its versions and their status
/// (docs/contracts.md). The broker refuses what the contract does not allow, counts who publishes which version
/// (the census), and tells publishers of a deprecated version to upgrade (``Notice``).
///
/// The same value travels in the `contract.apply` management method (as JSON text), is stored with the durable
/// definitions, and is what `brokerctl contract apply FILE` reads.
public struct ExchangeContract: Codable, Hashable, Sendable {
    /// The exchange it governs.
    public var exchange: String
    /// The accepted types, by name (one entry per name).
    public var types: [MessageTypeContract]

    public init(exchange: String, types: [MessageTypeContract]) {
        self.exchange = exchange
        self.types = types
    }

    /// Checks names and versions; every problem is an `INVALID_ARGUMENT` naming the type and version.
    public func validate() throws(BrokerError) {
        try NameRules.validateName(exchange, kind: "exchange")
        guard !types.isEmpty else {
            throw BrokerError(.invalidArgument, "the contract of '\(exchange)' lists no message types; delete the contract instead")
        }
        var seen = Set<String>()
        for type in types {
            guard !type.name.isEmpty, type.name.utf8.count <= NameRules.maxShortStringBytes else {
                throw BrokerError(.invalidArgument, "a message type name must be 1 to 255 bytes")
            }
            guard seen.insert(type.name).inserted else {
                throw BrokerError(.invalidArgument, "message type '\(type.name)' is listed twice; list each type once with all its versions")
            }
            try type.validate()
        }
    }

    /// The type named `name`, if the contract lists it.
    public func type(_ name: String) -> MessageTypeContract? { types.first { $0.name == name } }

    /// This contract with what `other` declares that it lacks: types it does not list, and majors of listed types
    /// it does not declare. Nothing it has changes (a status, sunset or schema an operator set stays) and nothing
    /// is removed, so adding never breaks a client: what a service does with its own contract at start.
    public func adding(_ other: ExchangeContract) -> ExchangeContract {
        var result = self
        for type in other.types {
            guard let index = result.types.firstIndex(where: { $0.name == type.name }) else {
                result.types.append(type)
                continue
            }
            for version in type.versions where result.types[index].version(major: version.version.major) == nil {
                result.types[index].versions.append(version)
            }
            result.types[index].versions.sort { $0.version < $1.version }
        }
        return result
    }
}

/// One message type of a contract and its versions.
public struct MessageTypeContract: Codable, Hashable, Sendable {
    public var name: String
    /// One entry per major version; its minor is the newest minor declared (older and newer minors of the same
    /// major are accepted: a minor version is backward compatible by definition).
    public var versions: [TypeVersionContract]
    /// Whether the broker checks each message's body against its version's ``TypeVersionContract/schema``
    /// (JSON key `validate`, default false). Opt-in: parsing every body costs CPU on the publish path
    /// (docs/contracts.md, "Costs"). Versions without a schema are not checked either way.
    public var validatesPayload: Bool

    public init(name: String, versions: [TypeVersionContract], validatesPayload: Bool = false) {
        self.name = name
        self.versions = versions
        self.validatesPayload = validatesPayload
    }

    enum CodingKeys: String, CodingKey { case name, versions, validatesPayload = "validate" }

    public init(from decoder: any Decoder) throws {
        let container = try decoder.container(keyedBy: CodingKeys.self)
        name = try container.decode(String.self, forKey: .name)
        versions = try container.decode([TypeVersionContract].self, forKey: .versions)
        validatesPayload = try container.decodeIfPresent(Bool.self, forKey: .validatesPayload) ?? false
    }

    public func encode(to encoder: any Encoder) throws {
        var container = encoder.container(keyedBy: CodingKeys.self)
        try container.encode(name, forKey: .name)
        try container.encode(versions, forKey: .versions)
        if validatesPayload { try container.encode(true, forKey: .validatesPayload) }
    }

    func validate() throws(BrokerError) {
        guard !versions.isEmpty else {
            throw BrokerError(.invalidArgument, "message type '\(name)' lists no versions")
        }
        var majors = Set<UInt16>()
        for version in versions {
            guard majors.insert(version.version.major).inserted else {
                throw BrokerError(.invalidArgument, "message type '\(name)' lists major version \(version.version.major) twice; give each major once, with its newest minor")
            }
            try version.validate(type: name)
        }
    }

    /// The entry of `major`, if declared.
    public func version(major: UInt16) -> TypeVersionContract? { versions.first { $0.version.major == major } }

    /// What a publisher may send, for error texts: `1.2 (deprecated, sunset 2027-03-01), 2.0`.
    public var allowedDescription: String {
        let open = versions.filter { $0.status != .retired }.sorted { $0.version < $1.version }
        guard !open.isEmpty else { return "no version (all retired)" }
        return open.map { v in
            switch v.status {
            case .current, .retired: "\(v.version)"
            case .deprecated: "\(v.version) (deprecated\(v.sunset.map { ", sunset \($0)" } ?? ""))"
            }
        }.joined(separator: ", ")
    }
}

/// One major version of a message type.
public struct TypeVersionContract: Codable, Hashable, Sendable {
    /// Whether publishers may use a version, and whether they are told to move off it.
    public enum Status: String, Codable, Hashable, Sendable, CaseIterable {
        /// Accepted.
        case current
        /// Accepted, and each connection that uses it gets a ``Notice`` (once per type and version).
        case deprecated
        /// Refused.
        case retired
    }

    public var version: ContractVersion
    public var status: Status
    /// When a deprecated version will be retired, as a calendar date (`YYYY-MM-DD`).
    public var sunset: String?
    /// What to use instead, for example `trip.requested 2.0`.
    public var replacement: String?
    /// The JSON Schema a body of this version matches (docs/contracts.md, "Schemas"); checked only when the
    /// type ``MessageTypeContract/validatesPayload``. In a JSON file it is the schema itself; in a field table
    /// (the `contract.apply` method) it is its JSON text, since field tables have no null.
    public var schema: JSONValue?

    public init(version: ContractVersion, status: Status = .current, sunset: String? = nil, replacement: String? = nil,
                schema: JSONValue? = nil) {
        self.version = version
        self.status = status
        self.sunset = sunset
        self.replacement = replacement
        self.schema = schema
    }

    enum CodingKeys: String, CodingKey { case version, status, sunset, replacement, schema }

    public init(from decoder: any Decoder) throws {
        let container = try decoder.container(keyedBy: CodingKeys.self)
        version = try container.decode(ContractVersion.self, forKey: .version)
        status = try container.decodeIfPresent(Status.self, forKey: .status) ?? .current
        sunset = try container.decodeIfPresent(String.self, forKey: .sunset)
        replacement = try container.decodeIfPresent(String.self, forKey: .replacement)
        if decoder.userInfo[.fieldTable] != nil {
            if let text = try container.decodeIfPresent(String.self, forKey: .schema) {
                do {
                    schema = try JSONValue.parse(text)
                } catch {
                    throw DecodingError.dataCorruptedError(forKey: .schema, in: container, debugDescription: "the schema is not JSON: \(error)")
                }
            }
        } else {
            schema = try container.decodeIfPresent(JSONValue.self, forKey: .schema)
        }
    }

    public func encode(to encoder: any Encoder) throws {
        var container = encoder.container(keyedBy: CodingKeys.self)
        try container.encode(version, forKey: .version)
        try container.encode(status, forKey: .status)
        try container.encodeIfPresent(sunset, forKey: .sunset)
        try container.encodeIfPresent(replacement, forKey: .replacement)
        if let schema {
            if encoder.userInfo[.fieldTable] != nil {
                try container.encode(schema.jsonText, forKey: .schema)
            } else {
                try container.encode(schema, forKey: .schema)
            }
        }
    }

    func validate(type: String) throws(BrokerError) {
        if let sunset {
            guard Self.isDate(sunset) else {
                throw BrokerError(.invalidArgument, "\(type) \(version): sunset '\(sunset)' is not a date like 2027-03-01")
            }
        }
        if let replacement, replacement.isEmpty || replacement.utf8.count > NameRules.maxShortStringBytes {
            throw BrokerError(.invalidArgument, "\(type) \(version): replacement must be 1 to 255 bytes")
        }
    }

    /// `YYYY-MM-DD` with a plausible month and day.
    static func isDate(_ text: String) -> Bool {
        let parts = text.split(separator: "-", omittingEmptySubsequences: false)
        guard parts.count == 3, parts[0].count == 4, parts[1].count == 2, parts[2].count == 2,
              parts.allSatisfy({ $0.allSatisfy(\.isASCII) && $0.allSatisfy(\.isNumber) }),
              let month = Int(parts[1]), let day = Int(parts[2]) else { return false }
        return (1...12).contains(month) && (1...31).contains(day)
    }
}

/// A message type's version, `major.minor`. On the wire a message carries its major in the `typeVersion`
/// property and its minor in `typeMinorVersion` (protocol 1.1; absent means 0).
public struct ContractVersion: Codable, Hashable, Comparable, Sendable, CustomStringConvertible {
    public var major: UInt16
    public var minor: UInt16

    public init(_ major: UInt16, _ minor: UInt16 = 0) {
        self.major = major
        self.minor = minor
    }

    /// Parses `2`, `2.1`; nil for anything else.
    public init?(_ text: String) {
        let parts = text.split(separator: ".", omittingEmptySubsequences: false)
        guard (1...2).contains(parts.count), let major = UInt16(parts[0]) else { return nil }
        let minor = parts.count == 2 ? UInt16(parts[1]) : 0
        guard let minor, parts.allSatisfy({ !$0.isEmpty && $0.allSatisfy(\.isNumber) }) else { return nil }
        self.init(major, minor)
    }

    public var description: String { "\(major).\(minor)" }
    public static func < (a: Self, b: Self) -> Bool { (a.major, a.minor) < (b.major, b.minor) }

    public init(from decoder: any Decoder) throws {
        let container = try decoder.singleValueContainer()
        let text = try container.decode(String.self)
        guard let version = ContractVersion(text) else {
            throw DecodingError.dataCorruptedError(in: container, debugDescription: "'\(text)' is not a version like 1.0 or 2")
        }
        self = version
    }

    public func encode(to encoder: any Encoder) throws {
        var container = encoder.singleValueContainer()
        try container.encode(description)
    }
}

/// What a consumer accepts of one message type: a range of major versions (docs/contracts.md, "Consumers").
///
/// A consumer states them when it subscribes, in the consume argument ``argument`` as text:
/// `trip.requested@1-2, driver.offer@1`. The broker never hands it a message of a listed type with a major outside
/// its range; types it does not list, and messages without a type, reach it as before.
public struct AcceptedVersions: Hashable, Sendable, CustomStringConvertible {
    /// The consume argument that carries the list.
    public static let argument = "x-accept-types"

    public var type: String
    public var majors: ClosedRange<UInt16>

    public init(_ type: String, majors: ClosedRange<UInt16>) {
        self.type = type
        self.majors = majors
    }

    public init(_ type: String, major: UInt16) { self.init(type, majors: major...major) }

    /// `trip.requested@1-2`, or `trip.requested@2` for one major.
    public var description: String { "\(type)@\(Self.describe(majors))" }

    /// A range of majors as the list writes it: `1-2`, or `2` for one major.
    public static func describe(_ majors: ClosedRange<UInt16>) -> String {
        majors.lowerBound == majors.upperBound ? "\(majors.lowerBound)" : "\(majors.lowerBound)-\(majors.upperBound)"
    }

    public func accepts(major: UInt16) -> Bool { majors.contains(major) }

    /// Parses `type@M` or `type@M-N` entries separated by commas; each problem is an `INVALID_ARGUMENT` naming the
    /// entry. A type is listed once.
    public static func parseList(_ text: String) throws(BrokerError) -> [AcceptedVersions] {
        var result: [AcceptedVersions] = []
        for raw in text.split(separator: ",", omittingEmptySubsequences: false) {
            let entry = String(raw.drop(while: { $0 == " " }).reversed().drop(while: { $0 == " " }).reversed())
            guard let at = entry.lastIndex(of: "@") else {
                throw BrokerError(.invalidArgument, "'\(entry)' in \(argument) is not like trip.requested@1 or trip.requested@1-2")
            }
            let type = String(entry[..<at])
            let range = entry[entry.index(after: at)...].split(separator: "-", omittingEmptySubsequences: false)
            guard !type.isEmpty, type.utf8.count <= NameRules.maxShortStringBytes, (1...2).contains(range.count),
                  let low = UInt16(range[0]), let high = UInt16(range[range.count - 1]) else {
                throw BrokerError(.invalidArgument, "'\(entry)' in \(argument) is not like trip.requested@1 or trip.requested@1-2")
            }
            guard low <= high else {
                throw BrokerError(.invalidArgument, "'\(entry)' in \(argument): the range \(low)-\(high) is empty; write the lower major first")
            }
            guard !result.contains(where: { $0.type == type }) else {
                throw BrokerError(.invalidArgument, "\(argument) lists '\(type)' twice; give one range per type")
            }
            result.append(AcceptedVersions(type, majors: low...high))
        }
        return result
    }

    /// The list as the consume argument carries it.
    public static func listDescription(_ list: [AcceptedVersions]) -> String {
        list.map(\.description).joined(separator: ",")
    }
}
