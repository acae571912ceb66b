import Foundation
import TestSupport
import Testing
import UDPEcho

/// owampd's configuration directory for a server on 127.0.0.1:861 inside a test host, with the test key.
func owampdDirectory() throws -> String {
    let directory = NSTemporaryDirectory() + "udpecho-owampd-\(uniqueHostID())"
    for folder in ["conf", "var", "data"] {
        try FileManager.default.createDirectory(atPath: directory + "/" + folder, withIntermediateDirectories: true)
    }
    try "srcnode 127.0.0.1:861\ntestports 18760-18960\nloglocation\n".write(
        toFile: directory + "/conf/owamp-server.conf",
        atomically: true,
        encoding: .utf8
    )
    let limits = packageRoot.appendingPathComponent("../shared/peers/owamp/owamp/owamp/conf/owampd.limits").path
    try FileManager.default.copyItem(atPath: limits, toPath: directory + "/conf/owamp-server.limits")
    try FileManager.default.copyItem(
        atPath: try writeKeyFile(in: directory),
        toPath: directory + "/conf/owamp-server.pfs"
    )
    return directory
}

/// The numbers of an owping statistics line, "one-way delay min/median/max = 0.0138/0.1/0.0648 ms, (unsync)".
func owpingDelays(_ line: String) -> [Double] {
    guard let values = line.split(separator: "=").dropFirst().first?.split(separator: " ").first else { return [] }
    return values.split(separator: "/").compactMap { Double($0) }
}

/// OWAMP against perfSONAR's own tools, in each mode, each on a test host of its own (a network namespace with only
/// loopback, so both use OWAMP's port 861).
@Suite(.serialized) struct OwampInteropTests {
    static let modes: [(udpecho: String, perfsonar: String)] = [
        ("unauthenticated", "O"), ("authenticated", "A"), ("encrypted", "E"),
    ]

    /// perfSONAR's owping against our server, both directions: 20 sent and none lost each way, every delay it
    /// prints non-negative (one host, one clock), no hop; our server counts two sessions and one fetch.
    @Test(
        .enabled(if: perfsonarAvailable, "perfSONAR's sources are in ../shared/peers, which a clone alone lacks"),
        arguments: modes.map(\.perfsonar)
    )
    func owpingMeasuresOurServer(mode: String) async throws {
        let bin = try #require(perfsonarBin, "perfSONAR's tools did not build")
        try await withHosts(try await LoopbackHost()) { host in
            let directory = NSTemporaryDirectory() + "udpecho-keys-\(uniqueHostID())"
            try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
            let keys = try writeKeyFile(in: directory)
            let (server, port) = try await startServer(
                ["--protocol", "owamp", "--key-file", keys],
                inNamespace: host.name
            )
            #expect(port == 861)
            let owping = try await Spawned.run(
                TestNetwork.ip,
                [
                    "netns", "exec", host.name, bin + "/owping", "-A", mode, "-u", "alice", "-k", keys, "-c", "20",
                    "-i", "0.01", "-L", "1", "127.0.0.1",
                ],
                timeout: 60
            )
            #expect(owping.status == 0, "\(owping.error)")
            #expect(!owping.error.contains("failed"), "\(owping.error)")
            #expect(
                owping.lines.filter { $0 == "20 sent, 0 lost (0.000%), 0 duplicates" }.count == 2,
                "\(owping.lines)"
            )
            let delays = owping.lines.filter { $0.hasPrefix("one-way delay") }.map(owpingDelays)
            #expect(delays.count == 2 && delays.allSatisfy { $0.count == 3 && $0.allSatisfy { $0 >= 0 } }, "\(delays)")
            #expect(owping.lines.filter { $0 == "hops = 0 (consistently)" }.count == 2, "\(owping.lines)")
            server.signal(SIGINT)
            #expect(await server.waitForExit() == 0)
            let summary = try #require(server.outputLines.last { $0.contains("connections=") }, "\(server.outputLines)")
            #expect(summary.contains("sessions=2 ") && summary.contains("fetches=1 "), "\(summary)")
        }
    }

    /// Our client against perfSONAR's owampd: 20 received, none lost either way, one-way delays non-negative.
    @Test(
        .enabled(if: perfsonarAvailable, "perfSONAR's sources are in ../shared/peers, which a clone alone lacks"),
        arguments: modes.map(\.udpecho)
    )
    func ourClientMeasuresOwampd(mode: String) async throws {
        let bin = try #require(perfsonarBin, "perfSONAR's tools did not build")
        try await withHosts(try await LoopbackHost()) { host in
            let directory = try owampdDirectory()
            let owampd = try Spawned(
                TestNetwork.ip,
                ["netns", "exec", host.name]
                    + withSignalsUnblocked([
                        bin + "/owampd", "-c", directory + "/conf", "-R", directory + "/var", "-d",
                        directory + "/data", "-f", "-Z",
                    ])
            )
            defer { owampd.signal(SIGTERM) }
            var ping: (status: Int32, output: Data, lines: [String], error: String)?
            // owampd prints nothing when it listens: the first attempts may come before it does.
            for _ in 0..<50 {
                ping = try await Spawned.run(
                    TestNetwork.ip,
                    [
                        "netns", "exec", host.name, udpecho, "ping", "--owamp", "127.0.0.1", "--mode", mode,
                        "--key-file", directory + "/conf/owamp-server.pfs", "-c", "20", "-i", "10ms", "-W", "1s",
                        "--json",
                    ],
                    timeout: 60
                )
                if ping?.status == 0 || !(ping?.error.contains("Connection refused") ?? false) { break }
                try await Task.sleep(for: .milliseconds(100))
            }
            let result = try #require(ping)
            #expect(result.status == 0, "\(result.error)")
            let summary = try #require(try jsonObjects(result.lines).last, "\(result.error)")
            #expect(summary["mode"] as? String == mode)
            for key in ["to", "from"] {
                let direction = try #require(summary[key] as? [String: Any], "\(key): \(summary)")
                #expect(direction["sent"] as? Int == 20 && direction["received"] as? Int == 20, "\(direction)")
                #expect(direction["lost"] as? Int == 0 && direction["duplicates"] as? Int == 0, "\(direction)")
                #expect((direction["delay_min_ms"] as? Double ?? -1) >= 0, "\(direction)")
                #expect(direction["hops_max"] as? Int == 0, "\(direction)")
            }
        }
    }

    /// The send times of a session's packets, which sender and receiver compute apart (RFC 4656 §5's generator
    /// keyed with the SID), are perfSONAR's to the bit: its own schedule code, linked from its library, against
    /// ``OwampSchedule`` for several SIDs and mixes of exponential and fixed slots, 2000 packets each.
    @Test(.enabled(if: perfsonarAvailable, "perfSONAR's sources are in ../shared/peers, which a clone alone lacks"))
    func theScheduleIsPerfsonars() async throws {
        let bin = try #require(perfsonarBin, "perfSONAR's tools did not build")
        let prefix = URL(fileURLWithPath: bin).deletingLastPathComponent().path
        let directory = NSTemporaryDirectory() + "udpecho-schedule-\(uniqueHostID())"
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        try perfsonarScheduleSource.write(toFile: directory + "/schedule.c", atomically: true, encoding: .utf8)
        let headers = packageRoot.appendingPathComponent("../shared/peers/owamp/owamp/owamp").standardized.path
        let defines = [
            "ERRNO_H", "NETDB_H", "STDLIB_H", "SYS_PARAM_H", "GETADDRINFO", "SOCKET", "MALLOC", "MEMSET",
        ].map { "-DHAVE_\($0)=1" }
        let compile = try await Spawned.run(
            "/usr/bin/gcc",
            ["-O1"] + defines + [
                "-I", headers, "-I", prefix + "/include", directory + "/schedule.c", prefix + "/lib/libowamp.a",
                prefix + "/lib/libI2util.a", "-lm", "-o", directory + "/schedule",
            ]
        )
        try #require(compile.status == 0, "\(compile.error)")
        let mean = ScheduleSlot(kind: .exponential, duration: .milliseconds(100))
        let cases: [(sid: [UInt8], slots: [ScheduleSlot])] = [
            ((0..<16).map(UInt8.init), [mean]),
            ([UInt8](repeating: 0xA5, count: 16), [ScheduleSlot(kind: .exponential, duration: .microseconds(1500))]),
            (
                (0..<16).map { UInt8(255 - $0 * 7) },
                [
                    mean, ScheduleSlot(kind: .fixed, duration: .milliseconds(3)),
                    ScheduleSlot(kind: .exponential, duration: .seconds(2)),
                ]
            ),
        ]
        for (sid, slots) in cases {
            let hex = sid.map { String(format: "%02x", $0) }.joined()
            let arguments = slots.map { ($0.kind == .exponential ? "e" : "f") + String($0.parameter) }
            let run = try await Spawned.run(directory + "/schedule", [hex, "2000"] + arguments)
            try #require(run.status == 0, "\(run.error)")
            let theirs = run.lines.compactMap { UInt64($0) }
            var schedule = OwampSchedule(sid: sid, slots: slots)
            var previous: UInt64 = 0
            let ours = (0..<2000).map { _ in
                let offset = schedule.next()
                defer { previous = offset }
                return offset - previous
            }
            #expect(
                theirs.count == 2000 && theirs == ours,
                "SID \(hex): first difference at \(Array(zip(theirs, ours)).firstIndex { $0.0 != $0.1 } ?? -1)"
            )
        }
    }
}

/// perfSONAR's schedule generator as a program: prints the gaps (32.32 fixed point) of `COUNT` packets of the
/// session `SID` (32 hex digits) with the slots given as `e<mean>` or `f<gap>` (32.32, decimal).
let perfsonarScheduleSource = """
    #include <stdio.h>
    #include <stdlib.h>
    #include <string.h>
    #include <owamp/owamp.h>
    int main(int argc, char **argv) {
        if (argc < 4) return 2;
        OWPContext ctx = OWPContextCreate(NULL);
        OWPSID sid;
        for (int i = 0; i < 16; i++) { unsigned v; sscanf(argv[1] + 2 * i, "%2x", &v); sid[i] = (uint8_t)v; }
        int count = atoi(argv[2]);
        int nslots = argc - 3;
        OWPSlot *slots = calloc(nslots, sizeof(OWPSlot));
        for (int i = 0; i < nslots; i++) {
            unsigned long long parameter = strtoull(argv[3 + i] + 1, NULL, 10);
            if (argv[3 + i][0] == 'e') { slots[i].slot_type = OWPSlotRandExpType; slots[i].rand_exp.mean = parameter; }
            else { slots[i].slot_type = OWPSlotLiteralType; slots[i].literal.offset = parameter; }
        }
        OWPTestSpec spec; memset(&spec, 0, sizeof(spec));
        spec.npackets = count; spec.nslots = nslots; spec.slots = slots;
        OWPScheduleContext schedule = OWPScheduleContextCreate(ctx, sid, &spec);
        for (int i = 0; i < count; i++) printf("%llu\\n", (unsigned long long)OWPScheduleContextGenerateNextDelta(schedule));
        return 0;
    }
    """

/// Wireshark's OWAMP-Test dissector (tshark) reads a capture of our client's sessions with our server, both ways:
/// every test packet, nothing malformed.
@Suite struct OwampDissectorTests {
    @Test(.enabled(if: TwampDissectorTests.available, "needs root, ip and tshark (.ci/run installs it)"))
    func wiresharkDecodesOurTestPackets() async throws {
        try await withHosts(try await LoopbackHost()) { host in
            let (server, _) = try await startServer(
                ["--protocol", "owamp", "--test-ports", "18760-18761", "-q"],
                inNamespace: host.name
            )
            let capture = try await captured(in: host, filter: "udp portrange 18760-18761") {
                let ping = try await Spawned.run(
                    TestNetwork.ip,
                    [
                        "netns", "exec", host.name, udpecho, "ping", "--owamp", "127.0.0.1", "-c", "5", "-i", "10ms",
                        "-W", "500ms", "--mode", "unauthenticated", "-q",
                    ]
                )
                #expect(ping.status == 0, "\(ping.error)")
                try await Task.sleep(for: .milliseconds(300))
            }
            defer { try? FileManager.default.removeItem(atPath: capture) }
            server.signal(SIGINT)
            _ = await server.waitForExit()
            let decode = ["-d", "udp.port==18760,owamp.test", "-d", "udp.port==18761,owamp.test"]
            let read = try await Spawned.run("/usr/bin/tshark", ["-r", capture] + decode)
            #expect(read.status == 0, "\(read.error)")
            #expect(read.lines.filter { $0.contains("OWAMP-Test") }.count == 10, "\(read.lines)")
            let fields = try await Spawned.run(
                "/usr/bin/tshark",
                ["-r", capture] + decode + ["-T", "fields", "-e", "twamp.test.seq_number"]
            )
            // Sequence numbers 0...4, each way.
            #expect(
                fields.lines.filter { !$0.isEmpty }.sorted() == ["0", "0", "1", "1", "2", "2", "3", "3", "4", "4"],
                "\(fields.lines)"
            )
            let verbose = try await Spawned.run("/usr/bin/tshark", ["-r", capture, "-V"] + decode)
            #expect(!verbose.lines.contains { $0.localizedCaseInsensitiveContains("malformed") })
            #expect(!verbose.lines.contains { $0.contains("[Expert Info (Error") })
        }
    }
}

/// Our OWAMP client against our server through a test host whose firewall drops about 30% of the test packets to
/// the server and 20% of those from it, counting what it drops: each direction's loss is exactly the firewall's
/// count, in every mode and family.
@Suite struct OwampLossTests {
    @Test(
        .enabled(if: FirewalledHost.available, "needs root, ip and nft to make a firewalled network namespace"),
        arguments: ["unauthenticated", "authenticated", "encrypted"],
        ["127.0.0.1", "::1"]
    )
    func eachDirectionsLossIsTheFirewalls(mode: String, host address: String) async throws {
        try await withHosts(try await FirewalledHost()) { host in
            let directory = NSTemporaryDirectory() + "udpecho-keys-\(uniqueHostID())"
            try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
            let keys = try writeKeyFile(in: directory)
            let control = address.contains(":") ? "[\(address)]" : address
            let (server, _) = try await startServer(
                [
                    "--protocol", "owamp", "--address", "\(control):861", "--test-ports", "18760-18960", "--key-file",
                    keys, "-q",
                ],
                inNamespace: host.name
            )
            for rule in [
                ["in", "udp", "dport", "18760-18960", "numgen", "random", "mod", "10", "<", "3", "counter", "drop"],
                ["in", "udp", "sport", "18760-18960", "numgen", "random", "mod", "10", "<", "2", "counter", "drop"],
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
                    "netns", "exec", host.name, udpecho, "ping", "--owamp", control, "--mode", mode, "--key-file", keys,
                    "-c", "400", "-i", "1ms", "-W", "1s", "--json",
                ],
                timeout: 60
            )
            #expect(ping.status == 0, "\(ping.error)")
            let summary = try #require(try jsonObjects(ping.lines).last, "\(ping.error)")
            let rules = try await Spawned.run(
                TestNetwork.ip,
                ["netns", "exec", host.name, "nft", "list", "chain", "inet", "udpecho", "in"]
            )
            let dropped = rules.lines.compactMap { line -> (String, Int)? in
                guard let count = line.firstMatch(of: /counter packets (\d+)/).flatMap({ Int($0.1) }) else {
                    return nil
                }
                return (line.contains("dport") ? "to" : "from", count)
            }
            let counts = Dictionary(dropped, uniquingKeysWith: +)
            for (key, range) in [("to", 70...170), ("from", 40...125)] {
                let direction = try #require(summary[key] as? [String: Any], "\(key): \(summary)")
                let lost = try #require(direction["lost"] as? Int)
                let sent = try #require(direction["sent"] as? Int)
                // A sender more than the loss timeout behind its schedule (a loaded machine) skips packets, and says so.
                #expect(sent + (direction["skipped"] as? Int ?? -1) == 400 && sent > 300, "\(direction)")
                #expect(direction["duplicates"] as? Int == 0, "\(direction)")
                #expect(lost + (direction["received"] as? Int ?? 0) == sent, "\(direction)")
                #expect(lost == counts[key], "\(key): lost \(lost), the firewall dropped \(counts[key] ?? -1)")
                #expect(range.contains(lost), "\(key): lost \(lost) of 400")
            }
            server.signal(SIGINT)
            #expect(await server.waitForExit() == 0)
        }
    }
}

/// `udpecho server --protocol owamp` as operators run it.
@Suite struct OwampServerCommandTests {
    /// OWAMP's options are usage errors with the wrong protocol or out of range, each saying what is wrong.
    @Test(arguments: [
        (["--test-ports", "1000-2000"], "need --protocol twamp or --protocol owamp"),
        (["--protocol", "twamp", "--max-packets", "5"], "are OWAMP's: they need --protocol owamp"),
        (["--protocol", "owamp", "--test-port", "5000"], "an OWAMP server takes a port per session"),
        (["--protocol", "owamp", "--test-ports", "9-3"], "'9-3' is not a port range"),
        (["--protocol", "owamp", "--max-packets", "0"], "the maximum packets per session must be at least 1"),
        (["--protocol", "owamp", "--modes", "authenticated"], "need a key file with at least one key"),
    ])
    func badServerOptionsAreClearErrors(arguments: [String], message: String) async throws {
        let run = try await Spawned.run(udpecho, ["server", "--address", "127.0.0.1:0"] + arguments)
        #expect(run.status != 0)
        #expect(run.error.contains(message), "\(run.error)")
    }

    @Test(arguments: [
        (["--direction", "to"], "need --owamp"),
        (["--owamp", "--twamp"], "two protocols"),
        (["--owamp", "--padding", "70000"], "--padding 70000 is out of range"),
        (["--owamp", "--direction", "sideways"], "direction"),
        (["--owamp", "--mode", "encrypted"], "needs --key-file"),
    ])
    func badClientOptionsAreClearErrors(arguments: [String], message: String) async throws {
        let run = try await Spawned.run(udpecho, ["ping", "127.0.0.1:9"] + arguments)
        #expect(run.status == 2, "\(run.status)")
        #expect(run.error.contains(message), "\(run.error)")
    }

    @Test func benchDoesNotTakeOwamp() async throws {
        let run = try await Spawned.run(udpecho, ["bench", "--owamp", "127.0.0.1:861"])
        #expect(run.status == 2 && run.error.contains("use udpecho ping --owamp"), "\(run.status) \(run.error)")
    }

    /// A server that is not there, and one that refuses the mode, are clear errors (exit 2).
    @Test func refusalsAreClearErrors() async throws {
        let nobody = try await Spawned.run(udpecho, ["ping", "--owamp", "127.0.0.1:9", "-c", "1"])
        #expect(nobody.status == 2 && nobody.error.contains("OWAMP-Control connect to 127.0.0.1:9"), "\(nobody.error)")
        let (server, port) = try await startServer(["--protocol", "owamp", "--address", "127.0.0.1:0", "-q"])
        let directory = NSTemporaryDirectory() + "udpecho-keys-\(uniqueHostID())"
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        let keys = try writeKeyFile(in: directory)
        let keyed = try await Spawned.run(
            udpecho,
            ["ping", "--owamp", "127.0.0.1:\(port)", "--mode", "encrypted", "--key-file", keys, "-c", "1"]
        )
        #expect(
            keyed.status == 2 && keyed.error.contains("offers unauthenticated mode, not encrypted"),
            "\(keyed.error)"
        )
        server.signal(SIGINT)
        #expect(await server.waitForExit() == 0)
    }

    @Test(
        .enabled(
            if: FileManager.default.isExecutableFile(atPath: "/usr/bin/promtool"),
            "needs promtool (Debian: prometheus)"
        )
    )
    func itsMetricsCountSessionsAndFetches() async throws {
        let (server, port) = try await startServer([
            "--protocol", "owamp", "--address", "127.0.0.1:0", "--metrics", "127.0.0.1:0",
        ])
        let url = try #require(
            await server.waitForLine { $0.hasPrefix("metrics on ") }.map { String($0.dropFirst("metrics on ".count)) }
        )
        let ping = try await Spawned.run(
            udpecho,
            ["ping", "--owamp", "127.0.0.1:\(port)", "-c", "5", "-i", "5ms", "-W", "500ms", "-q"]
        )
        #expect(ping.status == 0, "\(ping.error)")
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
            "udpecho_owamp_control_connections_total{result=\"served\"} 1",
            "udpecho_owamp_sessions_total{result=\"accepted\"} 2",
            "udpecho_owamp_fetches_total{result=\"answered\"} 1",
            "udpecho_owamp_sessions_running 0",
            "udpecho_owamp_results_kept 1",
        ] {
            #expect(text.contains(sample + "\n"), "\(sample) in \(text)")
        }
        let check = try await Spawned.run("/usr/bin/promtool", ["check", "metrics"], input: Array(text.utf8))
        #expect(check.status == 0, "\(check.lines) \(check.error)")
        server.signal(SIGINT)
        #expect(await server.waitForExit() == 0)
        let summary = try #require(server.outputLines.last { $0.contains("connections=") })
        #expect(summary.contains("sessions=2 ") && summary.contains("fetches=1 "), "\(summary)")
    }
}
