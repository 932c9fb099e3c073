import Dispatch
import Foundation
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
            let bytes = [UInt8](data)
            var offset = 0
            while offset < bytes.count {
                guard bytes.count - offset >= 8 else {
                    repair = "torn record header"
                    break
                }
                let length = Int(bytes[offset..<offset + 4].reduce(UInt32(0)) { $0 << 8 | UInt32($1) })
                let crc = bytes[offset + 4..<offset + 8].reduce(UInt32(0)) { $0 << 8 | UInt32($1) }
                guard length <= 64 << 20, bytes.count - offset - 8 >= length else {
                    repair = "torn record (\(bytes.count - offset) of \(length + 8) bytes)"
                    break
                }
                let body = Array(bytes[offset + 8..<offset + 8 + length])
                guard body.withUnsafeBytes({ LogRecord.crc($0) }) == crc else {
                    repair = "CRC mismatch"
                    break
                }
                records.append(body)
                offset += 8 + length
            }
            if let problem = repair {
                repair = "\(path): \(problem) at byte \(offset); cut \(bytes.count - offset) bytes, kept \(records.count) records"
                guard truncate(path, off_t(offset)) == 0 else {
                    throw StorageError("cannot cut the damaged tail of \(path): \(String(cString: strerror(errno)))")
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
            var bytes: [UInt8] = []
            for record in records {
                let length = UInt32(record.count)
                let crc = record.withUnsafeBytes { LogRecord.crc($0) }
                for shift in stride(from: 24, through: 0, by: -8) { bytes.append(UInt8(truncatingIfNeeded: length >> UInt32(shift))) }
                for shift in stride(from: 24, through: 0, by: -8) { bytes.append(UInt8(truncatingIfNeeded: crc >> UInt32(shift))) }
                bytes += record
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
    private func writeAll(_ bytes: [UInt8]) throws(StorageError) {
        let start = lseek(fd, 0, SEEK_END)
        var written = 0
        while written < bytes.count {
            let n = bytes[written...].withUnsafeBytes { Glibc.write(fd, $0.baseAddress, $0.count) }
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
