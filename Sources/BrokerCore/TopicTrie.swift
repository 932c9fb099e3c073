/// Topic bindings as a trie over the pattern's words, so that routing costs O(words × matching nodes) instead of
/// a scan of every binding (90,000 bindings cost 7.3 ms per publish as a list), and binding or unbinding costs
/// O(words).
///
/// Matching runs the trie as a non-deterministic automaton, a set of active nodes per word of the routing key: a
/// `#` node stays active while it swallows words, `*` and literal children advance. Each node enters the set of a
/// step at most once (marked with the step's number), so no pattern, however many `#` it has, can make one
/// publish cost more than nodes × words: a user who may bind cannot stall the event loop with a pathological
/// pattern. Consecutive `#` words are folded into one at bind time (`#.#` matches what `#` matches).
///
/// Owned by its exchange, on the broker's event loop.
final class TopicTrie {
    final class Node {
        var children: [Substring: Node] = [:]
        var star: Node?
        var hash: Node?
        /// Whether this node was reached through a `#` (it may swallow more words).
        let isHash: Bool
        /// Queues bound with the pattern that ends here, each once.
        var queues: [Queue] = []
        /// Further bindings of a queue already in ``queues`` with another key that folds to this node
        /// (`a.#` and `a.#.#`), so unbinding one of them leaves the queue bound.
        var folded: [ObjectIdentifier: Int] = [:]
        /// The step of the current match this node was last added at.
        var mark = 0
        weak var parent: Node?
        let word: Substring

        init(parent: Node?, word: Substring) {
            self.parent = parent
            self.word = word
            self.isHash = word == "#"
        }

        var isEmpty: Bool { queues.isEmpty && children.isEmpty && star == nil && hash == nil }
    }

    private let root = Node(parent: nil, word: "")
    private var step = 0
    private var active: [Node] = []
    private var next: [Node] = []

    /// The words of a pattern as the trie stores it: split on `.`, runs of `#` folded into one.
    static func words(_ pattern: String) -> [Substring] {
        var words: [Substring] = []
        for word in pattern.split(separator: ".", omittingEmptySubsequences: false) {
            if word == "#" && words.last == "#" { continue }
            words.append(word)
        }
        return words
    }

    /// Adds a binding of `queue` with `pattern`. The exchange calls it once per distinct (queue, key).
    func insert(_ pattern: String, _ queue: Queue) {
        var node = root
        for word in Self.words(pattern) {
            node = child(of: node, word)
        }
        if node.queues.contains(where: { $0 === queue }) {
            node.folded[ObjectIdentifier(queue), default: 0] += 1
        } else {
            node.queues.append(queue)
        }
    }

    /// Removes a binding of `queue` with `pattern`, pruning nodes left empty.
    func remove(_ pattern: String, _ queue: Queue) {
        var node = root
        for word in Self.words(pattern) {
            guard let next = existingChild(of: node, word) else { return }
            node = next
        }
        let id = ObjectIdentifier(queue)
        if let extra = node.folded[id] {
            node.folded[id] = extra > 1 ? extra - 1 : nil
            return
        }
        node.queues.removeAll { $0 === queue }
        // Prune upwards while nodes hold nothing.
        while node.isEmpty, let parent = node.parent {
            switch node.word {
            case "*": parent.star = nil
            case "#": parent.hash = nil
            default: parent.children[node.word] = nil
            }
            node = parent
        }
    }

    /// Calls `body` for each node whose pattern matches `routingKey` (a queue may be under several).
    func match(_ routingKey: String, _ body: (Node) -> Void) {
        active.removeAll(keepingCapacity: true)
        step &+= 1
        enter(root)
        for word in routingKey.split(separator: ".", omittingEmptySubsequences: false) {
            step &+= 1
            next.removeAll(keepingCapacity: true)
            swap(&active, &next)
            // `next` now holds the previous step's nodes.
            for node in next {
                if node.isHash { enter(node) }  // `#` swallows this word too
                if let child = node.children[word] { enter(child) }
                if let star = node.star { enter(star) }
            }
            if active.isEmpty { return }
        }
        for node in active where !node.queues.isEmpty { body(node) }
    }

    /// Adds a node to the current step's set, with the `#` child it implies (`#` may match zero words).
    private func enter(_ node: Node) {
        var current: Node? = node
        while let n = current, n.mark != step {
            n.mark = step
            active.append(n)
            current = n.hash
        }
    }

    private func child(of node: Node, _ word: Substring) -> Node {
        if let existing = existingChild(of: node, word) { return existing }
        let created = Node(parent: node, word: word)
        switch word {
        case "*": node.star = created
        case "#": node.hash = created
        default: node.children[word] = created
        }
        return created
    }

    private func existingChild(of node: Node, _ word: Substring) -> Node? {
        switch word {
        case "*": node.star
        case "#": node.hash
        default: node.children[word]
        }
    }
}
