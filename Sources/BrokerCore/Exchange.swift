public import WireProtocol

/// An exchange and its bindings. Owned by the broker's event loop, like everything in ``Broker``.
public final class Exchange {
    public let name: String
    public let kind: ExchangeKind
    public let durable: Bool
    public let autoDelete: Bool
    /// The default exchange and `amq.*` exchanges cannot be deleted or redeclared differently.
    public let builtIn: Bool
    /// The message contract (docs/contracts.md), or nil: then any message is routed without a look at its type.
    var contract: ContractState?

    /// Every binding, by (queue, key), with the user that made it: existence checks in O(1), listings, the count,
    /// per-user limits.
    private var members: [BindingID: (queue: Queue, owner: String?)] = [:]
    /// direct: binding key → queues bound with it (each once).
    private var direct: [String: [Queue]] = [:]
    /// fanout: every bound queue once, in binding order, and how many keys bind it.
    private var fanout: [Queue] = []
    private var fanoutKeys: [ObjectIdentifier: Int] = [:]
    /// topic: the patterns as a trie.
    private let topic = TopicTrie()
    private var everBound = false

    /// A binding's identity: the queue and the exact key.
    struct BindingID: Hashable {
        let queue: ObjectIdentifier
        let key: String
    }

    public var bindingCount: Int { members.count }

    /// The names of the queues bound to it (for the census and contract changes, not the hot path).
    var boundQueueNames: Set<String> { Set(members.values.map(\.queue.name)) }

    init(name: String, kind: ExchangeKind, durable: Bool, autoDelete: Bool, builtIn: Bool = false) {
        self.name = name
        self.kind = kind
        self.durable = durable
        self.autoDelete = autoDelete
        self.builtIn = builtIn
    }

    /// What removing a binding did.
    enum Removal: Equatable {
        case absent
        /// Removed; the user that had made it, if known.
        case removed(String?)
    }

    func isBound(_ queue: Queue, key: String) -> Bool {
        members[BindingID(queue: ObjectIdentifier(queue), key: key)] != nil
    }

    /// Adds a binding; false if it already existed. O(1) but for direct keys bound by many queues.
    @discardableResult
    func bind(_ queue: Queue, key: String, owner: String? = nil) -> Bool {
        let id = BindingID(queue: ObjectIdentifier(queue), key: key)
        guard members[id] == nil else { return false }
        members[id] = (queue, owner)
        attach(queue, key: key)
        queue.bindings.append(Binding(exchange: self, key: key))
        everBound = true
        return true
    }

    /// Removes a binding.
    @discardableResult
    func unbind(_ queue: Queue, key: String) -> Removal {
        let removal = detach(queue, key: key)
        guard removal != .absent else { return removal }
        if let index = queue.bindings.firstIndex(where: { $0.exchange === self && $0.key == key }) {
            queue.bindings.remove(at: index)
        }
        return removal
    }

    /// Removes a binding from the exchange's side only: the caller clears the queue's own list in one pass (a
    /// queue being deleted with 100,000 bindings must not search that list once per binding).
    @discardableResult
    func detach(_ queue: Queue, key: String) -> Removal {
        guard let removed = members.removeValue(forKey: BindingID(queue: ObjectIdentifier(queue), key: key)) else { return .absent }
        switch kind {
        case .direct:
            direct[key]?.removeAll(where: { $0 === queue })
            if direct[key]?.isEmpty == true { direct[key] = nil }
        case .fanout:
            let id = ObjectIdentifier(queue)
            let left = (fanoutKeys[id] ?? 1) - 1
            fanoutKeys[id] = left > 0 ? left : nil
            if left <= 0 { fanout.removeAll(where: { $0 === queue }) }
        case .topic:
            topic.remove(key, queue)
        }
        return .removed(removed.owner)
    }

    private func attach(_ queue: Queue, key: String) {
        switch kind {
        case .direct:
            direct[key, default: []].append(queue)
        case .fanout:
            // A fanout exchange ignores keys, but a binding is still identified by (queue, key).
            let id = ObjectIdentifier(queue)
            if fanoutKeys[id] == nil { fanout.append(queue) }
            fanoutKeys[id, default: 0] += 1
        case .topic:
            topic.insert(key, queue)
        }
    }

    /// Whether an auto-delete exchange has lost its last binding.
    var shouldAutoDelete: Bool { autoDelete && everBound && members.isEmpty }

    /// Calls `body` once for each queue the routing key reaches.
    func route(_ routingKey: String, _ body: (Queue) -> Void) {
        switch kind {
        case .direct:
            if let queues = direct[routingKey] { for q in queues { body(q) } }
        case .fanout:
            for q in fanout { body(q) }
        case .topic:
            routeTopic(routingKey, body)
        }
    }

    func routeTopic(_ routingKey: String, _ body: (Queue) -> Void) {
        var first: TopicTrie.Node?
        var seen: Set<ObjectIdentifier>?
        topic.match(routingKey) { node in
            // One matching pattern (the usual case) lists each queue once; with several, a queue bound by more
            // than one of them still gets the message once.
            guard let earlier = first else {
                first = node
                for queue in node.queues { body(queue) }
                return
            }
            var delivered = seen ?? Set(earlier.queues.map(ObjectIdentifier.init))
            for queue in node.queues where delivered.insert(ObjectIdentifier(queue)).inserted { body(queue) }
            seen = delivered
        }
    }

    /// The distinct queues bound to this exchange (for its deletion).
    var boundQueues: [Queue] {
        var seen = Set<ObjectIdentifier>()
        return members.values.map(\.queue).filter { seen.insert(ObjectIdentifier($0)).inserted }
    }

    /// The user of each binding whose maker is known, once per binding (for per-user counts at deletion).
    var bindingOwners: [String] { members.values.compactMap(\.owner) }

    /// (queue, key, owner) triples, for listings and the saved definitions.
    var ownedBindings: [(queue: Queue, key: String, owner: String?)] {
        members.map { id, member in (member.queue, id.key, member.owner) }
    }
}

/// A queue's record of one of its bindings.
struct Binding {
    unowned let exchange: Exchange
    let key: String
}

/// Topic matching: words split by `.`; `*` matches exactly one word, `#` zero or more.
public enum TopicPattern {
    public static func matches(pattern: String, routingKey: String) -> Bool {
        matches(pattern.split(separator: ".", omittingEmptySubsequences: false),
                routingKey.split(separator: ".", omittingEmptySubsequences: false))
    }

    /// Iterative matcher with backtracking to the last `#` (linear in practice, no recursion).
    static func matches(_ pattern: [Substring], _ key: [Substring]) -> Bool {
        var p = 0
        var k = 0
        var starP = -1  // index of the last `#` seen
        var starK = 0  // key index that `#` was matched up to
        while k < key.count {
            if p < pattern.count && pattern[p] == "#" {
                starP = p
                starK = k
                p += 1
            } else if p < pattern.count && (pattern[p] == "*" || pattern[p] == key[k]) {
                p += 1
                k += 1
            } else if starP >= 0 {
                // Let the last `#` swallow one more word and retry.
                p = starP + 1
                starK += 1
                k = starK
            } else {
                return false
            }
        }
        while p < pattern.count && pattern[p] == "#" { p += 1 }
        return p == pattern.count
    }
}
