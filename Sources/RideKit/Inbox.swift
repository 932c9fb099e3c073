public import BrokerClient
public import Logging
import RideContracts
public import ServiceLifecycle
import Foundation
import Metrics
import SQLiteNIO
import WireProtocol

/// The inbox: the ids of the messages a consumer has already handled, written in the same transaction as the
/// handling's effects. A redelivered message (the broker's at-least-once, or an outbox's re-publish) finds its id
/// there and changes nothing.
public enum Inbox {
    static let schema = [
        """
        CREATE TABLE IF NOT EXISTS inbox (
            consumer TEXT NOT NULL,
            message_id TEXT NOT NULL,
            received_ms INTEGER NOT NULL,
            PRIMARY KEY (consumer, message_id)
        )
        """,
    ]

    /// Records `messageId` for `consumer` within `tx`; false if it was already there (a duplicate).
    public static func record(_ messageId: String, consumer: String, in tx: RideDatabase.Transaction) async throws -> Bool {
        let rows = try await tx.query("""
            INSERT INTO inbox (consumer, message_id, received_ms) VALUES (?, ?, ?)
            ON CONFLICT (consumer, message_id) DO NOTHING RETURNING message_id
            """, [.text(consumer), .text(messageId), .integer(Int(RideIds.nowMs()))])
        return !rows.isEmpty
    }
}

/// What a handler decided about one delivery.
public enum Disposition: Sendable {
    /// Done (or a duplicate): acknowledge.
    case ack
    /// Refuse it without requeueing: the queue dead-letters it if it has a dead-letter exchange (the dispatcher's
    /// retry path), else it is dropped.
    case reject
}

/// Consumes one queue for a service: decodes each delivery, runs the handler inside a database transaction that
/// also records the message in the ``Inbox`` (so a duplicate is acknowledged without effects), then acknowledges.
///
/// A message that breaks its contract (wrong type, unknown major version, body that does not decode) is rejected
/// (poison: retrying cannot help) and logged. A handler or database failure requeues the message after a pause.
/// Across a broker restart the client's recovery resumes the consumer; an ack for a delivery of the old
/// connection is refused as stale, and the broker redelivers that message, which the inbox then recognizes.
public struct InboxConsumer: Service {
    public var name: String
    public var connection: BrokerConnection
    public var database: RideDatabase
    public var queue: String
    public var prefetch: UInt16
    public var logger: Logger
    /// Runs inside the transaction; `isDuplicate` is true when the inbox already has the message (and is then
    /// usually ignored: return `.ack`). Effects must go through `tx` (and the outbox) to be exactly-once.
    public var handler: @Sendable (Message, RideDatabase.Transaction, _ isDuplicate: Bool) async throws -> Disposition
    /// Runs after a transaction committed (to wake an outbox relay, say).
    public var afterCommit: @Sendable () -> Void
    /// The inbox key of a delivery: its message id by default. A message that comes back through dead-lettering
    /// keeps its id, so a consumer that expects it again (the dispatcher's retries) adds the attempt to the key.
    public var key: @Sendable (Message, String) -> String = { _, id in id }

    public init(name: String, connection: BrokerConnection, database: RideDatabase, queue: String, prefetch: UInt16 = 50,
                logger: Logger, afterCommit: @escaping @Sendable () -> Void = {},
                handler: @escaping @Sendable (Message, RideDatabase.Transaction, _ isDuplicate: Bool) async throws -> Disposition) {
        self.name = name
        self.connection = connection
        self.database = database
        self.queue = queue
        self.prefetch = prefetch
        self.logger = logger
        self.afterCommit = afterCommit
        self.handler = handler
    }

    public func run() async throws {
        let consumer = try await connection.consume(queue: queue, prefetch: prefetch)
        let handled = Counter(label: "ride_messages_handled_total", dimensions: [("consumer", name)])
        let duplicates = Counter(label: "ride_messages_duplicate_total", dimensions: [("consumer", name)])
        let poison = Counter(label: "ride_messages_rejected_total", dimensions: [("consumer", name)])
        try await withGracefulShutdownHandler {
            // Deliveries are handled concurrently up to the prefetch (the database serializes the transactions).
            try await withThrowingTaskGroup(of: Void.self) { group in
                var running = 0
                for try await message in consumer {
                    if running >= Int(prefetch) {
                        try await group.next()
                        running -= 1
                    }
                    running += 1
                    group.addTask {
                        await self.handle(message, handled: handled, duplicates: duplicates, poison: poison)
                    }
                }
                try await group.waitForAll()
            }
        } onGracefulShutdown: {
            Task { try? await consumer.cancel() }
        }
    }

    private func handle(_ message: Message, handled: Counter, duplicates: Counter, poison: Counter) async {
        guard let messageId = message.properties.messageId else {
            logger.error("rejecting a message without a message id", metadata: ["queue": "\(queue)", "type": "\(message.properties.type ?? "-")"])
            poison.increment()
            try? await message.reject(requeue: false)
            return
        }
        let name = self.name
        let handler = self.handler
        let key = self.key
        do {
            let (disposition, duplicate) = try await database.transaction { tx in
                let first = try await Inbox.record(key(message, messageId), consumer: name, in: tx)
                return (try await handler(message, tx, !first), !first)
            }
            afterCommit()
            if duplicate { duplicates.increment() } else { handled.increment() }
            switch disposition {
            case .ack: try await message.ack()
            case .reject: try await message.reject(requeue: false)
            }
        } catch let error as ContractError {
            logger.error("rejecting a message that breaks its contract", metadata: [
                "queue": "\(queue)", "message_id": "\(messageId)", "error": "\(error)"])
            poison.increment()
            try? await message.reject(requeue: false)
        } catch let error as BrokerError where error.code == .staleDelivery {
            // Handled and committed, but the connection that delivered it is gone: the broker redelivers it and
            // the inbox recognizes it.
            logger.debug("ack after a reconnect refused; the redelivery will be deduplicated", metadata: ["message_id": "\(messageId)"])
        } catch {
            logger.warning("handling failed; the message goes back to the queue", metadata: [
                "queue": "\(queue)", "message_id": "\(messageId)", "error": "\(error)"])
            try? await Task.sleep(for: .milliseconds(200))
            try? await message.nack(requeue: true)
        }
    }
}
