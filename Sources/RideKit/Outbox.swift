public import BrokerClient
public import Logging
public import RideContracts
public import ServiceLifecycle
import Foundation
import Metrics
import NIOCore
import SQLiteNIO
import Synchronization
import WireProtocol

/// The transactional outbox: a service writes the events it publishes into its own database, in the same
/// transaction as the change they announce, and ``OutboxRelay`` publishes them afterwards with a confirm.
///
/// So the database and the broker cannot disagree: no event exists without its change (they commit together), and
/// every committed event is published once the service runs (the relay picks up whatever is unsent, after a crash
/// too). It is at-least-once: a crash between the confirm and marking the row sent publishes the event again with
/// the same message id, which consumers deduplicate (``Inbox``).
public enum Outbox {
    static let schema = [
        """
        CREATE TABLE IF NOT EXISTS outbox (
            seq INTEGER PRIMARY KEY AUTOINCREMENT,
            message_id TEXT NOT NULL UNIQUE,
            exchange TEXT NOT NULL,
            routing_key TEXT NOT NULL,
            type TEXT NOT NULL,
            version TEXT NOT NULL,
            body BLOB NOT NULL,
            created_ms INTEGER NOT NULL,
            sent_ms INTEGER,
            claimed_by TEXT,
            claimed_until_ms INTEGER
        )
        """,
        "CREATE INDEX IF NOT EXISTS outbox_unsent ON outbox (seq) WHERE sent_ms IS NULL",
    ]

    /// Adds `message` to the outbox within `tx`. `messageId` should be derived from what the event is about when the
    /// same event could be produced twice (the unique id then makes the second insert a no-op).
    public static func enqueue<M: RideMessage>(_ message: M, exchange: String, routingKey: String, messageId: String,
                                               in tx: RideDatabase.Transaction) async throws {
        let body = try JSONEncoder.ride.encode(message)
        try await tx.execute("""
            INSERT INTO outbox (message_id, exchange, routing_key, type, version, body, created_ms)
            VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (message_id) DO NOTHING
            """, [.text(messageId), .text(exchange), .text(routingKey), .text(M.type), .text(M.version.description),
                  .blob(ByteBuffer(bytes: body)), .integer(Int(RideIds.nowMs()))])
    }

    /// Rows not yet confirmed by the broker.
    public static func pendingCount(_ database: RideDatabase) async throws -> Int {
        let rows = try await database.query("SELECT count(*) AS n FROM outbox WHERE sent_ms IS NULL")
        return Int(try rows.first?.integer("n") ?? 0)
    }
}

/// Publishes a service's outbox: claims a batch of unsent rows (a lease, so that several instances sharing one
/// database do not publish the same rows at once, and a crashed instance's claim lapses), publishes them with
/// confirms, and marks them sent. Woken by ``wake()`` after a commit, and polls in case another process wrote rows.
public final class OutboxRelay: Service, Sendable {
    public struct Settings: Sendable {
        public var batchSize = 200
        public var pollInterval: Duration = .milliseconds(500)
        public var lease: Duration = .seconds(30)
        /// Sent rows older than this are deleted.
        public var retention: Duration = .seconds(3600)
        public init() {}
    }

    private let database: RideDatabase
    private let connection: BrokerConnection
    private let settings: Settings
    private let logger: Logger
    private let instance = RideIds.make("relay-")
    private let signal = WakeSignal()
    private let published: Counter
    private let stopping = Atomic<Bool>(false)

    public init(database: RideDatabase, connection: BrokerConnection, service: String, settings: Settings = Settings(), logger: Logger) {
        self.database = database
        self.connection = connection
        self.settings = settings
        self.logger = logger
        self.published = Counter(label: "ride_outbox_published_total", dimensions: [("service", service)])
    }

    /// Something was committed to the outbox: publish it now rather than at the next poll.
    public func wake() { signal.fire() }

    public func run() async throws {
        try await connection.enableConfirms()
        var lastCleanup = ContinuousClock.now
        await withGracefulShutdownHandler {
            var failures = 0
            while !stopping.load(ordering: .relaxed) && !Task.isCancelled {
                do {
                    let count = try await publishBatch()
                    failures = 0
                    if ContinuousClock.now - lastCleanup > .seconds(60) {
                        lastCleanup = .now
                        try await cleanup()
                    }
                    if count == settings.batchSize { continue }
                    await signal.wait(timeout: settings.pollInterval)
                } catch {
                    failures += 1
                    logger.warning("outbox relay: publishing failed; retrying", metadata: ["error": "\(error)", "failures": "\(failures)"])
                    await signal.wait(timeout: .milliseconds(min(5000, 100 * (1 << min(failures, 6)))))
                }
            }
        } onGracefulShutdown: {
            self.stopping.store(true, ordering: .relaxed)
            self.signal.fire()
        }
    }

    /// Claims, publishes and marks one batch; returns how many rows it published.
    func publishBatch() async throws -> Int {
        let now = RideIds.nowMs()
        let rows = try await database.transaction { tx in
            try await tx.query("""
                UPDATE outbox SET claimed_by = ?, claimed_until_ms = ?
                WHERE seq IN (SELECT seq FROM outbox WHERE sent_ms IS NULL AND (claimed_until_ms IS NULL OR claimed_until_ms < ?)
                              ORDER BY seq LIMIT ?)
                RETURNING seq, message_id, exchange, routing_key, type, version, body, created_ms
                """, [.text(instance), .integer(Int(now + Int64(settings.lease.components.seconds) * 1000)), .integer(Int(now)),
                      .integer(settings.batchSize)])
        }
        guard !rows.isEmpty else { return 0 }
        let pending = try rows.map(PendingEvent.init).sorted { $0.seq < $1.seq }
        let connection = self.connection
        // Publishes run concurrently so that their confirms share the broker's fsyncs; each row is marked sent only
        // once its own confirm came.
        let outcomes = await withTaskGroup(of: (Int64, (any Error)?).self) { group in
            for event in pending {
                group.addTask {
                    do {
                        try await connection.publish(exchange: event.exchange, routingKey: event.routingKey, body: event.body,
                                                     properties: event.properties)
                        return (event.seq, nil)
                    } catch {
                        return (event.seq, error)
                    }
                }
            }
            var outcomes: [(Int64, (any Error)?)] = []
            for await outcome in group { outcomes.append(outcome) }
            return outcomes
        }
        let sent = outcomes.filter { $0.1 == nil }.map(\.0)
        let failed = outcomes.filter { $0.1 != nil }.map(\.0)
        let sentAt = RideIds.nowMs()
        try await database.transaction { tx in
            for seq in sent { try await tx.execute("UPDATE outbox SET sent_ms = ? WHERE seq = ?", [.integer(Int(sentAt)), .integer(Int(seq))]) }
            // Give failed rows back at once rather than at the end of the lease.
            for seq in failed {
                try await tx.execute("UPDATE outbox SET claimed_until_ms = NULL WHERE seq = ? AND claimed_by = ?",
                                     [.integer(Int(seq)), .text(instance)])
            }
        }
        published.increment(by: sent.count)
        if let error = outcomes.first(where: { $0.1 != nil })?.1 { throw error }
        return sent.count
    }

    private func cleanup() async throws {
        let cutoff = RideIds.nowMs() - Int64(settings.retention.components.seconds) * 1000
        try await database.transaction { tx in
            try await tx.execute("DELETE FROM outbox WHERE sent_ms IS NOT NULL AND sent_ms < ?", [.integer(Int(cutoff))])
        }
    }

    private struct PendingEvent: Sendable {
        var seq: Int64
        var exchange: String
        var routingKey: String
        var body: ByteBuffer
        var properties: MessageProperties

        init(_ row: SQLiteRow) throws {
            seq = try row.integer("seq")
            exchange = try row.text("exchange")
            routingKey = try row.text("routing_key")
            guard let body = row.column("body")?.blob else { throw DatabaseError("outbox row \(seq) has no body") }
            self.body = body
            let version = ContractVersion(try row.text("version")) ?? ContractVersion(1, 0)
            properties = MessageProperties(
                messageId: try row.text("message_id"), contentType: "application/json", type: try row.text("type"),
                typeVersion: version.major, timestamp: try row.integer("created_ms"), persistent: true,
                headers: [RideEnvelope.versionHeader: .string(version.description)], typeMinorVersion: version.minor)
        }
    }
}

/// A wake-up that is not lost when it fires before anyone waits.
final class WakeSignal: Sendable {
    private struct State {
        var pending = false
        var waiter: CheckedContinuation<Void, Never>?
    }
    private let state = Mutex(State())

    func fire() {
        let waiter = state.withLock { state -> CheckedContinuation<Void, Never>? in
            if let waiter = state.waiter {
                state.waiter = nil
                return waiter
            }
            state.pending = true
            return nil
        }
        waiter?.resume()
    }

    /// Returns when fired (or already fired since the last wait), or after `timeout`.
    func wait(timeout: Duration) async {
        let timer = Task { [weak self] in
            try? await Task.sleep(for: timeout)
            self?.fire()
        }
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            let now = state.withLock { state -> Bool in
                if state.pending {
                    state.pending = false
                    return true
                }
                state.waiter = continuation
                return false
            }
            if now { continuation.resume() }
        }
        timer.cancel()
    }
}
