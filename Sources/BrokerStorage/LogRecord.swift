import CCRC32C
import NIOCore

/// Records of the message log (docs/operations.md, "Data directory"):
///
/// ```
/// record    := u32 length | u32 crc32c | u8 type | payload        length and crc cover type + payload
/// publish   (4) := u64 messageId | u64 publishedAt | u16 n | n × u32 queueId | envelope (rest)
/// settle    (2) := u64 messageId | u32 queueId      the message left that queue (acked, dropped, purged)
/// delivered (3) := u64 messageId | u32 queueId      the message was delivered at least once from that queue
/// ```
/// `publishedAt` is wall-clock milliseconds since the Unix epoch, so TTLs keep counting across a restart.
/// A segment file starts with the 8-byte header `BRKLOG` 0x00 0x02. Format 1 (header `BRKLOG` 0x00 0x01, publish
/// records of type 1 without `publishedAt`) is still read; its messages' TTLs restart at recovery. A brokerd that
/// knows only format 1 refuses format-2 segments (bad header) instead of cutting them as corrupt.
public enum LogRecord {
    public static let segmentHeader: [UInt8] = Array("BRKLOG".utf8) + [0, 2]
    /// Headers recovery accepts: this format and the previous one.
    static let readableHeaders: [[UInt8]] = [segmentHeader, Array("BRKLOG".utf8) + [0, 1]]
    /// Format 1's publish record (read only).
    static let untimedPublishType: UInt8 = 1
    static let publishType: UInt8 = 4
    static let settleType: UInt8 = 2
    static let deliveredType: UInt8 = 3
    /// Largest record accepted on recovery; anything larger is corruption.
    static let maxRecordSize = 64 << 20

    public static func crc(_ bytes: UnsafeRawBufferPointer) -> UInt32 {
        brokerd_crc32c(0, bytes.baseAddress, bytes.count)
    }

    /// Appends a publish record.
    /// Where the envelope starts in a publish record for `queues` queues: length, CRC, type, id, publishedAt,
    /// count, queue ids.
    static func publishEnvelopeOffset(queues: Int) -> Int { 4 + 4 + 1 + 8 + 8 + 2 + 4 * queues }

    static func writePublish(into buffer: inout ByteBuffer, id: UInt64, publishedAt: UInt64, queues: [UInt32], envelope: ByteBuffer) {
        let start = buffer.writerIndex
        buffer.writeMultipleIntegers(UInt32(0), UInt32(0), publishType, id, publishedAt, UInt16(queues.count))
        for queue in queues { buffer.writeInteger(queue) }
        buffer.writeImmutableBuffer(envelope)
        seal(&buffer, from: start)
    }

    /// Appends a settle or delivered record.
    static func writeMarker(into buffer: inout ByteBuffer, type: UInt8, id: UInt64, queue: UInt32) {
        let start = buffer.writerIndex
        buffer.writeMultipleIntegers(UInt32(0), UInt32(0), type, id, queue)
        seal(&buffer, from: start)
    }

    private static func seal(_ buffer: inout ByteBuffer, from start: Int) {
        let length = buffer.writerIndex - start - 8
        let crc: UInt32 = buffer.withUnsafeReadableBytes { raw in
            Self.crc(UnsafeRawBufferPointer(rebasing: raw[(start - buffer.readerIndex + 8)...]))
        }
        buffer.setInteger(UInt32(length), at: start)
        buffer.setInteger(crc, at: start + 4)
    }
}
