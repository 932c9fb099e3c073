// swift-tools-version:6.0
import Foundation
import PackageDescription

// brokerd's fuzz harnesses (Fuzz/README.md): a package of its own beside the product, so the broker's build and
// test suite never compile them. Build with libFuzzer:
//   swift build --package-path Fuzz -Xswiftc -sanitize=fuzzer,address
// A path dependency is known by its directory's name, whatever the checkout is called.
let brokerd = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().lastPathComponent

let package = Package(
    name: "brokerd-fuzz",
    dependencies: [.package(path: "..")],
    targets: [
        // Declares libFuzzer's LLVMFuzzerRunDriver, which each harness's main hands its callback to.
        .target(name: "CFuzzer"),
        .target(name: "FuzzSupport", dependencies: ["CFuzzer"]),
        // Bytes from the network: frame splitting, every client frame's decoder, the publish fast path.
        .executableTarget(name: "FuzzFrames", dependencies: ["FuzzSupport", .product(name: "WireProtocol", package: brokerd)]),
        // Bytes from the disk: a segment file recovered, every envelope it yields read back.
        .executableTarget(name: "FuzzRecovery", dependencies: [
            "FuzzSupport",
            .product(name: "BrokerStorage", package: brokerd), .product(name: "WireProtocol", package: brokerd),
        ]),
        // Message bodies: the JSON parser, writing back, the schema checker, and schemas compiled from anything.
        .executableTarget(name: "FuzzJSON", dependencies: [
            "FuzzSupport",
            .product(name: "BrokerCore", package: brokerd), .product(name: "WireProtocol", package: brokerd),
        ]),
        // The core driven by arbitrary sequences of operations from several sessions.
        .executableTarget(name: "FuzzCore", dependencies: [
            "FuzzSupport",
            .product(name: "BrokerCore", package: brokerd), .product(name: "WireProtocol", package: brokerd),
        ]),
    ]
)
