public import Logging
import NIOCore
public import SQLiteNIO
import Foundation
import Synchronization

/// A service's own SQLite database (sqlite-nio), in WAL mode with `synchronous=FULL`: a committed transaction is
/// on disk when `transaction` returns, so a kill -9 or a restart loses nothing that was answered.
///
/// sqlite-nio gives one connection whose statements run on a thread pool; a transaction spans several of them, so
/// this type serializes transactions with an async lock (in order of arrival). Several processes may share one file
/// (the dispatcher's instances do): `BEGIN IMMEDIATE` takes SQLite's write lock up front and `busy_timeout` waits
/// for another process's transaction instead of failing.
///
/// **Group commit.** Every commit is an fsync, and a service under a burst runs several transactions per request
/// (the trip service: the trip with its outbox row, the relay marking it sent, the dispatch outcome), so one fsync
/// each made requests queue behind the disk. Transactions that arrive while others wait share one: each runs in a
/// savepoint of the group's `BEGIN IMMEDIATE` (a failing one rolls back to its savepoint and fails alone), and the
/// last of the group (no one else waiting, or ``maximumGroup`` members) commits for all. Nobody's `transaction`
/// returns before the `COMMIT` that covers it, so the promise stands: returned means on disk. A read takes the lock
/// too and commits an open group before it reads, so it never sees writes that are not yet durable.
public final class RideDatabase: Sendable {
    public let path: String
    private let connection: SQLiteConnection
    let lock = AsyncLock()
    /// The members of the open group transaction, waiting for its commit; nil when none is open. Read and written
    /// only while holding `lock` (the Mutex makes that checkable, it is never contended).
    private let group = Mutex<[CommitTicket]?>(nil)
    /// The most transactions one commit covers (so a group's write lock is held briefly for other processes).
    public static let maximumGroup = 64
    /// Commits made (each one fsync), for tests and metrics.
    let commits = Mutex(0)

    private init(path: String, connection: SQLiteConnection) {
        self.path = path
        self.connection = connection
    }

    /// Opens (creating) `file` in `directory` (created too), and runs `schema` (idempotent `CREATE ... IF NOT
    /// EXISTS` statements) plus the outbox's and inbox's tables.
    public static func open(directory: String, file: String, schema: [String], logger: Logger) async throws -> RideDatabase {
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        let path = (directory as NSString).appendingPathComponent(file)
        let connection = try await SQLiteConnection.open(storage: .file(path: path), logger: logger)
        let database = RideDatabase(path: path, connection: connection)
        do {
            _ = try await connection.query("PRAGMA busy_timeout = 10000")
            _ = try await connection.query("PRAGMA journal_mode = WAL")
            _ = try await connection.query("PRAGMA synchronous = FULL")
            _ = try await connection.query("PRAGMA foreign_keys = ON")
            try await database.transaction { tx in
                for statement in schema + Outbox.schema + Inbox.schema { try await tx.execute(statement) }
            }
        } catch {
            try? await connection.close()
            throw error
        }
        return database
    }

    /// Runs `body` in one transaction, all or nothing: if it throws, its writes are rolled back and the error is
    /// rethrown. Returns once the writes are committed (fsynced), possibly together with others' (group commit).
    public func transaction<T: Sendable>(_ body: (Transaction) async throws -> T) async throws -> T {
        let (result, ticket): (T, CommitTicket?) = try await lock.withLock {
            if group.withLock({ $0 == nil }) {
                _ = try await connection.query("BEGIN IMMEDIATE")
                group.withLock { $0 = [] }
            }
            do {
                _ = try await connection.query("SAVEPOINT member")
            } catch {
                await abortGroup(error)
                throw error
            }
            let result: T
            do {
                result = try await body(Transaction(connection: connection))
                _ = try await connection.query("RELEASE member")
            } catch {
                do {
                    _ = try await connection.query("ROLLBACK TO member")
                    _ = try await connection.query("RELEASE member")
                } catch let rollback {
                    await abortGroup(rollback)
                    throw error
                }
                if !lock.hasWaiters { try? await commitGroup() }
                throw error
            }
            let members = group.withLock { $0?.count ?? 0 }
            if lock.hasWaiters && members + 1 < Self.maximumGroup {
                // Others are queued behind the lock: they join this transaction, and the last one commits.
                let ticket = CommitTicket()
                group.withLock { $0?.append(ticket) }
                return (result, ticket)
            }
            try await commitGroup()
            return (result, nil)
        }
        try await ticket?.wait()
        return result
    }

    /// Commits the open group (if any) and tells its members how it went; throws if the commit failed (the group's
    /// writes are then rolled back, and every member gets the error).
    private func commitGroup() async throws {
        guard let members = takeGroup() else { return }
        do {
            _ = try await connection.query("COMMIT")
        } catch {
            _ = try? await connection.query("ROLLBACK")
            for member in members { member.complete(.failure(error)) }
            throw error
        }
        commits.withLock { $0 += 1 }
        for member in members { member.complete(.success(())) }
    }

    /// Closes the open group, if any, and returns its members (whoever ends it tells them how it went).
    private func takeGroup() -> [CommitTicket]? {
        group.withLock { open in
            defer { open = nil }
            return open
        }
    }

    /// Rolls the open group back after a statement that keeps it from going on failed; its members get `error`.
    private func abortGroup(_ error: any Error) async {
        guard let members = takeGroup() else { return }
        _ = try? await connection.query("ROLLBACK")
        for member in members { member.complete(.failure(error)) }
    }

    /// One read statement (a consistent snapshot by itself), after committing an open group so that what it reads
    /// is durable.
    public func query(_ sql: String, _ binds: [SQLiteData] = []) async throws -> [SQLiteRow] {
        try await lock.withLock {
            try? await commitGroup()  // a failed commit is its members' error, not this read's
            return try await connection.query(sql, binds)
        }
    }

    public func close() async {
        try? await connection.close()
    }

    /// The statements of one transaction.
    public struct Transaction: Sendable {
        let connection: SQLiteConnection
        @discardableResult
        public func query(_ sql: String, _ binds: [SQLiteData] = []) async throws -> [SQLiteRow] {
            try await connection.query(sql, binds)
        }
        public func execute(_ sql: String, _ binds: [SQLiteData] = []) async throws {
            _ = try await connection.query(sql, binds)
        }
    }
}

/// A group member's wait for the commit that covers it; completed once, by whoever commits or aborts the group
/// (possibly before the member starts waiting).
final class CommitTicket: Sendable {
    private struct State {
        var outcome: Result<Void, any Error>?
        var waiter: CheckedContinuation<Void, any Error>?
    }
    private let state = Mutex(State())

    func complete(_ outcome: Result<Void, any Error>) {
        let waiter = state.withLock { state -> CheckedContinuation<Void, any Error>? in
            state.outcome = outcome
            defer { state.waiter = nil }
            return state.waiter
        }
        waiter?.resume(with: outcome)
    }

    func wait() async throws {
        try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<Void, any Error>) in
            let outcome = state.withLock { state -> Result<Void, any Error>? in
                if let outcome = state.outcome { return outcome }
                state.waiter = continuation
                return nil
            }
            if let outcome { continuation.resume(with: outcome) }
        }
    }
}

/// A FIFO lock for async code: `withLock` waits (without blocking a thread) until the holder releases it.
public final class AsyncLock: Sendable {
    private struct State {
        var held = false
        var waiters: [CheckedContinuation<Void, Never>] = []
    }
    private let state = Mutex(State())

    public init() {}

    /// Whether someone is waiting for the lock (read by its holder: a waiter that arrives just after is simply
    /// the first of the next round).
    public var hasWaiters: Bool { state.withLock { !$0.waiters.isEmpty } }
    /// How many wait (for tests that need a queue to have formed).
    var waiting: Int { state.withLock { $0.waiters.count } }

    public func withLock<T: Sendable>(_ body: () async throws -> T) async throws -> T {
        await acquire()
        defer { release() }
        return try await body()
    }

    private func acquire() async {
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            let acquired = state.withLock { state -> Bool in
                if !state.held {
                    state.held = true
                    return true
                }
                state.waiters.append(continuation)
                return false
            }
            if acquired { continuation.resume() }
        }
    }

    private func release() {
        let next = state.withLock { state -> CheckedContinuation<Void, Never>? in
            if state.waiters.isEmpty {
                state.held = false
                return nil
            }
            return state.waiters.removeFirst()  // stays held: handed to the next waiter
        }
        next?.resume()
    }
}

extension SQLiteRow {
    /// A column's text, or a readable error naming the column.
    public func text(_ name: String) throws -> String {
        guard let value = column(name)?.string else { throw DatabaseError("column '\(name)' is missing or not text") }
        return value
    }
    public func optionalText(_ name: String) -> String? { column(name)?.string }
    public func integer(_ name: String) throws -> Int64 {
        guard let value = column(name)?.integer else { throw DatabaseError("column '\(name)' is missing or not an integer") }
        return Int64(value)
    }
    public func real(_ name: String) throws -> Double {
        guard let value = column(name)?.double else { throw DatabaseError("column '\(name)' is missing or not a number") }
        return value
    }
}

public struct DatabaseError: Error, CustomStringConvertible {
    public var description: String
    public init(_ description: String) { self.description = description }
}

/// Identifiers and clocks every service uses.
public enum RideIds {
    /// A new identifier: `prefix` + 24 random hex digits (96 bits: unique without coordination).
    public static func make(_ prefix: String) -> String {
        var generator = SystemRandomNumberGenerator()
        let high = UInt64.random(in: 0...UInt64.max, using: &generator) >> 16
        let low = UInt64.random(in: 0...UInt64.max, using: &generator) >> 16
        return prefix + hex(high, 12) + hex(low, 12)
    }
    private static func hex(_ value: UInt64, _ digits: Int) -> String {
        let text = String(value, radix: 16)
        return String(repeating: "0", count: max(0, digits - text.count)) + text
    }
    /// Milliseconds since 1970.
    public static func nowMs() -> Int64 { Int64(Date().timeIntervalSince1970 * 1000) }
}
