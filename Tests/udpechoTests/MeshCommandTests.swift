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

// One test at a time: the cap test alone keeps a core busy for seconds, and the suite's timing tests share the cores.
@Suite(.serialized) struct MeshCommandTests {
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

    /// --once --plot draws a graph per peer into one SVG: the live peer's median line, the dead peer's loss marks.
    @Test func onceDrawsAGraphPerPeer() async throws {
        let (server, port) = try await startServer(["--address", "127.0.0.1:0", "--quiet"])
        defer { server.signal(SIGTERM) }
        let directory = try temporaryDirectory("mesh-plot")
        let path = directory.appendingPathComponent("mesh.svg").path
        let result = try await Spawned.run(
            udpecho,
            [
                "mesh", "--once", "-d", "2s", "-i", "50ms", "-W", "300ms", "--peer", "127.0.0.1:\(port)", "--peer",
                "127.0.0.1:9", "--plot", path,
            ]
        )
        #expect(result.status == 1, "\(result.lines) \(result.error)")
        let parsed = try await Spawned.run(
            "/usr/bin/env",
            [
                "python3", "-c",
                "import sys, xml.etree.ElementTree as E\n"
                    + "r = E.parse(sys.argv[1]).getroot()\n"
                    + "for p in r.findall('{http://www.w3.org/2000/svg}svg'):\n"
                    + "    t = [e.text for e in p.iter() if e.text and '127.0.0.1' in e.text][0]\n"
                    + "    print(t, len([e for e in p.iter() if e.get('class') == 'median']), len([e for e in p.iter() if e.get('class') == 'lost']))",
                path,
            ]
        )
        #expect(parsed.status == 0, "\(parsed.error)")
        // Sorted by peer: 127.0.0.1:9 sorts after 127.0.0.1:PORT only when PORT < 9; compare by name instead.
        let panels = Dictionary(
            uniqueKeysWithValues: parsed.lines.map { line in
                let words = line.split(separator: " ")
                return (String(words[0]), words.dropFirst(2).compactMap { Int($0) })
            }
        )
        #expect(panels.count == 2, "\(parsed.lines)")
        #expect(panels["127.0.0.1:\(port)"]?.first ?? 0 > 10 && panels["127.0.0.1:\(port)"]?.last == 0, "\(panels)")
        #expect(panels["127.0.0.1:9"]?.first == 0 && panels["127.0.0.1:9"]?.last ?? 0 > 10, "\(panels)")
        let refused = try await Spawned.run(udpecho, ["mesh", "--peer", "127.0.0.1:9", "--plot", path])
        #expect(refused.status == 2 && refused.error.contains("--plot is for --once"), "\(refused.error)")
    }

    /// The agent's live page draws its peers; with --aggregate-by its metrics are per group of the file's labels.
    @Test func theAgentDrawsItsPeersAndAggregatesByLabels() async throws {
        let (first, port) = try await startServer(["--address", "127.0.0.1:0", "--quiet"])
        let (second, secondPort) = try await startServer(["--address", "127.0.0.2:0", "--quiet"])
        defer { for server in [first, second] { server.signal(SIGTERM) } }
        let directory = try temporaryDirectory("mesh-labels")
        let peers = directory.appendingPathComponent("peers")
        try replaceFile(
            peers,
            with: Data("127.0.0.1:\(port) zone=a\n127.0.0.2:\(secondPort) zone=a\n127.0.0.1:9 zone=b\n".utf8)
        )
        let agent = try await MeshAgentProcess([
            "--peers", peers.path, "-i", "50ms", "-W", "300ms", "--aggregate-by", "zone",
        ])
        defer { agent.process.signal(SIGTERM) }
        try await Task.sleep(for: .seconds(2))
        let text = try #require(try await httpGet(agent.metricsURL))
        let lines = text.split(separator: "\n").map(String.init)
        #expect(!lines.contains { $0.contains("peer=\"") }, "no series per peer")
        let sentA = try #require(lines.first { $0.hasPrefix("udpecho_mesh_probes_sent_total{zone=\"a\"} ") })
        let receivedA = try #require(lines.first { $0.hasPrefix("udpecho_mesh_probes_received_total{zone=\"a\"} ") })
        #expect(Int(sentA.split(separator: " ")[1]) ?? 0 > 20, "\(sentA)")
        #expect(lines.contains("udpecho_mesh_peers_up{zone=\"a\"} 2"), "\(lines.filter { $0.contains("up") })")
        #expect(lines.contains("udpecho_mesh_peers_up{zone=\"b\"} 0"))
        #expect(Int(receivedA.split(separator: " ")[1]) ?? 0 > 20)
        let base = String(agent.metricsURL.dropLast("/metrics".count))
        let page = try #require(try await httpGet(base + "/"))
        #expect(page.components(separatedBy: "<svg").count == 4, "a graph per peer")
        #expect(page.contains("127.0.0.1:9") && page.contains("class=\"lost\""))
        let refused = try await Spawned.run(udpecho, ["mesh", "--peer", "127.0.0.1:9", "--aggregate-by", "peer"])
        #expect(
            refused.status == 2 && refused.error.contains("is the agent's or Prometheus' own label"),
            "\(refused.error)"
        )
    }

    /// The live page draws 100 peers, those whose last hour the agent keeps (the first it took), and counts the others;
    /// every peer is still in the metrics.
    @Test func theLivePageDrawsAHundredPeersAndCountsTheRest() async throws {
        let directory = try temporaryDirectory("mesh-many")
        let peers = directory.appendingPathComponent("peers")
        // Nothing listens on port 9: each probe is refused and drawn as lost.
        try replaceFile(peers, with: Data((1...103).map { "127.7.0.\($0):9\n" }.joined().utf8))
        let agent = try await MeshAgentProcess(["--peers", peers.path, "-i", "200ms", "-W", "300ms"])
        defer { agent.process.signal(SIGTERM) }
        #expect(try await agent.waitFor("udpecho_mesh_peers", "103") == "103")
        let base = String(agent.metricsURL.dropLast("/metrics".count))
        var page = ""
        for _ in 0..<50 {
            page = try #require(try await httpGet(base + "/"))
            if page.components(separatedBy: "class=\"lost\"").count > 100 { break }
            try await Task.sleep(for: .milliseconds(200))
        }
        #expect(page.components(separatedBy: "<svg").count == 101, "a graph for each of the first 100 peers")
        let drawn = (1...103).filter { page.contains("<h3>127.7.0.\($0):9 (") }
        #expect(drawn.count == 100, "\(drawn)")
        #expect(page.contains("<p>3 more are not drawn here; their metrics are at /metrics.</p>"))
        let text = try #require(try await httpGet(agent.metricsURL))
        #expect(text.contains("udpecho_mesh_probes_sent_total{peer=\"127.7.0.103:9\""), "every peer's series")
    }

    /// Garbage replies showed in the text report only as loss: the report has duplicate and corrupt columns, so a
    /// peer that answers twice or changes a byte is told from one that does not answer.
    @Test(arguments: [("dup", "duplicate"), ("flip", "corrupt")])
    func onceShowsDuplicateAndCorruptReplies(mode: String, column: String) async throws {
        let (server, port) = try await startPythonServer(mode)
        defer { server.signal(SIGKILL) }
        let result = try await Spawned.run(
            udpecho,
            ["mesh", "--once", "-d", "1s", "-i", "50ms", "--flows", "1", "--peer", "127.0.0.1:\(port)"]
        )
        let header = try #require(result.lines.first { $0.hasPrefix("peer  address") }, "\(result.lines)")
        #expect(header == "peer  address  sent  received  lost  loss  duplicate  corrupt  p50 ms  p99 ms")
        let row = try #require(result.lines.first { $0.hasPrefix("127.0.0.1:\(port)  ") }, "\(result.lines)")
        let fields = row.split(separator: "  ").map(String.init)
        let sent = try #require(Int(fields[2]))
        #expect(sent >= 15, "\(row)")
        if column == "duplicate" {
            #expect(fields[3] == "\(sent)" && fields[6] == "\(sent)" && fields[7] == "0", "\(row)")
        } else {
            #expect(fields[3] == "0" && fields[6] == "0" && fields[7] == "\(sent)", "\(row)")
        }
    }

    /// A peer that is not ours (socat echoing through a pipe; one source port, so no fork) is probed like any
    /// echo server.
    @Test(.enabled(if: FileManager.default.isExecutableFile(atPath: "/usr/bin/socat"), "needs socat"))
    func onceProbesAnEchoServerThatIsNotOurs() async throws {
        let port = Int.random(in: 30000...39999)
        let socat = try Spawned(
            "/usr/bin/socat",
            ["-T", "1", "UDP4-LISTEN:\(port),bind=127.0.0.1,reuseaddr", "PIPE"]
        )
        try await Task.sleep(for: .milliseconds(300))
        let result = try await Spawned.run(
            udpecho,
            ["mesh", "--once", "--json", "-d", "1s", "-i", "50ms", "--flows", "1", "--peer", "127.0.0.1:\(port)"]
        )
        socat.signal(SIGTERM)
        await socat.waitForExit()
        let peer = try #require((try jsonObjects(result.lines).last?["peers"] as? [[String: Any]])?.first)
        let sent = try #require(peer["sent"] as? Int)
        #expect(sent >= 15 && peer["received"] as? Int == sent && peer["corrupt"] as? Int == 0, "\(peer)")
    }

    /// A peer list that asks for far too much cannot become a flood: 1000 peers every 500 ms (2000 probes a
    /// second) under --max-rate 500 send at most 500 a second (and a tenth of a second's burst), the rest counted
    /// as skipped; the byte cap holds the same way.
    @Test(arguments: [(["--max-rate", "500"], 500.0), (["--max-bytes-rate", "23000"], 23000.0 / 92)])
    func theCapsHoldWhateverTheListSays(cap: [String], probesPerSecond: Double) async throws {
        let (server, port) = try await startServer(["--address", "0.0.0.0:0", "--quiet"])
        let file = FileManager.default.temporaryDirectory.appendingPathComponent("peers-\(getpid())-\(port)")
        let list = (0..<1000).map { "127.0.\($0 / 250 + 1).\($0 % 250 + 1):\(port)" }.joined(separator: "\n")
        try list.write(to: file, atomically: true, encoding: .utf8)
        defer { try? FileManager.default.removeItem(at: file) }
        let result = try await Spawned.run(
            udpecho,
            ["mesh", "--once", "--json", "-d", "2s", "-i", "500ms", "-W", "500ms", "--peers", file.path] + cap
        )
        let document = try #require(try jsonObjects(result.lines).last, "\(result.error)")
        let peers = try #require(document["peers"] as? [[String: Any]])
        #expect(peers.count == 1000)
        let sent = peers.reduce(0) { $0 + ($1["sent"] as? Int ?? 0) }
        let skipped = peers.reduce(0) { $0 + ($1["skipped"] as? Int ?? 0) }
        let received = peers.reduce(0) { $0 + ($1["received"] as? Int ?? 0) }
        // 2 s at the cap, a tenth of a second's burst, and a quarter second for the start and stop of --once; the
        // list asked for 4000.
        #expect(Double(sent) <= probesPerSecond * 2.35 + 1, "sent \(sent)")
        // The lower bound only shows that probes went out (a debug build under the suite's load loops slowly).
        #expect(Double(sent) >= probesPerSecond * 0.5, "sent \(sent): \(result.error)")
        #expect(skipped > 1500, "skipped \(skipped)")
        #expect(received == sent)
        server.signal(SIGTERM)
        await server.waitForExit()
    }

    /// With --stamp-address the agent also reflects STAMP test packets: `ping --stamp` gets reflected packets
    /// (the reflector's own fields), not echoes; with --per-flow-metrics each source port has its series.
    @Test func theAgentCanReflectSTAMP() async throws {
        let agent = try await MeshAgentProcess([
            "--stamp-address", "127.0.0.1:0", "--peer", "127.0.0.1:9", "-i", "50ms", "--flows", "3",
            "--per-flow-metrics",
        ])
        let line = try #require(agent.process.outputLines.first { $0.hasPrefix("mesh agent: STAMP reflector on ") })
        let port = try #require(line.firstMatch(of: /:(\d+)$/).flatMap { Int($0.1) })
        let ping = try await Spawned.run(
            udpecho,
            ["ping", "--stamp", "127.0.0.1:\(port)", "-c", "3", "-i", "50ms", "--json"]
        )
        let replies = try jsonObjects(ping.lines).filter { $0["type"] as? String == "reply" }
        #expect(replies.count == 3, "\(ping.lines)")
        #expect(replies.allSatisfy { ($0["stamp"] as? [String: Any])?["plain_echo"] as? Bool == false }, "\(replies)")
        // --per-flow-metrics: a series per source port, three of them.
        let text = try #require(try await httpGet(agent.metricsURL))
        let flows = Set(
            text.split(separator: "\n").filter { $0.hasPrefix("udpecho_mesh_flow_probes_sent_total{") }
                .compactMap { $0.firstMatch(of: /flow="(\d+)"/).map { String($0.1) } }
        )
        #expect(flows.count == 3, "\(flows)")
        agent.process.signal(SIGTERM)
        #expect(await agent.process.waitForExit() == 0)
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

/// The peers file as an attacker (or a mistake) leaves it: a FIFO, a file over the limit, a binary file. Each version
/// is refused whole, saying why in one bounded line; the last good list is kept and probed; the agent stops at once.
@Suite(.serialized) struct MeshPeersFileAttackTests {
    /// Swapped for a FIFO with no writer, the file used to block the re-read in open() for ever: the list never
    /// changed again and SIGTERM was ignored. Now it is refused at once and SIGTERM stops the agent.
    @Test func aFIFOIsRefusedAndShutdownDoesNotWait() async throws {
        let (server, port) = try await startServer(["--address", "127.0.0.1:0", "--quiet"])
        let directory = try temporaryDirectory("fifo")
        defer { try? FileManager.default.removeItem(at: directory) }
        let file = directory.appendingPathComponent("peers")
        try "127.0.0.1:\(port)\n".write(to: file, atomically: false, encoding: .utf8)
        let agent = try await MeshAgentProcess(["--peers", file.path, "-i", "50ms"])
        let series = "udpecho_mesh_peer_up{peer=\"127.0.0.1:\(port)\",address=\"127.0.0.1:\(port)\"}"
        #expect(try await agent.waitFor(series, "1") == "1")
        try FileManager.default.removeItem(at: file)
        #expect(mkfifo(file.path, 0o600) == 0)
        #expect(await agent.process.waitForError("is a FIFO, not a regular file"), "\(agent.process.errorText)")
        // Still probing the last good list.
        let sent = try #require(
            try await agent.value(
                "udpecho_mesh_probes_sent_total{peer=\"127.0.0.1:\(port)\",address=\"127.0.0.1:\(port)\"}"
            )
        )
        try await Task.sleep(for: .milliseconds(1500))  // the agent publishes its counters once a second
        let later = try #require(
            try await agent.value(
                "udpecho_mesh_probes_sent_total{peer=\"127.0.0.1:\(port)\",address=\"127.0.0.1:\(port)\"}"
            )
        )
        #expect(Int(later)! > Int(sent)!, "\(sent) then \(later)")
        #expect(try await agent.value(series) == "1")
        agent.process.signal(SIGTERM)
        // A hung agent would be killed at the deadline (status 137).
        #expect(await agent.process.waitForExit(timeout: 5) == 0, "\(agent.process.errorText)")
        server.signal(SIGTERM)
        await server.waitForExit()
    }

    /// A file over 16 MiB was read up to 16 MiB: a peer across the cut (127.0.0.2:40001) became another
    /// (127.0.0.2:4000) and was probed. Now the version is refused whole with its size and the limit; a binary file
    /// gets one bounded line, not megabytes.
    @Test func anOversizedOrBinaryFileIsRefusedWhole() async throws {
        let (server, port) = try await startServer(["--address", "127.0.0.1:0", "--quiet"])
        let directory = try temporaryDirectory("big")
        defer { try? FileManager.default.removeItem(at: directory) }
        let file = directory.appendingPathComponent("peers")
        try "127.0.0.1:\(port)\n".write(to: file, atomically: false, encoding: .utf8)
        let agent = try await MeshAgentProcess(["--peers", file.path, "-i", "50ms"])
        #expect(try await agent.waitFor("udpecho_mesh_peers", "1") == "1")

        // Comments up to just before 16 MiB, then a peer whose port the old cut fell inside.
        let limit = 16 << 20
        let peer = "127.0.0.2:40001\n"
        var big = "127.0.0.1:\(port)\n"
        let filler = "# " + String(repeating: "x", count: 1021) + "\n"
        while big.utf8.count + filler.utf8.count <= limit - 13 { big += filler }
        big += String(repeating: "#", count: limit - 13 - big.utf8.count - 1) + "\n" + peer
        #expect(big.utf8.count > limit)
        try replaceFile(file, with: Data(big.utf8))
        let size = big.utf8.count
        #expect(
            await agent.process.waitForError("is \(size) bytes, more than the \(limit) bytes taken"),
            "\(agent.process.errorText.suffix(500))"
        )
        #expect(try await agent.value("udpecho_mesh_peers") == "1")
        #expect(!(try await httpGet(agent.metricsURL) ?? "").contains("127.0.0.2"))

        // A megabyte of random bytes: refused as binary, in one short line that quotes one excerpt.
        var random = SplitMix64(state: 19)
        try replaceFile(file, with: Data((0..<(1 << 20)).map { _ in UInt8(truncatingIfNeeded: random.next()) }))
        #expect(await agent.process.waitForError("not UTF-8 text"), "\(agent.process.errorText.suffix(500))")
        let line = try #require(agent.process.errorText.split(separator: "\n").last { $0.contains("not UTF-8 text") })
        #expect(line.utf8.count < 600, "\(line.utf8.count) bytes: \(line)")
        #expect(line.matches(of: /line \d+ \(/).count == 1, "\(line)")

        // A text file of 5,000 bad lines: ten are quoted, the rest counted.
        try replaceFile(file, with: Data((0..<5000).map { "bad peer \($0)\n" }.joined().utf8))
        #expect(await agent.process.waitForError("and 4990 more bad lines"), "\(agent.process.errorText.suffix(500))")
        let many = try #require(agent.process.errorText.split(separator: "\n").last { $0.contains("more bad lines") })
        #expect(many.matches(of: /line \d+ \(/).count == 10, "\(many)")
        #expect(try await agent.value("udpecho_mesh_peers") == "1")
        agent.process.signal(SIGTERM)
        #expect(await agent.process.waitForExit(timeout: 5) == 0)
        server.signal(SIGTERM)
        await server.waitForExit()
    }
}

/// A fresh directory under the temporary directory, for files a test replaces.
func temporaryDirectory(_ name: String) throws -> URL {
    let directory = FileManager.default.temporaryDirectory.appendingPathComponent(
        "udpecho-\(name)-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
    )
    try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
    return directory
}

/// Replaces `file` with `data` in one rename, as a configuration manager does (a reader never sees half of it).
func replaceFile(_ file: URL, with data: Data) throws {
    let next = file.appendingPathExtension("next")
    try data.write(to: next)
    guard rename(next.path, file.path) == 0 else { throw POSIXError(POSIXErrorCode(rawValue: errno)!) }
}

/// Names are resolved again every --resolve-interval: in a test host whose /etc/hosts is its own
/// (`ip netns exec` puts /etc/netns/NAME/hosts over /etc/hosts), a name that gains an address gains a target under
/// the same `peer` label, and one that loses it loses the target after the grace period.
@Suite(.serialized) struct MeshResolutionTests {
    @Test(.enabled(if: FirewalledHost.available, "needs root, ip and nft to make a network namespace"))
    func namesAreResolvedAgain() async throws {
        try await withHosts(try await FirewalledHost()) { host in
            let etc = URL(fileURLWithPath: "/etc/netns/\(host.name)")
            try FileManager.default.createDirectory(at: etc, withIntermediateDirectories: true)
            defer { try? FileManager.default.removeItem(at: etc) }
            let hosts = etc.appendingPathComponent("hosts")
            // Written in place (not replaced): the file is bind-mounted by inode.
            try "127.0.0.2 peer.test\n".write(to: hosts, atomically: false, encoding: .utf8)
            let (server, port) = try await startServer(["--address", "0.0.0.0:0", "--quiet"], inNamespace: host.name)
            let agent = try Spawned(
                TestNetwork.ip,
                [
                    "netns", "exec", host.name, udpecho, "mesh", "--address", "127.0.0.1:0", "--metrics",
                    "127.0.0.1:0", "--peer", "peer.test:\(port)", "--resolve-interval", "1s", "-i", "100ms",
                    "--grace", "1s",
                ]
            )
            let url = try #require(
                await agent.waitForLine { $0.hasPrefix("metrics on ") }.map {
                    String($0.dropFirst("metrics on ".count))
                }
            )
            func up() async throws -> [String: String] {
                let result = try await Spawned.run(
                    TestNetwork.ip,
                    [
                        "netns", "exec", host.name, "python3", "-c",
                        "import sys, urllib.request; sys.stdout.write(urllib.request.urlopen(sys.argv[1]).read().decode())",
                        url,
                    ]
                )
                var series: [String: String] = [:]
                for line in result.lines where line.hasPrefix("udpecho_mesh_peer_up{") {
                    series[String(line.split(separator: " ")[0])] = String(line.split(separator: " ")[1])
                }
                return series
            }
            func waitFor(_ expected: [String: String]) async throws -> [String: String] {
                var last: [String: String] = [:]
                for _ in 0..<50 {
                    last = try await up()
                    if last == expected { break }
                    try await Task.sleep(for: .milliseconds(200))
                }
                return last
            }
            let two = "udpecho_mesh_peer_up{peer=\"peer.test:\(port)\",address=\"127.0.0.2:\(port)\"}"
            let three = "udpecho_mesh_peer_up{peer=\"peer.test:\(port)\",address=\"127.0.0.3:\(port)\"}"
            #expect(try await waitFor([two: "1"]) == [two: "1"])
            try "127.0.0.2 peer.test\n127.0.0.3 peer.test\n".write(to: hosts, atomically: false, encoding: .utf8)
            #expect(try await waitFor([two: "1", three: "1"]) == [two: "1", three: "1"])
            try "127.0.0.3 peer.test\n".write(to: hosts, atomically: false, encoding: .utf8)
            #expect(try await waitFor([three: "1"]) == [three: "1"])
            agent.signal(SIGTERM)
            server.signal(SIGTERM)
            #expect(await agent.waitForExit() == 0)
            await server.waitForExit()
        }
    }
}
