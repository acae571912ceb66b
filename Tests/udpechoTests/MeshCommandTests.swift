import Foundation
import TestSupport
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// Fetches `url` with Python's urllib: the body, or nil.
func httpGet(_ url: String) async throws -> String? {
    let result = try await Spawned.run(
        python,
        [
            "python3", "-c",
            "import sys, urllib.request; sys.stdout.write(urllib.request.urlopen(sys.argv[1], timeout=5).read().decode())",
            url,
        ]
    )
    return result.status == 0 ? String(decoding: result.output, as: UTF8.self) : nil
}

/// A mesh agent on loopback: its echo server on an ephemeral port, its metrics on another.
struct MeshAgentProcess {
    let process: Spawned
    let echoPort: Int
    let metricsURL: String

    init(_ arguments: [String]) async throws {
        self.process = try Spawned(
            udpecho,
            ["mesh", "--address", "127.0.0.1:0", "--metrics", "127.0.0.1:0"] + arguments
        )
        let serving = await self.process.waitForLine { $0.hasPrefix("mesh agent: serving echo on ") }
        let metrics = await self.process.waitForLine { $0.hasPrefix("metrics on ") }
        guard let serving, let metrics,
            let port = serving.firstMatch(of: /:(\d+)$/).flatMap({ Int($0.1) })
        else { throw StartError(output: self.process.errorText + self.process.outputLines.joined(separator: "\n")) }
        self.echoPort = port
        self.metricsURL = String(metrics.dropFirst("metrics on ".count))
    }

    /// The value of the series `name{labels}` in the agent's metrics, as text.
    func value(_ series: String) async throws -> String? {
        guard let text = try await httpGet(self.metricsURL) else { return nil }
        return text.split(separator: "\n").first { $0.hasPrefix(series + " ") }.map {
            String($0.split(separator: " ").last!)
        }
    }

    /// Polls until `series` reads `expected` (nil: until it is gone), or 10 s pass; returns what it read last.
    func waitFor(_ series: String, _ expected: String?) async throws -> String? {
        var last: String? = nil
        for _ in 0..<50 {
            last = try await self.value(series)
            if last == expected { return last }
            try await Task.sleep(for: .milliseconds(200))
        }
        return last
    }
}

@Suite struct MeshCommandTests {
    /// --once probes each peer for the duration and reports it: a live server answers every probe, a port nobody
    /// serves loses every one (exit 1).
    @Test func onceReportsEachPeer() async throws {
        let (server, port) = try await startServer(["--address", "127.0.0.1:0", "--quiet"])
        let result = try await Spawned.run(
            udpecho,
            [
                "mesh", "--once", "--json", "-d", "2s", "-i", "50ms", "-W", "500ms", "--peer", "127.0.0.1:\(port)",
                "--peer", "127.0.0.1:9",
            ]
        )
        #expect(result.status == 1, "\(result.lines) \(result.error)")
        let document = try #require(try jsonObjects(result.lines).last)
        let peers = try #require(document["peers"] as? [[String: Any]])
        let live = try #require(peers.first { $0["peer"] as? String == "127.0.0.1:\(port)" })
        let dead = try #require(peers.first { $0["peer"] as? String == "127.0.0.1:9" })
        let sent = try #require(live["sent"] as? Int)
        #expect((30...45).contains(sent), "\(live)")
        #expect(live["received"] as? Int == sent && live["lost"] as? Int == 0 && live["corrupt"] as? Int == 0)
        #expect((live["rtt_ms"] as? [String: Double])?["p50"] != nil)
        #expect(dead["received"] as? Int == 0 && dead["lost"] as? Int == dead["sent"] as? Int, "\(dead)")
        server.signal(SIGTERM)
        await server.waitForExit()
    }

    /// A peer list that asks for far too much cannot become a flood: 2000 peers every 500 ms (4000 probes a
    /// second) under --max-rate 500 send at most 500 a second (and a tenth of a second's burst), the rest counted
    /// as skipped; the byte cap holds the same way.
    @Test(arguments: [(["--max-rate", "500"], 500.0), (["--max-bytes-rate", "23000"], 23000.0 / 92)])
    func theCapsHoldWhateverTheListSays(cap: [String], probesPerSecond: Double) async throws {
        let (server, port) = try await startServer(["--address", "0.0.0.0:0", "--quiet"])
        let file = FileManager.default.temporaryDirectory.appendingPathComponent("peers-\(getpid())-\(port)")
        let list = (0..<2000).map { "127.0.\($0 / 250 + 1).\($0 % 250 + 1):\(port)" }.joined(separator: "\n")
        try list.write(to: file, atomically: true, encoding: .utf8)
        defer { try? FileManager.default.removeItem(at: file) }
        let result = try await Spawned.run(
            udpecho,
            ["mesh", "--once", "--json", "-d", "2s", "-i", "500ms", "-W", "500ms", "--peers", file.path] + cap
        )
        let document = try #require(try jsonObjects(result.lines).last, "\(result.error)")
        let peers = try #require(document["peers"] as? [[String: Any]])
        #expect(peers.count == 2000)
        let sent = peers.reduce(0) { $0 + ($1["sent"] as? Int ?? 0) }
        let skipped = peers.reduce(0) { $0 + ($1["skipped"] as? Int ?? 0) }
        let received = peers.reduce(0) { $0 + ($1["received"] as? Int ?? 0) }
        // 2 s at the cap, a tenth of a second's burst, and a quarter second for the start and stop of --once; the
        // list asked for 8000.
        #expect(Double(sent) <= probesPerSecond * 2.35 + 1, "sent \(sent)")
        // The lower bound only shows that probes went out (a debug build under the suite's load loops slowly).
        #expect(Double(sent) >= probesPerSecond * 0.5, "sent \(sent): \(result.error)")
        #expect(skipped > 4000, "skipped \(skipped)")
        #expect(received == sent)
        server.signal(SIGTERM)
        await server.waitForExit()
    }

    /// The peers file is read again when it changes (a bad version is refused whole, with the line, and the last
    /// good one kept), on SIGHUP when its change left no trace, and a peer that left is exported until the grace
    /// period ends. Metrics as Prometheus reads them (promtool, where installed).
    @Test func thePeersFileIsFollowed() async throws {
        let (first, firstPort) = try await startServer(["--address", "127.0.0.1:0", "--quiet"])
        let (second, secondPort) = try await startServer(["--address", "127.0.0.1:0", "--quiet"])
        let file = FileManager.default.temporaryDirectory.appendingPathComponent("peers-\(getpid())-\(firstPort)")
        try "127.0.0.1:\(firstPort)\n".write(to: file, atomically: false, encoding: .utf8)
        defer { try? FileManager.default.removeItem(at: file) }
        let agent = try await MeshAgentProcess(["--peers", file.path, "-i", "50ms", "--grace", "5s"])
        let firstSeries = "udpecho_mesh_peer_up{peer=\"127.0.0.1:\(firstPort)\",address=\"127.0.0.1:\(firstPort)\"}"
        let secondSeries = "udpecho_mesh_peer_up{peer=\"127.0.0.1:\(secondPort)\",address=\"127.0.0.1:\(secondPort)\"}"
        #expect(try await agent.waitFor(firstSeries, "1") == "1")
        #expect(try await agent.waitFor("udpecho_mesh_peers", "1") == "1")

        // A second peer; then a bad line, refused with its number.
        try "127.0.0.1:\(firstPort)\n127.0.0.1:\(secondPort)\n".write(to: file, atomically: false, encoding: .utf8)
        #expect(try await agent.waitFor(secondSeries, "1") == "1")
        try "127.0.0.1:\(firstPort)\nnot a peer\n".write(to: file, atomically: false, encoding: .utf8)
        var said = false
        for _ in 0..<50 where !said {
            said = agent.process.errorText.contains("line 2 ('not a peer')")
            if !said { try await Task.sleep(for: .milliseconds(200)) }
        }
        #expect(said, "\(agent.process.errorText)")
        #expect(try await agent.value("udpecho_mesh_peers") == "2")

        // A change that keeps the file's size and time (to the nanosecond) is seen on SIGHUP only.
        let third = "127.0.0.1:\(secondPort)\n"
        let padded =
            third + String(repeating: "#", count: "127.0.0.1:\(firstPort)\nnot a peer\n".count - third.count - 1) + "\n"
        let rewrite = try await Spawned.run(
            python,
            [
                "python3", "-c",
                "import os, sys; st = os.stat(sys.argv[1]); open(sys.argv[1], 'w').write(sys.argv[2]); "
                    + "os.utime(sys.argv[1], ns=(st.st_atime_ns, st.st_mtime_ns))",
                file.path, padded,
            ]
        )
        #expect(rewrite.status == 0, "\(rewrite.error)")
        try await Task.sleep(for: .milliseconds(2500))
        #expect(try await agent.value("udpecho_mesh_peers") == "2", "reloaded without a sign")
        agent.process.signal(SIGHUP)
        #expect(try await agent.waitFor("udpecho_mesh_peers", "1") == "1")
        // The peer that left is exported (down) until the grace period ends, then no more.
        #expect(try await agent.waitFor(firstSeries, "0") == "0")
        #expect(try await agent.waitFor(firstSeries, nil) == nil)

        if FileManager.default.isExecutableFile(atPath: "/usr/bin/promtool"),
            let text = try await httpGet(agent.metricsURL)
        {
            let check = try Spawned("/usr/bin/promtool", ["check", "metrics"])
            check.write(Array(text.utf8))
            check.closeInput()
            #expect(await check.waitForExit() == 0, "\(check.errorText) \(check.outputLines)")
        }
        agent.process.signal(SIGTERM)
        #expect(await agent.process.waitForExit() == 0)
        for server in [first, second] { server.signal(SIGTERM) }
        for server in [first, second] { await server.waitForExit() }
    }
}
