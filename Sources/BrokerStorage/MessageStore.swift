public import NIOCore
import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// Where a message's envelope lies in the log, to read it back (paging): the id of the record holding it (which
/// names its segment: ids grow with the log) and the envelope's offset and length in that segment. 16 bytes, so a
/// queue can keep one per message: a paged message costs its queue entry and nothing else.
public struct LogLocation: Sendable, Hashable {
    /// The record's message id; 0 for "not in the log".
    public var id: UInt64
    public var offset: UInt32
    public var length: UInt32

    public init(id: UInt64, offset: UInt32, length: UInt32) {
        self.id = id
        self.offset = offset
        self.length = length
    }

    public static let none = LogLocation(id: 0, offset: 0, length: 0)
    public var isNone: Bool { id == 0 }
}

/// The event loop's side of the message log: it numbers persistent messages, encodes their records into the
/// current cycle's batch, counts each segment's live (message, queue) pairs, and hands the batch to the
/// ``LogWriter`` once per read cycle. A segment whose messages have all left their queues is deleted, oldest first,
/// so disk use follows the backlog rather than the history.
///
/// Not thread-safe: owned by the broker's event loop, like the broker.
public final class MessageStore {
    public let writer: LogWriter
    public let maxSegmentSize: Int
    public private(set) var nextMessageId: UInt64
    /// Records with lower ids were on disk when the broker started.
    public let firstIdOfThisRun: UInt64
    /// Wall-clock milliseconds since the Unix epoch, stamped on publish records (tests replace it).
    public var wallClock: () -> UInt64 = MessageStore.millisecondsSinceEpoch
    private var batchTime: UInt64 = 0

    /// The real clock: `CLOCK_REALTIME` in milliseconds.
    public static func millisecondsSinceEpoch() -> UInt64 {
        var time = timespec()
        clock_gettime(CLOCK_REALTIME, &time)
        return UInt64(max(0, time.tv_sec)) * 1000 + UInt64(max(0, time.tv_nsec)) / 1_000_000
    }

    struct Segment {
        var index: UInt64
        var firstId: UInt64
        var lastId: UInt64
        var live: Int
    }
    private var segments: [Segment] = []
    private var current: Segment
    private var currentSize: Int
    private var batch = ByteBuffer()
    private var chunks: [LogWriter.Chunk] = []
    private var deletions: [UInt64] = []

    /// Starts after recovery: old segments stay while they hold live messages; appends go to a new segment.
    public init(writer: LogWriter, recovered: RecoveredLog, maxSegmentSize: Int = 64 << 20) {
        self.writer = writer
        self.maxSegmentSize = min(maxSegmentSize, Self.maxSegmentSizeLimit)
        self.nextMessageId = max(1, recovered.nextMessageId)
        self.firstIdOfThisRun = nextMessageId
        var live: [UInt64: Int] = [:]
        for message in recovered.messages { live[message.segment, default: 0] += message.queues.count }
        for range in recovered.segmentRanges {
            segments.append(Segment(index: range.segment, firstId: range.firstId, lastId: range.lastId, live: live[range.segment] ?? 0))
        }
        let next = (recovered.segments.max() ?? 0) + 1
        current = Segment(index: next, firstId: nextMessageId, lastId: nextMessageId &- 1, live: 0)
        currentSize = LogRecord.segmentHeader.count
        // Segments with nothing live (or only markers) can go now.
        let keep = Set(segments.filter { $0.live > 0 }.map(\.index))
        deletions = recovered.segments.filter { !keep.contains($0) }
        segments.removeAll { $0.live == 0 }
    }

    public var hasPendingWrites: Bool { batch.readableBytes > 0 || !chunks.isEmpty || !deletions.isEmpty }
    /// Segments on disk (for tests and status).
    public var segmentCount: Int { segments.count + 1 }

    /// Appends a publish record for a message entering the given durable queues; returns where its envelope lies
    /// (its `id` is the message's log id). A queue that pages the message out reads it back from there: a
    /// persistent message is never written twice.
    @discardableResult
    public func appendPublish(envelope: ByteBuffer, queues: [UInt32]) -> LogLocation {
        appendRecord(envelope: envelope, queues: queues, pageReferences: 0)
    }

    /// Writes a message's envelope to the log so a queue can drop it from memory (paging): a record with no queue,
    /// which recovery never restores, kept alive by one page reference until ``releasePage(_:)``.
    public func appendPage(envelope: ByteBuffer) -> LogLocation {
        appendRecord(envelope: envelope, queues: [], pageReferences: 1)
    }

    private func appendRecord(envelope: ByteBuffer, queues: [UInt32], pageReferences: Int) -> LogLocation {
        let id = nextMessageId
        nextMessageId += 1
        let recordStart = currentSize + batch.readableBytes
        // Fits: segments are at most `maxSegmentSizeLimit` plus one record, and a record is at most 2^31 bytes.
        let location = LogLocation(id: id, offset: UInt32(truncatingIfNeeded: recordStart + LogRecord.publishEnvelopeOffset(queues: queues.count)),
                                   length: UInt32(truncatingIfNeeded: envelope.readableBytes))
        if batch.readableBytes == 0 { batchTime = wallClock() }  // one clock read per batch
        LogRecord.writePublish(into: &batch, id: id, publishedAt: batchTime, queues: queues, envelope: envelope)
        current.lastId = id
        current.live += queues.count + pageReferences
        rollIfFull()
        return location
    }

    /// The largest segment size the store takes: envelope offsets are 32-bit.
    public static let maxSegmentSizeLimit = 1 << 30

    /// A paged message was read back or dropped: its record may go once its segment has nothing else live.
    public func releasePage(_ id: UInt64) {
        release(id)
    }

    /// Reads an envelope back from the log (pread on the event loop: from the page cache this takes microseconds).
    public func read(_ location: LogLocation) throws -> ByteBuffer {
        guard let segment = segmentIndex(holding: location.id) else {
            throw StorageError("cannot page message \(location.id) in: no segment holds it")
        }
        let fd: Int32
        if let cached = readDescriptors[segment] {
            fd = cached
        } else {
            let path = LogWriter.segmentPath(writer.directory, segment)
            fd = open(path, O_RDONLY | O_CLOEXEC)
            guard fd >= 0 else { throw StorageError("cannot open \(path) to page a message in: \(String(cString: strerror(errno)))") }
            readDescriptors[segment] = fd
        }
        let buffer: ByteBuffer
        do {
            buffer = try readBytes(fd, count: Int(location.length), at: Int(location.offset))
        } catch {
            throw StorageError("cannot page a message in from segment \(segment): \(error.message)")
        }
        guard buffer.readableBytes == Int(location.length) else {
            throw StorageError("cannot page a message in from segment \(segment): short read")
        }
        return buffer
    }

    /// The segment whose publish records include `id` (ids grow with the log, so this is a binary search).
    func segmentIndex(holding id: UInt64) -> UInt64? {
        if id >= current.firstId { return id <= current.lastId ? current.index : nil }
        return segments.firstIndex(holding: id).map { segments[$0].index }
    }

    private var readDescriptors: [UInt64: Int32] = [:]

    deinit {
        for fd in readDescriptors.values { close(fd) }
    }

    /// Records that a message left a queue (acknowledged, dropped, purged, or its queue deleted).
    public func appendSettle(id: UInt64, queue: UInt32) {
        LogRecord.writeMarker(into: &batch, type: LogRecord.settleType, id: id, queue: queue)
        release(id)
        rollIfFull()
    }

    /// Records that a message was delivered from a queue, so it comes back marked redelivered after a crash.
    public func appendDelivered(id: UInt64, queue: UInt32) {
        LogRecord.writeMarker(into: &batch, type: LogRecord.deliveredType, id: id, queue: queue)
        rollIfFull()
    }

    /// Hands this cycle's records to the writer. `completion` runs on the writer's thread when they are durable
    /// (per the fsync policy) or failed.
    public func commit(completion: @escaping @Sendable (Result<Void, StorageError>) -> Void) {
        closeBatch()
        let work = chunks
        let delete = deletions
        chunks = []
        deletions = []
        writer.submit(work, deleteSegments: delete, completion: completion)
    }

    private func release(_ id: UInt64) {
        if id >= current.firstId {
            current.live -= 1
            return
        }
        if let index = segments.firstIndex(holding: id) { segments[index].live -= 1 }
        // Only the oldest segments go: settle records in a later segment may refer to messages in an earlier one.
        dropOldestSettled()
    }

    private func dropOldestSettled() {
        while let first = segments.first, first.live <= 0 {
            deletions.append(first.index)
            if let fd = readDescriptors.removeValue(forKey: first.index) { close(fd) }
            segments.removeFirst()
        }
    }

    private func closeBatch() {
        guard batch.readableBytes > 0 else { return }
        chunks.append(LogWriter.Chunk(segment: current.index, bytes: batch))
        currentSize += batch.readableBytes
        batch = ByteBuffer()
    }

    private func rollIfFull() {
        guard currentSize + batch.readableBytes >= maxSegmentSize else { return }
        closeBatch()
        segments.append(current)
        current = Segment(index: current.index + 1, firstId: nextMessageId, lastId: nextMessageId &- 1, live: 0)
        currentSize = LogRecord.segmentHeader.count
        dropOldestSettled()
    }
}

extension Array where Element == MessageStore.Segment {
    /// Binary search for the segment whose id range holds `id`.
    func firstIndex(holding id: UInt64) -> Int? {
        var low = 0
        var high = count - 1
        while low <= high {
            let mid = (low + high) / 2
            if id < self[mid].firstId {
                high = mid - 1
            } else if id > self[mid].lastId {
                low = mid + 1
            } else {
                return mid
            }
        }
        return nil
    }
}
