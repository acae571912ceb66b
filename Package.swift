// swift-tools-version:6.1
import PackageDescription

let package = Package(
    name: "udpecho",
    platforms: [.macOS(.v15)],
    products: [
        .library(name: "UDPEcho", targets: ["UDPEcho"]),
        .executable(name: "udpecho", targets: ["udpecho"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-nio", from: "2.101.3"),
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.8.2"),
        .package(url: "https://github.com/apple/swift-log", from: "1.16.2"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle", from: "2.13.0"),
        .package(url: "https://github.com/apple/swift-atomics", from: "1.3.0"),
        .package(url: "https://github.com/HdrHistogram/hdrhistogram-swift", from: "0.2.0"),
        .package(url: "https://github.com/apple/swift-metrics", from: "2.13.0"),
        .package(url: "https://github.com/swift-server/swift-prometheus", from: "2.4.1"),
        .package(url: "https://github.com/apple/swift-crypto", from: "4.5.2"),
        // `swift package generate-documentation --target UDPEcho` renders the library's DocC catalog.
        .package(url: "https://github.com/swiftlang/swift-docc-plugin", from: "1.5.0"),
    ],
    targets: [
        // Batched datagram syscalls (recvmmsg/sendmmsg) and control-message handling, which Swift cannot
        // express directly (`mmsghdr` needs _GNU_SOURCE, CMSG_* are macros).
        .target(name: "CUDPEcho"),
        // The XDP program (Sources/UDPEcho/XDP/Program) is built with clang's BPF target and embedded into the
        // library by the XDPProgram build plugin, with xdp-embed.
        .target(
            name: "UDPEcho",
            dependencies: [
                "CUDPEcho",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                // The metrics endpoint's fuzz target runs its pipeline on an embedded channel.
                .product(name: "NIOEmbedded", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "Atomics", package: "swift-atomics"),
                .product(name: "Histogram", package: "hdrhistogram-swift"),
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "Prometheus", package: "swift-prometheus"),
                .product(name: "Crypto", package: "swift-crypto"),
                // AES's block function and PBKDF2, for OWAMP's and TWAMP's authenticated and encrypted modes.
                .product(name: "_CryptoExtras", package: "swift-crypto"),
            ],
            exclude: ["XDP/Program"],
            plugins: ["XDPProgram"]
        ),
        .plugin(name: "XDPProgram", capability: .buildTool(), dependencies: ["xdp-embed"]),
        .executableTarget(name: "xdp-embed", path: "Sources/XDPEmbed"),
        .executableTarget(
            name: "udpecho",
            dependencies: [
                "UDPEcho",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "UnixSignals", package: "swift-service-lifecycle"),
                .product(name: "NIOPosix", package: "swift-nio"),
            ]
        ),
        // libFuzzer's driver for the library's fuzz targets (`scripts/fuzz.sh TARGET SECONDS` builds it with
        // -sanitize=fuzzer,address and -DFUZZING); built plainly, it runs the inputs it is given once each.
        .executableTarget(
            name: "udpecho-fuzz",
            dependencies: ["UDPEcho"],
            path: "Sources/UDPEchoFuzz"
        ),
        // Independent peers for the tests: plain sockets on the system calls, and a runner for spawned processes.
        .target(
            name: "TestSupport",
            dependencies: [.product(name: "NIOCore", package: "swift-nio")],
            path: "Tests/TestSupport"
        ),
        .testTarget(
            name: "UDPEchoTests",
            dependencies: [
                "UDPEcho",
                "CUDPEcho",
                "TestSupport",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                // The connection table's order of events on a loop, run step by step.
                .product(name: "NIOEmbedded", package: "swift-nio"),
                .product(name: "Atomics", package: "swift-atomics"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                // The fuzzer signs its authenticated test packets itself.
                .product(name: "Crypto", package: "swift-crypto"),
            ]
        ),
        .testTarget(
            name: "udpechoTests",
            dependencies: [
                "UDPEcho",
                "udpecho",
                "TestSupport",
                .product(name: "NIOCore", package: "swift-nio"),
            ]
        ),
    ]
)
