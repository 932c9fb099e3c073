import Foundation
import NIOCore
public import WireProtocol

/// An exchange's contract as the publish path reads it: the declared value and an index by type and major.
/// Immutable; applying a new contract replaces the object (and bumps the topology version, so route caches that
/// hold the old one are dropped).
final class ContractState {
    let contract: ExchangeContract
    private let index: [String: [UInt16: TypeVersionContract]]
    /// The compiled schemas of the types that validate, by type and major.
    private let schemas: [String: [UInt16: JSONSchema]]

    /// Indexes `contract` and compiles its schemas (every schema, also of types that do not validate, so a broken
    /// one is reported when it is applied and not when validation is switched on).
    init(_ contract: ExchangeContract) throws(BrokerError) {
        self.contract = contract
        var index: [String: [UInt16: TypeVersionContract]] = [:]
        var schemas: [String: [UInt16: JSONSchema]] = [:]
        for type in contract.types {
            for version in type.versions {
                index[type.name, default: [:]][version.version.major] = version
                guard let schema = version.schema else { continue }
                let compiled: JSONSchema
                do {
                    compiled = try JSONSchema(schema)
                } catch {
                    throw BrokerError(.invalidArgument, "\(type.name) \(version.version): the \(error.description)")
                }
                if type.validatesPayload { schemas[type.name, default: [:]][version.version.major] = compiled }
            }
        }
        self.index = index
        self.schemas = schemas
    }

    /// Checks a body against the schema of `type`'s `major`, if that type validates and the version has one.
    /// nil when it matches (or nothing is checked), else the refusal naming the type, the version and the rule.
    func checkBody(_ body: ByteBuffer, type: String, version: ContractVersion) -> BrokerError? {
        guard let schema = schemas[type]?[version.major] else { return nil }
        let exchange = contract.exchange
        let value: JSONValue
        do {
            value = try JSONValue.parse(body)
        } catch {
            return BrokerError(.contractViolation, "\(type) \(version) on exchange '\(exchange)' must have a JSON body matching its schema; the body is not JSON (\(error))")
        }
        guard let failure = schema.check(value) else { return nil }
        return BrokerError(.contractViolation, "\(type) \(version) on exchange '\(exchange)': the body does not match the schema: \(failure)")
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

/// Who speaks which version of which message type: one entry per connection, exchange, type, version and role
/// (publishers), or per consumer, queue and type with the majors it accepts (consumers), with a message count and
/// when it was first and last seen. Entries of closed connections and cancelled consumers stay (marked not
/// connected) so an operator sees who spoke a version recently; past ``closedLimit`` the oldest go.
struct Census {
    enum Role: String { case publisher, consumer }

    struct Key: Hashable {
        /// The exchange published to; empty for a consumer (its queue's bindings say which exchanges feed it).
        var exchange: String
        var type: String
        /// The version published; 0.0 for a consumer.
        var version: ContractVersion
        var role: Role
        var connection: UInt64
        /// A consumer's queue, tag and accepted majors.
        var queue: String = ""
        var consumerTag: UInt32 = 0
        var majors: ClosedRange<UInt16> = 0...0

        /// A consumer's entry for one type of its accepted-versions list.
        static func consumer(_ consumer: QueueConsumer, _ range: AcceptedVersions) -> Key {
            Key(exchange: "", type: range.type, version: ContractVersion(0), role: .consumer, connection: consumer.session.id,
                queue: consumer.queue.name, consumerTag: consumer.tag, majors: range.majors)
        }
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

    mutating func record(_ key: Key, session: Session, at time: UInt64, count: UInt64 = 1) {
        if let index = entries.index(forKey: key) {
            // One hash per message: the entry is updated in place through its index.
            entries.values[index].count &+= count
            entries.values[index].lastSeen = time
        } else {
            entries[key] = Entry(client: session.clientName, user: session.user.name, peer: session.peer, count: count,
                                 firstSeen: time, lastSeen: time, connected: true)
        }
    }

    /// A connection closed (or, with `consumerTag`, one consumer was cancelled): its entries stay as history.
    mutating func disconnected(_ connection: UInt64, consumerTag: UInt32? = nil) {
        for (key, entry) in entries where key.connection == connection && entry.connected {
            if let consumerTag, key.role != .consumer || key.consumerTag != consumerTag { continue }
            entries[key]?.connected = false
            closedCount += 1
        }
        guard closedCount > Self.closedLimit else { return }
        let closed = entries.filter { !$0.value.connected }.sorted { $0.value.lastSeen < $1.value.lastSeen }
        for (key, _) in closed.prefix(closedCount - Self.closedLimit) { entries[key] = nil }
        closedCount = Self.closedLimit
    }

    /// The live publishers of a type's major on an exchange: what retiring it would break.
    func livePublishers(exchange: String, type: String, major: UInt16) -> [(Key, Entry)] {
        entries.filter {
            $0.key.role == .publisher && $0.key.exchange == exchange && $0.key.type == type && $0.key.version.major == major && $0.value.connected
        }.sorted { $0.key.connection < $1.key.connection }
    }

    /// The live consumers of a type on these queues whose accepted majors hold none of `open`: after a change that
    /// leaves only `open` majors publishable, they receive nothing of the type.
    func stranded(queues: Set<String>, type: String, open: Set<UInt16>) -> [(Key, Entry)] {
        entries.filter {
            $0.key.role == .consumer && $0.value.connected && $0.key.type == type && queues.contains($0.key.queue)
                && !open.contains(where: $0.key.majors.contains)
        }.sorted { ($0.key.connection, $0.key.consumerTag) < ($1.key.connection, $1.key.consumerTag) }
    }

    /// Every entry, in a stable order: publishers to `exchange` and consumers of `queues` when filtered.
    func rows(exchange: String?, queues: Set<String> = []) -> [(Key, Entry)] {
        entries.filter {
            exchange == nil || ($0.key.role == .publisher ? $0.key.exchange == exchange : queues.contains($0.key.queue))
        }.sorted { a, b in
            let (x, y) = (a.key, b.key)
            if (x.exchange, x.type, x.role.rawValue, x.version, x.queue) != (y.exchange, y.type, y.role.rawValue, y.version, y.queue) {
                return (x.exchange, x.type, x.role.rawValue, x.version, x.queue) < (y.exchange, y.type, y.role.rawValue, y.version, y.queue)
            }
            return (x.connection, x.consumerTag) < (y.connection, y.consumerTag)
        }
    }

    /// Forgets an exchange's publishers (deleted).
    mutating func remove(exchange: String) {
        for (key, entry) in entries where key.role == .publisher && key.exchange == exchange {
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
            if let error = contract.checkBody(publish.envelope.body, type: type, version: version) { return error }
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
    func noticeDeprecation(exchange: String, type: String, version: ContractVersion, entry: TypeVersionContract, consumer: Bool = false) {
        guard protocolVersion >= .v1_1 else { return }
        let subject = "\(exchange)\u{0}\(type)\u{0}\(version.major)"
        guard noticesSent.insert(subject).inserted else { return }
        var text = consumer
            ? "this consumer accepts only deprecated versions of \(type) on exchange '\(exchange)' (\(version.major).x)"
            : "\(type) \(version) on exchange '\(exchange)' is deprecated"
        if let sunset = entry.sunset { text += " and will be refused from \(sunset)" }
        if let replacement = entry.replacement { text += "; use \(replacement)" }
        write(.notice(Notice(kind: "deprecated", exchange: exchange, messageType: type, version: "\(version)",
                             sunset: entry.sunset ?? "", replacement: entry.replacement ?? "", text: text)))
    }
}

// MARK: - Consumers that accept only some versions

extension Broker {
    /// The exchanges bound to `queue` whose contracts list `type`.
    func contractedExchanges(feeding queue: Queue, type: String) -> [Exchange] {
        var seen = Set<String>()
        return queue.bindings.compactMap { binding in
            let exchange = binding.exchange
            guard exchange.contract?.contract.type(type) != nil, seen.insert(exchange.name).inserted else { return nil }
            return exchange
        }
    }

    /// A consumer with an accepted-versions list subscribed: the queue takes the selective path, the census lists
    /// it, and it is told if it accepts only deprecated versions of a type an exchange feeding it has a contract for.
    func selectiveConsumerAdded(_ consumer: QueueConsumer) {
        guard let accepted = consumer.accepted else { return }
        consumer.queue.selectiveConsumers += 1
        let session = consumer.session
        for range in accepted {
            census.record(.consumer(consumer, range), session: session, at: wallClock(), count: 0)
            for exchange in contractedExchanges(feeding: consumer.queue, type: range.type) {
                guard let declared = exchange.contract?.contract.type(range.type) else { continue }
                let accepted = declared.versions.filter { range.accepts(major: $0.version.major) }
                guard !accepted.contains(where: { $0.status == .current }),
                      let deprecated = accepted.first(where: { $0.status == .deprecated }) else { continue }
                session.noticeDeprecation(exchange: exchange.name, type: range.type, version: deprecated.version, entry: deprecated,
                                          consumer: true)
            }
        }
    }

    /// The counterpart of ``selectiveConsumerAdded(_:)``: cancelled, or its connection closed.
    func selectiveConsumerRemoved(_ consumer: QueueConsumer) {
        guard consumer.accepted != nil else { return }
        consumer.queue.selectiveConsumers -= 1
        census.disconnected(consumer.session.id, consumerTag: consumer.tag)
    }

    /// Counts a delivery of a type the consumer lists.
    func countConsumed(type: String, by consumer: QueueConsumer) {
        guard let range = consumer.accepted?.first(where: { $0.type == type }) else { return }
        census.record(.consumer(consumer, range), session: consumer.session, at: wallClock())
    }
}
