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
    public internal(set) var alarms: [AlarmSource: String] = [:]
    var toPause: [Session] = []

    /// Why publishers are blocked, or nil.
    public var alarm: String? {
        alarms.isEmpty ? nil : AlarmSource.allCases.compactMap { alarms[$0] }.joined(separator: "; ")
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

