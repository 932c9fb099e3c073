#if canImport(Glibc)
import Glibc
#endif

/// Decides when to hand freed heap memory back to the system. glibc's allocator keeps what a storm of
/// connections used after they close (10,000 idle connections left ~700 MB of RSS behind); `malloc_trim(0)`
/// returns the free pages. It costs milliseconds on a large heap, so the broker calls it off its event loop, and
/// only after the connection count fell by at least a quarter (and by at least 100) from its peak since the last
/// trim: a broker with steady connections never pays for it.
struct MemoryTrimmer {
    private var peak = 0

    /// Called periodically with the current connection count.
    mutating func shouldTrim(connections: Int) -> Bool {
        peak = max(peak, connections)
        guard peak - connections >= max(100, peak / 4) else { return false }
        peak = connections
        return true
    }

    /// glibc's `malloc_trim`, looked up at run time: the Glibc module does not export `malloc.h`, and another C
    /// library (musl) has no such function, in which case trimming is skipped.
    private static let mallocTrim: (@convention(c) (Int) -> Int32)? = {
        #if canImport(Glibc)
        guard let symbol = dlsym(UnsafeMutableRawPointer(bitPattern: 0), "malloc_trim") else { return nil }
        return unsafeBitCast(symbol, to: (@convention(c) (Int) -> Int32).self)
        #else
        return nil
        #endif
    }()

    static func trim() {
        _ = mallocTrim?(0)
    }
}
