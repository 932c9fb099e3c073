public import Logging
public import WireProtocol
import BrokerStorage
import Foundation
import NIOCore

/// The broker's state: exchanges, queues, bindings, sessions. It has one owner, the event loop it was created for,
/// and is touched only there; that is why nothing in it locks, and why it is not `Sendable`.
///
/// The server feeds it frames (``Session/handle(_:)``) and calls ``flush()`` once per read cycle, which writes each
/// touched session's batch of frames at once.
public final class Broker {
    public let logger: Logger
    public var users: UserStore
    public let startedAt: ContinuousClock.Instant
    public static let version = brokerdVersion

    var exchanges: [String: Exchange] = [:]
    var queues: [String: Queue] = [:]
    var sessions: [UInt64: Session] = [:]
    var dirtySessions: [Session] = []
    private var nextSessionId: UInt64 = 0
    /// Bumped by every change that can alter where a message routes (queues, exchanges, bindings), so sessions can
    /// cache their last route.
    var topologyVersion: UInt64 = 0

    // Persistence (nil when the broker keeps nothing on disk, as in core tests).
    let store: MessageStore?
    let metadataPath: String?
    let eventLoop: (any EventLoop)?
    var nextQueueId: UInt32 = 1
    /// The definitions' journal (nil without a data directory) and its bookkeeping: the last change's number,
    /// this cycle's changes, the batch they go in, the records since the last snapshot and how many definitions
    /// that snapshot held, and the sessions whose output waits for a batch (``recordChange(_:by:)``).
    let definitionsJournal: DefinitionsJournal?
    var journalSequence: UInt64 = 0
    var pendingChanges: [DefinitionChange] = []
    var openDefinitionsBatch: UInt64 = 0
    var recordsSinceSnapshot = 0
    var definitionsAtSnapshot = 0
    var sessionsHoldingOutput: [Session] = []
    /// Queues and bindings per user that made them, for their ``UserLimits``.
    var queueCounts: [String: Int] = [:]
    var bindingCounts: [String: Int] = [:]
    /// The log batch this cycle's records go into.
    var openBatch: UInt64 = 1
    /// Whether the last log write failed (to log failures once per episode).
    var logWriteFailing = false
    /// Queues with paged messages whose log write has not completed.
    var queuesPaging: [Queue] = []
    /// When queue rates were last sampled (broker clock).
    var lastRateSample: UInt64 = 0
    /// Whether users were changed through management: then the saved user list is complete, default user included.
    var usersCustomized = false
    /// Who publishes which version of which contracted type (``Census``).
    var census = Census()
    /// Wall-clock milliseconds since the Unix epoch, for the census's "last seen". Tests replace it.
    public var wallClock: () -> UInt64 = { UInt64(max(0, Date().timeIntervalSince1970 * 1000)) }
    /// What the server reports in `status` beyond the broker's own figures (listeners, fsync policy, limits).
    public var serverInfo: FieldTable = [:]
    /// Free bytes on the data directory's file system at the last check, for `status`.
    public var diskFree: UInt64?

    /// `memoryLimit` applies from the start, so recovery already pages a backlog larger than memory.
    public init(users: UserStore = UserStore(), logger: Logger = Logger(label: "brokerd.core"), persistence: PersistenceContext? = nil,
                memoryLimit: Int = 0) {
        self.memory.limit = memoryLimit
        self.users = users
        self.logger = logger
        self.startedAt = .now
        self.store = persistence?.store
        self.metadataPath = persistence?.metadataPath
        self.definitionsJournal = persistence?.journal
        self.eventLoop = persistence?.eventLoop
        for (name, kind) in [("", ExchangeKind.direct), ("amq.direct", .direct), ("amq.fanout", .fanout), ("amq.topic", .topic)] {
            exchanges[name] = Exchange(name: name, kind: kind, durable: true, autoDelete: false, builtIn: true)
        }
        if let persistence {
            let (queues, messages) = restore(persistence.definitions, persistence.recovered)
            logger.info("recovered", metadata: ["queues": "\(queues)", "messages": "\(messages)",
                                                "records": "\(persistence.recovered.recordsScanned)",
                                                "bytes": "\(persistence.recovered.bytesScanned)"])
        }
    }

    /// Whether messages and definitions are kept on disk.
    public var persists: Bool { store != nil }

    // MARK: - Sessions

    /// Registers an authenticated connection.
    public func openSession(user: User, clientName: String, peer: String, transport: any SessionTransport,
                            protocolVersion: ProtocolVersion = .v1_0, front: SessionFront = .native) -> Session {
        nextSessionId += 1
        let session = Session(id: nextSessionId, user: user, clientName: clientName, peer: peer, broker: self, transport: transport,
                              protocolVersion: protocolVersion, front: front)
        sessions[session.id] = session
        sessionsPerConnection[session.connectionId, default: 0] += 1
        if let alarm {
            session.write(.connectionBlocked(reason: alarm))
            session.applyAlarm(true)
        }
        return session
    }

    /// Releases a closed connection's consumers, unacknowledged messages and exclusive queues.
    public func closeSession(_ session: Session) {
        guard sessions.removeValue(forKey: session.id) != nil else { return }
        session.close()
        census.disconnected(session.id)
        let left = (sessionsPerConnection[session.connectionId] ?? 1) - 1
        sessionsPerConnection[session.connectionId] = left > 0 ? left : nil
        // An exclusive queue lives as long as its connection: with AMQP, until the last of its channels closes.
        if left <= 0 {
            for queue in queues.values where queue.exclusiveOwner == session.connectionId {
                removeQueue(queue, reason: "exclusive queue's connection closed")
            }
        }
        flush()
    }

    /// A number for a connection whose sessions are its channels (AMQP): unique among session ids.
    public func newConnectionId() -> UInt64 {
        nextSessionId += 1
        return nextSessionId
    }

    /// Open sessions per connection (``Session/connectionId``), so an exclusive queue outlives a closed channel.
    private var sessionsPerConnection: [UInt64: Int] = [:]

    // MARK: - Alarms (flow control of publishers)

    /// The broker's clock in nanoseconds (monotonic). Tests replace it to move time without sleeping.
    public var now: () -> UInt64 = { NIODeadline.now().uptimeNanoseconds }

    /// Replaces the configured free-disk limit at run time (operators, tests).
    public var diskFreeLimitOverride: UInt64?

    /// The resources whose alarms block publishers.
    public enum AlarmSource: String, Sendable, CaseIterable {
        case disk, memory
    }

    /// The alarms on, with their reasons.
    public private(set) var alarms: [AlarmSource: String] = [:]
    private var toPause: [Session] = []

    /// Why publishers are blocked, or nil.
    public var alarm: String? {
        alarms.isEmpty ? nil : AlarmSource.allCases.compactMap { alarms[$0] }.joined(separator: "; ")
    }

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

    // MARK: - Memory accounting

    /// Bytes of messages the broker holds (ready in queues or delivered and unacknowledged), counted per queue,
    /// with each message's entry (``QueuedMessage/footprint``).
    public var bufferedBytes: Int { memory.bytes }
    /// Above this many buffered bytes, publishers are blocked (0: no limit); they resume below 90% of it.
    public var memoryLimit: Int {
        get { memory.limit }
        set { memory.limit = newValue }
    }
    /// Shared with every queue and session, which count into it on the hot path without touching the broker.
    let memory = MemoryCounter()

    private func checkMemory() {
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

    /// Writes every session's pending frames, one buffer per session.
    public func flush() {
        if memory.overLimit {
            memory.overLimit = false
            checkMemory()
        }
        if !toPause.isEmpty {
            let sessions = toPause
            toPause.removeAll()
            for session in sessions { session.pauseReading() }  // each checks that its alarm is still on
        }
        commitLog()
        commitDefinitions()
        guard !dirtySessions.isEmpty else { return }
        // A flush can't make more sessions dirty: it only writes what is already encoded.
        let dirty = dirtySessions
        dirtySessions.removeAll(keepingCapacity: true)
        for session in dirty { session.flush() }
    }

    /// The session's connection can take writes again: resume its consumers.
    public func sessionBecameWritable(_ session: Session) {
        for consumer in session.consumers.values where !consumer.queue.isDeleted { consumer.queue.dispatch() }
        flush()
    }

    public var sessionCount: Int { sessions.count }

    // MARK: - Exchanges

    public func declareExchange(_ m: ExchangeDeclare, by session: Session) throws(BrokerError) {
        if m.name.isEmpty { throw BrokerError(.accessRefused, "the default exchange cannot be declared") }
        try NameRules.validateName(m.name, kind: "exchange")
        if let existing = exchanges[m.name] {
            guard !m.passive else { return }
            if existing.kind != m.kind {
                throw BrokerError(.preconditionFailed, "exchange '\(m.name)' exists with type \(existing.kind), not \(m.kind)")
            }
            if existing.durable != m.durable {
                throw BrokerError(.preconditionFailed, "exchange '\(m.name)' exists with durable=\(existing.durable), not \(m.durable)")
            }
            if existing.autoDelete != m.autoDelete {
                throw BrokerError(.preconditionFailed, "exchange '\(m.name)' exists with auto-delete=\(existing.autoDelete), not \(m.autoDelete)")
            }
            return
        }
        if m.passive { throw BrokerError(.notFound, "no exchange '\(m.name)'") }
        if m.name.hasPrefix("amq.") { throw BrokerError(.accessRefused, "exchange names starting with 'amq.' are reserved") }
        try session.permissions.check(.configure, "exchange", m.name)
        if !m.arguments.isEmpty {
            throw BrokerError(.invalidArgument, "exchange arguments are not supported: \(m.arguments.keys.sorted().joined(separator: ", "))")
        }
        exchanges[m.name] = Exchange(name: m.name, kind: m.kind, durable: m.durable, autoDelete: m.autoDelete)
        topologyVersion &+= 1
        if m.durable {
            recordChange(.putExchange(.init(name: m.name, type: m.kind.description, autoDelete: m.autoDelete)), by: session)
        }
        logger.debug("exchange declared", metadata: ["exchange": "\(m.name)", "type": "\(m.kind)"])
    }

    public func deleteExchange(_ m: ExchangeDelete, by session: Session) throws(BrokerError) {
        // Built-in exchanges first: the default exchange's name is empty, which is not a valid name to declare
        // but is the built-in exchange to refuse (§8.1: 403).
        if let builtIn = exchanges[m.name], builtIn.builtIn {
            let shown = m.name.isEmpty ? "the default exchange" : "the built-in exchange '\(m.name)'"
            throw BrokerError(.accessRefused, "\(shown) cannot be deleted")
        }
        try NameRules.validateName(m.name, kind: "exchange")
        guard let exchange = exchanges[m.name] else { throw BrokerError(.notFound, "no exchange '\(m.name)'") }
        try session.permissions.check(.configure, "exchange", m.name)
        if m.ifUnused && exchange.bindingCount > 0 {
            throw BrokerError(.preconditionFailed, "exchange '\(m.name)' has \(exchange.bindingCount) bindings (if-unused)")
        }
        removeExchange(exchange, by: session)
    }

    private func removeExchange(_ exchange: Exchange, by session: Session? = nil) {
        if exchange.contract != nil { census.remove(exchange: exchange.name) }
        // One pass over each bound queue's list, not one search per binding.
        for queue in exchange.boundQueues {
            queue.bindings.removeAll { $0.exchange === exchange }
        }
        for owner in exchange.bindingOwners { release(&bindingCounts, owner) }
        exchanges[exchange.name] = nil
        topologyVersion &+= 1
        if exchange.durable { recordChange(.removeExchange(exchange.name), by: session) }
    }

    // MARK: - Queues

    public func declareQueue(_ m: QueueDeclare, by session: Session) throws(BrokerError) -> QueueDeclareOk {
        var name = m.name
        if name.isEmpty {
            if m.passive { throw BrokerError(.invalidArgument, "a passive declare needs a queue name") }
            repeat { name = Self.generatedName() } while queues[name] != nil
        } else {
            try NameRules.validateName(name, kind: "queue")
        }
        if let existing = queues[name] {
            try checkAccess(existing, by: session)
            if !m.passive {
                try session.permissions.check(.configure, "queue", name)
                if existing.durable != m.durable {
                    throw BrokerError(.preconditionFailed, "queue '\(name)' exists with durable=\(existing.durable), not \(m.durable)")
                }
                if (existing.exclusiveOwner != nil) != m.exclusive {
                    throw BrokerError(.preconditionFailed, "queue '\(name)' exists with exclusive=\(existing.exclusiveOwner != nil), not \(m.exclusive)")
                }
                if existing.autoDelete != m.autoDelete {
                    throw BrokerError(.preconditionFailed, "queue '\(name)' exists with auto-delete=\(existing.autoDelete), not \(m.autoDelete)")
                }
                if try QueueArguments(m.arguments) != existing.arguments {
                    throw BrokerError(.preconditionFailed, "queue '\(name)' exists with other arguments")
                }
            }
            existing.lastUsed = now()
            return QueueDeclareOk(requestId: m.requestId, name: name, messageCount: UInt32(clamping: existing.readyCount),
                                  consumerCount: UInt32(clamping: existing.consumerCount))
        }
        if m.passive { throw BrokerError(.notFound, "no queue '\(name)'") }
        if name.hasPrefix("amq.") && !m.name.isEmpty { throw BrokerError(.accessRefused, "queue names starting with 'amq.' are reserved") }
        try session.permissions.check(.configure, "queue", name)
        if let limit = session.user.limits?.maxQueues, queueCounts[session.user.name, default: 0] >= limit {
            throw BrokerError(.resourceError, "user '\(session.user.name)' has \(limit) queues, the most it may have")
        }
        let arguments = try QueueArguments(m.arguments)
        let queue = Queue(name: name, durable: m.durable, autoDelete: m.autoDelete, exclusiveOwner: m.exclusive ? session.connectionId : nil,
                          arguments: arguments, broker: self)
        queue.owner = session.user.name
        queueCounts[session.user.name, default: 0] += 1
        queues[name] = queue
        topologyVersion &+= 1
        if m.durable && !m.exclusive && store != nil {
            // An exclusive queue ends with its connection, so it is never kept across restarts.
            guard nextQueueId < UInt32.max else {
                forgetQueue(queue)
                throw BrokerError(.resourceError, "no durable queue ids left (4,294,967,294 durable queues declared in this data directory); declare it non-durable")
            }
            queue.durableId = nextQueueId
            nextQueueId += 1
            recordChange(.putQueue(.init(name: name, id: queue.durableId ?? 0, autoDelete: m.autoDelete,
                                         arguments: arguments == QueueArguments() ? nil : arguments, owner: queue.owner)), by: session)
        }
        logger.debug("queue declared", metadata: ["queue": "\(name)"])
        return QueueDeclareOk(requestId: m.requestId, name: name, messageCount: 0, consumerCount: 0)
    }

    /// The queue behind RabbitMQ's direct reply-to (a consumer on `amq.rabbitmq.reply-to`, AMQP): server-named
    /// under the prefix RabbitMQ gives it, exclusive to the session's connection, removed with its consumer. A
    /// reply published to the default exchange with its name as routing key reaches the caller, from either
    /// protocol. brokerd emulates the pseudo-queue with a real queue; docs/amqp.md says what differs.
    public func declareDirectReplyQueue(by session: Session) -> String {
        var name: String
        repeat { name = Self.directReplyPrefix + Self.generatedName().dropFirst(8) } while queues[name] != nil
        let queue = Queue(name: name, durable: false, autoDelete: true, exclusiveOwner: session.connectionId, broker: self)
        queue.owner = session.user.name
        queueCounts[session.user.name, default: 0] += 1
        queues[name] = queue
        topologyVersion &+= 1
        return name
    }

    /// The names of direct reply-to queues start with this.
    public static let directReplyPrefix = "amq.rabbitmq.reply-to."

    static func generatedName() -> String {
        let alphabet = Array("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
        var generator = SystemRandomNumberGenerator()
        return "amq.gen-" + String((0..<22).map { _ in alphabet[Int.random(in: 0..<alphabet.count, using: &generator)] })
    }

    private func checkAccess(_ queue: Queue, by session: Session) throws(BrokerError) {
        if let owner = queue.exclusiveOwner, owner != session.connectionId {
            throw BrokerError(.resourceLocked, "queue '\(queue.name)' is exclusive to another connection")
        }
    }

    /// The named queue, if it exists and this session may use it.
    func accessibleQueue(_ name: String, by session: Session) throws(BrokerError) -> Queue {
        try NameRules.validateName(name, kind: "queue")
        guard let queue = queues[name] else { throw BrokerError(.notFound, "no queue '\(name)'") }
        try checkAccess(queue, by: session)
        queue.lastUsed = now()
        return queue
    }

    /// Undoes a declare that could not be completed.
    private func forgetQueue(_ queue: Queue) {
        queues[queue.name] = nil
        if let owner = queue.owner { release(&queueCounts, owner) }
    }

    public func deleteQueue(_ m: QueueDelete, by session: Session) throws(BrokerError) -> Int {
        let queue = try accessibleQueue(m.name, by: session)
        try session.permissions.check(.configure, "queue", queue.name)
        if m.ifUnused && queue.consumerCount > 0 {
            throw BrokerError(.preconditionFailed, "queue '\(m.name)' has \(queue.consumerCount) consumers (if-unused)")
        }
        if m.ifEmpty && queue.readyCount > 0 {
            throw BrokerError(.preconditionFailed, "queue '\(m.name)' has \(queue.readyCount) messages (if-empty)")
        }
        let count = queue.readyCount
        removeQueue(queue, reason: "queue '\(m.name)' was deleted", by: session)
        return count
    }

    /// Deletes a queue: its consumers are told, its bindings removed, its ready messages dropped. Deliveries still
    /// unacknowledged stay with their sessions; requeueing them later drops them.
    func removeQueue(_ queue: Queue, reason: String, by session: Session? = nil) {
        guard !queue.isDeleted else { return }
        queue.isDeleted = true
        queues[queue.name] = nil
        if let owner = queue.owner { release(&queueCounts, owner) }
        topologyVersion &+= 1
        let consumers = queue.consumers
        queue.consumers.removeAll()
        for consumer in consumers { consumer.session.consumerCancelledByBroker(consumer, reason: reason) }
        // Routing skips a deleted queue from here on; its bindings are taken out of their exchanges a chunk per
        // event-loop turn, so a queue with 100,000 bindings does not hold up every other connection meanwhile.
        let bindings = queue.bindings.map { (exchange: $0.exchange, key: $0.key) }  // strong: an exchange may go meanwhile
        queue.bindings = []
        detachBindings(of: queue, bindings[...], by: session)
        _ = queue.purge(store: store)
        if queue.durableId != nil { recordChange(.removeQueue(queue.name), by: session) }
        logger.debug("queue deleted", metadata: ["queue": "\(queue.name)", "reason": "\(reason)"])
    }

    /// Binds `keys` from `exchange` to `queue` directly, without sessions or checks (tests of very many bindings).
    public func bindForTest(queue: String, exchange: String, keys: [String]) -> Int {
        guard let q = queues[queue], let e = exchanges[exchange] else { return 0 }
        topologyVersion &+= 1
        return keys.filter { e.bind(q, key: $0) }.count
    }

    /// Bindings an exchange has now, those still leaving with a deleted queue included.
    public func bindingCount(of exchange: String) -> Int? { exchanges[exchange]?.bindingCount }

    /// Bindings taken out of their exchanges per event-loop turn when a queue is deleted.
    public static let bindingsDetachedPerTurn = 5_000

    private func detachBindings(of queue: Queue, _ remaining: ArraySlice<(exchange: Exchange, key: String)>, by session: Session?) {
        for (exchange, key) in remaining.prefix(Self.bindingsDetachedPerTurn) {
            if case .removed(let owner?) = exchange.detach(queue, key: key) { release(&bindingCounts, owner) }
            if exchange.shouldAutoDelete && exchanges[exchange.name] === exchange { removeExchange(exchange, by: session) }
        }
        let rest = remaining.dropFirst(Self.bindingsDetachedPerTurn)
        guard !rest.isEmpty else { return }
        guard let eventLoop else { return detachBindings(of: queue, rest, by: session) }  // no loop (embedded, tests): at once
        let bound = NIOLoopBound(self, eventLoop: eventLoop)
        let pending = Array(rest)
        eventLoop.execute { bound.value.detachBindings(of: queue, pending[...], by: nil) }
    }

    public func purgeQueue(_ name: String, by session: Session) throws(BrokerError) -> Int {
        let queue = try accessibleQueue(name, by: session)
        try session.permissions.check(.read, "queue", queue.name)
        return queue.purge(store: store)
    }

    /// Counts one fewer for `user` in a per-user count.
    func release(_ counts: inout [String: Int], _ user: String) {
        let left = (counts[user] ?? 1) - 1
        counts[user] = left > 0 ? left : nil
    }

    /// Consumers of every connection of `user`, for its `maxConsumers` limit.
    func consumerCount(of user: String) -> Int {
        sessions.values.reduce(0) { $0 + ($1.user.name == user ? $1.consumerCount : 0) }
    }

    // MARK: - Bindings

    public func bind(_ m: QueueBinding, by session: Session) throws(BrokerError) {
        let (exchange, queue) = try bindingTargets(m, by: session)
        if !m.arguments.isEmpty {
            throw BrokerError(.invalidArgument, "binding arguments are not supported: \(m.arguments.keys.sorted().joined(separator: ", "))")
        }
        if let limit = session.user.limits?.maxBindings, bindingCounts[session.user.name, default: 0] >= limit,
           !exchange.isBound(queue, key: m.bindingKey) {
            throw BrokerError(.resourceError, "user '\(session.user.name)' has \(limit) bindings, the most it may have")
        }
        if exchange.bind(queue, key: m.bindingKey, owner: session.user.name) {
            bindingCounts[session.user.name, default: 0] += 1
            topologyVersion &+= 1
            if exchange.durable && queue.durableId != nil {
                recordChange(.putBinding(.init(exchange: exchange.name, queue: queue.name, key: m.bindingKey, owner: session.user.name)), by: session)
            }
        }
    }

    public func unbind(_ m: QueueBinding, by session: Session) throws(BrokerError) {
        let (exchange, queue) = try bindingTargets(m, by: session)
        if case .removed(let owner) = exchange.unbind(queue, key: m.bindingKey) {
            if let owner { release(&bindingCounts, owner) }
            topologyVersion &+= 1
            if exchange.durable && queue.durableId != nil {
                recordChange(.removeBinding(.init(exchange: exchange.name, queue: queue.name, key: m.bindingKey)), by: session)
            }
        }
        if exchange.shouldAutoDelete { removeExchange(exchange, by: session) }
    }

    private func bindingTargets(_ m: QueueBinding, by session: Session) throws(BrokerError) -> (Exchange, Queue) {
        if m.exchange.isEmpty { throw BrokerError(.accessRefused, "the default exchange routes by queue name; it takes no bindings") }
        try NameRules.validateName(m.exchange, kind: "exchange")
        try NameRules.validateKey(m.bindingKey, kind: "binding key")
        let queue = try accessibleQueue(m.queue, by: session)
        guard let exchange = exchanges[m.exchange] else { throw BrokerError(.notFound, "no exchange '\(m.exchange)'") }
        // As RabbitMQ: a binding writes into the queue and reads from the exchange.
        try session.permissions.check(.write, "queue", queue.name)
        try session.permissions.check(.read, "exchange", exchange.name)
        return (exchange, queue)
    }

    // MARK: - Routing

    enum RouteOutcome {
        /// Routed; `logged` when the message went into the log and its confirm must wait for the write.
        case routed(logged: Bool)
        /// A queue at its length limit with `reject-publish` refused it (others may have taken it).
        case rejected(BrokerError)
        case unroutable
        case failed(BrokerError)
    }

    /// A session's last route: valid while the topology version is unchanged. On a hit a publish costs no string,
    /// no UTF-8 check, no dictionary lookup and no topic match: its names are compared byte for byte.
    struct RouteCache {
        var names: [UInt8]
        var version: UInt64
        var queues: [Queue]
        /// The exchange's contract: nil (the common case) costs one check per publish.
        var contract: ContractState?
    }

    /// Routes a publish. Permission to write to the exchange is checked when the route is computed: a cache hit
    /// means the same exchange under the same topology (a permission change bumps the topology version).
    func route(_ publish: PublishView, cache: inout RouteCache?, permissions: PermissionChecker? = nil,
               publisher: Session? = nil) -> RouteOutcome {
        let destinations: [Queue]
        let contract: ContractState?
        if let cached = cache, cached.version == topologyVersion, publish.envelope.namesEqual(cached.names) {
            destinations = cached.queues
            contract = cached.contract
        } else {
            let exchangeName: String
            let routingKey: String
            do {
                (exchangeName, routingKey) = try publish.envelope.names()
            } catch {
                return .failed(error)
            }
            guard let exchange = exchanges[exchangeName] else {
                return .failed(BrokerError(.notFound, "no exchange '\(exchangeName)'"))
            }
            if let refusal = permissions?.refusal(.write, "exchange", exchangeName) { return .failed(refusal) }
            var found: [Queue] = []
            if exchangeName.isEmpty {
                if let queue = queues[routingKey] { found.append(queue) }
            } else {
                exchange.route(routingKey) { if !$0.isDeleted { found.append($0) } }  // a deleted queue's bindings may still be leaving
            }
            destinations = found
            contract = exchange.contract
            cache = RouteCache(names: publish.envelope.nameBytes, version: topologyVersion, queues: found, contract: contract)
        }
        // A contract is checked before routing: a refused message reaches no queue (docs/contracts.md). Messages
        // republished by the broker itself (dead letters) pass no publisher and were checked when first published.
        if let contract, publisher != nil, let refusal = checkContract(contract, publish, by: publisher) { return .failed(refusal) }
        guard !destinations.isEmpty else { return .unroutable }
        var message = QueuedMessage(envelope: publish.envelope)
        var refusedBy: Queue?
        guard let store, publish.envelope.isPersistent else {
            for queue in destinations where !queue.enqueue(message) { refusedBy = queue }
            return refusedBy.map { .rejected(Self.full($0)) } ?? .routed(logged: false)
        }
        // A persistent message is written once, whatever the number of durable queues it reaches.
        var durableIds: [UInt32] = []
        for queue in destinations { if let id = queue.durableId { durableIds.append(id) } }
        guard !durableIds.isEmpty else {
            for queue in destinations where !queue.enqueue(message) { refusedBy = queue }
            return refusedBy.map { .rejected(Self.full($0)) } ?? .routed(logged: false)
        }
        let record = store.appendPublish(envelope: publish.envelope.bytes, queues: durableIds)
        for queue in destinations {
            let durable = queue.durableId != nil
            message.logId = durable ? record.id : 0
            message.stored = durable ? record : .none  // only durable queues keep the record alive
            if !queue.enqueue(message) {
                refusedBy = queue
                if let id = queue.durableId { store.appendSettle(id: record.id, queue: id) }
            }
        }
        return refusedBy.map { .rejected(Self.full($0)) } ?? .routed(logged: true)
    }

    static func full(_ queue: Queue) -> BrokerError {
        BrokerError(.resourceError, "queue '\(queue.name)' is full (x-max-length / x-max-length-bytes, x-overflow \(queue.arguments.overflow.rawValue))")
    }

    // MARK: - Dead letters, expiry

    /// A message leaves `queue` for good (expired, dropped for length, rejected, past its delivery limit): the log
    /// records that, and when the queue has a dead-letter exchange the message is republished there with an
    /// `x-death` header saying where it died and why.
    func deadLetter(_ message: QueuedMessage, from queue: Queue, reason: String) {
        if message.logId != 0, let store, let id = queue.durableId { store.appendSettle(id: message.logId, queue: id) }
        guard let exchangeName = queue.arguments.deadLetterExchange, !queue.isDeleted || reason == "rejected" else { return }
        guard let (originalExchange, originalKey) = try? message.envelope.names(),
              var properties = try? message.envelope.properties.decode() else { return }
        var headers = properties.headers ?? [:]
        var deaths: [FieldValue] = []
        if case .array(let existing)? = headers["x-death"] { deaths = existing }
        if let index = deaths.firstIndex(where: {
            guard case .table(let t) = $0 else { return false }
            return t["queue"] == .string(queue.name) && t["reason"] == .string(reason)
        }) {
            // A second automatic death in the same queue is a cycle with no consumer in it: drop it. As in
            // RabbitMQ, a cycle that a rejection is part of goes on (a consumer chose to send the message round:
            // the retry-later pattern of a work queue dead-lettering into a TTL queue that dead-letters back).
            let consumerInCycle = deaths.contains { if case .table(let t) = $0 { t["reason"] == .string("rejected") } else { false } }
            if reason != "rejected" && !consumerInCycle { return }
            if case .table(var entry) = deaths[index] {
                entry["count"] = .int((entry["count"]?.intValue ?? 1) + 1)
                entry["time"] = .int(Int64(Date().timeIntervalSince1970))
                deaths.remove(at: index)
                deaths.insert(.table(entry), at: 0)
            }
        } else {
            deaths.insert(.table([
                "queue": .string(queue.name), "reason": .string(reason), "count": .int(1),
                "time": .int(Int64(Date().timeIntervalSince1970)), "exchange": .string(originalExchange),
                "routing-keys": .array([.string(originalKey)]),
            ]), at: 0)
        }
        headers["x-death"] = .array(deaths)
        if headers["x-first-death-reason"] == nil {
            headers["x-first-death-reason"] = .string(reason)
            headers["x-first-death-queue"] = .string(queue.name)
            headers["x-first-death-exchange"] = .string(originalExchange)
        }
        properties.headers = headers
        properties.expiration = nil  // it would expire again in the dead-letter queue
        guard let raw = try? RawProperties(validating: properties) else { return }
        let envelope = MessageEnvelope(exchange: exchangeName, routingKey: queue.arguments.deadLetterRoutingKey ?? originalKey,
                                       properties: raw, body: message.envelope.body)
        var cache: RouteCache?
        if case .failed(let error) = route(PublishView(mandatory: false, envelope: envelope), cache: &cache) {
            logger.debug("dead letter dropped", metadata: ["queue": "\(queue.name)", "error": "\(error)"])
        }
    }

    /// Periodic work (the server runs it every 100 ms): expired messages leave their queues without waiting for a
    /// consumer, and queues unused for their `x-expires` are deleted.
    public func sweep() {
        checkMemory()
        sampleRates()
        let time = now()
        for queue in Array(queues.values) where !queue.isDeleted {
            if queue.arguments.messageTTL != nil || queue.messagesWithOwnExpiry > 0 { queue.expireAll(now: time) }
            if let expires = queue.arguments.expires, queue.consumers.isEmpty, time &- queue.lastUsed > UInt64(0).saturatingAdd(milliseconds: expires) {
                removeQueue(queue, reason: "queue unused for its x-expires of \(expires) ms")
            }
        }
        flush()
    }

    // MARK: - Inspection

    /// Broker-wide figures for the management `status` method.
    public func status() -> FieldTable {
        var ready = 0
        var unacked = 0
        var consumers = 0
        for queue in queues.values {
            ready += queue.readyCount
            unacked += queue.unackedCount
            consumers += queue.consumerCount
        }
        let uptime = ContinuousClock.now - startedAt
        var status: FieldTable = [
            "version": .string(Self.version),
            "uptime_ms": .int(uptime.components.seconds * 1000 + uptime.components.attoseconds / 1_000_000_000_000_000),
            "connections": .int(Int64(sessions.count)),
            "exchanges": .int(Int64(exchanges.count)),
            "queues": .int(Int64(queues.count)),
            "consumers": .int(Int64(consumers)),
            "messages_ready": .int(Int64(ready)),
            "messages_unacked": .int(Int64(unacked)),
            "messages_paged": .int(Int64(queues.values.reduce(0) { $0 + $1.pagedCount })),
            "memory_used": .int(Int64(bufferedBytes)),
            "memory_limit": .int(Int64(memoryLimit)),
            "alarms": .array(AlarmSource.allCases.compactMap { alarms[$0] }.map { .string($0) }),
            "persistent": .bool(persists),
        ]
        status.merge(serverInfo) { own, _ in own }
        if let diskFree { status["disk_free"] = .int(Int64(clamping: diskFree)) }
        return status
    }

    /// Ready and unacknowledged counts of a queue (nil if it does not exist), for tests and tools.
    public func queueInfo(_ name: String) -> (ready: Int, unacked: Int, consumers: Int)? {
        queues[name].map { ($0.readyCount, $0.unackedCount, $0.consumerCount) }
    }

    public func exchangeExists(_ name: String) -> Bool { exchanges[name] != nil }

    /// A queue by name, to read its counters (on the broker's loop).
    public func queue(named name: String) -> Queue? { queues[name] }
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
