import Foundation
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// The broker's data directory, held exclusively with a lock file for as long as the broker runs.
///
/// Layout (docs/operations.md, "Data directory"):
/// ```
/// <dir>/brokerd.lock        lock file: flock(2)-held by the running broker, holds its PID
/// <dir>/metadata.json       durable exchanges, queues, bindings and users: a snapshot, replaced atomically
/// <dir>/metadata.journal    the changes to them since that snapshot, appended
/// <dir>/log/NNNNNNNNNNNNNNNNNNNN.seg   message log segments, in order
/// <dir>/clean-stop          written by a clean stop, removed at start
/// ```
public final class DataDirectory: Sendable {
    public let path: String
    public var logPath: String { path + "/log" }
    public var metadataPath: String { path + "/metadata.json" }
    /// Changes to the definitions since `metadata.json` was written (``DefinitionsJournal``).
    public var metadataJournalPath: String { path + "/metadata.journal" }
    /// Present only between a clean stop and the next start: its absence at start means the broker was killed
    /// (or lost power), so messages it had delivered may have been delivered without the log knowing.
    public var cleanStopPath: String { path + "/clean-stop" }

    /// Records that the broker stopped cleanly (its log and definitions are complete): the last thing a clean stop
    /// does before it unlocks the directory.
    public func markCleanStop() throws {
        try DataDirectory.writeAtomically(Array("clean\n".utf8), to: cleanStopPath)
    }

    /// Whether the previous run stopped cleanly; the mark is removed (durably) so a crash of this run is seen.
    public func takeCleanStop() throws -> Bool {
        guard FileManager.default.fileExists(atPath: cleanStopPath) else { return false }
        guard unlink(cleanStopPath) == 0 else { throw StorageError("cannot remove \(cleanStopPath): \(String(cString: strerror(errno)))") }
        try Self.syncDirectory(of: cleanStopPath)
        return true
    }
    private let lockDescriptor: Mutex<Int32?>

    /// Opens (creating it if missing) and locks the directory. Throws ``StorageError`` with a message a person can
    /// act on: another broker holds it, it cannot be created, it is not writable.
    public init(path: String) throws {
        self.path = path
        var isDirectory: ObjCBool = false
        if FileManager.default.fileExists(atPath: path, isDirectory: &isDirectory) {
            guard isDirectory.boolValue else { throw StorageError("data directory \(path) exists but is not a directory") }
        } else {
            do {
                try Durable.createDirectory(path)
            } catch {
                throw StorageError("cannot create the data directory \(path): \(error)")
            }
        }
        guard access(path, R_OK | W_OK | X_OK) == 0 else {
            throw StorageError("data directory \(path) is not readable and writable by this user (\(String(cString: strerror(errno))))")
        }
        let lockPath = path + "/brokerd.lock"
        let fd = open(lockPath, O_RDWR | O_CREAT | O_CLOEXEC, 0o644)
        guard fd >= 0 else { throw StorageError("cannot open the lock file \(lockPath): \(String(cString: strerror(errno)))") }
        guard flock(fd, LOCK_EX | LOCK_NB) == 0 else {
            var buffer = [UInt8](repeating: 0, count: 32)
            let n = pread(fd, &buffer, 31, 0)
            let holder = n > 0 ? String(decoding: buffer[0..<n], as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines) : "?"
            close(fd)
            throw StorageError("another brokerd (pid \(holder)) is using the data directory \(path); stop it or choose another --data-dir")
        }
        let pid = "\(getpid())\n"
        _ = ftruncate(fd, 0)
        _ = pid.withCString { pwrite(fd, $0, strlen($0), 0) }
        lockDescriptor = Mutex(fd)
        do {
            try Durable.createDirectory(path + "/log")
        } catch {
            close(fd)
            throw StorageError("cannot create \(path)/log: \(error)")
        }
    }

    deinit { unlock() }

    /// Releases the lock (at shutdown); another broker may then use the directory.
    public func unlock() {
        guard let fd = lockDescriptor.withLock({ fd -> Int32? in
            defer { fd = nil }
            return fd
        }) else { return }
        flock(fd, LOCK_UN)
        close(fd)
    }

    static func reason(_ error: any Error) -> String {
        (error as NSError).localizedFailureReason ?? (error as NSError).localizedDescription
    }

    /// Bytes free for an unprivileged writer on the file system holding the directory, or nil if unknown.
    public func freeBytes() -> UInt64? {
        var info = statvfs()
        guard statvfs(path, &info) == 0 else { return nil }
        return UInt64(info.f_bavail) * UInt64(info.f_frsize)
    }

    /// Writes a file atomically: a temporary file, fsync, rename over the target, fsync of the directory.
    public static func writeAtomically(_ data: [UInt8], to path: String) throws {
        let temporary = path + ".tmp"
        let fd = open(temporary, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644)
        guard fd >= 0 else { throw StorageError("cannot write \(temporary): \(String(cString: strerror(errno)))") }
        var written = 0
        while written < data.count {
            let n = data[written...].withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
            if n < 0 {
                if errno == EINTR { continue }
                let message = String(cString: strerror(errno))
                close(fd)
                unlink(temporary)
                throw StorageError("cannot write \(temporary): \(message)")
            }
            written += n
        }
        guard fsync(fd) == 0 else {
            let message = String(cString: strerror(errno))
            close(fd)
            unlink(temporary)
            throw StorageError("cannot fsync \(temporary): \(message)")
        }
        close(fd)
        guard rename(temporary, path) == 0 else { throw StorageError("cannot rename \(temporary): \(String(cString: strerror(errno)))") }
        try syncDirectory(of: path)
    }

    /// fsync of the directory holding `path`, so a rename or a new file survives a crash.
    public static func syncDirectory(of path: String) throws {
        try Durable.syncDirectory((path as NSString).deletingLastPathComponent)
    }
}

/// A storage failure, with a message for the operator.
public struct StorageError: Error, CustomStringConvertible, Sendable {
    public var description: String
    public init(_ description: String) { self.description = description }
}
