import BrokerCore
import NIOCore
import Testing
import WireProtocol

/// Topic routing through the trie agrees with the reference matcher (``TopicPattern``) on every pattern and key,
/// through binds, unbinds and queue deletions.
@Suite("Topic routing trie")
struct TopicTrieTests {
    /// A small deterministic generator (xorshift), so a failure reproduces.
    struct Generator {
        var state: UInt64
        mutating func next(_ bound: Int) -> Int {
            state ^= state << 13
            state ^= state >> 7
            state ^= state << 17
            return Int(state % UInt64(bound))
        }
    }

    static let words = ["a", "b", "c", "trip", "eu"]

    static func pattern(_ g: inout Generator) -> String {
        let count = 1 + g.next(5)
        return (0..<count).map { _ in
            switch g.next(7) {
            case 0: "#"
            case 1: "*"
            default: words[g.next(words.count)]
            }
        }.joined(separator: ".")
    }

    static func key(_ g: inout Generator) -> String {
        let count = g.next(6)  // 0 words: the empty key
        return (0..<count).map { _ in words[g.next(words.count)] }.joined(separator: ".")
    }

    @Test("random patterns and keys: each queue gets a message exactly when one of its patterns matches", arguments: [1, 2, 3])
    func agreesWithReference(seed: UInt64) throws {
        var g = Generator(state: 0x9E37_79B9_7F4A_7C15 &* seed)
        let harness = Harness()
        let (session, _) = harness.connect()
        try harness.send(session, .exchangeDeclare(ExchangeDeclare(requestId: 1, name: "t", kind: .topic)))
        var patterns: [String: Set<String>] = [:]
        for q in 0..<40 {
            let name = "q\(q)"
            try harness.declare(session, queue: name)
            for _ in 0..<(1 + g.next(4)) {
                let p = Self.pattern(&g)
                patterns[name, default: []].insert(p)
                try harness.send(session, .queueBind(QueueBinding(requestId: 1, queue: name, exchange: "t", bindingKey: p)))
            }
        }
        func check(rounds: Int) throws {
            for _ in 0..<rounds {
                let key = Self.key(&g)
                let before = patterns.keys.map { (name: $0, ready: harness.broker.queueInfo($0)?.ready ?? -1) }
                try harness.publish(session, exchange: "t", key: key, "m")
                for (name, ready) in before {
                    let expected = patterns[name, default: []].contains { TopicPattern.matches(pattern: $0, routingKey: key) } ? 1 : 0
                    let got = (harness.broker.queueInfo(name)?.ready ?? -1) - ready
                    #expect(got == expected, "key '\(key)' to \(name) bound with \(patterns[name, default: []].sorted()): got \(got)")
                }
            }
        }
        try check(rounds: 150)
        // Unbind about half the bindings, including patterns that fold to the same path (`#.#` and `#`).
        for (name, bound) in patterns {
            for p in bound where g.next(2) == 0 {
                try harness.send(session, .queueUnbind(QueueBinding(requestId: 1, queue: name, exchange: "t", bindingKey: p)))
                patterns[name]?.remove(p)
            }
        }
        try check(rounds: 150)
        // Delete some queues outright: their bindings go with them.
        for q in stride(from: 0, to: 40, by: 3) {
            try harness.send(session, .queueDelete(QueueDelete(requestId: 1, name: "q\(q)")))
            patterns["q\(q)"] = nil
        }
        try check(rounds: 150)
    }

    @Test("keys that fold to the same words are separate bindings: unbinding one keeps the other")
    func foldedPatterns() throws {
        let harness = Harness()
        let (session, _) = harness.connect()
        try harness.send(session, .exchangeDeclare(ExchangeDeclare(requestId: 1, name: "t", kind: .topic)))
        try harness.declare(session, queue: "q")
        for key in ["a.#", "a.#.#"] {
            try harness.send(session, .queueBind(QueueBinding(requestId: 1, queue: "q", exchange: "t", bindingKey: key)))
        }
        try harness.publish(session, exchange: "t", key: "a.b", "once")
        #expect(harness.broker.queueInfo("q")?.ready == 1)  // two matching bindings, one copy
        try harness.send(session, .queueUnbind(QueueBinding(requestId: 1, queue: "q", exchange: "t", bindingKey: "a.#.#")))
        try harness.publish(session, exchange: "t", key: "a", "still bound")
        #expect(harness.broker.queueInfo("q")?.ready == 2)
        try harness.send(session, .queueUnbind(QueueBinding(requestId: 1, queue: "q", exchange: "t", bindingKey: "a.#")))
        try harness.publish(session, exchange: "t", key: "a", "unbound")
        #expect(harness.broker.queueInfo("q")?.ready == 2)
    }
}

@Suite("Definitions: snapshot plus journal")
struct DefinitionReplayTests {
    @Test("replay applies only the records after the snapshot's sequence, so a crash between a compaction's snapshot and its truncation changes nothing")
    func replaySkipsIncluded() {
        var snapshot = Definitions()
        snapshot.queues = [.init(name: "kept", id: 1, autoDelete: false, arguments: nil, owner: nil)]
        snapshot.journalSequence = 2
        let records: [DefinitionChange] = [
            .init(sequence: 1, kind: .putQueue(.init(name: "kept", id: 1, autoDelete: false, arguments: nil, owner: nil))),
            .init(sequence: 2, kind: .removeQueue("gone")),
            .init(sequence: 3, kind: .putExchange(.init(name: "trips", type: "topic", autoDelete: false))),
            .init(sequence: 4, kind: .putQueue(.init(name: "new", id: 7, autoDelete: false, arguments: nil, owner: "svc"))),
            .init(sequence: 5, kind: .putBinding(.init(exchange: "trips", queue: "new", key: "trip.#", owner: "svc"))),
            .init(sequence: 6, kind: .putBinding(.init(exchange: "trips", queue: "kept", key: "#", owner: nil))),
            .init(sequence: 7, kind: .removeQueue("kept")),
        ]
        var replayed = snapshot
        for record in records { replayed.apply(record) }
        #expect(replayed.queues.map(\.name) == ["new"])
        #expect(replayed.exchanges.map(\.name) == ["trips"])
        #expect(replayed.bindings.map(\.queue) == ["new"], "the removed queue's bindings go with it")
        #expect(replayed.nextQueueId == 8 && replayed.journalSequence == 7)
        // Replaying the same journal again (the crash case) is a no-op.
        var again = replayed
        for record in records { again.apply(record) }
        #expect(again == replayed)
    }
}
