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

/// `command` started with no signal blocked: a process the test runner starts inherits its thread's signal mask, in
/// which SIGINT and SIGTERM are blocked, and a daemon that does not unblock them (dumpcap, twampd) would never stop
/// on one.
func withSignalsUnblocked(_ command: [String]) -> [String] {
    [
        "/usr/bin/python3", "-c",
        "import os, signal, sys; signal.pthread_sigmask(signal.SIG_SETMASK, []); "
            + "[signal.signal(s, signal.SIG_DFL) for s in (signal.SIGINT, signal.SIGTERM)]; os.execv(sys.argv[1], sys.argv[1:])",
    ] + command
}

/// perfSONAR's twampd in the foreground (`-Z`, `-f`: allowed as root) in test host `host`, configured by
/// ``twampdDirectory()``.
func startTwampd(_ bin: String, _ directory: String, in host: LoopbackHost) throws -> Spawned {
    try Spawned(
        TestNetwork.ip,
        ["netns", "exec", host.name]
            + withSignalsUnblocked([
                bin + "/twampd", "-c", directory + "/conf", "-R", directory + "/var", "-d", directory + "/data", "-f",
                "-Z",
            ])
    )
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
            #expect(
                twping.lines.contains { $0.hasPrefix("20 sent, 0 lost (0.000%), 0 send duplicates") },
                "\(twping.lines)"
            )
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
            let twampd = try startTwampd(bin, directory, in: host)
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
            let twampd = try startTwampd(bin, directory, in: host)
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

/// Captures what crosses loopback in test host `host` (a BPF `filter`) while `body` runs, and returns the capture
/// file's path. Wireshark's capture tool runs itself (tshark would run it as a child, which outlives a signal to
/// tshark), its output to a file: `body` runs once the file says it captures.
func captured(in host: LoopbackHost, filter: String, _ body: () async throws -> Void) async throws -> String {
    let capture = NSTemporaryDirectory() + "udpecho-capture-\(uniqueHostID()).pcap"
    let log = capture + ".log"
    _ = FileManager.default.createFile(atPath: log, contents: nil)
    defer { try? FileManager.default.removeItem(atPath: log) }
    let dumpcap = Process()
    dumpcap.executableURL = URL(fileURLWithPath: TestNetwork.ip)
    dumpcap.arguments =
        ["netns", "exec", host.name]
        + withSignalsUnblocked(["/usr/bin/dumpcap", "-i", "lo", "-f", filter, "-w", capture])
    dumpcap.standardOutput = FileHandle.nullDevice
    dumpcap.standardError = try FileHandle(forWritingTo: URL(fileURLWithPath: log))
    try dumpcap.run()
    func stop() async {
        dumpcap.interrupt()
        await onThread { dumpcap.waitUntilExit() }
    }
    do {
        let started = ContinuousClock.now
        while !((try? String(contentsOfFile: log, encoding: .utf8))?.contains("Capturing on") ?? false) {
            try #require(ContinuousClock.now - started < .seconds(10), "dumpcap did not start capturing")
            try await Task.sleep(for: .milliseconds(20))
        }
        try await body()
    } catch {
        await stop()
        throw error
    }
    await stop()
    return capture
}

/// Wireshark's dissectors (tshark) read a capture of our client's session with our server: every control message
/// by its name, the test packets both ways, nothing malformed.
@Suite struct TwampDissectorTests {
    static var available: Bool {
        TestNetwork.available && FileManager.default.isExecutableFile(atPath: "/usr/bin/tshark")
            && FileManager.default.isExecutableFile(atPath: "/usr/bin/dumpcap")
    }

    @Test(.enabled(if: available, "needs root, ip and tshark (.ci/run installs it)"))
    func wiresharkDecodesOurSessionWhole() async throws {
        try await withHosts(try await LoopbackHost()) { host in
            let (server, _) = try await startServer(["--protocol", "twamp", "-q"], inNamespace: host.name)
            let capture = try await captured(in: host, filter: "port 862") {
                let ping = try await Spawned.run(
                    TestNetwork.ip,
                    [
                        "netns", "exec", host.name, udpecho, "ping", "--twamp", "127.0.0.1", "-c", "5", "-i", "10ms",
                        "-q",
                    ]
                )
                #expect(ping.status == 0, "\(ping.error)")
                // The Stop-Sessions and the connection's end reach the capture before it stops.
                try await Task.sleep(for: .milliseconds(500))
            }
            defer { try? FileManager.default.removeItem(atPath: capture) }
            server.signal(SIGINT)
            _ = await server.waitForExit()
            let read = try await Spawned.run("/usr/bin/tshark", ["-r", capture])
            #expect(read.status == 0, "\(read.error)")
            for message in [
                "Server Greeting", "Setup Response", "Server Start, (OK)", "Request Session", "Accept Session, (OK)",
                "Start Sessions", "Start Sessions ACK, (OK)", "Stop Session",
            ] {
                #expect(read.lines.contains { $0.hasSuffix(message) || $0.contains(message + ",") }, "\(message)")
            }
            #expect(read.lines.filter { $0.contains("TWAMP-Test") }.count == 10, "\(read.lines)")
            let verbose = try await Spawned.run("/usr/bin/tshark", ["-r", capture, "-V"])
            #expect(!verbose.lines.contains { $0.localizedCaseInsensitiveContains("malformed") })
            #expect(!verbose.lines.contains { $0.contains("[Expert Info (Error") })
        }
    }
}

/// Our TWAMP client against our server through a test host that loses about 30% of the test packets on the way to
/// the reflector and 20% of the replies on the way back: in every mode and family, the reflector's own count splits
/// the loss by direction.
@Suite struct TwampLossTests {
    @Test(
        .enabled(if: FirewalledHost.available, "needs root, ip and nft to make a firewalled network namespace"),
        arguments: ["unauthenticated", "authenticated", "encrypted"],
        ["127.0.0.1", "::1"]
    )
    func theLossSplitsByDirection(mode: String, host address: String) async throws {
        try await withHosts(try await FirewalledHost()) { host in
            let directory = NSTemporaryDirectory() + "udpecho-keys-\(uniqueHostID())"
            try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
            let keys = try writeKeyFile(in: directory)
            let control = address.contains(":") ? "[\(address)]" : address
            let (server, _) = try await startServer(
                [
                    "--protocol", "twamp", "--address", "\(control):862", "--test-port", "18862", "--key-file", keys,
                    "-q",
                ],
                inNamespace: host.name
            )
            for rule in [
                ["in", "udp", "dport", "18862", "numgen", "random", "mod", "10", "<", "3", "drop"],
                ["in", "udp", "sport", "18862", "numgen", "random", "mod", "10", "<", "2", "drop"],
            ] {
                let result = try await Spawned.run(
                    TestNetwork.ip,
                    ["netns", "exec", host.name, "nft", "add", "rule", "inet", "udpecho"] + rule
                )
                #expect(result.status == 0, "\(result.error)")
            }
            let ping = try await Spawned.run(
                TestNetwork.ip,
                [
                    "netns", "exec", host.name, udpecho, "ping", "--twamp", control, "--twamp-mode", mode,
                    "--key-file", keys, "-c", "400", "-i", "1ms", "-W", "200ms", "-q", "--json",
                ],
                timeout: 60
            )
            let summary = try #require(try jsonObjects(ping.lines).last, "\(ping.error)")
            let stamp = try #require(summary["stamp"] as? [String: Any], "\(summary)")
            let lost = try #require(summary["lost"] as? Int)
            let forward = try #require(stamp["lost_forward"] as? Int, "\(stamp)")
            let backward = try #require(stamp["lost_backward"] as? Int)
            let unknown = try #require(stamp["lost_direction_unknown"] as? Int)
            #expect(forward + backward + unknown == lost)
            #expect((70...170).contains(forward), "forward \(forward) of 400 (about 120 expected)")
            #expect((25...95).contains(backward), "backward \(backward) (about 56 expected)")
            server.signal(SIGINT)
            #expect(await server.waitForExit() == 0)
            let line = try #require(server.outputLines.last { $0.contains("reflected=") }, "\(server.outputLines)")
            let reflected = try #require(line.firstMatch(of: /reflected=(\d+)/).flatMap { Int($0.1) })
            // The reflector answered exactly what reached it: all but the forward losses (and some of those after the
            // last reply, whose direction no reply tells).
            #expect((400 - forward - unknown...400 - forward).contains(reflected), "\(line); forward \(forward)")
        }
    }
}

/// `udpecho server --protocol twamp` as operators run it: its metrics count what the control protocol did.
@Suite struct TwampServerCommandTests {
    /// TWAMP's options are usage errors without `--protocol twamp` or out of range, each saying what is wrong; a
    /// key file that is a directory is refused before anything runs.
    @Test(arguments: [
        (["--max-sessions", "5"], "need --protocol twamp"),
        (["--key-file", "/dev/null"], "need --protocol twamp"),
        (["--protocol", "twamp", "--test-port", "70000"], "--test-port 70000 is out of range"),
        (["--protocol", "twamp", "--twamp-modes", "fast"], "'fast' is not a mode"),
        (["--protocol", "twamp", "--twamp-modes", "encrypted"], "need a key file with at least one key"),
        (["--protocol", "twamp", "--key-file", "/tmp"], "not a regular file"),
    ])
    func badOptionsAreClearErrors(arguments: [String], message: String) async throws {
        let run = try await Spawned.run(udpecho, ["server", "--address", "127.0.0.1:0"] + arguments)
        #expect(run.status != 0)
        #expect(run.error.contains(message), "\(run.error)")
    }

    /// `bench --twamp` loads one session, open loop, and reports it as `bench --stamp` does; --flows other than one
    /// is a usage error.
    @Test func benchLoadsOneSession() async throws {
        let (server, port) = try await startServer([
            "--protocol", "twamp", "--address", "127.0.0.1:0", "--test-port", "0", "-q",
        ])
        let bench = try await Spawned.run(
            udpecho,
            ["bench", "--twamp", "127.0.0.1:\(port)", "--rate", "2000", "-d", "1s", "--json"],
            timeout: 30
        )
        #expect(bench.status == 0, "\(bench.error)")
        let summary = try #require(try jsonObjects(bench.lines).last, "\(bench.error)")
        // Every test packet sent and answered whole; on a loaded machine a reply may come after the loss timeout
        // (then it is late, not received), so the reflector's count below is the exact one.
        #expect(summary["sent"] as? Int == 2000 && summary["corrupt"] as? Int == 0, "\(summary)")
        #expect((summary["received"] as? Int ?? 0) > 0, "\(summary)")
        let stamp = try #require(summary["stamp"] as? [String: Any], "\(summary)")
        #expect(stamp["lost_forward"] as? Int == 0, "\(stamp)")
        let flows = try await Spawned.run(udpecho, ["bench", "--twamp", "127.0.0.1:\(port)", "--flows", "4"])
        #expect(flows.status == 2 && flows.error.contains("--flows must be 1"), "\(flows.error)")
        server.signal(SIGINT)
        #expect(await server.waitForExit() == 0)
        let line = try #require(server.outputLines.last { $0.contains("reflected=") })
        #expect(line.contains("sessions=1 ") && line.contains("reflected=2000 "), "\(line)")
    }

    @Test(
        .enabled(
            if: FileManager.default.isExecutableFile(atPath: "/usr/bin/promtool"),
            "needs promtool (Debian: prometheus)"
        )
    )
    func itsMetricsCountSessionsAndRefusals() async throws {
        let directory = NSTemporaryDirectory() + "udpecho-keys-\(uniqueHostID())"
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        let keys = try writeKeyFile(in: directory)
        let wrong = directory + "/wrong.pfs"
        try "alice 77726f6e67\n".write(toFile: wrong, atomically: true, encoding: .utf8)
        let (server, port) = try await startServer([
            "--protocol", "twamp", "--address", "127.0.0.1:0", "--test-port", "0", "--key-file", keys, "--metrics",
            "127.0.0.1:0",
        ])
        let url = try #require(
            await server.waitForLine { $0.hasPrefix("metrics on ") }.map { String($0.dropFirst("metrics on ".count)) }
        )
        for (file, expected) in [(keys, Int32(0)), (wrong, 2)] {
            let ping = try await Spawned.run(
                udpecho,
                ["ping", "--twamp", "127.0.0.1:\(port)", "--key-file", file, "-c", "3", "-i", "10ms", "-q"]
            )
            #expect(ping.status == (expected == 0 ? 0 : 2), "\(ping.error)")
        }
        let scrape = try await Spawned.run(
            "/usr/bin/env",
            [
                "python3", "-c",
                "import sys, urllib.request; sys.stdout.write(urllib.request.urlopen(sys.argv[1]).read().decode())",
                url,
            ]
        )
        let text = String(decoding: scrape.output, as: UTF8.self)
        for sample in [
            "udpecho_twamp_control_connections_total{result=\"served\"} 2",
            "udpecho_twamp_setup_failures_total{reason=\"authentication\"} 1",
            "udpecho_twamp_sessions_total{result=\"accepted\"} 1",
            "udpecho_datagrams_total{direction=\"echoed\"} 3",
        ] {
            #expect(text.contains(sample + "\n"), "\(sample) in \(text)")
        }
        let check = try await Spawned.run("/usr/bin/promtool", ["check", "metrics"], input: Array(text.utf8))
        #expect(check.status == 0, "\(check.lines) \(check.error)")
        server.signal(SIGINT)
        #expect(await server.waitForExit() == 0)
    }
}

/// Two of our TWAMP servers made to answer each other: a session at each names the other's reflector as its sender
/// (each set up from the other's address, so no third party is involved), and one forged test packet from B's
/// reflector reaches A. A answers B, B answers A, and A drops what comes back, recognizing its own timestamp in the
/// copy of the sender's: one exchange each way, then nothing (RFC 8762 §4.6's loop, which STAMP's reflector also ends).
@Suite struct TwampLoopTests {
    @Test(.enabled(if: geteuid() == 0, "forging a source address needs a raw socket (root)"))
    func twoOfOurReflectorsStopAnsweringEachOther() async throws {
        let (a, b) = ("127.0.0.2", "127.0.0.3")
        let (serverA, controlA) = try await startServer([
            "--protocol", "twamp", "--address", "\(a):0", "--test-port", "0",
        ])
        let (serverB, controlB) = try await startServer([
            "--protocol", "twamp", "--address", "\(b):0", "--test-port", "0",
        ])
        func testPort(_ server: Spawned) throws -> Int {
            let line = server.outputLines.first { $0.contains("reflecting on") } ?? ""
            return try #require(line.firstMatch(of: /reflecting on [^ ]*:(\d+)/).flatMap { Int($0.1) }, "\(line)")
        }
        let (portA, portB) = (try testPort(serverA), try testPort(serverB))
        let script = packageRoot.appendingPathComponent("scripts/twamp-sessions.py").path
        // At A, from B's address: a session whose sender is B's reflector; at B, from A's address, the other way.
        let atA = try Spawned("/usr/bin/python3", [script, a, "\(controlA)", "\(portB)", "1", b])
        let atB = try Spawned("/usr/bin/python3", [script, b, "\(controlB)", "\(portA)", "1", a])
        #expect(await atA.waitForLine { Int($0) == portA } != nil, "\(atA.errorText)")
        #expect(await atB.waitForLine { Int($0) == portB } != nil, "\(atB.errorText)")
        let forge = try await Spawned.run(
            "/usr/bin/env",
            ["python3", "-c", pythonForge, b, "\(portB)", a, "\(portA)", "hex:" + String(repeating: "00", count: 41)]
        )
        #expect(forge.status == 0, "\(forge.error)")
        try await Task.sleep(for: .seconds(1))
        atA.closeInput()
        atB.closeInput()
        _ = await atA.waitForExit()
        _ = await atB.waitForExit()
        for server in [serverA, serverB] {
            server.signal(SIGINT)
            #expect(await server.waitForExit() == 0)
        }
        let summaryA = try #require(serverA.outputLines.last { $0.contains("reflected=") })
        let summaryB = try #require(serverB.outputLines.last { $0.contains("reflected=") })
        #expect(summaryA.contains("reflected=1 ") && summaryA.hasSuffix("dropped=1"), "\(summaryA)")
        #expect(summaryB.contains("reflected=1 ") && summaryB.hasSuffix("dropped=0"), "\(summaryB)")
    }
}
