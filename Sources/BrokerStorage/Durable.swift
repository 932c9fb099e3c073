import Foundation
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// File-system changes made durable: what a power cut right after the call cannot undo.
///
/// A write is not durable until its file is synced, and a name (a file created, renamed or removed in a directory)
/// is not durable until its *directory* is synced: after a power cut, an `unlink`ed segment reappears and a torn tail
/// that recovery cut with `truncate` is back, to be repaired again, unless these were synced. Every change of that kind
/// in the storage layer goes through here, so one place says how it is made durable and tests can watch it happen.
enum Durable {
    /// One sync, as tests observe it.
    struct Event: Equatable, Sendable {
        enum Kind: Sendable { case file, directory }
        var kind: Kind
        var path: String
    }

    /// The syncs made while recording is on (tests turn it on with ``startRecording()``; nil, the default, records
    /// nothing and costs one uncontended lock per directory sync or cut, none of which is on a per-message path).
    /// Tests run in parallel in one process, so a test filters the events by its own scratch directory.
    static let recorded = Mutex<[Event]?>(nil)

    /// Turns recording on for the rest of the process (tests only).
    static func startRecording() {
        recorded.withLock { if $0 == nil { $0 = [] } }
    }

    /// The recorded syncs of paths under `prefix`, in order.
    static func events(under prefix: String) -> [Event] {
        recorded.withLock { ($0 ?? []).filter { $0.path.hasPrefix(prefix) } }
    }

    private static func record(_ kind: Event.Kind, _ path: String) {
        recorded.withLock { $0?.append(Event(kind: kind, path: path)) }
    }

    /// Cuts the file at `path` to `length` bytes and syncs it, so the cut survives a power cut.
    static func truncate(_ path: String, to length: Int) throws {
        let fd = open(path, O_WRONLY | O_CLOEXEC)
        guard fd >= 0 else { throw StorageError("cannot open \(path) to cut it: \(String(cString: strerror(errno)))") }
        defer { close(fd) }
        guard ftruncate(fd, off_t(length)) == 0 else {
            throw StorageError("cannot cut \(path) to \(length) bytes: \(String(cString: strerror(errno)))")
        }
        guard fsync(fd) == 0 else { throw StorageError("cannot fsync \(path) after cutting it: \(String(cString: strerror(errno)))") }
        record(.file, path)
    }

    /// fsync of a directory, so the names created, renamed or removed in it survive a power cut.
    static func syncDirectory(_ directory: String) throws {
        let fd = open(directory.isEmpty ? "." : directory, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        guard fd >= 0 else { throw StorageError("cannot open \(directory): \(String(cString: strerror(errno)))") }
        defer { close(fd) }
        guard fsync(fd) == 0 else { throw StorageError("cannot fsync \(directory): \(String(cString: strerror(errno)))") }
        record(.directory, directory)
    }

    /// Creates the directory and any missing parents (`mkdir -p`), syncing each new directory's parent so the new
    /// names survive a power cut. An existing directory is left as it is.
    static func createDirectory(_ path: String) throws {
        let standardized = (path as NSString).standardizingPath
        var missing: [String] = []
        var current = standardized
        while !current.isEmpty && current != "/" {
            var isDirectory: ObjCBool = false
            if FileManager.default.fileExists(atPath: current, isDirectory: &isDirectory) {
                guard isDirectory.boolValue else { throw StorageError("\(current) exists but is not a directory") }
                break
            }
            missing.append(current)
            current = (current as NSString).deletingLastPathComponent
        }
        for directory in missing.reversed() {
            if mkdir(directory, 0o755) != 0 && errno != EEXIST {
                throw StorageError("cannot create \(directory): \(String(cString: strerror(errno)))")
            }
            try syncDirectory((directory as NSString).deletingLastPathComponent)
        }
    }
}
