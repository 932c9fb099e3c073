public import NIOCore
import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// Where a message's envelope lies in the log, to read it back (paging).
public struct PageLocation: Sendable, Hashable {
    public var segment: UInt64
    public var offset: Int
    public var length: Int
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
        self.maxSegmentSize = maxSegmentSize
        self.nextMessageId = max(1, recovered.nextMessageId)
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

    /// Appends a publish record for a message entering the given durable queues; returns its id.
    @discardableResult
    public func appendPublish(envelope: ByteBuffer, queues: [UInt32]) -> UInt64 {
        appendRecord(envelope: envelope, queues: queues, pageReferences: 0).id
    }

    /// Writes a message's envelope to the log so a queue can drop it from memory (paging): a record with no queue,
    /// which recovery never restores, kept alive by one page reference until ``releasePage(_:)``.
    public func appendPage(envelope: ByteBuffer) -> (id: UInt64, location: PageLocation) {
        appendRecord(envelope: envelope, queues: [], pageReferences: 1)
    }

    private func appendRecord(envelope: ByteBuffer, queues: [UInt32], pageReferences: Int) -> (id: UInt64, location: PageLocation) {
        let id = nextMessageId
        nextMessageId += 1
        let recordStart = currentSize + batch.readableBytes
        let location = PageLocation(segment: current.index, offset: recordStart + 8 + 1 + 8 + 2 + 4 * queues.count,
                                    length: envelope.readableBytes)
        LogRecord.writePublish(into: &batch, id: id, queues: queues, envelope: envelope)
        current.lastId = id
        current.live += queues.count + pageReferences
        rollIfFull()
        return (id, location)
    }

    /// A paged message was read back or dropped: its record may go once its segment has nothing else live.
    public func releasePage(_ id: UInt64) {
        release(id)
    }

    /// Reads a paged envelope back (pread on the event loop: from the page cache this takes microseconds).
    public func read(_ location: PageLocation) throws -> ByteBuffer {
        let fd: Int32
        if let cached = readDescriptors[location.segment] {
            fd = cached
        } else {
            let path = LogWriter.segmentPath(writer.directory, location.segment)
            fd = open(path, O_RDONLY | O_CLOEXEC)
            guard fd >= 0 else { throw StorageError("cannot open \(path) to page a message in: \(String(cString: strerror(errno)))") }
            readDescriptors[location.segment] = fd
        }
        let buffer: ByteBuffer
        do {
            buffer = try readBytes(fd, count: location.length, at: location.offset)
        } catch {
            throw StorageError("cannot page a message in from segment \(location.segment): \(error.message)")
        }
        guard buffer.readableBytes == location.length else {
            throw StorageError("cannot page a message in from segment \(location.segment): short read")
        }
        return buffer
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
        // Binary search the segment holding the id.
        var low = 0
        var high = segments.count - 1
        while low <= high {
            let mid = (low + high) / 2
            if id < segments[mid].firstId {
                high = mid - 1
            } else if id > segments[mid].lastId {
                low = mid + 1
            } else {
                segments[mid].live -= 1
                break
            }
        }
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
