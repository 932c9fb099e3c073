import NIOCore
#if canImport(Glibc)
import Glibc
#endif

/// Reads up to `count` bytes at `offset` of an open file into a new buffer, retrying interrupted and partial reads.
/// Stops early at the end of the file (the buffer is then shorter); throws the errno of a failed read.
func readBytes(_ fd: Int32, count: Int, at offset: Int) throws(ReadFailure) -> ByteBuffer {
    var buffer = ByteBufferAllocator().buffer(capacity: count)
    guard count > 0 else { return buffer }
    var failure: Int32 = 0
    _ = buffer.writeWithUnsafeMutableBytes(minimumWritableBytes: count) { target in
        var done = 0
        while done < count {
            let n = pread(fd, target.baseAddress! + done, count - done, off_t(offset + done))  // count > 0: non-nil
            if n < 0 {
                if errno == EINTR { continue }
                failure = errno
                break
            }
            if n == 0 { break }
            done += n
        }
        return done
    }
    if failure != 0 { throw ReadFailure(code: failure) }
    return buffer
}

/// A failed read(2), with its errno.
struct ReadFailure: Error {
    var code: Int32
    var message: String { String(cString: strerror(code)) }
}
