import CCRC32C

/// The 16 bytes every brokerbench message body starts with, so a consumer can check each delivery on its own:
///
/// ```
/// 0..<8    send time, ns (u64 little-endian): end-to-end latency
/// 8..<10   producer id (u16 LE): a random base per run plus the producer's index, so two runs' messages differ
/// 10..<14  the producer's sequence number (u32 LE), from 0
/// 14..<16  check: the low 16 bits of CRC32C over bytes 16..<size, then bytes 0..<14
/// 16...    filler
/// ```
///
/// 16 bytes keep scenario S1's 16-byte messages (amqp_bench's smallest) comparable; the check covers the whole body.
enum BenchBody {
    static let headerSize = 16

    /// The CRC32C of the filler, the part every message of a producer shares: each message then extends it over
    /// its 14 header bytes only.
    static func fillerCRC(_ filler: UnsafeRawBufferPointer) -> UInt32 {
        brokerd_crc32c(0, filler.baseAddress, filler.count)
    }

    /// Writes the header of one message into `body` (at least 16 bytes), given the filler's CRC.
    static func stamp(_ body: UnsafeMutableRawBufferPointer, sentAt: UInt64, producer: UInt16, sequence: UInt32, fillerCRC: UInt32) {
        body.storeBytes(of: sentAt.littleEndian, toByteOffset: 0, as: UInt64.self)
        body.storeBytes(of: producer.littleEndian, toByteOffset: 8, as: UInt16.self)
        body.storeBytes(of: sequence.littleEndian, toByteOffset: 10, as: UInt32.self)
        let crc = brokerd_crc32c(fillerCRC, body.baseAddress, 14)
        body.storeBytes(of: UInt16(truncatingIfNeeded: crc).littleEndian, toByteOffset: 14, as: UInt16.self)
    }

    /// What a body says, if its check holds.
    struct Parsed {
        var sentAt: UInt64
        var producer: UInt16
        var sequence: UInt32
    }

    static func parse(_ body: UnsafeRawBufferPointer) -> Parsed? {
        guard body.count >= headerSize else { return nil }
        let filler = UnsafeRawBufferPointer(rebasing: body[headerSize...])
        let crc = brokerd_crc32c(fillerCRC(filler), body.baseAddress, 14)
        guard UInt16(truncatingIfNeeded: crc) == UInt16(littleEndian: body.loadUnaligned(fromByteOffset: 14, as: UInt16.self)) else { return nil }
        return Parsed(sentAt: UInt64(littleEndian: body.loadUnaligned(fromByteOffset: 0, as: UInt64.self)),
                      producer: UInt16(littleEndian: body.loadUnaligned(fromByteOffset: 8, as: UInt16.self)),
                      sequence: UInt32(littleEndian: body.loadUnaligned(fromByteOffset: 10, as: UInt32.self)))
    }
}

/// A set of sequence numbers as a bitmap (one bit per number up to the highest seen): what one consumer received
/// from one producer, merged across the consumers of a queue at the end to find duplicates between them.
struct SequenceSet {
    private(set) var words: [UInt64] = []

    /// Inserts `n`; whether it was there already.
    mutating func insert(_ n: UInt32) -> Bool {
        let word = Int(n >> 6)
        if word >= words.count { words.append(contentsOf: repeatElement(0, count: max(word + 1 - words.count, words.count))) }
        let bit = UInt64(1) << UInt64(n & 63)
        defer { words[word] |= bit }
        return words[word] & bit != 0
    }

    /// Adds `other`'s numbers; how many were in both.
    mutating func merge(_ other: SequenceSet) -> Int {
        if other.words.count > words.count { words.append(contentsOf: repeatElement(0, count: other.words.count - words.count)) }
        var common = 0
        for (i, word) in other.words.enumerated() {
            common += (words[i] & word).nonzeroBitCount
            words[i] |= word
        }
        return common
    }
}

/// What a consumer checks on every delivery: the consumer tag is its own; the body's check holds; per producer, the
/// sequence numbers rise (a queue is FIFO, so each consumer sees a producer's messages in order, with gaps when it
/// shares the queue); nothing comes twice unless flagged redelivered. Violations are counted, the first few kept.
struct DeliveryCheck {
    var consumerTag: UInt32?
    var redelivered: UInt64 = 0
    var violations: UInt64 = 0
    var samples: [String] = []
    /// Per producer id: the highest sequence number delivered so far, plus one (0: none yet).
    private var next: [UInt16: UInt32] = [:]
    /// Per producer id: every sequence number delivered to this consumer.
    private var delivered: [UInt16: SequenceSet] = [:]
    /// Per producer id: the sequence numbers delivered without the redelivered flag (merged across consumers).
    private(set) var seen: [UInt16: SequenceSet] = [:]

    mutating func violation(_ text: @autoclosure () -> String) {
        violations += 1
        if samples.count < 10 { samples.append(text()) }
    }

    /// Checks one delivery; returns its send time when the body is intact.
    mutating func check(consumerTag tag: UInt32, deliveryTag: UInt64, redelivered isRedelivered: Bool,
                        body: UnsafeRawBufferPointer) -> UInt64? {
        if let consumerTag, tag != consumerTag {
            violation("delivery \(deliveryTag) carries consumer tag \(tag); this connection's consumer is \(consumerTag)")
        }
        if isRedelivered { redelivered += 1 }
        guard let parsed = BenchBody.parse(body) else {
            violation("delivery \(deliveryTag): corrupt or foreign body (\(body.count) bytes, check mismatch)")
            return nil
        }
        let expected = next[parsed.producer] ?? 0
        let again = delivered[parsed.producer, default: SequenceSet()].insert(parsed.sequence)
        if !isRedelivered {
            _ = seen[parsed.producer, default: SequenceSet()].insert(parsed.sequence)
            if again {
                violation("delivery \(deliveryTag): producer \(parsed.producer) message \(parsed.sequence) delivered again without the redelivered flag")
            } else if parsed.sequence < expected {
                violation("delivery \(deliveryTag): producer \(parsed.producer) message \(parsed.sequence) after \(expected - 1): out of order")
            }
        }
        if parsed.sequence >= expected { next[parsed.producer] = parsed.sequence + 1 }
        return parsed.sentAt
    }
}
