public import NIOCore

/// Accumulates reads and yields whole frames: the hand-written decode loop both the server's and the client's
/// handlers run inside `channelRead` (DESIGN.md: no `fireChannelRead` per frame).
///
/// When a read starts on a frame boundary the read buffer itself is decoded, so frame payloads are slices of it
/// with no copy; only a frame split across reads is copied, once, into the cumulation.
public struct FrameReader {
    public var decoder: FrameDecoder
    private var cumulation: ByteBuffer?

    public init(decoder: FrameDecoder) { self.decoder = decoder }

    /// Adds bytes from a read.
    public mutating func append(_ buffer: ByteBuffer) {
        if var pending = cumulation, pending.readableBytes > 0 {
            cumulation = nil  // keep `pending` uniquely referenced, so the append does not copy
            var incoming = buffer
            pending.writeBuffer(&incoming)
            cumulation = pending
        } else {
            cumulation = buffer
        }
    }

    /// The next whole frame, nil until more bytes arrive; throws ``BrokerError`` for a malformed stream.
    public mutating func next() throws(BrokerError) -> Frame? {
        guard var buffer = cumulation else { return nil }
        cumulation = nil
        defer { cumulation = buffer.readableBytes > 0 ? buffer : nil }
        do {
            return try decoder.decode(buffer: &buffer)
        } catch let error as BrokerError {
            throw error
        } catch {
            throw BrokerError(.frameError, "\(error)")
        }
    }

    /// Bytes received but not yet part of a whole frame.
    public var bufferedBytes: Int { cumulation?.readableBytes ?? 0 }

    /// Drops everything buffered (after a fatal error).
    public mutating func discard() { cumulation = nil }
}
