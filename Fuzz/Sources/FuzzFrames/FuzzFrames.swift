import FuzzSupport
import Foundation
import NIOCore
import WireProtocol

/// One input: the input is a byte stream as a client would send it after the handshake, split where its
/// first byte says. Every frame is decoded by the generic decoder and, for publishes, by the broker's fast path;
/// whatever decodes must encode back to a frame that decodes to the same message. Errors are expected; traps are
/// findings.
func fuzzFrames(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt {
    guard let data else { return 0 }
    let bytes = UnsafeBufferPointer(start: data, count: size)
    guard let first = bytes.first else { return 0 }
    let split = max(1, Int(first))
    var reader = FrameReader(decoder: FrameDecoder(maxFrameSize: 1 << 16, expectsMagic: false))
    var offset = 1
    while offset < bytes.count {
        let end = min(bytes.count, offset + split)
        reader.append(ByteBuffer(bytes: bytes[offset..<end]))
        offset = end
        while true {
            let frame: Frame
            do {
                guard let next = try reader.next() else { break }
                frame = next
            } catch {
                return 0  // a malformed stream ends the connection: nothing more to decode
            }
            if frame.type == FrameType.publish.rawValue { _ = try? PublishView(parsing: frame.payload) }
            guard let message = try? ClientMessage.decode(frame) else { continue }
            var encoded = ByteBuffer()
            message.encode(into: &encoded)
            var again = FrameReader(decoder: FrameDecoder(maxFrameSize: 1 << 24, expectsMagic: false))
            again.append(encoded)
            guard let reframed = try? again.next(), let decoded = try? ClientMessage.decode(reframed), decoded == message else {
                fatalError("\(message) does not survive encode and decode")
            }
        }
    }
    return 0
}

/// libFuzzer runs the input function (`-help=1` lists its options).
@main
struct FuzzFramesMain {
    static func main() { runLibFuzzer { fuzzFrames($0, $1) } }
}

/// The symbol libFuzzer's runtime refers to (its whole archive is linked); the same input function.
@_cdecl("LLVMFuzzerTestOneInput")
public func testOneInput(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt { fuzzFrames(data, size) }
