import FuzzSupport
import Foundation
import BrokerStorage
import NIOCore
import WireProtocol

/// One input: the input becomes the body of a log segment (after a valid header), recovery runs over it, and
/// every message it reports is read back and parsed as an envelope. Refusing the directory is fine; a trap, or a
/// recovered message that cannot be read back, is a finding.
func fuzzRecovery(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt {
    guard let data else { return 0 }
    let directory = FileManager.default.temporaryDirectory.appendingPathComponent("brokerd-fuzz-\(getpid())").path
    try? FileManager.default.removeItem(atPath: directory)
    try? FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
    defer { try? FileManager.default.removeItem(atPath: directory) }
    let segment = Data(LogRecord.segmentHeader) + Data(bytes: data, count: size)
    guard FileManager.default.createFile(atPath: directory + "/00000000000000000001.seg", contents: segment) else { return 0 }
    guard let recovered = try? LogRecovery.recover(directory: directory) else { return 0 }
    for message in recovered.messages {
        guard let envelope = try? message.readEnvelope(directory: directory) else {
            fatalError("recovered message \(message.id) cannot be read back")
        }
        _ = try? MessageEnvelope(parsing: envelope)
    }
    // Recovery cut what it could not use: a second pass over the repaired file finds nothing more to repair.
    guard let second = try? LogRecovery.recover(directory: directory), second.repairs.isEmpty else {
        fatalError("a repaired segment needed repairing again")
    }
    return 0
}

/// libFuzzer runs the input function (`-help=1` lists its options).
@main
struct FuzzRecoveryMain {
    static func main() { runLibFuzzer { fuzzRecovery($0, $1) } }
}

/// The symbol libFuzzer's runtime refers to (its whole archive is linked); the same input function.
@_cdecl("LLVMFuzzerTestOneInput")
public func testOneInput(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt { fuzzRecovery(data, size) }
