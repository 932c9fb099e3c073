import Dispatch
import Foundation
import NIOCore
#if canImport(Glibc)
import Glibc
#endif

/// The durable definitions' change log, beside their snapshot (`metadata.json`): each change (a queue declared, a
/// binding removed, ...) is one record appended here, so persisting a definition costs a small write and one
/// `fdatasync` shared by every change of the same event-loop cycle, not a rewrite of every definition (a durable
/// declare cost 13 ms at 3,500 queues that way, on the event loop). The broker compacts it now and then by writing
/// a new snapshot and emptying the journal.
///
/// Records are opaque bytes here (the broker encodes its changes); on disk each is `u32 length | u32 crc32c |
/// bytes`. Reading stops at a torn or corrupt record and cuts the file there, as the message log does.
///
/// All file work runs on one serial queue, in submission order, off the event loop; completions are called on
/// that queue. `@unchecked Sendable`: the descriptor is used only on `queue`; the initialiser and `records` read
/// the file before any work is submitted.
public final class DefinitionsJournal: @unchecked Sendable {
    public let path: String
    private let queue = DispatchQueue(label: "brokerd.definitions")
    private var fd: Int32

    /// Opens (creating if missing) the journal and returns it with the records it holds and what was repaired.
    public static func open(path: String) throws(StorageError) -> (journal: DefinitionsJournal, records: [[UInt8]], repair: String?) {
        var records: [[UInt8]] = []
        var repair: String?
        if let data = FileManager.default.contents(atPath: path) {
            var bytes = ByteBuffer(bytes: data)
            let size = bytes.readableBytes
            while bytes.readableBytes > 0 {
                guard let (length, crc) = bytes.getMultipleIntegers(at: bytes.readerIndex, as: (UInt32, UInt32).self) else {
                    repair = "torn record header"
                    break
                }
                guard length <= 64 << 20, bytes.readableBytes - 8 >= Int(length) else {
                    repair = "torn record (\(bytes.readableBytes) of \(UInt64(length) + 8) bytes)"
                    break
                }
                let body = bytes.getBytes(at: bytes.readerIndex + 8, length: Int(length)) ?? []
                guard body.withUnsafeBytes({ LogRecord.crc($0) }) == crc else {
                    repair = "CRC mismatch"
                    break
                }
                records.append(body)
                bytes.moveReaderIndex(forwardBy: 8 + Int(length))
            }
            let offset = size - bytes.readableBytes
            if let problem = repair {
                repair = "\(path): \(problem) at byte \(offset); cut \(size - offset) bytes, kept \(records.count) records"
                do {
                    try Durable.truncate(path, to: offset)
                } catch {
                    throw StorageError("cannot cut the damaged tail of \(path): \(error)")
                }
            }
        }
        let fd = Glibc.open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0o644)
        guard fd >= 0 else { throw StorageError("cannot open \(path): \(String(cString: strerror(errno)))") }
        return (DefinitionsJournal(path: path, fd: fd), records, repair)
    }

    private init(path: String, fd: Int32) {
        self.path = path
        self.fd = fd
    }

    deinit { if fd >= 0 { close(fd) } }

    /// Appends records and makes them durable (`fdatasync`), then calls `completion`.
    public func append(_ records: [[UInt8]], completion: @escaping @Sendable (Result<Void, StorageError>) -> Void) {
        queue.async {
            var bytes = ByteBuffer()
            bytes.reserveCapacity(records.reduce(0) { $0 + 8 + $1.count })
            for record in records {
                bytes.writeMultipleIntegers(UInt32(record.count), record.withUnsafeBytes { LogRecord.crc($0) })
                bytes.writeBytes(record)
            }
            completion(Result { () throws(StorageError) in try self.writeAll(bytes) })
        }
    }

    /// Writes a snapshot atomically to `snapshotPath` (made by `encode`, called on the journal's queue, so the
    /// encoding of every definition happens off the event loop), then empties the journal. Records appended after
    /// this call go after the truncation. A crash between the two leaves records the snapshot already holds: the
    /// broker's records carry sequence numbers, and the snapshot the last one it includes.
    public func compact(snapshotPath: String, encode: @escaping @Sendable () throws -> [UInt8],
                        completion: @escaping @Sendable (Result<Void, StorageError>) -> Void) {
        queue.async {
            completion(Result { () throws(StorageError) in
                do {
                    try DataDirectory.writeAtomically(try encode(), to: snapshotPath)
                } catch let error as StorageError {
                    throw error
                } catch {
                    throw StorageError("cannot write \(snapshotPath): \(error)")
                }
                guard ftruncate(self.fd, 0) == 0, fdatasync(self.fd) == 0 else {
                    throw StorageError("cannot empty \(self.path): \(String(cString: strerror(errno)))")
                }
            })
        }
    }

    /// Waits for every submitted write (shutdown).
    public func barrier() { queue.sync {} }

    /// Writes a batch of records; on failure the file is cut back to where the batch started, so no torn record
    /// stands in front of later ones.
    private func writeAll(_ bytes: ByteBuffer) throws(StorageError) {
        let start = lseek(fd, 0, SEEK_END)
        var written = 0
        while written < bytes.readableBytes {
            let n = bytes.withUnsafeReadableBytes { Glibc.write(fd, $0.baseAddress! + written, $0.count - written) }  // non-empty: written < count
            if n < 0 {
                if errno == EINTR { continue }
                let reason = String(cString: strerror(errno))
                if start >= 0 { _ = ftruncate(fd, start) }
                throw StorageError("cannot write \(path): \(reason)")
            }
            written += n
        }
        guard fdatasync(fd) == 0 else {
            let reason = String(cString: strerror(errno))
            if start >= 0 { _ = ftruncate(fd, start) }
            throw StorageError("cannot sync \(path): \(reason)")
        }
    }
}
