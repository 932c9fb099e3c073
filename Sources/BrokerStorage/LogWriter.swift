import Foundation
public import NIOCore
import NIOConcurrencyHelpers
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// When the log is flushed to the disk, and what a publisher confirm therefore promises.
public enum FsyncPolicy: String, Sendable, CaseIterable {
    /// `fdatasync` after every group of appends, before their confirms: a confirmed message survives a power loss.
    case always
    /// Write at once, `fdatasync` at most every `--fsync-interval-ms`: confirms after the write; a power loss (not a
    /// broker crash) can lose up to the interval.
    case interval
    /// Write at once and leave flushing to the OS: survives a broker crash, not a power loss.
    case never
}

/// The message log's I/O thread. The event loop hands it one batch of records per read cycle; it writes every batch
/// queued meanwhile, syncs them with one `fdatasync` per touched segment (group commit) and then runs the batches'
/// completions. Nothing here blocks the event loop.
public final class LogWriter: Sendable {
    /// One segment's bytes of a batch.
    public struct Chunk: Sendable {
        public var segment: UInt64
        public var bytes: ByteBuffer
    }

    struct Job: Sendable {
        var chunks: [Chunk]
        var deleteSegments: [UInt64]
        var completion: @Sendable (Result<Void, StorageError>) -> Void
    }

    private struct State {
        var jobs: [Job] = []
        var stopping = false
    }

    public let directory: String
    private let policy: FsyncPolicy
    private let intervalNanos: UInt64
    private let state = Mutex(State())
    private let condition = ConditionLock(value: 0)
    private let thread: NIOThreadBox

    public init(directory: String, policy: FsyncPolicy, intervalMilliseconds: Int = 100) {
        self.directory = directory
        self.policy = policy
        self.intervalNanos = UInt64(max(1, intervalMilliseconds)) * 1_000_000
        self.thread = NIOThreadBox()
        let box = thread
        let this = UnownedBox(self)
        box.start { this.value?.run() }
    }

    /// Queues a batch. The completion runs on the writer's thread once the batch is written (and synced, with the
    /// `always` policy), or failed: a failed batch leaves no partial record behind.
    public func submit(_ chunks: [Chunk], deleteSegments: [UInt64] = [],
                       completion: @escaping @Sendable (Result<Void, StorageError>) -> Void) {
        state.withLock { $0.jobs.append(Job(chunks: chunks, deleteSegments: deleteSegments, completion: completion)) }
        condition.lock()
        condition.unlock(withValue: 1)
    }

    /// Returns once every batch submitted before it has been written and its completion has run.
    public func barrier() async {
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            submit([]) { _ in continuation.resume() }
        }
    }

    /// Writes what is queued, syncs, and stops the thread.
    public func shutdown() {
        state.withLock { $0.stopping = true }
        condition.lock()
        condition.unlock(withValue: 1)
        thread.join()
        for (_, fd) in files.withLock({ $0 }) { fdatasync(fd); close(fd) }
    }

    // MARK: - The thread

    /// Open segment files by index, with their sizes.
    private let files = Mutex<[UInt64: Int32]>([:])
    private let sizes = Mutex<[UInt64: Int]>([:])

    private func run() {
        var lastSync = DispatchTime.now().uptimeNanoseconds
        var unsynced: Set<UInt64> = []
        while true {
            condition.lock(whenValue: 1)
            condition.unlock(withValue: 0)
            let (jobs, stopping) = state.withLock { state -> ([Job], Bool) in
                defer { state.jobs.removeAll() }
                return (state.jobs, state.stopping)
            }
            var touched: Set<UInt64> = []
            var failure: StorageError?
            for job in jobs where failure == nil {
                for chunk in job.chunks {
                    do {
                        try append(chunk)
                        touched.insert(chunk.segment)
                    } catch let error as StorageError {
                        failure = error
                        break
                    } catch {
                        failure = StorageError("\(error)")
                        break
                    }
                }
            }
            if failure == nil {
                unsynced.formUnion(touched)
                let now = DispatchTime.now().uptimeNanoseconds
                let due = policy == .always || (policy == .interval && now - lastSync >= intervalNanos) || stopping
                if due && policy != .never || stopping {
                    for segment in unsynced {
                        if let fd = files.withLock({ $0[segment] }), fdatasync(fd) != 0 {
                            failure = StorageError("fdatasync of log segment \(segment) failed: \(String(cString: strerror(errno)))")
                        }
                    }
                    unsynced.removeAll()
                    lastSync = now
                }
            }
            // Removed segments are removed for good only once the directory is synced: one sync per batch.
            var deleted = false
            for job in jobs {
                for segment in job.deleteSegments { deleted = deleteSegment(segment) || deleted }
            }
            if deleted {
                do {
                    try Durable.syncDirectory(directory)
                } catch {
                    failure = failure ?? StorageError("after removing settled segments: \(error)")
                }
            }
            for job in jobs { job.completion(failure.map { .failure($0) } ?? .success(())) }
            if stopping && state.withLock({ $0.jobs.isEmpty }) { return }
        }
    }

    static func segmentPath(_ directory: String, _ segment: UInt64) -> String {
        let digits = String(segment)
        return directory + "/" + String(repeating: "0", count: max(0, 20 - digits.count)) + digits + ".seg"
    }

    private func descriptor(for segment: UInt64) throws -> Int32 {
        if let fd = files.withLock({ $0[segment] }) { return fd }
        let path = Self.segmentPath(directory, segment)
        let existed = FileManager.default.fileExists(atPath: path)
        let fd = open(path, O_WRONLY | O_CREAT | O_CLOEXEC, 0o644)
        guard fd >= 0 else { throw StorageError("cannot open log segment \(path): \(String(cString: strerror(errno)))") }
        var size = Int(lseek(fd, 0, SEEK_END))
        if size == 0 {
            let header = LogRecord.segmentHeader
            guard header.withUnsafeBytes({ write(fd, $0.baseAddress, $0.count) }) == header.count else {
                let message = String(cString: strerror(errno))
                _ = ftruncate(fd, 0)
                close(fd)
                throw StorageError("cannot write log segment \(path): \(message)")
            }
            size = header.count
        }
        if !existed { try DataDirectory.syncDirectory(of: path) }
        files.withLock { $0[segment] = fd }
        sizes.withLock { $0[segment] = size }
        return fd
    }

    /// Appends a chunk; on any failure the file is cut back to its size before the chunk, so no half record stays.
    private func append(_ chunk: Chunk) throws {
        let fd = try descriptor(for: chunk.segment)
        let before = sizes.withLock { $0[chunk.segment] ?? 0 }
        var written = 0
        let total = chunk.bytes.readableBytes
        let result: Int32 = chunk.bytes.withUnsafeReadableBytes { raw in
            while written < total {
                let n = pwrite(fd, raw.baseAddress! + written, total - written, off_t(before + written))  // total > 0 here
                if n < 0 {
                    if errno == EINTR { continue }
                    return errno
                }
                if n == 0 { return ENOSPC }
                written += n
            }
            return 0
        }
        if result != 0 {
            _ = ftruncate(fd, off_t(before))
            throw StorageError("write to log segment \(chunk.segment) failed: \(String(cString: strerror(result))); nothing of this batch was kept")
        }
        sizes.withLock { $0[chunk.segment] = before + total }
    }

    /// Removes a settled segment's file; whether a name was removed (the directory then needs a sync).
    private func deleteSegment(_ segment: UInt64) -> Bool {
        if let fd = files.withLock({ $0.removeValue(forKey: segment) }) { close(fd) }
        sizes.withLock { _ = $0.removeValue(forKey: segment) }
        return unlink(Self.segmentPath(directory, segment)) == 0
    }
}

/// A weak reference that can cross into the writer thread's closure.
final class UnownedBox<T: AnyObject & Sendable>: Sendable {
    weak let value: T?
    init(_ value: T) { self.value = value }
}

/// A plain pthread the writer runs on (not an event loop: it blocks in `fdatasync`).
final class NIOThreadBox: Sendable {
    private let finished = ConditionLock(value: 0)

    func start(_ body: @escaping @Sendable () -> Void) {
        let finished = self.finished
        let thread = Thread {
            body()
            finished.lock()
            finished.unlock(withValue: 1)
        }
        thread.name = "brokerd-log-writer"
        thread.start()
    }

    func join() {
        finished.lock(whenValue: 1)
        finished.unlock()
    }
}
