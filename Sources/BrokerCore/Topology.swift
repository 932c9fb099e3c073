public import Logging
public import WireProtocol
import BrokerStorage
import Foundation
import NIOCore

// The broker's topology: exchanges, queues and the bindings between them (declare, delete, bind, purge).
extension Broker {
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
}
