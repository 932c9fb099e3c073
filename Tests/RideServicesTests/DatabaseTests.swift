import Foundation
import Logging
@testable import RideKit
import SQLiteNIO
import Synchronization
import Testing

/// RideDatabase's group commit: transactions that queue up share one COMMIT (one fsync), each returns only once
/// its writes are committed (visible to another connection), and one that fails rolls back alone.
@Suite("Service databases: group commit")
struct DatabaseTests {
    struct Refused: Error {}

    @Test("51 queued transactions: one or two commits, every row committed when its transaction returns, the failing one alone rolled back")
    func groupCommit() async throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("ride-db-\(UUID().uuidString)").path
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let schema = ["CREATE TABLE IF NOT EXISTS t (n INTEGER PRIMARY KEY)"]
        let database = try await RideDatabase.open(directory: directory, file: "t.sqlite", schema: schema, logger: Logger(label: "test"))
        let reader = try await RideDatabase.open(directory: directory, file: "t.sqlite", schema: schema, logger: Logger(label: "test"))
        let commitsBefore = database.commits.withLock { $0 }
        let waiters = 50
        try await withThrowingTaskGroup(of: Void.self) { group in
            // The first holds the lock until the others wait behind it, so a queue forms whatever the machine's load.
            group.addTask {
                try await database.transaction { tx in
                    try await tx.execute("INSERT INTO t (n) VALUES (0)")
                    let deadline = ContinuousClock.now + .seconds(60)
                    while database.lock.waiting < waiters && ContinuousClock.now < deadline { try await Task.sleep(for: .milliseconds(1)) }
                }
            }
            for n in 1...waiters {
                group.addTask {
                    do {
                        try await database.transaction { tx in
                            try await tx.execute("INSERT INTO t (n) VALUES (?)", [.integer(n)])
                            if n == 7 { throw Refused() }
                        }
                    } catch is Refused {
                        #expect(n == 7)
                        return
                    }
                    // Returned means committed: another connection sees the row.
                    let rows = try await reader.query("SELECT n FROM t WHERE n = ?", [.integer(n)])
                    #expect(rows.count == 1, "row \(n) not visible to another connection after its transaction returned")
                }
            }
            try await group.waitForAll()
        }
        let rows = try await reader.query("SELECT n FROM t ORDER BY n").map { try $0.integer("n") }
        #expect(rows == [0] + (1...waiters).filter { $0 != 7 }.map(Int64.init), "every row but the failing one's")
        let commits = database.commits.withLock { $0 } - commitsBefore
        #expect(commits >= 1 && commits <= 2, "\(commits) commits for \(waiters + 1) queued transactions")
        await reader.close()
        await database.close()
    }
}
