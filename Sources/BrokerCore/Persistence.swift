public import BrokerStorage
import Foundation
public import NIOCore
public import WireProtocol
import Logging

/// The durable definitions, saved atomically to `metadata.json` after every change to a durable exchange, queue,
/// binding or user.
public struct Definitions: Codable, Sendable, Equatable {
    public struct ExchangeDefinition: Codable, Sendable, Equatable {
        public var name: String
        public var type: String
        public var autoDelete: Bool
        public init(name: String, type: String, autoDelete: Bool) {
            self.name = name
            self.type = type
            self.autoDelete = autoDelete
        }
    }
    public struct QueueDefinition: Codable, Sendable, Equatable {
        public var name: String
        /// The queue's number in the message log's records. Never reused.
        public var id: UInt32
        public var autoDelete: Bool
        public var arguments: QueueArguments?
        /// The user that declared it, for per-user limits (absent in data directories of older versions).
        public var owner: String?
        public init(name: String, id: UInt32, autoDelete: Bool, arguments: QueueArguments?, owner: String?) {
            self.name = name
            self.id = id
            self.autoDelete = autoDelete
            self.arguments = arguments
            self.owner = owner
        }
    }
    public struct BindingDefinition: Codable, Sendable, Equatable {
        public var exchange: String
        public var queue: String
        public var key: String
        /// The user that made it, for per-user limits (absent in data directories of older versions).
        public var owner: String?
        public init(exchange: String, queue: String, key: String, owner: String? = nil) {
            self.exchange = exchange
            self.queue = queue
            self.key = key
            self.owner = owner
        }
    }

    public var version = 1
    public var exchanges: [ExchangeDefinition] = []
    public var queues: [QueueDefinition] = []
    public var bindings: [BindingDefinition] = []
    public var users: [User] = []
    /// Message contracts of durable exchanges (absent in data directories of older versions).
    public var contracts: [ExchangeContract]?
    public var nextQueueId: UInt32 = 1
    /// Whether `users` is the complete list (users were managed): then the default user exists only if listed.
    public var usersComplete: Bool?
    /// The last journal record this snapshot includes (``DefinitionChange/sequence``); nil before the journal.
    public var journalSequence: UInt64?

    public init() {}

    /// Reads `metadata.json`; a missing file is an empty broker.
    public static func load(from path: String) throws -> Definitions? {
        guard FileManager.default.fileExists(atPath: path) else { return nil }
        guard let data = FileManager.default.contents(atPath: path) else {
            throw StorageError("cannot read \(path)")
        }
        do {
            return try JSONDecoder().decode(Definitions.self, from: data)
        } catch {
            throw StorageError("\(path) is not valid brokerd metadata (\(error)); restore it from a backup")
        }
    }

    /// The snapshot file's bytes: pretty-printed JSON with sorted keys, so an operator can read and diff it.
    public func encoded() throws -> [UInt8] {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
        return Array(try encoder.encode(self))
    }

    /// How many definitions it holds (exchanges, queues, bindings): the size the journal is compacted against.
    var count: Int { exchanges.count + queues.count + bindings.count + (contracts?.count ?? 0) }
}

/// What the broker needs to persist: where metadata goes, the log, and the loop to hear back on.
public struct PersistenceContext {
    public var metadataPath: String
    public var store: MessageStore
    public var eventLoop: any EventLoop
    public var definitions: Definitions
    public var recovered: RecoveredLog
    /// Where definition changes are appended (``Definitions/recover(snapshotPath:journalPath:)`` opened it).
    public var journal: DefinitionsJournal

    public init(metadataPath: String, store: MessageStore, eventLoop: any EventLoop, definitions: Definitions, recovered: RecoveredLog,
                journal: DefinitionsJournal) {
        self.metadataPath = metadataPath
        self.store = store
        self.eventLoop = eventLoop
        self.definitions = definitions
        self.recovered = recovered
        self.journal = journal
    }
}

extension Broker {
    /// Rebuilds durable exchanges, queues, bindings and users, then puts every live message back in its queues,
    /// in publish order, marked redelivered where it had been delivered before.
    func restore(_ definitions: Definitions, _ recovered: RecoveredLog) -> (queues: Int, messages: Int) {
        nextQueueId = max(definitions.nextQueueId, 1)
        journalSequence = definitions.journalSequence ?? 0
        definitionsAtSnapshot = definitions.count
        if definitions.usersComplete == true {
            usersCustomized = true
            users = UserStore(includeDefaultUser: false)
        }
        for user in definitions.users { users.add(user) }
        for e in definitions.exchanges {
            guard let kind = ExchangeKind(name: e.type), exchanges[e.name] == nil else { continue }
            exchanges[e.name] = Exchange(name: e.name, kind: kind, durable: true, autoDelete: e.autoDelete)
        }
        for contract in definitions.contracts ?? [] {
            // A contract the current rules refuse (written by hand) is dropped, not fatal: the exchange stays open.
            do {
                try contract.validate()
                exchanges[contract.exchange]?.contract = try ContractState(contract)
            } catch {
                logger.warning("recovery: the contract of exchange '\(contract.exchange)' is invalid (\(error.message)); ignored")
            }
        }
        var byId: [UInt32: Queue] = [:]
        for q in definitions.queues {
            // Arguments are checked again: a value the declare-time ranges refuse (written by an older broker, or
            // by hand) must not stop the broker; the queue and its messages stay, the argument goes, and the log
            // says so.
            let (arguments, dropped) = (q.arguments ?? QueueArguments()).revalidated()
            for reason in dropped {
                logger.warning("recovery: queue '\(q.name)': argument \(reason); ignored", metadata: ["queue": "\(q.name)"])
            }
            let queue = Queue(name: q.name, durable: true, autoDelete: q.autoDelete, exclusiveOwner: nil,
                              arguments: arguments, broker: self)
            queue.durableId = q.id
            queue.owner = q.owner
            if let owner = q.owner { queueCounts[owner, default: 0] += 1 }
            // Ids are handed out upwards; never again one a recovered queue holds.
            nextQueueId = max(nextQueueId, q.id == .max ? .max : q.id + 1)
            queues[q.name] = queue
            byId[q.id] = queue
        }
        for b in definitions.bindings {
            guard let exchange = exchanges[b.exchange], let queue = queues[b.queue] else { continue }
            if exchange.bind(queue, key: b.key, owner: b.owner), let owner = b.owner { bindingCounts[owner, default: 0] += 1 }
        }
        var restored = 0
        let wallNow = store?.wallClock() ?? 0
        for message in recovered.messages {
            // Each envelope is read back (from the page cache: recovery just scanned it) and checked; queues past
            // the paging threshold drop it again at once, keeping only its location (no second write).
            let envelope: MessageEnvelope
            do {
                guard let store else { break }
                envelope = try MessageEnvelope(parsing: store.read(message.location))
            } catch {
                logger.error("recovery: message \(message.id) cannot be read back; skipped", metadata: ["error": "\(error)"])
                continue
            }
            for id in message.queues {
                guard let queue = byId[id] else { continue }  // its queue was deleted
                var queued = QueuedMessage(envelope: envelope, redelivered: message.delivered.contains(id), logId: message.id)
                queued.stored = message.location
                // TTLs keep counting while the broker is down: a message whose time ran out expires at once (and
                // is dead-lettered as `expired`). Format-1 records have no publication time: their TTL restarts.
                if queue.expires(queued) {
                    let age = message.publishedAt.map { wallNow > $0 ? wallNow - $0 : 0 } ?? 0
                    queue.setExpiry(&queued, age: age)
                }
                queue.append(queued)
                restored += 1
            }
        }
        topologyVersion &+= 1
        return (byId.count, restored)
    }

    /// The durable definitions as they stand.
    func currentDefinitions() -> Definitions {
        var d = Definitions()
        d.nextQueueId = nextQueueId
        d.users = users.users.values.filter { usersCustomized || !$0.isBuiltIn }.sorted { $0.name < $1.name }
        d.usersComplete = usersCustomized ? true : nil
        for exchange in exchanges.values where exchange.durable && !exchange.builtIn {
            d.exchanges.append(.init(name: exchange.name, type: exchange.kind.description, autoDelete: exchange.autoDelete))
            if let contract = exchange.contract?.contract { d.contracts = (d.contracts ?? []) + [contract] }
        }
        d.contracts?.sort { $0.exchange < $1.exchange }
        for queue in queues.values {
            guard let id = queue.durableId else { continue }
            d.queues.append(.init(name: queue.name, id: id, autoDelete: queue.autoDelete,
                                  arguments: queue.arguments == QueueArguments() ? nil : queue.arguments, owner: queue.owner))
        }
        for exchange in exchanges.values where exchange.durable && !exchange.builtIn {
            for (queue, key, owner) in exchange.ownedBindings where queue.durableId != nil && !queue.isDeleted {
                d.bindings.append(.init(exchange: exchange.name, queue: queue.name, key: key, owner: owner))
            }
        }
        d.exchanges.sort { $0.name < $1.name }
        d.queues.sort { $0.name < $1.name }
        d.bindings.sort { ($0.exchange, $0.queue, $0.key) < ($1.exchange, $1.queue, $1.key) }
        return d
    }

    /// Writes this cycle's log records; confirms of persistent messages wait for the result.
    func commitLog() {
        guard let store, store.hasPendingWrites, let eventLoop else { return }
        let batch = openBatch
        openBatch &+= 1
        let bound = NIOLoopBound(self, eventLoop: eventLoop)
        store.commit { result in
            eventLoop.execute { bound.value.logBatchFinished(batch, result) }
        }
    }

    func logBatchFinished(_ batch: UInt64, _ result: Result<Void, StorageError>) {
        for queue in queuesPaging where !queue.isDeleted { queue.pagesWritten(through: batch, failed: result.isFailure) }
        queuesPaging.removeAll { $0.isDeleted || !$0.hasPagesInFlight }
        switch result {
        case .failure(let error):
            // Once per episode, not once per batch: a full disk would flood the log otherwise.
            if !logWriteFailing { logger.error("message log write failed; persistent publishes are nacked", metadata: ["error": "\(error)"]) }
            logWriteFailing = true
        case .success:
            if logWriteFailing { logger.notice("message log writes succeed again") }
            logWriteFailing = false
        }
        for session in sessions.values { session.logBatchFinished(batch, failed: result.isFailure) }
        flush()
    }
}

extension Result {
    var isFailure: Bool { if case .failure = self { true } else { false } }
}
