import Foundation
import NIOCore
import TestSupport
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// Fetches http://ADDRESS/metrics with Python's standard library (an independent HTTP client).
func scrape(_ url: String) async throws -> [String: Double] {
    let result = try await Spawned.run(
        python,
        [
            "python3", "-c",
            "import sys, urllib.request; print(urllib.request.urlopen(sys.argv[1], timeout=10).read().decode())",
            url,
        ]
    )
    guard result.status == 0 else { throw ScrapeFailed(url: url, error: result.error) }
    var samples: [String: Double] = [:]
    for line in result.lines where !line.hasPrefix("#") && !line.isEmpty {
        let parts = line.split(separator: " ")
        if parts.count == 2, let value = Double(parts[1]) { samples[String(parts[0])] = value }
    }
    return samples
}

/// A scrape that got no answer, with what the client said.
struct ScrapeFailed: Error, CustomStringConvertible {
    var url: String
    var error: String
    var description: String { "scraping \(self.url) failed: \(self.error)" }
}

/// Slowloris against the metrics endpoint: `slowloris.py PORT CONNECTIONS SECONDS` keeps CONNECTIONS connections
/// open, each sending a request's first line and then a header line a second, never the end, and reconnecting at once
/// when closed; after 2 s it scrapes 5 times, half a second apart, each with a 3 s timeout. Prints JSON.
let pythonSlowloris = """
    import json, selectors, socket, sys, threading, time, urllib.request
    port, count, seconds = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
    stop = time.monotonic() + seconds
    stats = {"connects": 0, "closed_by_server": 0}
    def attack():
        sel = selectors.DefaultSelector()
        def open_one():
            s = socket.socket()
            s.setblocking(False)
            s.connect_ex(("127.0.0.1", port))
            sel.register(s, selectors.EVENT_READ | selectors.EVENT_WRITE, {"started": False, "next": 0.0})
            stats["connects"] += 1
        for _ in range(count): open_one()
        while time.monotonic() < stop:
            now = time.monotonic()
            for key, events in sel.select(timeout=0.05):
                s, data = key.fileobj, key.data
                try:
                    if events & selectors.EVENT_READ:
                        if not s.recv(4096): raise ConnectionError()
                    if events & selectors.EVENT_WRITE and not data["started"]:
                        s.send(b"GET /metrics HTTP/1.1\\r\\nHost: x\\r\\n")
                        data["started"], data["next"] = True, now + 1
                        sel.modify(s, selectors.EVENT_READ, data)
                except OSError:
                    sel.unregister(s); s.close()
                    stats["closed_by_server"] += 1
                    open_one()
            for key in list(sel.get_map().values()):
                data = key.data
                if data["started"] and now >= data["next"]:
                    try: key.fileobj.send(b"X-Slow: 1\\r\\n")
                    except OSError: pass
                    data["next"] = now + 1
    threading.Thread(target=attack, daemon=True).start()
    time.sleep(2)
    ok, errors = 0, []
    for i in range(5):
        try:
            body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=3).read()
            ok += b"udpecho_" in body
        except Exception as e:
            errors.append(str(e))
        time.sleep(0.5)
    print(json.dumps({"scrapes_ok": ok, "errors": errors, **stats}), flush=True)
    """

/// A launcher that passes a descriptor the way systemd does: as descriptor 3, with LISTEN_PID (this process, which
/// becomes the server by exec) and LISTEN_FDS=1. `launch.py MODE PROGRAM ARGS...`, where MODE is `bound` (a UDP
/// socket bound to 127.0.0.1, whose port it prints first), `connected` (the same, connected to 127.0.0.1:9),
/// `unbound` (a UDP socket nobody bound) or `pipe` (not a socket at all).
let pythonSocketActivation = """
    import os, socket, sys
    mode = sys.argv[1]
    if mode == "pipe":
        descriptor, _ = os.pipe()
    else:
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        if mode in ("bound", "connected"):
            s.bind(("127.0.0.1", 0))
            print(s.getsockname()[1], flush=True)
        if mode == "connected":
            s.connect(("127.0.0.1", 9))
        descriptor = s.fileno()
    if descriptor != 3:
        os.dup2(descriptor, 3)
    os.set_inheritable(3, True)
    os.environ["LISTEN_PID"] = str(os.getpid())
    os.environ["LISTEN_FDS"] = "1"
    os.execv(sys.argv[2], sys.argv[2:])
    """

/// Scrapers as Prometheus replicas are: `n` keep-alive HTTP connections (Python's http.client, an independent
/// client), each scraping as fast as it can for `seconds`. Prints the number of scrapes, the first error, and how
/// often a counter went backwards between two scrapes of one connection.
let pythonScrapers = """
    import http.client, sys, threading, time
    host, port, n, seconds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
    errors, counts, backwards = [], [0] * n, [0]
    def scrape(i):
        connection = http.client.HTTPConnection(host, port, timeout=5)
        last, end = -1.0, time.time() + seconds
        while time.time() < end:
            try:
                connection.request("GET", "/metrics")
                response = connection.getresponse()
                body = response.read().decode()
            except Exception as e:
                errors.append(repr(e))
                return
            if response.status != 200:
                errors.append(f"status {response.status}")
                return
            for line in body.splitlines():
                if line.startswith('udpecho_datagrams_total{direction="received"}'):
                    value = float(line.split()[1])
                    backwards[0] += value < last
                    last = value
            counts[i] += 1
    threads = [threading.Thread(target=scrape, args=(i,)) for i in range(n)]
    for t in threads: t.start()
    for t in threads: t.join()
    print(f"scrapes={sum(counts)} errors={len(errors)} first-error={errors[:1]} backwards={backwards[0]}", flush=True)
    """

/// Pipelines `GET /metrics` requests on `n` connections for `seconds` and never reads a response, as a client that
/// wants the server to pile them up would; prints the requests sent and the server's resident memory (VmRSS, in
/// KiB, of process `pid`) before and after.
let pythonPipeliner = """
    import select, socket, sys, time
    port, pid, n, seconds = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
    def rss():
        with open(f"/proc/{pid}/status") as status:
            return next(int(line.split()[1]) for line in status if line.startswith("VmRSS:"))
    before = rss()
    request = b"GET /metrics HTTP/1.1\\r\\nHost: t\\r\\n\\r\\n"
    burst = request * 200
    connections = [socket.create_connection(("127.0.0.1", port)) for _ in range(n)]
    for c in connections:
        c.setblocking(False)
    sent, end = 0, time.time() + seconds
    while time.time() < end:
        _, writable, _ = select.select([], connections, [], 0.1)
        for c in writable:
            try:
                sent += c.send(burst)
            except (BlockingIOError, ConnectionResetError, BrokenPipeError):
                pass
    time.sleep(0.5)
    after = rss()
    for c in connections:
        c.close()
    print(f"requests={sent // len(request)} rss-before={before} rss-after={after}", flush=True)
    """

@Suite struct OperationsTests {
    @Test func metricsAgreeWithTheTrafficSent() async throws {
        let (server, port) = try await startServer([
            "--address", "127.0.0.1:0", "--metrics", "127.0.0.1:0", "--quiet", "--max-size", "1000", "--threads", "1",
        ])
        let line = try #require(await server.waitForLine { $0.hasPrefix("metrics on http://") })
        let url = String(line.dropFirst("metrics on ".count))
        let client = try TestSocket(connectTo: try SocketAddress(ipAddress: "127.0.0.1", port: port))
        for index in 0..<50 {
            client.send(pattern(100, seed: index))
            #expect(await client.receive() != nil)
        }
        client.send(pattern(1001))  // over --max-size: dropped, counted
        client.send([1, 2, 3])
        #expect(await client.receive()?.bytes == [1, 2, 3])
        let samples = try await scrape(url)
        #expect(samples["udpecho_datagrams_total{direction=\"received\"}"] == 52)
        #expect(samples["udpecho_datagrams_total{direction=\"echoed\"}"] == 51)
        #expect(samples["udpecho_bytes_total{direction=\"received\"}"] == Double(5000 + 1001 + 3))
        #expect(samples["udpecho_bytes_total{direction=\"echoed\"}"] == 5003)
        #expect(samples["udpecho_dropped_total{reason=\"oversize\"}"] == 1)
        #expect(samples["udpecho_dropped_total{reason=\"rate-limited\"}"] == 0)
        #expect(samples["udpecho_thread_datagrams_total{thread=\"0\"}"] == 52)
        #expect(samples["udpecho_receive_errors_total"] == 0)
        // A second scrape adds only what came since.
        client.send([4])
        _ = await client.receive()
        #expect(try await scrape(url)["udpecho_datagrams_total{direction=\"received\"}"] == 53)
        server.signal(SIGTERM)
        #expect(await server.waitForExit() == 0)
    }

    /// A STAMP reflector's metrics: test packets in the datagram counters, the ones it would not reflect by reason
    /// (too short: malformed; a wrong HMAC: auth), and its stateful sessions.
    @Test(arguments: [false, true])
    func stampMetricsCountTestPacketsDropsAndSessions(authenticated: Bool) async throws {
        let key = try stampKeyFile("metrics key")
        defer { try? FileManager.default.removeItem(at: key) }
        let (server, port) = try await startServer(
            [
                "--protocol", "stamp", "--stamp-stateful", "--address", "127.0.0.1:0", "--metrics", "127.0.0.1:0",
                "--quiet", "--threads", "1",
            ] + (authenticated ? ["--stamp-key-file", key.path] : [])
        )
        let line = try #require(await server.waitForLine { $0.hasPrefix("metrics on http://") })
        let url = String(line.dropFirst("metrics on ".count))
        let target = try SocketAddress(ipAddress: "127.0.0.1", port: port)
        // Three senders (three sessions) with an unauthenticated test packet each: answered, or refused for its
        // HMAC (all zeros) in authenticated mode.
        for _ in 0..<3 {
            let sender = try TestSocket()
            sender.send([UInt8](repeating: 0, count: authenticated ? 112 : 44), to: target)
            if !authenticated { #expect(await sender.receive()?.bytes.count == 44) }
        }
        let other = try TestSocket()
        other.send([1, 2, 3], to: target)  // too short
        #expect(await other.receive(timeoutMilliseconds: 300) == nil)
        let samples = try await scrape(url)
        #expect(samples["udpecho_datagrams_total{direction=\"received\"}"] == 4)
        #expect(samples["udpecho_datagrams_total{direction=\"echoed\"}"] == (authenticated ? 0 : 3))
        #expect(samples["udpecho_dropped_total{reason=\"malformed\"}"] == 1)
        #expect(samples["udpecho_dropped_total{reason=\"auth\"}"] == (authenticated ? 3 : 0))
        #expect(samples["udpecho_stamp_sessions"] == (authenticated ? 0 : 3))
        server.signal(SIGTERM)
        #expect(await server.waitForExit() == 0)
    }

    /// Two Prometheus replicas scraping one server under load used to kill it (a negative delta in swift-metrics:
    /// SIGILL). Eight keep-alive scrapers for three seconds under 3 s of `bench` load: every scrape answers, no
    /// counter goes backwards, and the server still stops cleanly.
    @Test func concurrentScrapesUnderLoadNeverStopTheServer() async throws {
        let (server, port) = try await startServer([
            "--address", "127.0.0.1:0", "--metrics", "127.0.0.1:0", "--quiet",
        ])
        let line = try #require(await server.waitForLine { $0.hasPrefix("metrics on http://") })
        let endpoint = try #require(line.firstMatch(of: /http:\/\/127\.0\.0\.1:(\d+)\/metrics/)?.1)
        let load = try Spawned(udpecho, ["bench", "127.0.0.1:\(port)", "--duration", "3s", "--rate", "50000"])
        let scrapers = try await Spawned.run(
            python,
            ["python3", "-c", pythonScrapers, "127.0.0.1", String(endpoint), "8", "3"],
            timeout: 30
        )
        let result = try #require(scrapers.lines.last, "\(scrapers.error)")
        let counts = try #require(
            result.wholeMatch(of: /scrapes=(\d+) errors=0 first-error=\[\] backwards=0/),
            "\(result)"
        )
        #expect(Int(counts.1)! > 8)
        #expect(await load.waitForExit(timeout: 30) == 0)
        server.signal(SIGTERM)
        #expect(await server.waitForExit() == 0, "\(server.errorText)")
    }

    /// Pipelined requests whose responses are never read used to pile up in the server (8 connections took it past
    /// 1 GB): the endpoint now answers only as fast as each client reads, so its memory stays flat, and it still
    /// answers an ordinary scrape afterwards.
    @Test func pipelinedScrapesThatAreNeverReadDoNotGrowMemory() async throws {
        let (server, _) = try await startServer(["--address", "127.0.0.1:0", "--metrics", "127.0.0.1:0", "--quiet"])
        let line = try #require(await server.waitForLine { $0.hasPrefix("metrics on http://") })
        let port = try #require(line.firstMatch(of: /http:\/\/127\.0\.0\.1:(\d+)\/metrics/)?.1)
        let pid = server.process.processIdentifier
        let run = try await Spawned.run(
            python,
            ["python3", "-c", pythonPipeliner, String(port), "\(pid)", "8", "3"],
            timeout: 30
        )
        let result = try #require(run.lines.last, "\(run.error)")
        let figures = try #require(
            result.wholeMatch(of: /requests=(\d+) rss-before=(\d+) rss-after=(\d+)/),
            "\(result)"
        )
        #expect(Int(figures.1)! > 10_000, "\(result)")
        // Measured: 4.5 MB (3 runs, debug build, 8 connections for 3 s: about 680,000 requests); before the
        // endpoint answered only as fast as clients read, it grew past 1 GB.
        let growth = Int(figures.3)! - Int(figures.2)!
        #expect(growth < 8 * 1024, "the server grew by \(growth) KiB: \(result)")
        // An ordinary scrape right after is answered (0.04 s here) with the counters.
        let started = ContinuousClock.now
        let samples = try await scrape("http://127.0.0.1:\(port)/metrics")
        #expect(samples["udpecho_datagrams_total{direction=\"received\"}"] == 0, "\(samples.count) samples")
        print("pipelined-scrapes: the scrape after took \(ContinuousClock.now - started)")
        server.signal(SIGTERM)
        #expect(await server.waitForExit() == 0)
    }

    /// Slowloris held every slot of the metrics endpoint (64 connections dribbling a header line a second,
    /// reconnecting when closed): 0 of 25 scrapes got in. Now new connections queue and take the slots of those that
    /// wait past the grace for a request: with 80 such connections at least 3 of 5 scrapes succeed (5 of 5 here).
    @Test func slowClientsCannotLockTheScraperOut() async throws {
        let (server, _) = try await startServer(["--address", "127.0.0.1:0", "--metrics", "127.0.0.1:0", "--quiet"])
        let line = try #require(await server.waitForLine { $0.hasPrefix("metrics on http://") })
        let port = try #require(line.firstMatch(of: /http:\/\/127\.0\.0\.1:(\d+)\/metrics/)?.1)
        let run = try await Spawned.run(
            python,
            ["python3", "-c", pythonSlowloris, String(port), "80", "8"],
            timeout: 40
        )
        let output = try #require(run.lines.last, "\(run.error)")
        let result = try #require(try JSONSerialization.jsonObject(with: Data(output.utf8)) as? [String: Any])
        let succeeded = try #require(result["scrapes_ok"] as? Int)
        #expect(succeeded >= 3, "\(result)")
        // The attack was real: the endpoint closed dribbling connections to make room, and they came back.
        #expect((result["closed_by_server"] as? Int ?? 0) > 16, "\(result)")
        server.signal(SIGTERM)
        #expect(await server.waitForExit() == 0, "\(server.errorText)")
    }

    @Test func servesASocketPassedTheWaySystemdDoes() async throws {
        let launched = try Spawned(
            python,
            ["python3", "-c", pythonSocketActivation, "bound", udpecho, "server", "--address", ":1"]
        )
        let portLine = try #require(await launched.waitForLine { Int($0) != nil })
        let port = Int(portLine)!
        let start = try #require(
            await launched.waitForLine { $0.hasPrefix("running as a server") },
            "\(launched.errorText)"
        )
        #expect(start == "running as a server on 127.0.0.1:\(port) (socket activation: 1 socket)")
        // The --address given beside the passed socket is not used, and the server says so.
        #expect(
            await launched.waitForError("--address, --host and --port are not used"),
            "\(launched.errorText)"
        )
        let client = try TestSocket(connectTo: try SocketAddress(ipAddress: "127.0.0.1", port: port))
        client.send(pattern(4097))
        #expect(await client.receive()?.bytes == pattern(4097))
        launched.signal(SIGTERM)
        #expect(await launched.waitForExit() == 0)
        #expect(launched.outputLines.last?.hasPrefix("summary: received=1 echoed=1") == true)
    }

    /// A connected UDP socket hears one peer only and would send every reply there: refused, not served.
    @Test func refusesAConnectedSocket() async throws {
        let result = try await Spawned.run(
            python,
            ["python3", "-c", pythonSocketActivation, "connected", udpecho, "server"]
        )
        #expect(result.status == 1, "\(result.lines) \(result.error)")
        #expect(result.error.contains("is a connected UDP socket"), "\(result.error)")
        #expect(!result.lines.contains { $0.hasPrefix("running") }, "\(result.lines)")
    }

    @Test func refusesADescriptorThatIsNotAUDPSocket() async throws {
        // LISTEN_FDS names descriptor 3, but nothing UDP is there: say so, do not serve something else.
        let result = try await Spawned.run(
            python,
            ["python3", "-c", pythonSocketActivation, "pipe", udpecho, "server"]
        )
        #expect(result.status == 1)
        #expect(result.error.contains("descriptor 3"))
        #expect(result.error.contains("UDP socket"))
    }

    /// LISTEN_FDS names a UDP socket that nobody bound: nothing could reach it, so the server must say so and not
    /// start (it used to print "running as a server on 0.0.0.0:0").
    @Test func refusesAnUnboundSocket() async throws {
        let result = try await Spawned.run(
            python,
            ["python3", "-c", pythonSocketActivation, "unbound", udpecho, "server"]
        )
        #expect(result.status == 1)
        #expect(result.error.contains("descriptor 3 is a UDP socket that is not bound to a port"), "\(result.error)")
        #expect(!result.lines.contains { $0.hasPrefix("running") })
    }

    @Test func jsonLogsAreOneObjectPerLine() async throws {
        let (server, port) = try await startServer(["--address", "127.0.0.1:0", "--log-format", "json"])
        let client = try await Spawned.run(udpecho, ["client", "--address", "127.0.0.1:\(port)"], input: [1, 2, 3, 4])
        #expect(client.status == 0)
        #expect(await server.waitForLine { $0.contains("packet-written") } != nil)
        server.signal(SIGINT)
        #expect(await server.waitForExit() == 0)
        let objects = try jsonObjects(server.outputLines)
        #expect(
            objects.map { $0["event"] as? String } == [
                "running", "packet-received", "packet-written", "cancelled", "summary",
            ]
        )
        #expect(objects[1]["bytes"] as? Int == 4)
        #expect((objects[1]["from"] as? String)?.hasPrefix("127.0.0.1:") == true)
        #expect(objects[1]["level"] as? String == "info")
        #expect(objects[4]["received"] as? Int == 1 && objects[4]["echoed"] as? Int == 1)
        #expect(objects.allSatisfy { ($0["time"] as? String)?.hasPrefix("20") == true })
    }

    @Test func logLevelWarningHidesPacketLinesButNotDrops() async throws {
        let (server, port) = try await startServer([
            "--address", "127.0.0.1:0", "--log-level", "warning", "--max-size", "10",
        ])
        let client = try TestSocket(connectTo: try SocketAddress(ipAddress: "127.0.0.1", port: port))
        client.send([1, 2, 3])
        #expect(await client.receive()?.bytes == [1, 2, 3])
        client.send(pattern(11))
        #expect(
            await server.waitForLine { $0.hasPrefix("packet-dropped") }
                == "packet-dropped: bytes=11 to=127.0.0.1:\(client.localAddress.port!) reason=oversize"
        )
        server.signal(SIGINT)
        #expect(await server.waitForExit() == 0)
        #expect(!server.outputLines.contains { $0.hasPrefix("packet-received") || $0.hasPrefix("packet-written") })
        #expect(server.outputLines.last?.hasPrefix("summary: received=2 echoed=1 dropped=1 (oversize=1)") == true)
    }
}
