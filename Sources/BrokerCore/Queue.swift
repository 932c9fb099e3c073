import NIOCore
import BrokerStorage
import Logging
public import WireProtocol
import DequeModule

/// A message as a queue holds it: its envelope (names, properties and body as one slice of the bytes it was
/// published in) and whether it was delivered before. No class is allocated per message, and a message fanned out
/// to several queues shares its bytes. Swift lays fields out in declaration order: the small ones sit together after
/// the envelope so the entry is 64 bytes (a test holds it there).
public struct QueuedMessage: Sendable {
    public var envelope: MessageEnvelope
    public var redelivered: Bool
    /// How many times it has been delivered from this queue (for the delivery limit).
    public var deliveries: UInt16 = 0
    /// Its id in the message log when it is persistent and this queue is durable; 0 otherwise.
    public var logId: UInt64
    /// When it expires, in the broker clock's nanoseconds; 0 for never.
    public var expiresAt: UInt64 = 0
    /// Where its envelope lies in the log: its own publish record (when `logId` is set) or, once paged out, a page
    /// record of this queue's. `.none` when it is in no record.
    var stored: LogLocation = .none

    public init(envelope: MessageEnvelope, redelivered: Bool = false, logId: UInt64 = 0) {
        self.envelope = envelope
        self.redelivered = redelivered
        self.logId = logId
    }

    /// Whether `stored` is a page record this queue must release (rather than the message's own publish record).
    var ownsPageRecord: Bool { !stored.isNone && stored.id != logId }

    /// What the message costs in memory, as the memory limit counts it: its bytes (none once paged out) and its
    /// entry in a queue or an unacknowledged list. Counting the entry keeps memory bounded even when every body
    /// is on disk: ten million paged messages still cost their entries.
    @inline(__always)
    var footprint: Int { envelope.bytes.readableBytes &+ MemoryLayout<QueuedMessage>.stride }
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
    public let arguments: QueueArguments
    /// Plain copies of what the hot path asks of `arguments` (reading the struct, with its strings, per message
    /// costs retains and releases).
    private let hasQueueTTL: Bool
    private let hasLengthLimit: Bool
    private let takesDirectDelivery: Bool
    private let hasByteLimit: Bool
    unowned let broker: Broker
    private let memory: MemoryCounter
    /// Bytes of ready message bodies (kept only when the queue has a byte limit).
    private(set) var readyBytes = 0
    /// Ready messages with their own expiration (they may expire out of order).
    var messagesWithOwnExpiry = 0
    /// Paged-out envelopes whose log write has not completed yet, by record id, with their log batch: they stay in
    /// memory until it has (and for good if it failed), so a message is never lost to a write that did not happen.
    private var inFlight: [UInt64: (batch: UInt64, envelope: MessageEnvelope)] = [:]
    var hasPagesInFlight: Bool { !inFlight.isEmpty }
    /// Messages of this queue currently paged out.
    public private(set) var pagedCount = 0

    /// Last time a client used the queue (declare, consume, get, cancel), for `x-expires`.
    var lastUsed: UInt64 = 0

    var messages = Deque<QueuedMessage>()
    var consumers: [QueueConsumer] = []
    var nextConsumer = 0
    var everConsumed = false
    var bindings: [Binding] = []
    /// The user that declared it (for per-user limits); nil for a queue recovered from an older data directory.
    var owner: String?
    /// Deliveries of this queue's messages not yet settled, across all sessions.
    public internal(set) var unackedCount = 0
    public internal(set) var isDeleted = false

    // Counters for status and listings.
    public internal(set) var publishedCount: UInt64 = 0
    public internal(set) var deliveredCount: UInt64 = 0
    /// Memory its ready messages take, as the memory limit counts it.
    public private(set) var memoryBytes = 0
    /// Messages per second over the last rate sample (``Broker/sampleRates()``).
    public internal(set) var publishRate = 0.0
    public internal(set) var deliverRate = 0.0
    var sampledPublished: UInt64 = 0
    var sampledDelivered: UInt64 = 0

    @inline(__always)
    private func account(_ bytes: Int) {
        memory.add(bytes)
        memoryBytes &+= bytes
    }

    init(name: String, durable: Bool, autoDelete: Bool, exclusiveOwner: UInt64?, arguments: QueueArguments = QueueArguments(),
         broker: Broker) {
        self.name = name
        self.durable = durable
        self.autoDelete = autoDelete
        self.exclusiveOwner = exclusiveOwner
        self.arguments = arguments
        self.hasQueueTTL = arguments.messageTTL != nil
        self.hasLengthLimit = arguments.hasLimits
        self.takesDirectDelivery = arguments.maxLength != 0
        self.hasByteLimit = arguments.maxLengthBytes != nil
        self.broker = broker
        self.memory = broker.memory
        self.lastUsed = broker.now()
    }

    public var readyCount: Int { messages.count }
    public var consumerCount: Int { consumers.count }
    var hasExclusiveConsumer: Bool { consumers.contains(where: \.exclusive) }

    /// An auto-delete queue goes when its last consumer does (having had one).
    var shouldAutoDelete: Bool { autoDelete && everConsumed && consumers.isEmpty }

    /// The next consumer able to take a message, in round-robin order.
    func nextConsumerWithCredit() -> QueueConsumer? {
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

    /// Takes a new message: straight to a consumer when the queue is empty and one has credit, else to the tail,
    /// applying the queue's TTL and length limits. Returns false when the queue refused it (`reject-publish`).
    /// Invariant: after every call to `enqueue` or ``dispatch()``, either no message is ready or no consumer has
    /// credit, so a non-empty queue never needs to look for a consumer here.
    @discardableResult
    func enqueue(_ incoming: QueuedMessage) -> Bool {
        publishedCount &+= 1
        guard expires(incoming) else { return place(incoming) }
        var message = incoming
        setExpiry(&message)
        return place(message)
    }

    private func place(_ message: QueuedMessage) -> Bool {
        if messages.isEmpty && takesDirectDelivery {
            if selectiveConsumers == 0 {
                if let consumer = nextConsumerWithCredit() {
                    deliver(message, to: consumer)
                    return true
                }
            } else if carryOut(choose(for: message), for: message) {
                return true
            }
        }
        if hasLengthLimit && !makeRoom(for: message) { return false }
        append(message)
        return true
    }

    // MARK: - Consumers that accept only some versions

    /// Consumers with an accepted-versions list (`x-accept-types`). While there are none, delivery takes the plain
    /// round-robin path and reads no message's properties.
    var selectiveConsumers = 0
    /// The head message no consumer accepts, kept (policy `hold`) until one does; logged once per message.
    private var heldLogged = false

    enum Choice {
        /// To this consumer; a type it lists is counted in the census.
        case deliver(QueueConsumer, type: String?)
        /// A consumer that accepts it has no credit now.
        case wait
        /// No consumer accepts it.
        case incompatible
    }

    /// The next consumer in round-robin order that has credit and accepts the message's type and major.
    func choose(for message: QueuedMessage) -> Choice {
        let fields = try? message.envelope.properties.typeAndVersion()
        let type = fields?.type
        let major = fields?.major ?? 0
        let count = consumers.count
        guard count > 0 else { return .wait }
        var index = nextConsumer < count ? nextConsumer : 0
        var someoneAccepts = false
        for _ in 0..<count {
            let consumer = consumers[index]
            index += 1
            if index == count { index = 0 }
            guard consumer.accepts(type: type, major: major) else { continue }
            someoneAccepts = true
            if consumer.hasCredit {
                nextConsumer = index
                return .deliver(consumer, type: type)
            }
        }
        return someoneAccepts ? .wait : .incompatible
    }

    /// Delivery with selective consumers: each head message goes to a consumer that accepts it; one that none
    /// accepts is dead-lettered (reason `incompatible`) or held at the head, by the queue's `x-incompatible`.
    private func dispatchSelective() {
        while !messages.isEmpty, consumers.contains(where: \.hasCredit) {
            guard let message = removeFirst() else { continue }
            guard carryOut(choose(for: message), for: message) else {
                putBackHead(message)
                return
            }
        }
    }

    /// Delivers or dead-letters `message` as `choice` says; false when it stays in the queue (held or waiting).
    private func carryOut(_ choice: Choice, for message: QueuedMessage) -> Bool {
        switch choice {
        case .deliver(let consumer, let type):
            heldLogged = false
            deliver(message, to: consumer)
            if let type { broker.countConsumed(type: type, by: consumer) }
            return true
        case .incompatible where arguments.incompatiblePolicy == .deadLetter:
            heldLogged = false
            broker.deadLetter(message, from: self, reason: "incompatible")
            return true
        case .incompatible:
            noteHeld(message)
            return false
        case .wait:
            return false
        }
    }

    /// Logs (once per held message) that the queue waits for a consumer that accepts its head.
    private func noteHeld(_ message: QueuedMessage) {
        guard !heldLogged else { return }
        heldLogged = true
        let fields = try? message.envelope.properties.typeAndVersion()
        let what = "\(fields?.type ?? "?") \(fields?.major ?? 0).\(fields?.minor ?? 0)"
        broker.logger.warning("queue holds a message no consumer accepts; it waits for one that does", metadata: [
            "queue": "\(name)", "message": "\(what)",
            "consumers": "\(consumers.map { $0.accepted.map(AcceptedVersions.listDescription) ?? "any" }.joined(separator: "; "))",
        ])
    }

    /// Sets when the message expires: the queue's TTL or the message's own expiration, whichever is sooner,
    /// counted from its publication `age` milliseconds ago (0 for a new message; its time in the log at recovery).
    func setExpiry(_ message: inout QueuedMessage, age: UInt64 = 0) {
        var ttl = arguments.messageTTL
        if message.envelope.propertyFlags & MessageProperties.Bit.expiration != 0,
           let own = (try? message.envelope.properties.decode())?.expiration {
            ttl = min(ttl ?? UInt64(own), UInt64(own))
        }
        guard let ttl else { return }
        let left = ttl > age ? ttl - age : 0
        message.expiresAt = max(1, broker.now().saturatingAdd(milliseconds: left))
    }

    /// Whether messages joining this queue get an expiry (a queue TTL, or their own expiration).
    @inline(__always)
    func expires(_ message: QueuedMessage) -> Bool {
        hasQueueTTL || message.envelope.propertyFlags & MessageProperties.Bit.expiration != 0
    }

    func append(_ incoming: QueuedMessage) {
        var message = incoming
        // Past half the memory limit, a message joining a backlog waits in the log, not in memory: the peak buffer.
        if memory.pagingThreshold > 0 && memory.bytes > memory.pagingThreshold && !hasByteLimit && !message.envelope.isPaged,
           let store = broker.store {
            pageOut(&message, store: store)
        }
        remember(message)
        messages.append(message)
    }

    /// Drops the message's envelope from memory, keeping where it lies in the log. A persistent message of a durable
    /// queue is already there (its own publish record); any other is written to a page record first. Until that
    /// record's batch is written (recovered records already are), the envelope stays in `inFlight`.
    private func pageOut(_ message: inout QueuedMessage, store: MessageStore) {
        if message.stored.isNone {
            message.stored = store.appendPage(envelope: message.envelope.bytes)
        }
        if message.stored.id >= store.firstIdOfThisRun {
            if inFlight.isEmpty { broker.queuesPaging.append(self) }
            inFlight[message.stored.id] = (broker.openBatch, message.envelope)
            // Counted until written: a disk slower than the publishers must raise the memory alarm, not RSS.
            account(message.envelope.bytes.readableBytes)
        }
        message.envelope = MessageEnvelope(pagedOutWith: message.envelope.propertyFlags)
        pagedCount += 1
    }

    /// Takes the head, paging it back in if needed; nil if a paged message could not be read (logged).
    private func removeFirst() -> QueuedMessage? {
        let message = messages.removeFirst()
        forget(message)
        return pageIn(message)
    }

    /// Brings a paged-out message back: from memory if its write is still in flight, else from the log.
    private func pageIn(_ message: QueuedMessage) -> QueuedMessage? {
        guard message.envelope.isPaged else { return message }
        let location = message.stored
        var restored = message
        pagedCount -= 1
        let releases = message.ownsPageRecord
        if releases { restored.stored = .none }
        // Only after the read below: releasing the last live record of the oldest segment deletes that segment.
        defer { if releases { broker.store?.releasePage(location.id) } }
        if let entry = inFlight.removeValue(forKey: location.id) {
            account(-entry.envelope.bytes.readableBytes)
            restored.envelope = entry.envelope
            return restored
        }
        guard let store = broker.store else { return nil }
        do {
            restored.envelope = try MessageEnvelope(parsing: store.read(location))
            return restored
        } catch {
            broker.logger.error("a paged message could not be read back and is lost", metadata: ["queue": "\(name)", "error": "\(error)"])
            return nil
        }
    }

    /// A log batch finished: paged envelopes it carried are on disk and leave memory. If it failed they stay.
    func pagesWritten(through batch: UInt64, failed: Bool) {
        for (id, entry) in inFlight where entry.batch <= batch {
            if failed {
                inFlight[id] = (UInt64.max, entry.envelope)
            } else {
                inFlight[id] = nil
                account(-entry.envelope.bytes.readableBytes)
            }
        }
    }

    /// Drops a paged message without reading it.
    private func discardPage(_ message: QueuedMessage) {
        guard message.envelope.isPaged else { return }
        pagedCount -= 1
        if let entry = inFlight.removeValue(forKey: message.stored.id) { account(-entry.envelope.bytes.readableBytes) }
        if message.ownsPageRecord { broker.store?.releasePage(message.stored.id) }
    }

    /// Counts a message joining the ready list: memory, bytes for a byte limit, own expirations.
    private func remember(_ message: QueuedMessage) {
        account(message.footprint)
        if hasByteLimit { readyBytes += message.envelope.bodyLength }
        if message.envelope.propertyFlags & MessageProperties.Bit.expiration != 0 { messagesWithOwnExpiry += 1 }
    }

    /// The counterpart of ``remember(_:)`` for a message leaving the ready list.
    private func forget(_ message: QueuedMessage) {
        account(-message.footprint)
        if hasByteLimit { readyBytes -= message.envelope.bodyLength }
        if message.envelope.propertyFlags & MessageProperties.Bit.expiration != 0 { messagesWithOwnExpiry -= 1 }
    }

    /// Applies the overflow policy so `message` fits; false if it must be refused.
    private func makeRoom(for message: QueuedMessage) -> Bool {
        func fits() -> Bool {
            if let max = arguments.maxLength, messages.count + 1 > max { return false }
            if let max = arguments.maxLengthBytes, readyBytes + message.envelope.bodyLength > max { return false }
            return true
        }
        if fits() { return true }
        switch arguments.overflow {
        case .dropHead:
            while !fits() && !messages.isEmpty {
                if let dropped = removeFirst() { broker.deadLetter(dropped, from: self, reason: "maxlen") }
            }
            if fits() { return true }
            broker.deadLetter(message, from: self, reason: "maxlen")  // larger than the whole limit on its own
            return true
        case .rejectPublish:
            return false
        case .rejectPublishDLX:
            broker.deadLetter(message, from: self, reason: "maxlen")
            return false
        }
    }

    private func deliver(_ message: QueuedMessage, to consumer: QueueConsumer) {
        deliveredCount &+= 1
        consumer.session.deliver(message, to: consumer, from: self)  // counts the delivery in its unacked record
    }

    /// Puts settled-with-requeue messages back at the head, in their original order, marked redelivered. A message
    /// past the queue's delivery limit is dead-lettered (reason `delivery_limit`) instead.
    func requeueAtHead(_ returned: [QueuedMessage], store: MessageStore?) {
        guard !isDeleted else {
            if let store, let durableId {
                for message in returned where message.logId != 0 { store.appendSettle(id: message.logId, queue: durableId) }
            }
            return
        }
        for var message in returned.reversed() {
            if let limit = arguments.deliveryLimit, Int(message.deliveries) > limit {
                broker.deadLetter(message, from: self, reason: "delivery_limit")
                continue
            }
            message.redelivered = true
            remember(message)
            messages.prepend(message)
        }
    }

    /// Delivers ready messages while some consumer has credit; expired messages at the head leave first.
    func dispatch() {
        if !messages.isEmpty && (hasQueueTTL || messagesWithOwnExpiry > 0) { expireHead(now: broker.now()) }
        if selectiveConsumers != 0 { return dispatchSelective() }
        while !messages.isEmpty, let consumer = nextConsumerWithCredit() {
            if let message = removeFirst() { deliver(message, to: consumer) }
        }
    }

    /// Removes expired messages from the head (dead-lettering them, reason `expired`).
    func expireHead(now: UInt64) {
        while let head = messages.first, head.expiresAt != 0, head.expiresAt <= now {
            if let expired = removeFirst() { broker.deadLetter(expired, from: self, reason: "expired") }
        }
    }

    /// Removes every expired message, wherever it is (per-message expirations can be out of order).
    func expireAll(now: UInt64) {
        expireHead(now: now)
        guard messagesWithOwnExpiry > 0 else { return }
        var kept = Deque<QueuedMessage>()
        var expired: [QueuedMessage] = []
        for message in messages {
            if message.expiresAt != 0 && message.expiresAt <= now { expired.append(message) } else { kept.append(message) }
        }
        guard !expired.isEmpty else { return }
        messages = kept
        for message in expired {
            forget(message)
            if let restored = pageIn(message) { broker.deadLetter(restored, from: self, reason: "expired") }
        }
    }

    // MARK: - Management

    /// The first `count` ready messages, left where they are (paged ones are read, not paged in).
    func peek(_ count: Int) -> [QueuedMessage] {
        var result: [QueuedMessage] = []
        for var message in messages.prefix(count) {
            if message.envelope.isPaged {
                if let entry = inFlight[message.stored.id] {
                    message.envelope = entry.envelope
                } else if let store = broker.store {
                    do {
                        message.envelope = try MessageEnvelope(parsing: store.read(message.stored))
                    } catch {
                        // Left in the queue (a consumer's page-in will report it too); the operator hears now.
                        broker.logger.error("peek: a paged message could not be read back", metadata: ["queue": "\(name)", "error": "\(error)"])
                        continue
                    }
                } else {
                    continue
                }
            }
            result.append(message)
        }
        return result
    }

    /// Takes the head for a move to another queue (expired messages leave first); no delivery is counted.
    func takeHead() -> QueuedMessage? {
        if !messages.isEmpty && (hasQueueTTL || messagesWithOwnExpiry > 0) { expireHead(now: broker.now()) }
        while !messages.isEmpty {
            if let message = removeFirst() { return message }
        }
        return nil
    }

    /// Puts a message taken by ``takeHead()`` back, unchanged (its move was refused).
    func putBackHead(_ message: QueuedMessage) {
        remember(message)
        messages.prepend(message)
    }

    /// Removes and returns the message at the head (for `get`).
    func dequeue() -> QueuedMessage? {
        guard var message = takeHead() else { return nil }
        message.deliveries &+= 1
        deliveredCount &+= 1
        return message
    }

    /// Drops every ready message (recording that in the log); unacknowledged ones stay with their consumers.
    func purge(store: MessageStore?) -> Int {
        let count = messages.count
        if let store, let durableId {
            for message in messages where message.logId != 0 { store.appendSettle(id: message.logId, queue: durableId) }
        }
        for message in messages {
            account(-message.footprint)
            discardPage(message)
        }
        messages.removeAll()
        readyBytes = 0
        messagesWithOwnExpiry = 0
        return count
    }
}

/// A consumer: a session's subscription to one queue.
public final class QueueConsumer {
    /// The session's number for it (the native protocol's consumer tag).
    public let tag: UInt32
    /// The front end's name for it, when its protocol names consumers (AMQP's consumer tag).
    public let name: String?
    unowned let session: Session
    unowned let queue: Queue
    public let noAck: Bool
    let exclusive: Bool
    /// 0 = unlimited.
    let prefetch: Int
    var unacked = 0
    /// The versions it accepts of the types it names (`x-accept-types`); nil accepts everything.
    let accepted: [AcceptedVersions]?

    init(tag: UInt32, session: Session, queue: Queue, noAck: Bool, exclusive: Bool, prefetch: Int, accepted: [AcceptedVersions]? = nil,
         name: String? = nil) {
        self.tag = tag
        self.name = name
        self.session = session
        self.queue = queue
        self.noAck = noAck
        self.exclusive = exclusive
        self.prefetch = prefetch
        self.accepted = accepted
    }

    /// The name of the queue it consumes from.
    public var queueName: String { queue.name }

    /// Whether it may be handed a message of `type` with this major: a type it does not list, or a major in the
    /// range it gives for the type. A message without a type goes to any consumer.
    func accepts(type: String?, major: UInt16) -> Bool {
        guard let accepted, let type, let range = accepted.first(where: { $0.type == type }) else { return true }
        return range.accepts(major: major)
    }

    /// Whether a message may be sent now: within prefetch and the connection is not pushing back.
    var hasCredit: Bool {
        (noAck || ((prefetch == 0 || unacked < prefetch) && session.withinSharedPrefetch)) && session.canDeliver
    }
}
