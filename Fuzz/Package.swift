// swift-tools-version:6.0
import PackageDescription

// brokerd's fuzz harnesses (Fuzz/README.md): a package of its own beside the product, so the broker's build and
// test suite never compile them. Build with libFuzzer:
//   swift build --package-path Fuzz -Xswiftc -sanitize=fuzzer,address
let harness: [SwiftSetting] = [.unsafeFlags(["-parse-as-library"])]

let package = Package(
    name: "brokerd-fuzz",
    dependencies: [.package(path: "..")],
    targets: [
        // Bytes from the network: frame splitting, every client frame's decoder, the publish fast path.
        .executableTarget(name: "FuzzFrames", dependencies: [.product(name: "WireProtocol", package: "brokerd")], swiftSettings: harness),
        // Bytes from the disk: a segment file recovered, every envelope it yields read back.
        .executableTarget(name: "FuzzRecovery", dependencies: [
            .product(name: "BrokerStorage", package: "brokerd"), .product(name: "WireProtocol", package: "brokerd"),
        ], swiftSettings: harness),
        // The core driven by arbitrary sequences of operations from several sessions.
        .executableTarget(name: "FuzzCore", dependencies: [
            .product(name: "BrokerCore", package: "brokerd"), .product(name: "WireProtocol", package: "brokerd"),
        ], swiftSettings: harness),
    ]
)
