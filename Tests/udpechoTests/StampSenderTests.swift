import Foundation
import TestSupport
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// Writes a STAMP key file for a test; removed by the caller.
func stampKeyFile(_ key: String) throws -> URL {
    let file = FileManager.default.temporaryDirectory.appendingPathComponent(
        "udpecho-key-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
    )
    try Data((key + "\n").utf8).write(to: file)
    return file
}

/// `udpecho ping --stamp`: against our reflector in every mode, against an echo server and twampy's responder, and
/// through test hosts that lose packets and rewrite DSCP.
// One test at a time: the whole suite runs in parallel on two cores, and these reflectors and senders would add to the
// peak load that makes other suites' timing checks miss.
@Suite(.serialized) struct StampSenderTests {
    /// Our sender against our reflector: every reply comes back, and on one host the round trip without the
    /// reflector's time is the forward plus the backward delay, both not negative (the same clock on both sides).
    @Test(arguments: [
        ([], [], "127.0.0.1"),
        (["--stamp-timestamp", "ptp", "--stamp-stateful"], ["--stamp-timestamp", "ptp"], "[::1]"),
        (["--stamp-key-file", "KEY"], ["--stamp-key-file", "KEY"], "127.0.0.1"),
        (["--stamp-key-file", "KEY", "--stamp-stateful"], ["--stamp-key-file", "KEY", "--stamp-location"], "[::1]"),
    ])
    func measuresOurReflector(reflector: [String], sender: [String], host: String) async throws {
        let key = try stampKeyFile("s3cret")
        defer { try? FileManager.default.removeItem(at: key) }
        let substitute = { (arguments: [String]) in arguments.map { $0 == "KEY" ? key.path : $0 } }
        let (server, port) = try await startServer(
            ["--protocol", "stamp", "--address", "\(host):0", "-q"] + substitute(reflector)
        )
        let ping = try await Spawned.run(
            udpecho,
            ["ping", "--stamp", "\(host):\(port)", "-c", "10", "-i", "10ms", "--json"] + substitute(sender)
        )
        #expect(ping.status == 0, "\(ping.error)")
        let objects = try jsonObjects(ping.lines)
        let replies = objects.filter { $0["type"] as? String == "reply" }
        #expect(replies.count == 10)
        for reply in replies {
            let stamp = try #require(reply["stamp"] as? [String: Any], "\(reply)")
            let rtt = try #require(reply["rtt_ms"] as? Double)
            let forward = try #require(stamp["forward_ms"] as? Double)
            let backward = try #require(stamp["backward_ms"] as? Double)
            #expect(forward >= -0.001 && backward >= -0.001, "\(stamp)")
            #expect(abs(rtt - forward - backward) < 0.005, "\(rtt) vs \(forward) + \(backward)")
            #expect(try #require(stamp["reflector_ms"] as? Double) >= 0)
            #expect(stamp["ttl"] as? Int == 64)
        }
        let summary = try #require(objects.last)
        let stamp = try #require(summary["stamp"] as? [String: Any])
        #expect(stamp["replies_from_reflector"] as? Int == 10 && stamp["plain_echoes"] as? Int == 0)
        if reflector.contains("--stamp-timestamp") { #expect(stamp["reflector_timestamp_format"] as? String == "ptp") }
        if sender.contains("--stamp-location") {
            #expect((stamp["source_seen_by_reflector"] as? String)?.hasPrefix("[::1]:") == true, "\(stamp)")
        }
        // No loss: nothing to tell apart, whether the reflector counts or copies.
        #expect(stamp["lost_forward"] as? Int ?? 0 == 0)
        server.signal(SIGINT)
        #expect(await server.waitForExit() == 0)
        #expect(try summaryCounts(server)["echoed"] == 10)
    }

    /// A sender whose key is not the reflector's gets no reply (the reflector drops and counts them as auth).
    @Test func aWrongKeyGetsNoReply() async throws {
        let reflectorKey = try stampKeyFile("the reflector's")
        let senderKey = try stampKeyFile("someone else's")
        defer {
            try? FileManager.default.removeItem(at: reflectorKey)
            try? FileManager.default.removeItem(at: senderKey)
        }
        let (server, port) = try await startServer([
            "--protocol", "stamp", "--address", "127.0.0.1:0", "-q", "--stamp-key-file", reflectorKey.path,
        ])
        let ping = try await Spawned.run(
            udpecho,
            [
                "ping", "--stamp", "127.0.0.1:\(port)", "-c", "3", "-i", "10ms", "-W", "200ms", "--stamp-key-file",
                senderKey.path,
            ]
        )
        #expect(ping.status == 1)
        server.signal(SIGINT)
        #expect(await server.waitForExit() == 0)
        #expect(try summaryCounts(server)["auth"] == 3, "\(server.outputLines)")
    }

    /// Pointed at a plain echo server, the test packets come back unchanged: it says so, and gives round trips only.
    @Test func recognisesAPlainEchoServer() async throws {
        let (server, port) = try await startServer(["--address", "127.0.0.1:0", "-q"])
        let ping = try await Spawned.run(udpecho, ["ping", "--stamp", "127.0.0.1:\(port)", "-c", "3", "-i", "10ms"])
        #expect(ping.status == 0, "\(ping.error)")
        #expect(ping.lines.filter { $0.hasSuffix("(echoed unchanged: not a STAMP reflector)") }.count == 3)
        #expect(ping.lines.contains { $0.hasPrefix("stamp: every reply was our test packet unchanged") })
        server.signal(SIGINT)
        await server.waitForExit()
    }

    /// `bench --stamp`: closed and open loop against a stateful reflector. Every test packet answered by the
    /// reflector (none taken for an echo), the reflector's time and both one-way delays in the result (not negative
    /// on one clock), and the reflector's time written as a histogram beside the round trip's.
    @Test(arguments: [["-d", "1s"], ["--rate", "2000", "-c", "1000", "--flows", "2"]])
    func benchLoadsAReflector(load: [String]) async throws {
        let (server, port) = try await startServer(
            ["--protocol", "stamp", "--address", "127.0.0.1:0", "-q", "--stamp-stateful"]
        )
        let histogram = FileManager.default.temporaryDirectory.appendingPathComponent(
            "udpecho-\(getpid())-\(port).hgrm"
        )
        let reflectorHistogram = histogram.deletingPathExtension().path + "-reflector.hgrm"
        defer {
            try? FileManager.default.removeItem(at: histogram)
            try? FileManager.default.removeItem(atPath: reflectorHistogram)
        }
        let bench = try await Spawned.run(
            udpecho,
            ["bench", "--stamp", "127.0.0.1:\(port)", "--json", "--histogram", histogram.path] + load,
            timeout: 30
        )
        #expect(bench.status == 0, "\(bench.error)")
        let result = try #require(try jsonObjects(bench.lines).first, "\(bench.lines)")
        let received = try #require(result["received"] as? Int)
        #expect(received > 0 && result["lost"] as? Int == 0 && result["corrupt"] as? Int == 0, "\(result)")
        #expect(result["size"] as? Int == 44)
        let stamp = try #require(result["stamp"] as? [String: Any], "\(result)")
        #expect(stamp["replies_from_reflector"] as? Int == received && stamp["plain_echoes"] as? Int == 0)
        #expect(try #require((stamp["reflector_ms"] as? [String: Double])?["p50"]) > 0, "\(stamp)")
        for direction in ["forward_ms", "backward_ms"] {
            let times = try #require(stamp[direction] as? [String: Double], "\(stamp)")
            #expect(times["p50"]! >= -0.001 && times["p99.9"]! >= times["p50"]!, "\(direction) \(times)")
        }
        let text = try String(contentsOfFile: reflectorHistogram, encoding: .utf8)
        #expect(text.contains("STAMP reflector time") && text.contains("#[Mean"), "\(text.prefix(300))")
        server.signal(SIGINT)
        #expect(await server.waitForExit() == 0)
        #expect(try summaryCounts(server)["echoed"] == received)
    }

    /// Our sender against Nokia's twampy responder (a TWAMP-Light reflector, as routers have): every reply is read
    /// (38 bytes: a TWAMP-Light reflected header), with the TTL it does not report said to be missing.
    @Test(.enabled(if: twampyAvailable, "twampy is in ../shared/peers, which a clone of this project alone lacks"))
    func measuresTwampysResponder() async throws {
        let port = try TestSocket(host: "127.0.0.1").localAddress.port!  // a free port, released at once
        let responder = try Spawned(
            "/usr/bin/env",
            ["PYTHONPATH=\(twampyPath)", "python3", "-m", "twampy", "responder", "127.0.0.1:\(port)"]
        )
        defer { responder.signal(SIGKILL) }
        try await Task.sleep(for: .milliseconds(500))  // python's start; the first probes would be refused
        let failure = try await firstPassingAttempt {
            let ping = try await Spawned.run(
                udpecho,
                ["ping", "--stamp", "127.0.0.1:\(port)", "-c", "5", "-i", "50ms", "--json"]
            )
            let objects = try jsonObjects(ping.lines)
            let replies = objects.filter { $0["type"] as? String == "reply" }
            guard replies.count == 5 else { return "\(ping.lines) \(ping.error)" }
            #expect(replies.allSatisfy { ($0["bytes"] as? Int ?? 0) >= 38 })
            let stamp = try #require(objects.last?["stamp"] as? [String: Any])
            #expect(stamp["replies_from_reflector"] as? Int == 5)
            return nil
        }
        #expect(failure == nil, "\(failure ?? "")")
    }

    /// Through a test host that loses about 30% of test packets on the way to the reflector and 20% of the replies on
    /// the way back, a stateful reflector's counter tells the two apart.
    @Test(.enabled(if: FirewalledHost.available, "needs root, ip and nft to make a firewalled network namespace"))
    func aStatefulReflectorTellsForwardFromBackwardLoss() async throws {
        try await withHosts(try await FirewalledHost()) { host in
            let (server, port) = try await startServer(
                ["--protocol", "stamp", "--address", "127.0.0.1:0", "-q", "--stamp-stateful"],
                inNamespace: host.name
            )
            for rule in [
                ["in", "udp", "dport", "\(port)", "numgen", "random", "mod", "10", "<", "3", "drop"],
                ["in", "udp", "sport", "\(port)", "numgen", "random", "mod", "10", "<", "2", "drop"],
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
                    "netns", "exec", host.name, udpecho, "ping", "--stamp", "127.0.0.1:\(port)", "-c", "400", "-i",
                    "1ms", "-W", "200ms", "-q", "--json",
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
            // The reflector received exactly the test packets not lost on the way there: those before the last reply
            // as the sender says, and some of those after it.
            let received = try #require(try summaryCounts(server)["received"])
            #expect(
                (400 - forward - unknown...400 - forward).contains(received),
                "reflector received \(received), forward loss \(forward), \(unknown) after the last reply"
            )
        }
    }

    /// A reflector that declines the DSCP asked of it (RP 1, udpecho's default): ping says so, and does not call
    /// the way back kept (its replies leave with the reflector's own marking, which ping cannot know).
    @Test func aDeclinedClassOfServiceLeavesTheWayBackUnknown() async throws {
        let (server, port) = try await startServer(["--protocol", "stamp", "--address", "127.0.0.1:0", "-q"])
        let ping = try await Spawned.run(
            udpecho,
            ["ping", "--stamp", "127.0.0.1:\(port)", "-c", "5", "-i", "10ms", "--dscp", "46", "-q"]
        )
        #expect(ping.status == 0, "\(ping.error)")
        #expect(
            ping.lines.contains {
                $0.hasPrefix("stamp: the reflector declined the DSCP asked of it in 5 replies (RP=1")
            },
            "\(ping.lines)"
        )
        #expect(
            ping.lines.contains(
                "marking: DSCP 46 sent, 46 at the reflector, 0 back here: kept on the way there; on the way back not "
                    + "known: the reflector did not send its replies with the DSCP asked of it, so what it sent is not known"
            ),
            "\(ping.lines)"
        )
        server.signal(SIGINT)
        #expect(await server.waitForExit() == 0)
    }

    /// A host whose firewall rewrites DSCP on the way out: the Class of Service TLV shows what the reflector
    /// received (not what was sent), and the reply comes back with the DSCP asked for.
    @Test(.enabled(if: FirewalledHost.available, "needs root, ip and nft to make a firewalled network namespace"))
    func theClassOfServiceTLVShowsARewrittenDSCP() async throws {
        try await withHosts(try await FirewalledHost()) { host in
            let (server, port) = try await startServer(
                ["--protocol", "stamp", "--address", "127.0.0.1:0", "-q", "--reflect-tos"],
                inNamespace: host.name
            )
            // The out chain is a filter chain; a DSCP rewrite is a mangle of the test packets on their way out.
            let commands = [
                ["nft", "add", "chain", "inet", "udpecho", "rewrite", "{ type filter hook output priority -150; }"],
                [
                    "nft", "add", "rule", "inet", "udpecho", "rewrite", "udp", "dport", "\(port)", "ip", "dscp", "set",
                    "cs1",
                ],
            ]
            for command in commands {
                let result = try await Spawned.run(TestNetwork.ip, ["netns", "exec", host.name] + command)
                #expect(result.status == 0, "\(result.error)")
            }
            let ping = try await Spawned.run(
                TestNetwork.ip,
                [
                    "netns", "exec", host.name, udpecho, "ping", "--stamp", "127.0.0.1:\(port)", "-c", "5", "-i",
                    "10ms", "--stamp-cos", "46", "-q", "--json",
                ]
            )
            let stamp = try #require(try jsonObjects(ping.lines).last?["stamp"] as? [String: Any], "\(ping.error)")
            #expect(stamp["dscp_at_reflector"] as? [String: Int] == ["8": 5], "\(stamp)")  // CS1, not 0 as sent
            #expect(stamp["dscp_here"] as? [String: Int] == ["46": 5], "\(stamp)")  // as asked of the reflector
            server.signal(SIGINT)
            await server.waitForExit()
        }
    }
}
