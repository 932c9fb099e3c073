public import Logging
public import RideKit
public import ServiceLifecycle
import BrokerClient
import Foundation
import HTTPTypes
import Hummingbird
import NIOCore
import NotificationAPI
import OpenAPIHummingbird
import OpenAPIRuntime
import RideContracts
import SQLiteNIO
import Synchronization

/// The notification service: consumes `notification.requests` (a work queue), stores each notification once
/// (by its id) in the recipient's history, and pushes it to the recipient's open Server-Sent Events streams. An app
/// that was offline reconnects with `Last-Event-ID` and first receives what it missed.
public struct NotificationService: Service {
    public var settings: RideSettings
    public var logger: Logger
    public init(settings: RideSettings, logger: Logger) {
        self.settings = settings
        self.logger = logger
    }

    static let schema = [
        """
        CREATE TABLE IF NOT EXISTS notifications (
            seq INTEGER PRIMARY KEY AUTOINCREMENT,
            id TEXT NOT NULL UNIQUE,
            recipient_id TEXT NOT NULL,
            kind TEXT NOT NULL,
            title TEXT NOT NULL,
            body TEXT NOT NULL,
            trip_id TEXT,
            requested_ms INTEGER,
            created_ms INTEGER NOT NULL
        )
        """,
        "CREATE INDEX IF NOT EXISTS notifications_recipient ON notifications (recipient_id, seq)",
    ]

    public func run() async throws {
        let database = try await RideDatabase.open(directory: settings.dataDirectory, file: "notification.sqlite", schema: Self.schema,
                                                   logger: logger)
        let connection = try await settings.connect(service: "notification", logger: logger)
        try await RideTopology.declare(on: connection, retryDelayMs: settings.retryDelayMs, quorumQueues: settings.quorumQueues, logger: logger)
        let hub = NotificationHub()
        let handlers = NotificationHandlers(database: database, hub: hub)
        let settings = self.settings
        let logger = self.logger
        let app = try RideHTTP.application(service: "notification", host: settings.httpHost, port: settings.httpPort, logger: logger,
                                           onListening: { await settings.reportListening($0) }) { router in
            try handlers.registerHandlers(on: router, middlewares: [ProblemMiddleware(logger: logger)])
        }
        let latency = Metrics.Timer(label: "ride_request_to_notification_seconds")
        let requests = InboxConsumer(name: "notification", connection: connection, database: database,
                                     queue: RideTopology.notificationQueue, logger: logger) { message, tx, duplicate in
            if duplicate { return .ack }
            let request = try RideEnvelope.decode(NotificationRequested.self, from: message)
            let now = RideIds.nowMs()
            let rows = try await tx.query("""
                INSERT INTO notifications (id, recipient_id, kind, title, body, trip_id, requested_ms, created_ms)
                VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO NOTHING RETURNING seq
                """, [.text(request.notificationId), .text(request.recipientId), .text(request.kind.rawValue), .text(request.title),
                      .text(request.body), request.tripId.map { .text($0) } ?? .null,
                      request.requestedAtMs.map { .integer(Int($0)) } ?? .null, .integer(Int(now))])
            if let seq = rows.first?.column("seq")?.integer {
                // Pushed once the transaction commits (a stream that reads the history meanwhile skips the overlap).
                let stored = StoredNotification(seq: Int64(seq), request: request, createdMs: now)
                hub.publishAfterCommit(stored)
                if let requested = request.requestedAtMs { latency.recordMilliseconds(max(0, now - requested)) }
            }
            return .ack
        }
        var consumer = requests
        consumer.afterCommit = { hub.flush() }
        // Listed after the HTTP server, so it is told first at shutdown: open streams end (apps reconnect with
        // Last-Event-ID to another instance or after the restart) and the server's graceful close does not wait for them.
        let streamCloser = StreamCloser(hub: hub)
        try await runParts([connection, consumer, app, streamCloser], logger: logger)
        hub.finishAll()
        await database.close()
    }
}

import Metrics

/// Ends every open stream when graceful shutdown begins.
struct StreamCloser: Service {
    let hub: NotificationHub
    func run() async throws {
        try? await gracefulShutdown()  // returns when graceful shutdown begins (or the task is cancelled)
        hub.finishAll()
    }
}

struct StoredNotification: Sendable {
    var seq: Int64
    var id: String
    var recipientId: String
    var kind: String
    var title: String
    var body: String
    var tripId: String?
    var createdMs: Int64

    init(seq: Int64, request: NotificationRequested, createdMs: Int64) {
        self.seq = seq
        id = request.notificationId
        recipientId = request.recipientId
        kind = request.kind.rawValue
        title = request.title
        body = request.body
        tripId = request.tripId
        self.createdMs = createdMs
    }

    init(row: SQLiteRow) throws {
        seq = try row.integer("seq")
        id = try row.text("id")
        recipientId = try row.text("recipient_id")
        kind = try row.text("kind")
        title = try row.text("title")
        body = try row.text("body")
        tripId = row.optionalText("trip_id")
        createdMs = try row.integer("created_ms")
    }

    var schema: NotificationAPI.Components.Schemas.Notification {
        .init(seq: seq, id: id, recipientId: recipientId,
              kind: NotificationAPI.Components.Schemas.Notification.KindPayload(rawValue: kind) ?? .driverAssigned,
              title: title, body: body, tripId: tripId, createdAt: date(ms: createdMs))
    }

    /// One Server-Sent Event: `id`, `event` and a one-line JSON `data`.
    var event: String {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        encoder.dateEncodingStrategy = .iso8601
        let json = (try? encoder.encode(schema)).flatMap { String(data: $0, encoding: .utf8) } ?? "{}"
        return "id: \(seq)\nevent: notification\ndata: \(json)\n\n"
    }
}

/// The open streams by recipient. New notifications are staged during the transaction and pushed after it
/// commits, so a stream never shows a notification that a rollback then removed.
final class NotificationHub: Sendable {
    private struct State {
        var streams: [String: [UInt64: AsyncStream<StoredNotification>.Continuation]] = [:]
        var staged: [StoredNotification] = []
        var nextId: UInt64 = 0
    }
    private let state = Mutex(State())

    func subscribe(_ recipient: String) -> (UInt64, AsyncStream<StoredNotification>) {
        let (stream, continuation) = AsyncStream<StoredNotification>.makeStream(bufferingPolicy: .bufferingNewest(1000))
        let id = state.withLock { state -> UInt64 in
            state.nextId += 1
            state.streams[recipient, default: [:]][state.nextId] = continuation
            return state.nextId
        }
        continuation.onTermination = { [weak self] _ in self?.unsubscribe(recipient, id) }
        return (id, stream)
    }

    func unsubscribe(_ recipient: String, _ id: UInt64) {
        state.withLock { state in
            state.streams[recipient]?[id] = nil
            if state.streams[recipient]?.isEmpty == true { state.streams[recipient] = nil }
        }
    }

    var openStreams: Int { state.withLock { $0.streams.values.reduce(0) { $0 + $1.count } } }

    func publishAfterCommit(_ notification: StoredNotification) {
        state.withLock { $0.staged.append(notification) }
    }

    /// Pushes what was staged (called after each commit).
    func flush() {
        let deliveries = state.withLock { state -> [(AsyncStream<StoredNotification>.Continuation, StoredNotification)] in
            defer { state.staged.removeAll() }
            return state.staged.flatMap { notification in
                (state.streams[notification.recipientId] ?? [:]).values.map { ($0, notification) }
            }
        }
        for (continuation, notification) in deliveries { continuation.yield(notification) }
    }

    func finishAll() {
        let all = state.withLock { state -> [AsyncStream<StoredNotification>.Continuation] in
            defer { state.streams.removeAll() }
            return state.streams.values.flatMap { $0.values }
        }
        for continuation in all { continuation.finish() }
    }
}

struct NotificationHandlers: NotificationAPI.APIProtocol {
    typealias Schemas = NotificationAPI.Components.Schemas
    let database: RideDatabase
    let hub: NotificationHub
    var keepAlive: Duration = .seconds(15)

    func listNotifications(_ input: NotificationAPI.Operations.ListNotifications.Input) async throws
        -> NotificationAPI.Operations.ListNotifications.Output
    {
        let after = input.query.after ?? 0
        let limit = Int(input.query.limit ?? 100)
        guard after >= 0, (1...1000).contains(limit) else {
            let field = after < 0 ? "after" : "limit"
            return .badRequest(.init(body: .json(.init(error: .init(code: "invalid_field", message: "'\(field)' is out of range", field: field)))))
        }
        let stored = try await history(input.path.recipientId, after: after, limit: limit)
        return .ok(.init(body: .json(.init(notifications: stored.map(\.schema)))))
    }

    func streamNotifications(_ input: NotificationAPI.Operations.StreamNotifications.Input) async throws
        -> NotificationAPI.Operations.StreamNotifications.Output
    {
        var after = input.query.after ?? 0
        if let last = input.headers.lastEventID {
            guard let value = Int64(last.trimmingCharacters(in: .whitespaces)), value >= 0 else {
                return .badRequest(.init(body: .json(.init(error: .init(
                    code: "invalid_field", message: "'Last-Event-ID' must be an event id this stream sent", field: "Last-Event-ID")))))
            }
            after = max(after, value)
        }
        guard after >= 0 else {
            return .badRequest(.init(body: .json(.init(error: .init(code: "invalid_field", message: "'after' must not be negative", field: "after")))))
        }
        let recipient = input.path.recipientId
        // Subscribe first, then read the history: a notification committed in between arrives both ways and the
        // sequence numbers drop the second copy.
        let (_, live) = hub.subscribe(recipient)
        let database = self.database
        let keepAlive = self.keepAlive
        let (events, continuation) = AsyncThrowingStream<ArraySlice<UInt8>, any Error>.makeStream()
        let pump = Task {
            var last = after
            func send(_ text: String) { continuation.yield(ArraySlice(Array(text.utf8))) }
            send(": connected\n\n")
            do {
                var page = try await Self.history(database, recipient, after: last, limit: 1000)
                while !page.isEmpty {
                    for notification in page where notification.seq > last {
                        send(notification.event)
                        last = notification.seq
                    }
                    page = page.count == 1000 ? try await Self.history(database, recipient, after: last, limit: 1000) : []
                }
                await withThrowingTaskGroup(of: Void.self) { group in
                    group.addTask {
                        while true {
                            try await Task.sleep(for: keepAlive)
                            send(": keep-alive\n\n")
                        }
                    }
                    for await notification in live where notification.seq > last {
                        send(notification.event)
                        last = notification.seq
                    }
                    group.cancelAll()
                }
                continuation.finish()
            } catch {
                continuation.finish(throwing: error)
            }
        }
        continuation.onTermination = { _ in pump.cancel() }
        let body = HTTPBody(events, length: .unknown, iterationBehavior: .single)
        return .ok(.init(body: .textEventStream(body)))
    }

    private func history(_ recipient: String, after: Int64, limit: Int) async throws -> [StoredNotification] {
        try await Self.history(database, recipient, after: after, limit: limit)
    }

    static func history(_ database: RideDatabase, _ recipient: String, after: Int64, limit: Int) async throws -> [StoredNotification] {
        try await database.query("SELECT * FROM notifications WHERE recipient_id = ? AND seq > ? ORDER BY seq LIMIT ?",
                                 [.text(recipient), .integer(Int(after)), .integer(limit)]).map(StoredNotification.init(row:))
    }
}
