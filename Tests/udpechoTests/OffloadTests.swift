import Foundation
import TestSupport
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// A client that sends runs of datagrams each in one segmented write (UDP_SEGMENT, as QUIC stacks and
/// `udpload --gso` send), then reads the echoes: `gso.py HOST PORT RUN...`, where a RUN is `N:SIZE` (N datagrams of
/// SIZE bytes in one write), `N:SIZE:LAST` (and a shorter last one) or `1:SIZE` (one datagram, an ordinary write).
/// Every datagram's bytes differ from every other's (its number in the first four bytes, a pattern after). Prints
/// one JSON object: how many were sent and came back, whether they came back exactly, in order.
let pythonGSOClient = """
    import json, socket, struct, sys
    host, port = sys.argv[1], int(sys.argv[2])
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    s = socket.socket(family, socket.SOCK_DGRAM)
    # Connected: only the server's datagrams come in (a parallel test's probe to a port it believes closed cannot).
    s.connect((host, port))
    s.settimeout(2)
    sent, number = [], 0
    def datagram(size):
        global number
        number += 1
        body = struct.pack("!I", number) + bytes((number * 31 + i) % 251 for i in range(max(0, size - 4)))
        return body[:size]
    for run in sys.argv[3:]:
        parts = [int(p) for p in run.split(":")]
        count, size = parts[0], parts[1]
        datagrams = [datagram(size) for _ in range(count)] + ([datagram(parts[2])] if len(parts) > 2 else [])
        sent += datagrams
        if len(datagrams) == 1:
            s.send(datagrams[0])
        else:
            s.sendmsg([b"".join(datagrams)], [(socket.SOL_UDP, 103, struct.pack("H", size))])
    got = []
    try:
        while len(got) < len(sent):
            got.append(s.recv(65536))
        s.settimeout(0.2)
        got.append(s.recv(65536))  # one more would be a duplicate
    except socket.timeout:
        pass
    print(json.dumps({"sent": len(sent), "got": len(got), "exact": got == sent,
                      "same_set": sorted(got) == sorted(sent)}), flush=True)
    """

/// An echo server with GRO and GSO of its own (as c-gro) that damages one byte of the third datagram of each run it
/// answers: prints its port, then serves.
let pythonDamagingGROServer = """
    import socket, struct
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_UDP, 104, 1)  # UDP_GRO
    s.bind(("127.0.0.1", 0))
    print(s.getsockname()[1], flush=True)
    while True:
        data, ancillary, _, peer = s.recvmsg(65536, 64)
        size = next((struct.unpack("i", d)[0] for l, t, d in ancillary if l == socket.SOL_UDP and t == 104), 0)
        if size and len(data) > 2 * size:
            data = bytearray(data)
            data[2 * size + 8] ^= 0xFF
            s.sendmsg([bytes(data)], [(socket.SOL_UDP, 103, struct.pack("H", size))], 0, peer)
        else:
            s.sendto(data, peer)
    """

/// UDP generic receive and segmentation offload on the echo path: the kernel hands a client's segmented write over
/// as one buffer, and the server answers it with one segmented write, yet every datagram is echoed, guarded,
/// counted and shown as one.
@Suite struct OffloadTests {
    func gsoClient(_ port: Int, _ runs: [String], host: String = "127.0.0.1") async throws -> [String: Any] {
        let result = try await Spawned.run(python, ["python3", "-c", pythonGSOClient, host, "\(port)"] + runs)
        return try #require(try jsonObjects(result.lines).first, "\(result.lines) \(result.error)")
    }

    func stop(_ server: Spawned) async throws -> [String: Int] {
        server.signal(SIGINT)
        #expect(await server.waitForExit() == 0)
        return try summaryCounts(server)
    }

    /// A run of N datagrams (one with a shorter last one, and runs of other sizes with single datagrams between
    /// them) comes back as N separate, exact datagrams in order; the server counts and shows each one, and says
    /// that they came as runs.
    @Test(arguments: ["127.0.0.1", "::1"])
    func runsComeBackAsTheDatagramsSent(host: String) async throws {
        let (server, port) = try await startServer([
            "--address", host.contains(":") ? "[\(host)]:0" : "\(host):0", "--lines-per-second", "0",
        ])
        let reply = try await self.gsoClient(
            port,
            ["10:100", "7:1000:37", "1:64", "40:24", "1:1400", "3:1400:1"],
            host: host
        )
        #expect(reply["sent"] as? Int == 64 && reply["got"] as? Int == 64, "\(reply)")
        #expect(reply["exact"] as? Bool == true, "\(reply)")
        let counts = try await self.stop(server)
        #expect(counts["received"] == 64 && counts["echoed"] == 64 && counts["dropped"] == 0, "\(counts)")
        #expect(counts["offload-runs"] == 4, "\(counts)")  // the four segmented writes, each one run
        let received = server.outputLines.filter { $0.hasPrefix("packet-received: ") }
        let written = server.outputLines.filter { $0.hasPrefix("packet-written: ") }
        #expect(received.count == 64 && written.count == 64)
        #expect(received.filter { $0.hasPrefix("packet-received: bytes=1000 ") }.count == 7)
        #expect(received.filter { $0.hasPrefix("packet-received: bytes=37 ") }.count == 1)
    }

    /// `--no-offload`: the same writes arrive datagram by datagram (the kernel cuts them), as before offload.
    @Test func withoutOffloadEveryDatagramComesAlone() async throws {
        let (server, port) = try await startServer(["--address", "127.0.0.1:0", "-q", "--no-offload"])
        let reply = try await self.gsoClient(port, ["10:100", "7:1000:37"])
        #expect(reply["got"] as? Int == 18 && reply["exact"] as? Bool == true, "\(reply)")
        let counts = try await self.stop(server)
        #expect(counts["received"] == 18 && counts["echoed"] == 18 && counts["offload-runs"] == nil, "\(counts)")
    }

    /// A source over its rate limit: of a run of 20, exactly the burst's worth is echoed, and each of the others is
    /// dropped and counted as rate-limited.
    @Test func aRunOverTheRateLimitLosesOnlyTheDatagramsOverIt() async throws {
        let (server, port) = try await startServer([
            "--address", "127.0.0.1:0", "-q", "--limit-loopback", "--rate-limit", "0.01", "--rate-burst", "5",
        ])
        let reply = try await self.gsoClient(port, ["20:200"])
        #expect(reply["got"] as? Int == 5, "\(reply)")
        let counts = try await self.stop(server)
        #expect(counts["received"] == 20 && counts["echoed"] == 5 && counts["rate-limited"] == 15, "\(counts)")
        #expect(counts["offload-runs"] == 1, "\(counts)")
    }

    /// `--max-size` below the segment size: each datagram of the run is dropped and counted as oversize, except a
    /// shorter last one within the limit, which is echoed; so is a later run within it.
    @Test func maxSizeAppliesToEachDatagramOfARun() async throws {
        let (server, port) = try await startServer(["--address", "127.0.0.1:0", "--max-size", "100"])
        let reply = try await self.gsoClient(port, ["10:200:50", "5:100"])
        #expect(reply["got"] as? Int == 6, "\(reply)")
        let counts = try await self.stop(server)
        #expect(counts["received"] == 16 && counts["echoed"] == 6 && counts["oversize"] == 10, "\(counts)")
        let dropped = server.outputLines.filter {
            $0.hasPrefix("packet-dropped: bytes=200 ") && $0.contains("oversize")
        }
        #expect(dropped.count == 10, "\(server.outputLines)")
    }

    /// A run whose segment size the path back cannot carry (a route MTU of 1000 on the server's host, 1200-byte
    /// datagrams): the kernel refuses the segmented write, and the run is sent again datagram by datagram (each
    /// fragmented), counted as a fallback. Two test hosts in network namespaces.
    @Test(.enabled(if: TestNetwork.available, "needs root and ip to make network namespaces"))
    func aRunThePathCannotSegmentIsSentDatagramByDatagram() async throws {
        try await withHosts(try await TestNetwork()) { network in
            let route = try await Spawned.run(
                TestNetwork.ip,
                ["-n", network.server, "route", "replace", "\(network.clientAddress)/32", "dev"]
                    + [try await self.serverLink(network), "mtu", "1000"]
            )
            #expect(route.status == 0, "\(route.error)")
            let (server, port) = try await startServer(["--address", ":0", "-q"], inNamespace: network.server)
            let client = try await network.run(
                in: network.client,
                ["python3", "-c", pythonGSOClient, network.serverAddress, "\(port)", "10:1200:37", "4:500"]
            )
            let reply = try #require(try jsonObjects(client.lines).first, "\(client.error)")
            #expect(reply["got"] as? Int == 15 && reply["exact"] as? Bool == true, "\(reply)")
            let counts = try await self.stop(server)
            #expect(counts["received"] == 15 && counts["echoed"] == 15, "\(counts)")
            #expect(counts["offload-runs"] == 2 && counts["offload-fallbacks"] == 1, "\(counts)")
        }
    }

    /// `bench --gso` against our server: requests leave as runs, the server takes them as runs and answers with
    /// runs, the replies come coalesced, and every one of them is matched and checked.
    @Test func benchSendsRunsAndChecksEveryReply() async throws {
        let (server, port) = try await startServer(["--address", "127.0.0.1:0", "-q"])
        let bench = try await Spawned.run(udpecho, ["bench", "127.0.0.1:\(port)", "--gso", "-c", "3000", "--json"])
        #expect(bench.status == 0, "\(bench.error)")
        let result = try #require(try jsonObjects(bench.lines).first, "\(bench.lines)")
        #expect(result["gso"] as? Bool == true && result["received"] as? Int == 3000, "\(result)")
        #expect(result["lost"] as? Int == 0 && result["corrupt"] as? Int == 0, "\(result)")
        #expect((result["coalesced_replies"] as? Int ?? 0) > 0, "\(result)")
        #expect(result["timestamps"] as? String == "user")
        let counts = try await self.stop(server)
        #expect(counts["received"] == 3000 && counts["echoed"] == 3000, "\(counts)")
        #expect((counts["offload-runs"] ?? 0) > 0, "\(counts)")
    }

    /// A server that damages one datagram inside each run it sends back: `bench --gso` finds each damaged reply
    /// among the coalesced ones, counts it as corrupt and exits 1.
    @Test func benchFindsADamagedDatagramInsideARun() async throws {
        let peer = try Spawned(python, ["python3", "-c", pythonDamagingGROServer])
        defer { peer.signal(SIGKILL) }
        let port = try #require(await peer.waitForLine { Int($0) != nil }.flatMap { Int($0) })
        let bench = try await Spawned.run(udpecho, ["bench", "127.0.0.1:\(port)", "--gso", "-c", "2000", "--json"])
        #expect(bench.status == 1, "\(bench.error)")
        let result = try #require(try jsonObjects(bench.lines).first, "\(bench.lines)")
        let corrupt = try #require(result["corrupt"] as? Int)
        #expect(corrupt > 0 && corrupt < 2000 && (result["coalesced_replies"] as? Int ?? 0) > 0, "\(result)")
    }

    /// The name of the server host's end of the veth pair.
    func serverLink(_ network: TestNetwork) async throws -> String {
        let links = try await Spawned.run(TestNetwork.ip, ["-n", network.server, "-o", "link", "show", "type", "veth"])
        let name = links.lines.first?.split(separator: ":").dropFirst().first?.split(separator: "@").first
        return try #require(name.map { $0.trimmingCharacters(in: .whitespaces) }, "\(links.lines)")
    }
}
