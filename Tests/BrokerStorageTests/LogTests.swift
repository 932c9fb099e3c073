@testable import BrokerStorage
import Foundation
import NIOCore
import Testing

/// A fresh directory for one test.
func scratchDirectory() -> String {
    let path = FileManager.default.temporaryDirectory.appendingPathComponent("brokerd-storage-\(UUID().uuidString)").path
    try? FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
    return path
}

/// Writes through a real writer and store, then waits until the batch is on disk.
func writeBatch(_ store: MessageStore, _ body: (MessageStore) -> Void) async throws {
    body(store)
    let result: Result<Void, StorageError> = await withCheckedContinuation { continuation in
        store.commit { continuation.resume(returning: $0) }
    }
    try result.get()
}

func segmentFiles(_ directory: String) -> [String] {
    ((try? FileManager.default.contentsOfDirectory(atPath: directory)) ?? []).filter { $0.hasSuffix(".seg") }.sorted()
}

@Suite("Message log: records, recovery, repair, segment deletion")
struct LogTests {
    @Test("messages, settles and deliveries survive a reopen")
    func roundTrip() async throws {
        let dir = scratchDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let writer = LogWriter(directory: dir, policy: .always)
        let store = MessageStore(writer: writer, recovered: try LogRecovery.recover(directory: dir))
        var ids: [UInt64] = []
        try await writeBatch(store) { s in
            for i in 0..<5 { ids.append(s.appendPublish(envelope: ByteBuffer(string: "m\(i)"), queues: [1, 2]).id) }
            s.appendSettle(id: ids[0], queue: 1)
            s.appendSettle(id: ids[0], queue: 2)
            s.appendSettle(id: ids[1], queue: 2)
            s.appendDelivered(id: ids[2], queue: 1)
        }
        writer.shutdown()
        let recovered = try LogRecovery.recover(directory: dir)
        #expect(recovered.repairs.isEmpty)
        #expect(recovered.messages.map(\.id) == Array(ids[1...]))
        #expect(try recovered.messages.map { String(buffer: try $0.readEnvelope(directory: dir)) } == ["m1", "m2", "m3", "m4"])
        #expect(recovered.messages[0].queues == [1])
        #expect(recovered.messages[1].delivered == [1])
        #expect(recovered.nextMessageId == ids.last! + 1)
    }

    /// Publishes `count` messages to queue 1 in one batch and closes the writer.
    static func fill(_ dir: String, count: Int) async throws -> [UInt64] {
        let writer = LogWriter(directory: dir, policy: .always)
        let store = MessageStore(writer: writer, recovered: try LogRecovery.recover(directory: dir))
        var ids: [UInt64] = []
        try await writeBatch(store) { s in
            for i in 0..<count { ids.append(s.appendPublish(envelope: ByteBuffer(string: "message-\(i)"), queues: [1]).id) }
        }
        writer.shutdown()
        return ids
    }

    @Test("an envelope is read back from where its record lies: current segment, older segments, and after a reopen")
    func readBack() async throws {
        let dir = scratchDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let writer = LogWriter(directory: dir, policy: .never)
        let store = MessageStore(writer: writer, recovered: try LogRecovery.recover(directory: dir), maxSegmentSize: 4096)
        var locations: [LogLocation] = []
        try await writeBatch(store) { s in
            // ~300-byte records in 4 KiB segments: spread over several segments, with page and publish records mixed.
            for i in 0..<60 {
                let body = ByteBuffer(string: "envelope-\(i)-" + String(repeating: "x", count: 280))
                locations.append(i % 2 == 0 ? s.appendPublish(envelope: body, queues: [7]) : s.appendPage(envelope: body))
            }
        }
        #expect(store.segmentCount > 3)
        for (i, location) in locations.enumerated() {
            #expect(String(buffer: try store.read(location)).hasPrefix("envelope-\(i)-"))
        }
        writer.shutdown()
        // After a reopen only the publish records are live, each readable where recovery says it is.
        let recovered = try LogRecovery.recover(directory: dir)
        #expect(recovered.messages.map(\.location) == locations.enumerated().filter { $0.offset % 2 == 0 }.map(\.element))
        let reopened = MessageStore(writer: LogWriter(directory: dir, policy: .never), recovered: recovered, maxSegmentSize: 4096)
        for message in recovered.messages {
            #expect(String(buffer: try reopened.read(message.location)).hasPrefix("envelope-\(message.id - 1)-"))
        }
        #expect(throws: StorageError.self) { try reopened.read(LogLocation(id: 10_000, offset: 0, length: 10)) }
        reopened.writer.shutdown()
    }

    @Test("publish records carry their publication time; format-1 segments (no time) are still read")
    func publicationTime() async throws {
        let dir = scratchDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        // A format-1 segment as the first brokerd wrote it: header version 1, publish record type 1.
        var record: [UInt8] = [1]
        record += withUnsafeBytes(of: UInt64(7).bigEndian, Array.init) + withUnsafeBytes(of: UInt16(1).bigEndian, Array.init)
        record += withUnsafeBytes(of: UInt32(3).bigEndian, Array.init) + Array("old envelope".utf8)
        let crc = record.withUnsafeBytes { LogRecord.crc($0) }
        var segment = Array("BRKLOG".utf8) + [0, 1]
        segment += withUnsafeBytes(of: UInt32(record.count).bigEndian, Array.init) + withUnsafeBytes(of: crc.bigEndian, Array.init) + record
        try Data(segment).write(to: URL(fileURLWithPath: dir + "/00000000000000000001.seg"))

        let writer = LogWriter(directory: dir, policy: .never)
        let store = MessageStore(writer: writer, recovered: try LogRecovery.recover(directory: dir))
        store.wallClock = { 1_790_000_000_123 }
        try await writeBatch(store) { s in _ = s.appendPublish(envelope: ByteBuffer(string: "new envelope"), queues: [3]) }
        writer.shutdown()

        let recovered = try LogRecovery.recover(directory: dir)
        #expect(recovered.repairs.isEmpty)
        #expect(recovered.messages.map(\.id) == [7, 8])
        #expect(recovered.messages.map(\.publishedAt) == [nil, 1_790_000_000_123])
        #expect(try recovered.messages.map { String(buffer: try $0.readEnvelope(directory: dir)) } == ["old envelope", "new envelope"])
        let newSegment = dir + "/" + segmentFiles(dir).last!  // the test made both files
        #expect(Array(FileManager.default.contents(atPath: newSegment)!.prefix(8)) == LogRecord.segmentHeader)
    }

    @Test("a torn tail is cut at every possible length, keeping every intact record before it", arguments: [1, 5, 9, 20, 31, 39])  // each record here is 40 bytes
    func tornTail(cut: Int) async throws {
        let dir = scratchDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let ids = try await Self.fill(dir, count: 10)
        let segment = dir + "/" + segmentFiles(dir).last!
        let size = (try FileManager.default.attributesOfItem(atPath: segment)[.size] as? Int) ?? 0
        #expect(truncate(segment, off_t(size - cut)) == 0)
        Durable.startRecording()
        let syncsBefore = Durable.events(under: dir).count
        let recovered = try LogRecovery.recover(directory: dir)
        #expect(recovered.messages.map(\.id) == Array(ids.dropLast()))
        // The cut is synced: a second power cut cannot bring the torn record back to be repaired again.
        #expect(Array(Durable.events(under: dir).dropFirst(syncsBefore)) == [Durable.Event(kind: .file, path: segment)])
        #expect(recovered.repairs.count == 1)
        #expect(recovered.repairs[0].contains("torn"))
        // The file was cut back to the last intact record: a second recovery finds nothing to repair.
        let again = try LogRecovery.recover(directory: dir)
        #expect(again.repairs.isEmpty)
        #expect(again.messages.count == 9)
    }

    @Test("a corrupted record is detected by its CRC and the tail from it is cut")
    func corruptTail() async throws {
        let dir = scratchDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let ids = try await Self.fill(dir, count: 10)
        let segment = dir + "/" + segmentFiles(dir).last!
        var bytes = Array(FileManager.default.contents(atPath: segment)!)
        bytes[bytes.count - 3] ^= 0xFF  // inside the last record's body
        try Data(bytes).write(to: URL(fileURLWithPath: segment))
        let recovered = try LogRecovery.recover(directory: dir)
        #expect(recovered.messages.map(\.id) == Array(ids.dropLast()))
        #expect(recovered.repairs.first?.contains("CRC mismatch") == true)
        #expect(try recovered.messages.allSatisfy { String(buffer: try $0.readEnvelope(directory: dir)).hasPrefix("message-") })
    }

    /// A CRC-intact publish record, as a fuzzer (or a stray tool) could write one.
    static func intactPublishRecord(id: UInt64) -> [UInt8] {
        var payload: [UInt8] = [4]  // publish
        withUnsafeBytes(of: id.bigEndian) { payload += $0 }
        withUnsafeBytes(of: UInt64(0).bigEndian) { payload += $0 }  // publishedAt
        payload += [0, 1, 0, 0, 0, 1]  // one queue: 1
        payload += Array("body".utf8)
        let crc = payload.withUnsafeBytes { LogRecord.crc($0) }
        var record: [UInt8] = []
        withUnsafeBytes(of: UInt32(payload.count).bigEndian) { record += $0 }
        withUnsafeBytes(of: crc.bigEndian) { record += $0 }
        return record + payload
    }

    @Test("impossible numbers on disk refuse the directory with a clear error instead of trapping")
    func impossibleNumbers() throws {
        // A segment named at the top of the range: counting on from it would overflow.
        let dir = scratchDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        try Data(LogRecord.segmentHeader).write(to: URL(fileURLWithPath: dir + "/18446744073709551615.seg"))
        #expect { try LogRecovery.recover(directory: dir) } throws: { error in
            (error as? StorageError)?.description.contains("18446744073709551615.seg") == true
        }

        // A CRC-intact record whose message id is 2^64-1.
        let other = scratchDirectory()
        defer { try? FileManager.default.removeItem(atPath: other) }
        let records = Self.intactPublishRecord(id: 3) + Self.intactPublishRecord(id: .max)
        try Data(LogRecord.segmentHeader + records).write(to: URL(fileURLWithPath: other + "/00000000000000000001.seg"))
        #expect { try LogRecovery.recover(directory: other) } throws: { error in
            (error as? StorageError)?.description.contains("message id 18446744073709551615") == true
        }

        // The largest id recovery accepts still recovers, and the store counts on from it.
        let edge = scratchDirectory()
        defer { try? FileManager.default.removeItem(atPath: edge) }
        try Data(LogRecord.segmentHeader + Self.intactPublishRecord(id: LogRecovery.largestIndex))
            .write(to: URL(fileURLWithPath: edge + "/00000000000000000001.seg"))
        let recovered = try LogRecovery.recover(directory: edge)
        #expect(recovered.messages.map(\.id) == [LogRecovery.largestIndex])
        #expect(recovered.nextMessageId == LogRecovery.largestIndex + 1)
    }

    @Test("a segment whose messages have all left their queues is deleted; disk use follows the backlog")
    func segmentDeletion() async throws {
        let dir = scratchDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let writer = LogWriter(directory: dir, policy: .always)
        let store = MessageStore(writer: writer, recovered: try LogRecovery.recover(directory: dir), maxSegmentSize: 4096)
        var ids: [UInt64] = []
        let body = ByteBuffer(repeating: 7, count: 500)
        try await writeBatch(store) { s in
            for _ in 0..<40 { ids.append(s.appendPublish(envelope: body, queues: [1]).id) }
        }
        let filled = segmentFiles(dir)
        #expect(filled.count >= 5)
        Durable.startRecording()
        let syncsBefore = Durable.events(under: dir).count
        try await writeBatch(store) { s in
            for id in ids { s.appendSettle(id: id, queue: 1) }
        }
        try await writeBatch(store) { _ in }  // deletions decided in the last batch run with the next one
        let remaining = segmentFiles(dir)
        #expect(remaining.count <= 2, "\(remaining.count) of \(filled.count) segments left after every message was settled")
        // The removals are made durable by one sync of the log directory for the whole batch, before it completes
        // (a segment the settles opened is named durably by a sync of its own).
        let opened = Set(remaining).subtracting(filled).count
        #expect(Array(Durable.events(under: dir).dropFirst(syncsBefore)) == Array(repeating: Durable.Event(kind: .directory, path: dir), count: 1 + opened))
        writer.shutdown()
        #expect(try LogRecovery.recover(directory: dir).messages.isEmpty)
    }

    @Test("a second broker cannot lock the same data directory")
    func lockFile() throws {
        let dir = scratchDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let first = try DataDirectory(path: dir)
        do {
            _ = try DataDirectory(path: dir)
            Issue.record("a second lock succeeded")
        } catch let error as StorageError {
            #expect(error.description.contains("another brokerd"))
            #expect(error.description.contains("\(getpid())"))
        }
        first.unlock()
        _ = try DataDirectory(path: dir)
    }

    @Test("empty, missing and unusable data directories")
    func directories() throws {
        let parent = scratchDirectory()
        defer { try? FileManager.default.removeItem(atPath: parent) }
        // Missing: created, with its log directory.
        let missing = parent + "/new/nested"
        Durable.startRecording()
        let created = try DataDirectory(path: missing)
        #expect(FileManager.default.fileExists(atPath: missing + "/log"))
        // Each directory made is named durably: its parent is synced after it is created.
        #expect(Durable.events(under: parent).filter { $0.kind == .directory }.map(\.path) == [parent, parent + "/new", missing])
        // A segment left without a complete header (a crash right after creating it) is removed, durably too.
        _ = FileManager.default.createFile(atPath: created.logPath + "/00000000000000000003.seg", contents: Data([0x42, 0x52]))
        #expect(try LogRecovery.recover(directory: created.logPath).repairs.count == 1)
        #expect(segmentFiles(created.logPath).isEmpty)
        #expect(Durable.events(under: created.logPath).last == Durable.Event(kind: .directory, path: created.logPath))
        #expect(try LogRecovery.recover(directory: created.logPath).messages.isEmpty)
        created.unlock()
        // A file where the directory should be.
        let file = parent + "/file"
        _ = FileManager.default.createFile(atPath: file, contents: Data("x".utf8))
        #expect(throws: StorageError.self) { try DataDirectory(path: file) }
        #expect(throws: StorageError.self) { try DataDirectory(path: file + "/below") }
        // A foreign file in the log directory is refused clearly rather than misread.
        let foreign = try DataDirectory(path: parent + "/foreign")
        _ = FileManager.default.createFile(atPath: foreign.logPath + "/00000000000000000001.seg", contents: Data(repeating: 0x41, count: 64))
        do {
            _ = try LogRecovery.recover(directory: foreign.logPath)
            Issue.record("a foreign segment was accepted")
        } catch let error as StorageError {
            #expect(error.description.contains("not a brokerd log segment"))
        }
        foreign.unlock()
        // An unreadable segment (here a directory where a segment file should be) stops recovery with its path.
        let unreadable = try DataDirectory(path: parent + "/unreadable")
        try FileManager.default.createDirectory(atPath: unreadable.logPath + "/00000000000000000007.seg", withIntermediateDirectories: false)
        do {
            _ = try LogRecovery.recover(directory: unreadable.logPath)
            Issue.record("an unreadable segment was accepted")
        } catch let error as StorageError {
            #expect(error.description.contains("00000000000000000007.seg"))
        }
        unreadable.unlock()
    }

    @Test("metadata is replaced atomically: no temporary file is left and a reader sees old or new, whole")
    func atomicWrite() throws {
        let dir = scratchDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let path = dir + "/metadata.json"
        try DataDirectory.writeAtomically(Array("first".utf8), to: path)
        try DataDirectory.writeAtomically(Array("second".utf8), to: path)
        #expect(String(decoding: FileManager.default.contents(atPath: path)!, as: UTF8.self) == "second")
        #expect(!FileManager.default.fileExists(atPath: path + ".tmp"))
    }
}

@Suite("Definitions journal")
struct DefinitionsJournalTests {
    static func append(_ journal: DefinitionsJournal, _ records: [[UInt8]]) async throws {
        let result: Result<Void, StorageError> = await withCheckedContinuation { continuation in
            journal.append(records) { continuation.resume(returning: $0) }
        }
        try result.get()
    }

    @Test("records survive a reopen in order; a torn or corrupt tail is cut, the records before it kept")
    func roundTripAndRepair() async throws {
        let dir = scratchDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let path = dir + "/metadata.journal"
        let (journal, empty, noRepair) = try DefinitionsJournal.open(path: path)
        #expect(empty.isEmpty && noRepair == nil)
        try await Self.append(journal, [Array("one".utf8), Array("two".utf8)])
        try await Self.append(journal, [Array("three".utf8)])
        let (_, records, repair) = try DefinitionsJournal.open(path: path)
        #expect(records.map { String(decoding: $0, as: UTF8.self) } == ["one", "two", "three"])
        #expect(repair == nil)

        // A crash in the middle of the last write: every cut of its record keeps the two before it.
        let whole = Array(FileManager.default.contents(atPath: path) ?? Data())
        Durable.startRecording()
        for cut in 1...12 {
            try Data(whole.dropLast(cut)).write(to: URL(fileURLWithPath: path))
            let syncsBefore = Durable.events(under: dir).count
            let (_, kept, repaired) = try DefinitionsJournal.open(path: path)
            #expect(Array(Durable.events(under: dir).dropFirst(syncsBefore)) == [Durable.Event(kind: .file, path: path)], "the cut is synced")
            #expect(kept.map { String(decoding: $0, as: UTF8.self) } == ["one", "two"], "cut \(cut)")
            #expect(repaired != nil)
            #expect(FileManager.default.contents(atPath: path)?.count == whole.count - 13, "the tail is cut on disk")
        }
        // A flipped byte inside a record: its CRC fails, it and what follows are cut.
        var corrupt = whole
        corrupt[8 + 1] ^= 0xFF  // inside "one"
        try Data(corrupt).write(to: URL(fileURLWithPath: path))
        let (_, none, crcRepair) = try DefinitionsJournal.open(path: path)
        #expect(none.isEmpty && crcRepair?.contains("CRC") == true)
    }

    @Test("compaction writes the snapshot atomically and empties the journal; later appends follow")
    func compaction() async throws {
        let dir = scratchDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let (journal, _, _) = try DefinitionsJournal.open(path: dir + "/metadata.journal")
        try await Self.append(journal, [Array("before".utf8)])
        let done: Result<Void, StorageError> = await withCheckedContinuation { continuation in
            journal.compact(snapshotPath: dir + "/metadata.json", encode: { Array("snapshot".utf8) }) { continuation.resume(returning: $0) }
        }
        try done.get()
        try await Self.append(journal, [Array("after".utf8)])
        #expect(String(decoding: FileManager.default.contents(atPath: dir + "/metadata.json") ?? Data(), as: UTF8.self) == "snapshot")
        let (_, records, _) = try DefinitionsJournal.open(path: dir + "/metadata.journal")
        #expect(records.map { String(decoding: $0, as: UTF8.self) } == ["after"])
        #expect(!FileManager.default.fileExists(atPath: dir + "/metadata.json.tmp"))
    }
}
