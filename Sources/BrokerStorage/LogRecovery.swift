import Foundation
public import NIOCore
#if canImport(Glibc)
import Glibc
#endif

/// What recovery found in the log.
public struct RecoveredLog: Sendable {
    /// A message still in at least one queue.
    public struct Message: Sendable {
        public var id: UInt64
        /// Where its envelope lies. Recovery keeps no bodies: the broker reads back those it keeps in memory and
        /// leaves the rest paged out, so a backlog larger than memory recovers in bounded memory.
        public var location: LogLocation
        /// Queues it is still in.
        public var queues: [UInt32]
        /// Queues it had been delivered from (its redelivered flag there).
        public var delivered: [UInt32]
        /// The segment holding its publish record.
        public var segment: UInt64
        /// When it was published (wall-clock ms since the epoch); nil for format-1 records, which lack it.
        public var publishedAt: UInt64?

        /// Reads its envelope from its segment in `directory` (the broker reads through its ``MessageStore``).
        public func readEnvelope(directory: String) throws -> ByteBuffer {
            let path = LogWriter.segmentPath(directory, segment)
            let fd = open(path, O_RDONLY | O_CLOEXEC)
            guard fd >= 0 else { throw StorageError("cannot open \(path): \(String(cString: strerror(errno)))") }
            defer { close(fd) }
            do {
                return try readBytes(fd, count: Int(location.length), at: Int(location.offset))
            } catch {
                throw StorageError("cannot read message \(id) from \(path): \(error.message)")
            }
        }
    }


    /// The message ids each remaining segment holds publish records for.
    public var segmentRanges: [(segment: UInt64, firstId: UInt64, lastId: UInt64)]
    /// Live messages in publish order.
    public var messages: [Message]
    /// Segments left on disk, oldest first.
    public var segments: [UInt64]
    public var nextMessageId: UInt64
    /// One line per repair (torn or corrupt tail cut), for the log.
    public var repairs: [String]
    public var recordsScanned: Int
    public var bytesScanned: Int
}

/// Reads a whole file into one ByteBuffer.
func readFile(_ path: String) throws -> ByteBuffer {
    let fd = open(path, O_RDONLY | O_CLOEXEC)
    guard fd >= 0 else { throw StorageError("cannot open log segment \(path): \(String(cString: strerror(errno)))") }
    defer { close(fd) }
    var info = stat()
    guard fstat(fd, &info) == 0 else { throw StorageError("cannot stat \(path): \(String(cString: strerror(errno)))") }
    do {
        return try readBytes(fd, count: Int(info.st_size), at: 0)
    } catch {
        throw StorageError("cannot read log segment \(path): \(error.message)")
    }
}

/// Reads the log at start: checks every record's CRC, cuts a torn or corrupt tail (and says what it cut), and
/// rebuilds which messages are still in which queues.
public enum LogRecovery {
    /// The largest segment number and message id recovery accepts: 2^62. At a million messages a second that is
    /// 146,000 years of ids; anything larger was not written by brokerd, and counting on from it would overflow.
    public static let largestIndex: UInt64 = 1 << 62

    public static func recover(directory: String) throws -> RecoveredLog {
        let names: [String]
        do {
            names = try FileManager.default.contentsOfDirectory(atPath: directory)
        } catch {
            throw StorageError("cannot list the message log \(directory): \(DataDirectory.reason(error))")
        }
        let segments = names.compactMap { name -> UInt64? in
            guard name.hasSuffix(".seg") else { return nil }
            return UInt64(name.dropLast(4))
        }.sorted()
        // Segment numbers and message ids count up from 1 and each run goes on from the largest found: one at the
        // top of the range cannot have been written by brokerd, and counting on from it would overflow.
        if let last = segments.last, last > LogRecovery.largestIndex {
            throw StorageError("\(LogWriter.segmentPath(directory, last)): segment number \(last) is beyond \(LogRecovery.largestIndex), so it was not written by brokerd; move it out of the data directory")
        }

        struct Entry {
            var location: LogLocation
            var queues: [UInt32]
            var delivered: [UInt32]
            var segment: UInt64
            var publishedAt: UInt64?
        }
        var ranges: [(segment: UInt64, firstId: UInt64, lastId: UInt64)] = []
        var entries: [UInt64: Entry] = [:]
        var order: [UInt64] = []
        var maxId: UInt64 = 0
        var repairs: [String] = []
        var records = 0
        var bytes = 0

        for segment in segments {
            let path = LogWriter.segmentPath(directory, segment)
            var buffer = try readFile(path)
            let fileSize = buffer.readableBytes
            bytes += fileSize
            let headerSize = LogRecord.segmentHeader.count
            guard buffer.readableBytes >= headerSize, let header = buffer.readBytes(length: headerSize),
                  LogRecord.readableHeaders.contains(header) else {
                // A segment created but never written (crash right after creation) or not ours.
                if fileSize < headerSize {
                    repairs.append("\(path): \(fileSize)-byte segment without a complete header removed")
                    guard unlink(path) == 0 else {
                        throw StorageError("cannot remove the empty segment \(path): \(String(cString: strerror(errno)))")
                    }
                    try Durable.syncDirectory(directory)
                    continue
                }
                throw StorageError("\(path) is not a brokerd log segment (bad header); move it out of the data directory")
            }
            var validEnd = headerSize
            var problem: String?
            var firstId = UInt64.max
            var lastId: UInt64 = 0
            while buffer.readableBytes > 0 {
                guard buffer.readableBytes >= 9,
                      let (length, crc) = buffer.getMultipleIntegers(at: buffer.readerIndex, as: (UInt32, UInt32).self) else {
                    problem = "torn record header"
                    break
                }
                guard length >= 1, Int(length) <= LogRecord.maxRecordSize else {
                    problem = "impossible record length \(length)"
                    break
                }
                guard buffer.readableBytes >= 8 + Int(length) else {
                    problem = "torn record (\(buffer.readableBytes) of \(8 + Int(length)) bytes)"
                    break
                }
                let actual = buffer.withUnsafeReadableBytes { raw in
                    LogRecord.crc(UnsafeRawBufferPointer(rebasing: raw[8..<(8 + Int(length))]))
                }
                guard actual == crc else {
                    problem = "CRC mismatch"
                    break
                }
                let recordStart = buffer.readerIndex  // the buffer starts at the file's first byte
                buffer.moveReaderIndex(forwardBy: 8)
                var record = buffer.readSlice(length: Int(length)) ?? ByteBuffer()
                records += 1
                let type = record.readInteger(as: UInt8.self) ?? 0
                switch type {
                case LogRecord.publishType, LogRecord.untimedPublishType:
                    guard let id = record.readInteger(as: UInt64.self),
                          let publishedAt = type == LogRecord.publishType ? record.readInteger(as: UInt64.self) : 0,
                          let count = record.readInteger(as: UInt16.self),
                          record.readableBytes >= Int(count) * 4 else {
                        problem = "malformed publish record"
                        break
                    }
                    guard id <= LogRecovery.largestIndex else {
                        throw StorageError("\(path): a CRC-intact publish record at byte \(recordStart) carries message id \(id), beyond \(LogRecovery.largestIndex), so it was not written by brokerd; move the segment out of the data directory")
                    }
                    var queues: [UInt32] = []
                    for _ in 0..<count { queues.append(record.readInteger(as: UInt32.self) ?? 0) }
                    if entries[id] == nil { order.append(id) }
                    // The record slice starts after length and CRC; its reader now stands at the envelope.
                    let location = LogLocation(id: id, offset: UInt32(truncatingIfNeeded: recordStart + 8 + record.readerIndex),
                                               length: UInt32(truncatingIfNeeded: record.readableBytes))
                    entries[id] = Entry(location: location, queues: queues, delivered: [], segment: segment,
                                        publishedAt: type == LogRecord.publishType ? publishedAt : nil)
                    maxId = max(maxId, id)
                    firstId = min(firstId, id)
                    lastId = max(lastId, id)
                case LogRecord.settleType, LogRecord.deliveredType:
                    guard let (id, queue) = record.readMultipleIntegers(as: (UInt64, UInt32).self) else {
                        problem = "malformed marker record"
                        break
                    }
                    if type == LogRecord.settleType {
                        entries[id]?.queues.removeAll { $0 == queue }
                    } else if entries[id]?.delivered.contains(queue) == false {
                        entries[id]?.delivered.append(queue)
                    }
                default:
                    problem = "unknown record type \(type)"
                }
                if problem != nil { break }
                validEnd = buffer.readerIndex
            }
            if firstId <= lastId { ranges.append((segment, firstId, lastId)) }
            if let problem {
                let cut = fileSize - validEnd
                repairs.append("\(path): \(problem) at byte \(validEnd); cut \(cut) bytes, kept \(validEnd) bytes of intact records")
                do {
                    try Durable.truncate(path, to: validEnd)
                } catch {
                    throw StorageError("cannot cut the damaged tail of \(path): \(error)")
                }
            }
        }
        let live = order.compactMap { id -> RecoveredLog.Message? in
            guard let entry = entries[id], !entry.queues.isEmpty else { return nil }
            return RecoveredLog.Message(id: id, location: entry.location, queues: entry.queues, delivered: entry.delivered,
                                        segment: entry.segment, publishedAt: entry.publishedAt)
        }
        return RecoveredLog(segmentRanges: ranges, messages: live, segments: segments.filter { FileManager.default.fileExists(atPath: LogWriter.segmentPath(directory, $0)) },
                            nextMessageId: maxId + 1, repairs: repairs, recordsScanned: records, bytesScanned: bytes)
    }
}
