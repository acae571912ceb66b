import Foundation
import TestSupport
import Testing

/// perfSONAR's TWAMP tools (twping, twampd), built from `../shared/peers` once per test run (about 20 s; nothing
/// when .ci/run built them already). Nil where the folder is absent (a clone of this project alone).
let perfsonarBin: String? = {
    let script = packageRoot.appendingPathComponent("../shared/peers/build-perfsonar.sh").standardized.path
    guard FileManager.default.isExecutableFile(atPath: script) else { return nil }
    let built = Spawned.runBlocking(script, [])
    let bin = built.output.split(separator: "\n").last.map(String.init) ?? ""
    return built.status == 0 && FileManager.default.isExecutableFile(atPath: bin + "/twping") ? bin : nil
}()

let perfsonarAvailable =
    FileManager.default.fileExists(atPath: packageRoot.appendingPathComponent("../shared/peers/owamp").path)
    && TestNetwork.available

/// A key file in perfSONAR's pfstore format, written for a test: identity alice, secret "correct horse".
func writeKeyFile(in directory: String) throws -> String {
    let path = directory + "/keys.pfs"
    let hex = Array("correct horse".utf8).map { String(format: "%02x", $0) }.joined()
    try "# pfstore format\nalice \(hex)\n".write(toFile: path, atomically: true, encoding: .utf8)
    return path
}

/// twampd's configuration directory for a server on 127.0.0.1:862 inside a test host, with the same key.
func twampdDirectory() throws -> String {
    let directory = NSTemporaryDirectory() + "udpecho-twampd-\(uniqueHostID())"
    for folder in ["conf", "var", "data"] {
        try FileManager.default.createDirectory(atPath: directory + "/" + folder, withIntermediateDirectories: true)
    }
    try "srcnode 127.0.0.1:862\ntestports 18760-18960\nloglocation\n".write(
        toFile: directory + "/conf/twamp-server.conf",
        atomically: true,
        encoding: .utf8
    )
    let limits = packageRoot.appendingPathComponent("../shared/peers/owamp/owamp/owamp/conf/twampd.limits").path
    try FileManager.default.copyItem(atPath: limits, toPath: directory + "/conf/twamp-server.limits")
    try FileManager.default.copyItem(
        atPath: try writeKeyFile(in: directory),
        toPath: directory + "/conf/twamp-server.pfs"
    )
    return directory
}

/// The numbers of a twping statistics line, "round-trip time min/median/max = 0.0153/0.1/0.147 ms".
func twpingTimes(_ lines: [String], _ prefix: String) -> [Double]? {
    guard let line = lines.first(where: { $0.hasPrefix(prefix) }),
        let values = line.split(separator: "=").dropFirst().first?.split(separator: " ").first
    else { return nil }
    return values.split(separator: "/").compactMap { Double($0) }
}

/// TWAMP with its control protocol against perfSONAR's own tools, in each mode, each on a test host of its own
/// (a network namespace with only loopback, so both use TWAMP's port 862).
@Suite(.serialized) struct TwampInteropTests {
    static let modes: [(udpecho: String, perfsonar: String)] = [
        ("unauthenticated", "O"), ("authenticated", "A"), ("encrypted", "E"),
    ]

    /// perfSONAR's twping against our server: 20 sent, none lost, every time it prints non-negative (one host, one
    /// clock), and our server counts the session and its packets.
    @Test(
        .enabled(if: perfsonarAvailable, "perfSONAR's sources are in ../shared/peers, which a clone alone lacks"),
        arguments: modes.map(\.perfsonar)
    )
    func twpingMeasuresOurServer(mode: String) async throws {
        let bin = try #require(perfsonarBin, "perfSONAR's tools did not build")
        try await withHosts(try await LoopbackHost()) { host in
            let directory = NSTemporaryDirectory() + "udpecho-keys-\(uniqueHostID())"
            try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
            let keys = try writeKeyFile(in: directory)
            let (server, port) = try await startServer(
                ["--protocol", "twamp", "--key-file", keys],
                inNamespace: host.name
            )
            #expect(port == 862)
            let twping = try await Spawned.run(
                TestNetwork.ip,
                [
                    "netns", "exec", host.name, bin + "/twping", "-A", mode, "-u", "alice", "-k", keys, "-c", "20",
                    "-i", "0.01", "127.0.0.1",
                ],
                timeout: 60
            )
            #expect(twping.status == 0, "\(twping.error)")
            #expect(twping.lines.contains { $0.hasPrefix("20 sent, 0 lost (0.000%), 0 send duplicates") }, "\(twping.lines)")
            for prefix in ["round-trip time", "send time", "reflect time"] {
                let times = try #require(twpingTimes(twping.lines, prefix), "\(prefix): \(twping.lines)")
                #expect(times.count == 3 && times.allSatisfy { $0 >= 0 }, "\(prefix): \(times)")
            }
            #expect(twping.lines.contains("send hops = 0 (consistently)"), "\(twping.lines)")
            server.signal(SIGINT)
            #expect(await server.waitForExit() == 0)
            let summary = try #require(server.outputLines.last { $0.contains("connections=") }, "\(server.outputLines)")
            #expect(summary.contains("sessions=1 ") && summary.contains("reflected=20 "), "\(summary)")
        }
    }

    /// Our client against perfSONAR's twampd: 20 received, none lost either way, both one-way delays non-negative.
    @Test(
        .enabled(if: perfsonarAvailable, "perfSONAR's sources are in ../shared/peers, which a clone alone lacks"),
        arguments: modes.map(\.udpecho)
    )
    func ourClientMeasuresTwampd(mode: String) async throws {
        let bin = try #require(perfsonarBin, "perfSONAR's tools did not build")
        try await withHosts(try await LoopbackHost()) { host in
            let directory = try twampdDirectory()
            let twampd = try Spawned(
                TestNetwork.ip,
                [
                    "netns", "exec", host.name, bin + "/twampd", "-c", directory + "/conf", "-R", directory + "/var",
                    "-d", directory + "/data", "-f", "-Z",
                ]
            )
            defer { twampd.signal(SIGTERM) }
            var ping: (status: Int32, output: Data, lines: [String], error: String)?
            // twampd prints nothing when it listens: the first attempts may come before it does.
            for _ in 0..<50 {
                ping = try await Spawned.run(
                    TestNetwork.ip,
                    [
                        "netns", "exec", host.name, udpecho, "ping", "--twamp", "127.0.0.1", "--twamp-mode", mode,
                        "--key-file", directory + "/conf/twamp-server.pfs", "-c", "20", "-i", "10ms", "-q", "--json",
                    ],
                    timeout: 60
                )
                if ping?.status == 0 || !(ping?.error.contains("Connection refused") ?? false) { break }
                try await Task.sleep(for: .milliseconds(100))
            }
            let result = try #require(ping)
            #expect(result.status == 0, "\(result.error)")
            let summary = try #require(try jsonObjects(result.lines).last, "\(result.error)")
            #expect(summary["received"] as? Int == 20 && summary["lost"] as? Int == 0, "\(summary)")
            let stamp = try #require(summary["stamp"] as? [String: Any], "\(summary)")
            #expect(stamp["lost_forward"] as? Int == 0 && stamp["lost_backward"] as? Int == 0, "\(stamp)")
            for direction in ["forward_ms", "backward_ms"] {
                let times = try #require(stamp[direction] as? [String: Any], "\(stamp)")
                #expect((times["p50"] as? Double ?? -1) >= 0, "\(direction): \(times)")
            }
        }
    }

    /// A wrong key against twampd: refused, and said so.
    @Test(.enabled(if: perfsonarAvailable, "perfSONAR's sources are in ../shared/peers, which a clone alone lacks"))
    func twampdRefusesAWrongKey() async throws {
        let bin = try #require(perfsonarBin, "perfSONAR's tools did not build")
        try await withHosts(try await LoopbackHost()) { host in
            let directory = try twampdDirectory()
            let wrong = directory + "/wrong.pfs"
            try "alice 77726f6e67\n".write(toFile: wrong, atomically: true, encoding: .utf8)
            let twampd = try Spawned(
                TestNetwork.ip,
                [
                    "netns", "exec", host.name, bin + "/twampd", "-c", directory + "/conf", "-R", directory + "/var",
                    "-d", directory + "/data", "-f", "-Z",
                ]
            )
            defer { twampd.signal(SIGTERM) }
            var error = ""
            for _ in 0..<50 {
                let ping = try await Spawned.run(
                    TestNetwork.ip,
                    [
                        "netns", "exec", host.name, udpecho, "ping", "--twamp", "127.0.0.1", "--key-file", wrong, "-c",
                        "3",
                    ]
                )
                error = ping.error
                #expect(ping.status != 0)
                if !error.contains("Connection refused") { break }
                try await Task.sleep(for: .milliseconds(100))
            }
            #expect(error.contains("refused the connection (Accept"), "\(error)")
        }
    }
}
