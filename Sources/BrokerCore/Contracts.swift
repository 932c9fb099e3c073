import Foundation
public import WireProtocol

/// An exchange's contract as the publish path reads it: the declared value and an index by type and major.
/// Immutable; applying a new contract replaces the object (and bumps the topology version, so route caches that
/// hold the old one are dropped).
final class ContractState {
    let contract: ExchangeContract
    private let index: [String: [UInt16: TypeVersionContract]]

    init(_ contract: ExchangeContract) {
        self.contract = contract
        var index: [String: [UInt16: TypeVersionContract]] = [:]
        for type in contract.types {
            for version in type.versions { index[type.name, default: [:]][version.version.major] = version }
        }
        self.index = index
    }

    /// What a contract says about one message.
    enum Verdict: Equatable {
        /// Accepted: the version entry it matched (deprecated entries make a notice).
        case accepted(type: String, version: ContractVersion, entry: TypeVersionContract)
        case refused(BrokerError)
    }

    /// Checks a message's type and version: a type the contract lists, with a major it declares and has not
    /// retired. Any minor of a declared major is accepted (a minor is backward compatible by definition).
    func verdict(type: String?, major: UInt16?, minor: UInt16?) -> Verdict {
        let exchange = contract.exchange
        guard let type else {
            return .refused(BrokerError(.contractViolation, "exchange '\(exchange)' has a contract: a message must carry a type and a type version; it accepts \(acceptedTypes)"))
        }
        guard let versions = index[type], let declared = contract.type(type) else {
            return .refused(BrokerError(.contractViolation, "exchange '\(exchange)' does not accept message type '\(type)'; its contract accepts \(acceptedTypes)"))
        }
        guard let major else {
            return .refused(BrokerError(.contractViolation, "message type '\(type)' on exchange '\(exchange)' needs a type version; the contract allows \(declared.allowedDescription)"))
        }
        let version = ContractVersion(major, minor ?? 0)
        guard let entry = versions[major] else {
            return .refused(BrokerError(.contractViolation, "\(type) \(version) is not declared on exchange '\(exchange)'; the contract allows \(declared.allowedDescription)"))
        }
        if entry.status == .retired {
            let instead = entry.replacement.map { " (use \($0))" } ?? ""
            return .refused(BrokerError(.contractViolation, "\(type) \(major).x is retired on exchange '\(exchange)'\(instead); the contract allows \(declared.allowedDescription)"))
        }
        return .accepted(type: type, version: version, entry: entry)
    }

    private var acceptedTypes: String {
        contract.types.map { "\($0.name) \($0.allowedDescription)" }.joined(separator: "; ")
    }
}

/// Who speaks which version of which message type on which exchange: one entry per connection, exchange, type,
/// version and role, with a message count and when it was first and last seen. Entries of closed connections stay
/// (marked disconnected) so an operator sees who spoke a version recently; past ``closedLimit`` the oldest go.
struct Census {
    enum Role: String { case publisher }

    struct Key: Hashable {
        var exchange: String
        var type: String
        var version: ContractVersion
        var role: Role
        var connection: UInt64
    }

    struct Entry {
        var client: String
        var user: String
        var peer: String
        var count: UInt64
        var firstSeen: UInt64
        var lastSeen: UInt64
        var connected: Bool
    }

    private(set) var entries: [Key: Entry] = [:]
    private var closedCount = 0
    /// Most entries of closed connections kept.
    static let closedLimit = 10_000

    mutating func record(_ key: Key, session: Session, at time: UInt64) {
        if entries[key] != nil {
            entries[key]!.count &+= 1  // just checked: present
            entries[key]!.lastSeen = time
        } else {
            entries[key] = Entry(client: session.clientName, user: session.user.name, peer: session.peer, count: 1,
                                 firstSeen: time, lastSeen: time, connected: true)
        }
    }

    /// A connection closed: its entries stay as history.
    mutating func disconnected(_ connection: UInt64) {
        for (key, entry) in entries where key.connection == connection && entry.connected {
            entries[key]?.connected = false
            closedCount += 1
        }
        guard closedCount > Self.closedLimit else { return }
        let closed = entries.filter { !$0.value.connected }.sorted { $0.value.lastSeen < $1.value.lastSeen }
        for (key, _) in closed.prefix(closedCount - Self.closedLimit) { entries[key] = nil }
        closedCount = Self.closedLimit
    }

    /// The live users of a type's major on an exchange: what retiring it would break.
    func liveUsers(exchange: String, type: String, major: UInt16) -> [(Key, Entry)] {
        entries.filter { $0.key.exchange == exchange && $0.key.type == type && $0.key.version.major == major && $0.value.connected }
            .sorted { $0.key.connection < $1.key.connection }
    }

    /// Every entry, optionally for one exchange, in a stable order.
    func rows(exchange: String?) -> [(Key, Entry)] {
        entries.filter { exchange == nil || $0.key.exchange == exchange }.sorted {
            ($0.key.exchange, $0.key.type, $0.key.version, $0.key.connection) < ($1.key.exchange, $1.key.type, $1.key.version, $1.key.connection)
        }
    }

    /// Forgets an exchange (deleted).
    mutating func remove(exchange: String) {
        for (key, entry) in entries where key.exchange == exchange {
            if !entry.connected { closedCount -= 1 }
            entries[key] = nil
        }
    }
}

extension Broker {
    /// Checks a publish against its exchange's contract, counts it in the census and sends a deprecation notice
    /// the first time this connection uses a deprecated version. nil when the message may be routed.
    func checkContract(_ contract: ContractState, _ publish: PublishView, by session: Session?) -> BrokerError? {
        let fields: (type: String?, major: UInt16?, minor: UInt16?)
        do {
            fields = try publish.envelope.properties.typeAndVersion()
        } catch {
            return error
        }
        switch contract.verdict(type: fields.type, major: fields.major, minor: fields.minor) {
        case .refused(let error):
            return error
        case .accepted(let type, let version, let entry):
            guard let session else { return nil }
            let exchange = contract.contract.exchange
            census.record(Census.Key(exchange: exchange, type: type, version: version, role: .publisher, connection: session.id),
                          session: session, at: wallClock())
            if entry.status == .deprecated { session.noticeDeprecation(exchange: exchange, type: type, version: version, entry: entry) }
            return nil
        }
    }
}

extension Session {
    /// Tells the client once per exchange, type and major that the version it uses is deprecated (protocol 1.1
    /// clients only: a 1.0 client would not know the frame).
    func noticeDeprecation(exchange: String, type: String, version: ContractVersion, entry: TypeVersionContract) {
        guard protocolVersion >= .v1_1 else { return }
        let subject = "\(exchange)\u{0}\(type)\u{0}\(version.major)"
        guard noticesSent.insert(subject).inserted else { return }
        var text = "\(type) \(version) on exchange '\(exchange)' is deprecated"
        if let sunset = entry.sunset { text += " and will be refused from \(sunset)" }
        if let replacement = entry.replacement { text += "; use \(replacement)" }
        write(.notice(Notice(kind: "deprecated", exchange: exchange, messageType: type, version: "\(version)",
                             sunset: entry.sunset ?? "", replacement: entry.replacement ?? "", text: text)))
    }
}
