// swift-tools-version:6.0
import PackageDescription

let upcoming: [SwiftSetting] = [
    .enableUpcomingFeature("ExistentialAny"),
    .enableUpcomingFeature("MemberImportVisibility"),
    .enableUpcomingFeature("InternalImportsByDefault"),
]

/// The broker's hot-path modules drop the dynamic exclusivity checks in release builds: profiling showed them at
/// ~17% of the broker's CPU (class-property accesses per message). Debug builds, and so the whole test suite, keep
/// the checks, so an exclusivity violation still fails the tests. docs/design.md, "The hot path".
///
/// Only the server's modules carry the flag. SwiftPM refuses a versioned dependency on a product whose targets use
/// `unsafeFlags`, so the products other packages depend on (`BrokerClient` and the `WireProtocol` it builds on)
/// carry none: WireProtocol is value types (structs, enums, ByteBuffer), which pay no dynamic exclusivity checks.
let hotPath: [SwiftSetting] = upcoming + [
    .unsafeFlags(["-enforce-exclusivity=unchecked"], .when(configuration: .release)),
]

let package = Package(
    name: "brokerd",
    products: [
        .library(name: "WireProtocol", targets: ["WireProtocol"]),
        .library(name: "BrokerClient", targets: ["BrokerClient"]),
        // The core and the message log, for the fuzz harnesses (Fuzz/) and for embedding a broker in a process.
        // They carry the hot-path flag, so only a local (path) dependency can use them.
        .library(name: "BrokerCore", targets: ["BrokerCore"]),
        .library(name: "BrokerStorage", targets: ["BrokerStorage"]),
        .executable(name: "brokerd", targets: ["brokerd"]),
        .executable(name: "brokerctl", targets: ["brokerctl"]),
        .executable(name: "brokerbench", targets: ["brokerbench"]),
        // The ride-hailing services that brokerd is built for (docs/ride-services.md) and their load tool.
        .executable(name: "ride", targets: ["ride"]),
        .executable(name: "ridesim", targets: ["ridesim"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-nio.git", from: "2.101.3"),
        .package(url: "https://github.com/apple/swift-nio-ssl.git", from: "2.37.6"),
        .package(url: "https://github.com/apple/swift-argument-parser.git", from: "1.8.2"),
        .package(url: "https://github.com/apple/swift-log.git", from: "1.16.2"),
        .package(url: "https://github.com/apple/swift-crypto.git", from: "3.12.3"),
        .package(url: "https://github.com/apple/swift-collections.git", from: "1.6.0"),
        .package(url: "https://github.com/LebJe/TOMLKit.git", exact: "0.6.0"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle.git", from: "2.13.0"),
        .package(url: "https://github.com/HdrHistogram/hdrhistogram-swift.git", from: "0.2.0"),
        .package(url: "https://github.com/apple/swift-metrics.git", from: "2.13.0"),
        .package(url: "https://github.com/apple/swift-distributed-tracing.git", from: "1.7.3"),
        // The ride services only (Sources/Ride*, Sources/*API): `swift run brokerd` builds none of these, and a
        // package depending on BrokerClient does not fetch them (SwiftPM resolves by target).
        .package(url: "https://github.com/hummingbird-project/hummingbird.git", from: "2.28.1"),
        .package(url: "https://github.com/apple/swift-openapi-runtime.git", from: "1.13.4"),
        .package(url: "https://github.com/hummingbird-project/swift-openapi-hummingbird.git", from: "2.1.0"),
        .package(url: "https://github.com/swift-server/swift-openapi-async-http-client.git", from: "1.5.0"),
        .package(url: "https://github.com/swift-server/async-http-client.git", from: "1.37.0"),
        .package(url: "https://github.com/vapor/sqlite-nio.git", from: "1.13.2"),
        .package(url: "https://github.com/swift-server/swift-prometheus.git", from: "2.4.1"),
        .package(url: "https://github.com/apple/swift-http-types.git", from: "1.8.0"),
    ],
    targets: [
        // Frames, codec and errors of the wire protocol. NIOCore only, so it tests without sockets.
        .target(
            name: "WireProtocol",
            dependencies: [.product(name: "NIOCore", package: "swift-nio")],
            swiftSettings: upcoming
        ),
        // AMQP 0-9-1's frames, field tables and content headers, and their mapping onto the native message
        // (issue 16: the second front end). Codec only: NIOCore and WireProtocol.
        .target(
            name: "AMQPWire",
            dependencies: ["WireProtocol", .product(name: "NIOCore", package: "swift-nio")],
            swiftSettings: upcoming
        ),
        // CRC-32C with the SSE 4.2 instruction when the CPU has it (the message log checks every record).
        .target(name: "CCRC32C"),
        // libsystemd's notify, watchdog, socket activation and journal calls, loaded at run time
        // (Sources/CSystemd/include/CSystemd.h says why it is not a linked systemLibrary).
        .target(name: "CSystemd", linkerSettings: [.linkedLibrary("dl")]),
        // The message log, its recovery, and the data directory. Knows nothing of exchanges or queues.
        .target(
            name: "BrokerStorage",
            dependencies: [
                "CCRC32C",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
            ],
            swiftSettings: hotPath
        ),
        // Exchanges, queues, consumers, acks, confirms and users. Knows frames, not sockets.
        .target(
            name: "BrokerCore",
            dependencies: [
                "WireProtocol", "BrokerStorage",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "DequeModule", package: "swift-collections"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "_CryptoExtras", package: "swift-crypto"),
            ],
            swiftSettings: hotPath
        ),
        // The TCP server: listeners, handshake and authentication, heartbeats, shutdown.
        .target(
            name: "BrokerServer",
            dependencies: [
                "WireProtocol", "AMQPWire", "BrokerCore", "BrokerStorage", "CSystemd",
                .product(name: "TOMLKit", package: "TOMLKit"),
                .product(name: "DequeModule", package: "swift-collections"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ],
            swiftSettings: hotPath
        ),
        // The async/await Swift client: a product other packages depend on by version, so no unsafe flags.
        .target(
            name: "BrokerClient",
            dependencies: [
                "WireProtocol", "AMQPWire",
                .product(name: "DequeModule", package: "swift-collections"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
                .product(name: "NIOTLS", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "Instrumentation", package: "swift-distributed-tracing"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ],
            swiftSettings: upcoming
        ),
        .executableTarget(
            name: "brokerd",
            dependencies: [
                "BrokerServer", "BrokerCore", "BrokerStorage",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "UnixSignals", package: "swift-service-lifecycle"),
            ],
            swiftSettings: hotPath
        ),
        .executableTarget(
            name: "brokerctl",
            dependencies: [
                "BrokerClient", "WireProtocol",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "NIOCore", package: "swift-nio"),
            ],
            swiftSettings: upcoming
        ),
        // The load generator: RabbitMQ PerfTest's idea, with amqp_bench's option names (../shared/bench-rabbitmq).
        .executableTarget(
            name: "brokerbench",
            dependencies: [
                "BrokerClient", "WireProtocol", "CCRC32C",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Histogram", package: "hdrhistogram-swift"),
            ],
            swiftSettings: upcoming
        ),
        // MARK: The ride services (docs/ride-services.md)

        // REST interfaces generated from each service's openapi.yaml (scripts/generate-ride-apis.sh; committed).
        .target(
            name: "TripAPI",
            dependencies: [.product(name: "OpenAPIRuntime", package: "swift-openapi-runtime")],
            exclude: ["openapi.yaml", "openapi-generator-config.yaml"]
        ),
        .target(
            name: "PassengerAPI",
            dependencies: [.product(name: "OpenAPIRuntime", package: "swift-openapi-runtime")],
            exclude: ["openapi.yaml", "openapi-generator-config.yaml"]
        ),
        .target(
            name: "DriverAPI",
            dependencies: [.product(name: "OpenAPIRuntime", package: "swift-openapi-runtime")],
            exclude: ["openapi.yaml", "openapi-generator-config.yaml"]
        ),
        .target(
            name: "NotificationAPI",
            dependencies: [.product(name: "OpenAPIRuntime", package: "swift-openapi-runtime")],
            exclude: ["openapi.yaml", "openapi-generator-config.yaml"]
        ),
        // Every message type the services exchange, with its name and version, and the broker topology they share.
        // ride.asyncapi.json is the source of the contracts the services apply; embedded in the code (no bundle to
        // install next to the binaries).
        .target(
            name: "RideContracts",
            dependencies: ["BrokerClient", "WireProtocol", .product(name: "Logging", package: "swift-log")],
            resources: [.embedInCode("ride.asyncapi.json")],
            swiftSettings: upcoming
        ),
        // What every service is made of: its SQLite database, the transactional outbox and its relay, the inbox,
        // the HTTP server with JSON errors, health and metrics, and the options every service takes.
        .target(
            name: "RideKit",
            dependencies: [
                "BrokerClient", "WireProtocol", "RideContracts",
                .product(name: "SQLiteNIO", package: "sqlite-nio"),
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "OpenAPIRuntime", package: "swift-openapi-runtime"),
                .product(name: "OpenAPIHummingbird", package: "swift-openapi-hummingbird"),
                .product(name: "HTTPTypes", package: "swift-http-types"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "Prometheus", package: "swift-prometheus"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "NIOCore", package: "swift-nio"),
            ],
            swiftSettings: upcoming
        ),
        // The five services, as libraries so that tests can also run them in-process.
        .target(
            name: "RideServices",
            dependencies: [
                "RideKit", "RideContracts", "BrokerClient", "WireProtocol",
                "TripAPI", "PassengerAPI", "DriverAPI", "NotificationAPI",
                .product(name: "HTTPTypes", package: "swift-http-types"),
                .product(name: "SQLiteNIO", package: "sqlite-nio"),
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "OpenAPIRuntime", package: "swift-openapi-runtime"),
                .product(name: "OpenAPIHummingbird", package: "swift-openapi-hummingbird"),
                .product(name: "OpenAPIAsyncHTTPClient", package: "swift-openapi-async-http-client"),
                .product(name: "AsyncHTTPClient", package: "async-http-client"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "NIOCore", package: "swift-nio"),
            ],
            swiftSettings: upcoming
        ),
        // One executable, a subcommand per service (ride trip|passenger|driver|dispatcher|notification|all).
        .executableTarget(
            name: "ride",
            dependencies: [
                "RideServices", "RideKit", "BrokerClient",
                .product(name: "TOMLKit", package: "TOMLKit"),
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "UnixSignals", package: "swift-service-lifecycle"),
            ],
            swiftSettings: upcoming
        ),
        // The ride simulator: passengers requesting trips, drivers moving, a burst; reports latencies and depths.
        .executableTarget(
            name: "ridesim",
            dependencies: [
                "RideContracts", "BrokerClient",
                .product(name: "AsyncHTTPClient", package: "async-http-client"),
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Histogram", package: "hdrhistogram-swift"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
            ],
            swiftSettings: upcoming
        ),
        .testTarget(
            name: "RideServicesTests",
            dependencies: [
                "RideServices", "RideKit", "RideContracts", "BrokerClient", "BrokerCore", "WireProtocol", "TestSupport",
                .product(name: "AsyncHTTPClient", package: "async-http-client"),
                .product(name: "SQLiteNIO", package: "sqlite-nio"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: upcoming
        ),

        // Micro-benchmarks of the hot path's parts (codec, topic matching, core without sockets). Not tests.
        .executableTarget(
            name: "brokermicro",
            dependencies: ["BrokerCore", "WireProtocol", .product(name: "NIOCore", package: "swift-nio")],
            swiftSettings: hotPath
        ),
        // Helpers shared by test targets (a seedable generator); not part of any product.
        .target(name: "TestSupport", path: "Tests/TestSupport", swiftSettings: upcoming),
        .testTarget(
            name: "AMQPWireTests",
            dependencies: ["AMQPWire", "WireProtocol", .product(name: "NIOCore", package: "swift-nio")],
            swiftSettings: upcoming
        ),
        .testTarget(
            name: "WireProtocolTests",
            dependencies: ["WireProtocol", "TestSupport", .product(name: "NIOCore", package: "swift-nio")],
            swiftSettings: upcoming
        ),
        .testTarget(
            name: "BrokerCoreTests",
            dependencies: ["BrokerCore", "WireProtocol", .product(name: "NIOCore", package: "swift-nio")],
            swiftSettings: upcoming
        ),
        .testTarget(
            name: "BrokerClientTests",
            dependencies: [
                "BrokerClient", "WireProtocol", "AMQPWire", .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "Instrumentation", package: "swift-distributed-tracing"),
            ],
            swiftSettings: upcoming
        ),
        .testTarget(
            name: "BrokerStorageTests",
            dependencies: ["BrokerStorage", .product(name: "NIOCore", package: "swift-nio")],
            swiftSettings: upcoming
        ),
        .testTarget(
            name: "BrokerServerTests",
            dependencies: [
                "BrokerServer", "BrokerStorage", "WireProtocol", .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: upcoming
        ),
        .testTarget(
            name: "IntegrationTests",
            dependencies: [
                "BrokerServer", "BrokerClient", "BrokerCore", "WireProtocol", "AMQPWire", "TestSupport",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "Metrics", package: "swift-metrics"),
            ],
            swiftSettings: upcoming
        ),
    ],
    swiftLanguageModes: [.v6]
)
