import NIOCore
import BrokerStorage
public import WireProtocol
import DequeModule

/// A message as a queue holds it: its envelope (names, properties and body as one slice of the bytes it was
/// published in) and whether it was delivered before. No class is allocated per message, and a message fanned out
/// to several queues shares its bytes.
public struct QueuedMessage: Sendable {
    public var envelope: MessageEnvelope
    public var redelivered: Bool
    /// Its id in the message log when it is persistent and this queue is durable; 0 otherwise.
    public var logId: UInt64

    public init(envelope: MessageEnvelope, redelivered: Bool = false, logId: UInt64 = 0) {
        self.envelope = envelope
        self.redelivered = redelivered
        self.logId = logId
    }
}

/// A queue: ready messages in order, its consumers in round-robin order, and its bindings.
public final class Queue {
    public let name: String
    public let durable: Bool
    public let autoDelete: Bool
    /// The connection that owns an exclusive queue.
    public let exclusiveOwner: UInt64?
    /// The queue's number in the message log, when it is durable and the broker persists.
    public internal(set) var durableId: UInt32?

    var messages = Deque<QueuedMessage>()
    var consumers: [Consumer] = []
    var nextConsumer = 0
    var everConsumed = false
    var bindings: [Binding] = []
    /// Deliveries of this queue's messages not yet settled, across all sessions.
    public internal(set) var unackedCount = 0
    public internal(set) var isDeleted = false

    // Counters for status and listings.
    public internal(set) var publishedCount: UInt64 = 0
    public internal(set) var deliveredCount: UInt64 = 0

    init(name: String, durable: Bool, autoDelete: Bool, exclusiveOwner: UInt64?) {
        self.name = name
        self.durable = durable
        self.autoDelete = autoDelete
        self.exclusiveOwner = exclusiveOwner
    }

    public var readyCount: Int { messages.count }
    public var consumerCount: Int { consumers.count }
    var hasExclusiveConsumer: Bool { consumers.contains(where: \.exclusive) }

    /// An auto-delete queue goes when its last consumer does (having had one).
    var shouldAutoDelete: Bool { autoDelete && everConsumed && consumers.isEmpty }

    /// The next consumer able to take a message, in round-robin order.
    func nextConsumerWithCredit() -> Consumer? {
        let count = consumers.count
        guard count > 0 else { return nil }
        var index = nextConsumer < count ? nextConsumer : 0
        for _ in 0..<count {
            let consumer = consumers[index]
            index += 1
            if index == count { index = 0 }
            if consumer.hasCredit {
                nextConsumer = index
                return consumer
            }
        }
        return nil
    }

    /// Takes a new message: straight to a consumer when the queue is empty and one has credit, else to the tail.
    /// Invariant: after every call to `enqueue` or ``dispatch()``, either no message is ready or no consumer has
    /// credit, so a non-empty queue never needs to look for a consumer here.
    func enqueue(_ message: QueuedMessage) {
        publishedCount &+= 1
        if messages.isEmpty, let consumer = nextConsumerWithCredit() {
            deliveredCount &+= 1
            consumer.session.deliver(message, to: consumer, from: self)
        } else {
            messages.append(message)
        }
    }

    /// Puts settled-with-requeue messages back at the head, in their original order, marked redelivered.
    func requeueAtHead(_ returned: [QueuedMessage], store: MessageStore?) {
        guard !isDeleted else {
            if let store, let durableId {
                for message in returned where message.logId != 0 { store.appendSettle(id: message.logId, queue: durableId) }
            }
            return
        }
        for var message in returned.reversed() {
            message.redelivered = true
            messages.prepend(message)
        }
    }

    /// Delivers ready messages while some consumer has credit.
    func dispatch() {
        while !messages.isEmpty, let consumer = nextConsumerWithCredit() {
            let message = messages.removeFirst()
            deliveredCount &+= 1
            consumer.session.deliver(message, to: consumer, from: self)
        }
    }

    /// Removes and returns the message at the head (for `get`).
    func dequeue() -> QueuedMessage? {
        guard let message = messages.popFirst() else { return nil }
        deliveredCount &+= 1
        return message
    }

    /// Drops every ready message (recording that in the log); unacknowledged ones stay with their consumers.
    func purge(store: MessageStore?) -> Int {
        let count = messages.count
        if let store, let durableId {
            for message in messages where message.logId != 0 { store.appendSettle(id: message.logId, queue: durableId) }
        }
        messages.removeAll()
        return count
    }
}

/// A consumer: a session's subscription to one queue.
final class Consumer {
    public let tag: UInt32
    unowned let session: Session
    unowned let queue: Queue
    let noAck: Bool
    let exclusive: Bool
    /// 0 = unlimited.
    let prefetch: Int
    var unacked = 0

    init(tag: UInt32, session: Session, queue: Queue, noAck: Bool, exclusive: Bool, prefetch: Int) {
        self.tag = tag
        self.session = session
        self.queue = queue
        self.noAck = noAck
        self.exclusive = exclusive
        self.prefetch = prefetch
    }

    /// Whether a message may be sent now: within prefetch and the connection is not pushing back.
    var hasCredit: Bool {
        (noAck || prefetch == 0 || unacked < prefetch) && session.canDeliver
    }
}
