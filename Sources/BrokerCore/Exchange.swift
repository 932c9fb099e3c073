public import WireProtocol

/// An exchange and its bindings. Owned by the broker's event loop, like everything in ``Broker``.
public final class Exchange {
    public let name: String
    public let kind: ExchangeKind
    public let durable: Bool
    public let autoDelete: Bool
    /// The default exchange and `amq.*` exchanges cannot be deleted or redeclared differently.
    public let builtIn: Bool

    /// direct: binding key → queues bound with it (each once).
    private var direct: [String: [Queue]] = [:]
    /// fanout: every bound queue, once.
    private var fanout: [Queue] = []
    /// topic: one entry per (pattern, queue).
    private var topic: [TopicBinding] = []
    /// Every binding, for listing and for auto-delete.
    public private(set) var bindingCount = 0
    private var everBound = false

    init(name: String, kind: ExchangeKind, durable: Bool, autoDelete: Bool, builtIn: Bool = false) {
        self.name = name
        self.kind = kind
        self.durable = durable
        self.autoDelete = autoDelete
        self.builtIn = builtIn
    }

    /// Adds a binding; false if it already existed.
    @discardableResult
    func bind(_ queue: Queue, key: String) -> Bool {
        switch kind {
        case .direct:
            if direct[key, default: []].contains(where: { $0 === queue }) { return false }
            direct[key, default: []].append(queue)
        case .fanout:
            // A fanout exchange ignores keys, but a binding is still identified by (queue, key).
            if queue.bindings.contains(where: { $0.exchange === self && $0.key == key }) { return false }
            if !fanout.contains(where: { $0 === queue }) { fanout.append(queue) }
        case .topic:
            if topic.contains(where: { $0.queue === queue && $0.key == key }) { return false }
            topic.append(TopicBinding(key: key, queue: queue))
        }
        queue.bindings.append(Binding(exchange: self, key: key))
        bindingCount += 1
        everBound = true
        return true
    }

    /// Removes a binding; false if there was none.
    @discardableResult
    func unbind(_ queue: Queue, key: String) -> Bool {
        guard let index = queue.bindings.firstIndex(where: { $0.exchange === self && $0.key == key }) else { return false }
        queue.bindings.remove(at: index)
        switch kind {
        case .direct:
            direct[key]?.removeAll(where: { $0 === queue })
            if direct[key]?.isEmpty == true { direct[key] = nil }
        case .fanout:
            if !queue.bindings.contains(where: { $0.exchange === self }) { fanout.removeAll(where: { $0 === queue }) }
        case .topic:
            topic.removeAll(where: { $0.queue === queue && $0.key == key })
        }
        bindingCount -= 1
        return true
    }

    /// Whether an auto-delete exchange has lost its last binding.
    var shouldAutoDelete: Bool { autoDelete && everBound && bindingCount == 0 }

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
        guard !topic.isEmpty else { return }
        let words = routingKey.split(separator: ".", omittingEmptySubsequences: false)
        var delivered: [ObjectIdentifier] = []
        for binding in topic where TopicPattern.matches(binding.words, words) {
            let id = ObjectIdentifier(binding.queue)
            if delivered.contains(id) { continue }
            delivered.append(id)
            body(binding.queue)
        }
    }

    /// (queue, key) pairs, for listing.
    public var bindings: [(queue: String, key: String)] {
        switch kind {
        case .direct: direct.flatMap { key, queues in queues.map { ($0.name, key) } }
        case .fanout: fanout.flatMap { q in q.bindings.filter { $0.exchange === self }.map { (q.name, $0.key) } }
        case .topic: topic.map { ($0.queue.name, $0.key) }
        }
    }
}

/// A queue's record of one of its bindings.
struct Binding {
    unowned let exchange: Exchange
    let key: String
}

struct TopicBinding {
    let key: String
    let words: [Substring]
    let queue: Queue
    init(key: String, queue: Queue) {
        self.key = key
        self.words = key.split(separator: ".", omittingEmptySubsequences: false)
        self.queue = queue
    }
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
