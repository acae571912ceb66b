import Foundation
import NIOCore
import TestSupport
import Testing
import UDPEcho

#if canImport(Glibc)
import Glibc
#endif

/// An HTTP client on Python's sockets (an independent peer), speaking raw HTTP so that each test controls exactly
/// what is sent and when. Each step is `send:TEXT` (with \r\n for line ends), `sleep:SECONDS`, or `read`, which
/// reads until the server closes the connection or 3 s (`read:SECONDS`: that long) pass. It prints one line per `read`: `closed after S s,
/// N responses` or `open after 3 s, N responses`.
let pythonHTTPSteps = """
    import socket, sys, time
    port, steps = int(sys.argv[1]), sys.argv[2:]
    c = socket.create_connection(("127.0.0.1", port))
    start = time.time()
    for step in steps:
        kind, _, value = step.partition(":")
        if kind == "send":
            try:
                c.sendall(value.replace("\\\\r\\\\n", "\\r\\n").encode())
            except OSError:
                pass  # the server closed the connection already: the next read says so
        elif kind == "sleep":
            time.sleep(float(value))
        elif kind == "read":
            c.settimeout(float(value) if value else 3)
            data, closed = b"", False
            try:
                while True:
                    chunk = c.recv(65536)
                    if not chunk:
                        closed = True
                        break
                    data += chunk
            except socket.timeout:
                pass
            except ConnectionResetError:
                closed = True
            responses = data.count(b"HTTP/1.")
            state = f"closed after {time.time() - start:.1f} s" if closed else f"open after {value or 3} s"
            print(f"{state}, {responses} responses", flush=True)
    """

@Suite struct MetricsEndpointTests {
    func withEndpoint(
        _ configuration: MetricsEndpoint.Configuration = .init(),
        _ body: (MetricsEndpoint) async throws -> Void
    ) async throws {
        let endpoint = try await MetricsEndpoint(
            address: try SocketAddress(ipAddress: "127.0.0.1", port: 0),
            configuration: configuration
        ) { "udpecho_test_metric 1\n" }
        let running = Task { try await endpoint.run() }
        do {
            try await body(endpoint)
        } catch {
            running.cancel()
            throw error
        }
        running.cancel()
        try await running.value
    }

    func steps(_ port: Int, _ steps: [String]) async throws -> [String] {
        try await Spawned.run(python, ["python3", "-c", pythonHTTPSteps, "\(port)"] + steps, timeout: 30).lines
    }

    /// Keep-alive connections stay open across requests; `Connection: close` and HTTP/1.0 get their response and
    /// then the connection is closed, as HTTP says.
    @Test func keepsConnectionsOpenOnlyWhenTheClientAsks() async throws {
        try await self.withEndpoint { endpoint in
            let port = endpoint.localAddress!.port!
            // "closed after 0.x s" is a time bound that a loaded machine can spoil: a few attempts.
            let failure = try await firstPassingAttempt { () async throws -> String? in
                let keepAlive = "send:GET /metrics HTTP/1.1\\r\\nHost: t\\r\\n\\r\\n"
                let open = try await self.steps(port, [keepAlive, keepAlive, "read"])
                guard open == ["open after 3 s, 2 responses"] else { return "keep-alive: \(open)" }
                let close = "send:GET /metrics HTTP/1.1\\r\\nHost: t\\r\\nConnection: close\\r\\n\\r\\n"
                let closed = try await self.steps(port, [close, "read"])
                guard
                    closed.first?.hasPrefix("closed after 0.") == true
                        && closed.first?.hasSuffix(", 1 responses") == true
                else { return "close: \(closed)" }
                let old = try await self.steps(port, ["send:GET /metrics HTTP/1.0\\r\\n\\r\\n", "read"])
                guard old.first?.hasPrefix("closed after 0.") == true && old.first?.hasSuffix(", 1 responses") == true
                else { return "HTTP/1.0: \(old)" }
                return nil
            }
            #expect(failure == nil, "\(failure ?? "")")
        }
    }

    /// Waits up to 10 s for `condition` of the endpoint.
    func waitUntil(_ endpoint: MetricsEndpoint, _ condition: (MetricsEndpoint) -> Bool) async throws {
        let deadline = ContinuousClock.now + .seconds(10)
        while !condition(endpoint) && ContinuousClock.now < deadline { try await Task.sleep(for: .milliseconds(10)) }
    }

    /// A TCP connection to the endpoint that sends nothing, held until closed (a slow client, opened at once).
    func silentConnection(_ port: Int) throws -> Int32 {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = in_port_t(UInt16(port).bigEndian)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        let connected = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size))
            }
        }
        try #require(connected == 0, "connect: \(errno)")
        return fd
    }

    /// Past `maximumConnections`, connections wait in the queue; past the queue, a new one is closed unanswered at
    /// once. When the connection holding the slot leaves, the queued one takes it and is answered.
    @Test func aFullQueueClosesNewConnectionsAtOnce() async throws {
        let limits = MetricsEndpoint.Configuration(
            maximumConnections: 1,
            maximumQueuedConnections: 1,
            requestGrace: .seconds(60),
            requestTimeout: .seconds(60)
        )
        try await self.withEndpoint(limits) { endpoint in
            let port = endpoint.localAddress!.port!
            let holder = try self.silentConnection(port)
            try await self.waitUntil(endpoint) { $0.openConnections == 1 }
            async let queued = self.steps(port, ["send:GET /metrics HTTP/1.1\\r\\n\\r\\n", "read:8"])
            try await self.waitUntil(endpoint) { $0.queuedConnections == 1 }
            #expect(endpoint.openConnections == 1 && endpoint.queuedConnections == 1)
            let refused = try await self.steps(port, ["send:GET /metrics HTTP/1.1\\r\\n\\r\\n", "read:5"])
            #expect(refused.first?.hasPrefix("closed after ") == true, "\(refused)")
            #expect(refused.first?.hasSuffix(", 0 responses") == true, "\(refused)")
            close(holder)
            let answered = try await queued
            #expect(answered.first?.hasSuffix(", 1 responses") == true, "\(answered)")
        }
    }

    /// A queued connection takes the slot of the connection that has waited longest for its request, once that one
    /// has waited past the grace; the others keep theirs until their request timeout. (Before the queue, a new
    /// connection was closed at once: 64 slow clients kept every scraper out.)
    @Test func aQueuedConnectionTakesTheSlotOfTheOldestWaiter() async throws {
        let limits = MetricsEndpoint.Configuration(
            maximumConnections: 2,
            maximumConnectionsPerSource: 2,
            requestGrace: .seconds(1),
            // Long enough that the third client's process, started late on a loaded machine (once more than 7 s),
            // comes before the first connection's own timeout.
            requestTimeout: .seconds(15)
        )
        try await self.withEndpoint(limits) { endpoint in
            let port = endpoint.localAddress!.port!
            async let first = self.steps(port, ["read:20"])
            try await self.waitUntil(endpoint) { $0.openConnections == 1 }
            async let second = self.steps(port, ["read:20"])
            try await self.waitUntil(endpoint) { $0.openConnections == 2 }
            #expect(endpoint.openConnections == 2)
            let third = try await self.steps(port, ["send:GET /metrics HTTP/1.1\\r\\n\\r\\n", "read:4"])
            #expect(third.first == "open after 4 s, 1 responses", "\(third)")
            let (oldest, other) = try await (first, second)
            // The first was closed to make room (well before its request timeout of 15 s); the second stayed until it.
            let closedAfter = { (lines: [String]) in
                lines.first.flatMap { $0.firstMatch(of: /closed after ([\d.]+) s, 0 responses/) }.flatMap {
                    Double($0.1)
                }
            }
            // Compared with each other rather than with the clock: on a loaded machine the third client's process can
            // start seconds late, and the oldest is closed only when it arrives; still, well before the other's
            // request timeout, which the other waited out.
            let oldestClosed = try #require(closedAfter(oldest), "\(oldest)")
            let otherClosed = try #require(closedAfter(other), "\(other)")
            #expect(otherClosed >= 14.9, "\(other)")
            #expect(oldestClosed < otherClosed - 0.5, "oldest \(oldest), other \(other)")
        }
    }

    /// A connection that sends no complete request in time (nothing, or a request dribbled a line at a time) is
    /// closed, and so is one that stays idle after a response.
    @Test func closesSlowAndIdleConnections() async throws {
        let limits = MetricsEndpoint.Configuration(requestTimeout: .milliseconds(500), idleTimeout: .milliseconds(1000))
        try await self.withEndpoint(limits) { endpoint in
            let port = endpoint.localAddress!.port!
            let silentFailure = try await firstPassingAttempt { () async throws -> String? in
                let silent = try await self.steps(port, ["read"])
                return silent.first?.hasPrefix("closed after 0.") == true ? nil : "\(silent)"
            }
            #expect(silentFailure == nil, "\(silentFailure ?? "")")
            let slow = try await self.steps(
                port,
                [
                    "send:GET /metrics HTTP/1.1\\r\\n", "sleep:0.3", "send:Host: t\\r\\n", "sleep:0.3",
                    "send:X-Slow: 1\\r\\n", "read",
                ]
            )
            #expect(
                slow.first?.hasPrefix("closed") == true && slow.first?.hasSuffix(", 0 responses") == true,
                "\(slow)"
            )
            let idleFailure = try await firstPassingAttempt { () async throws -> String? in
                let idle = try await self.steps(port, ["send:GET /metrics HTTP/1.1\\r\\n\\r\\n", "read"])
                return idle.first?.hasPrefix("closed after 1.") == true
                    && idle.first?.hasSuffix(", 1 responses") == true
                    ? nil : "\(idle)"
            }
            #expect(idleFailure == nil, "\(idleFailure ?? "")")
        }
    }
}

/// A body written a piece at a time (a mesh agent's, tens of megabytes) arrives whole and in order, with HTTP/1.1
/// keep-alive (chunked, two responses on one connection, read slowly) and with HTTP/1.0 (ended by closing).
@Suite struct StreamedMetricsTests {
    @Test func aStreamedBodyArrivesWholeInOrder() async throws {
        // 400 pieces of 100 numbered lines: about 1.5 MB, many times the connection's write buffer.
        let endpoint = try await MetricsEndpoint(address: try SocketAddress(ipAddress: "127.0.0.1", port: 0)) {
            var piece = 0
            return MetricsStream { buffer in
                for line in 0..<100 {
                    buffer.writeString("udpecho_test_piece{piece=\"\(piece)\",line=\"\(line)\"} 1\n")
                }
                piece += 1
                return piece < 400
            }
        }
        let running = Task { try await endpoint.run() }
        defer { running.cancel() }
        let port = try #require(endpoint.localAddress?.port)
        let script = """
            import hashlib, http.client, sys, time
            port = int(sys.argv[1])
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            for _ in range(2):
                c.request("GET", "/metrics")
                r = c.getresponse()
                body = b""
                while True:
                    chunk = r.read(65536)
                    if not chunk:
                        break
                    body += chunk
                    time.sleep(0.002)  # a slow reader: the server must wait for room, not pile up
                lines = body.decode().splitlines()
                ok = lines == ['udpecho_test_piece{piece="%d",line="%d"} 1' % (p, l) for p in range(400) for l in range(100)]
                print(r.status, r.getheader("Transfer-Encoding"), len(lines), ok)
            c.close()
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            c._http_vsn, c._http_vsn_str = 10, "HTTP/1.0"
            c.request("GET", "/metrics")
            r = c.getresponse()
            print(r.status, r.version, len(r.read().decode().splitlines()))
            """
        let result = try await Spawned.run(python, ["python3", "-c", script, "\(port)"], timeout: 60)
        #expect(
            result.lines == ["200 chunked 40000 True", "200 chunked 40000 True", "200 10 40000"],
            "\(result.lines) \(result.error)"
        )
    }
}

/// The Prometheus exporter as a library user runs it: a registry of its own (two exporters in one process do not
/// share counters, and nothing is bootstrapped globally), the server's counters current at each scrape, and the
/// body a mesh appends after them.
@Suite struct PrometheusExporterTests {
    @Test func twoExportersServeTheirOwnServersCountersAndWhatFollows() async throws {
        try await withServer { first in
            try await withServer { second in
                let loopback = try SocketAddress(ipAddress: "127.0.0.1", port: 0)
                let plain = try await PrometheusExporter(address: loopback, server: first)
                let withMore = try await PrometheusExporter(address: loopback, server: second) {
                    var pieces = 0
                    return MetricsStream { buffer in
                        buffer.writeString("udpecho_test_more{piece=\"\(pieces)\"} 1\n")
                        pieces += 1
                        return pieces < 3
                    }
                }
                let running = [Task { try await plain.run() }, Task { try await withMore.run() }]
                defer { for task in running { task.cancel() } }
                // Three datagrams echoed by the first server, one by the second.
                for (server, count) in [(first, 3), (second, 1)] {
                    let client = try TestSocket(connectTo: try clientAddress(of: server))
                    for index in 0..<count {
                        #expect(client.send(Array("ping \(index)".utf8)) == 0)
                        #expect(await client.receive()?.bytes == Array("ping \(index)".utf8))
                    }
                }
                let script = """
                    import sys, urllib.request
                    for url in sys.argv[1:]:
                        body = urllib.request.urlopen(url, timeout=10).read().decode().splitlines()
                        echoed = [l for l in body if l.startswith('udpecho_datagrams_total{direction="echoed"}')]
                        more = [l for l in body if l.startswith("udpecho_test_more")]
                        print(echoed[0].split()[-1] if echoed else "none", len(more), body[-1] if more else "-")
                    """
                let result = try await Spawned.run(
                    python,
                    ["python3", "-c", script, plain.url, withMore.url],
                    timeout: 30
                )
                #expect(
                    result.lines == ["3 0 -", "1 3 udpecho_test_more{piece=\"2\"} 1"],
                    "\(result.lines) \(result.error)"
                )
            }
        }
    }
}
