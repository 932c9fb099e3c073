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
public final class RideDatabase: Sendable {
    public let path: String
    private let connection: SQLiteConnection
    private let lock = AsyncLock()

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

    /// Runs `body` in one transaction (`BEGIN IMMEDIATE` ... `COMMIT`); rolls back if it throws.
    public func transaction<T: Sendable>(_ body: (Transaction) async throws -> T) async throws -> T {
        try await lock.withLock {
            _ = try await connection.query("BEGIN IMMEDIATE")
            do {
                let result = try await body(Transaction(connection: connection))
                _ = try await connection.query("COMMIT")
                return result
            } catch {
                _ = try? await connection.query("ROLLBACK")
                throw error
            }
        }
    }

    /// One read statement (a consistent snapshot by itself).
    public func query(_ sql: String, _ binds: [SQLiteData] = []) async throws -> [SQLiteRow] {
        try await lock.withLock { try await connection.query(sql, binds) }
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

/// A FIFO lock for async code: `withLock` waits (without blocking a thread) until the holder releases it.
public final class AsyncLock: Sendable {
    private struct State {
        var held = false
        var waiters: [CheckedContinuation<Void, Never>] = []
    }
    private let state = Mutex(State())

    public init() {}

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
