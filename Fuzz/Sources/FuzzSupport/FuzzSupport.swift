public import CFuzzer
import Foundation

/// Runs libFuzzer with `callback` as the input function, parsing the process's command line (`-max_total_time=60`,
/// a corpus directory, ...), and exits with its status.
public func runLibFuzzer(_ callback: @convention(c) (UnsafePointer<UInt8>?, Int) -> Int32) -> Never {
    var argc = CommandLine.argc
    var argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>? = CommandLine.unsafeArgv
    exit(LLVMFuzzerRunDriver(&argc, &argv, callback))
}
