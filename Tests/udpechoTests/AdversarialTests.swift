import Foundation
import NIOCore
import TestSupport
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// Sends one UDP datagram with a forged source, through a raw socket (the header written by hand, as an attacker
/// does): `forge.py SOURCE SOURCE-PORT DESTINATION DESTINATION-PORT [PAYLOAD]`, IPv4 or IPv6; a payload `hex:…` is
/// those bytes.
let pythonForge = """
    import socket, struct, sys
    src, sport, dst, dport = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
    payload = sys.argv[5].encode() if len(sys.argv) > 5 else b"forged"
    if payload.startswith(b"hex:"): payload = bytes.fromhex(payload[4:].decode())
    def checksum(data):
        if len(data) % 2: data += b"\\0"
        total = sum(struct.unpack("!%dH" % (len(data) // 2), data))
        while total >> 16: total = (total & 0xFFFF) + (total >> 16)
        return ~total & 0xFFFF
    length = 8 + len(payload)
    if ":" in dst:
        family = socket.AF_INET6
        s_addr, d_addr = socket.inet_pton(family, src), socket.inet_pton(family, dst)
        pseudo = s_addr + d_addr + struct.pack("!I3xB", length, 17)
    else:
        family = socket.AF_INET
        s_addr, d_addr = socket.inet_aton(src), socket.inet_aton(dst)
        pseudo = s_addr + d_addr + struct.pack("!BBH", 0, 17, length)
    udp = struct.pack("!HHHH", sport, dport, length, 0)
    udp = struct.pack("!HHHH", sport, dport, length, checksum(pseudo + udp + payload) or 0xFFFF)
    if family == socket.AF_INET6:
        header = struct.pack("!IHBB", 6 << 28, length, 17, 64) + s_addr + d_addr
    else:
        header = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + length, 0, 0, 64, 17, 0, s_addr, d_addr)
    s = socket.socket(family, socket.SOCK_RAW, socket.IPPROTO_RAW)
    s.sendto(header + udp + payload, (dst, 0))
    print("forged", flush=True)
    """

/// A local UDP service: binds HOST:PORT, prints "ready", then prints what it receives within `seconds` (or
/// "nothing").
let pythonLocalService = """
    import socket, sys
    host, port, seconds = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
    s = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((host, port))
    s.settimeout(seconds)
    print("ready", flush=True)
    try:
        data, peer = s.recvfrom(65536)
        print("received", data.decode(errors="replace"), "from", peer[0], peer[1], flush=True)
    except socket.timeout:
        print("nothing", flush=True)
    """

/// A client bound to SOURCE: sends one datagram to HOST:PORT and prints "echoed" or "no reply".
let pythonBoundClient = """
    import socket, sys
    source, host, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
    s = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((source, 0))
    s.settimeout(2)
    s.sendto(b"local client", (host, port))
    try:
        print("echoed" if s.recv(100) == b"local client" else "wrong reply", flush=True)
    except socket.timeout:
        print("no reply", flush=True)
    """

/// Runs `udpecho server` with its standard output on a pipe, the way a shell pipeline does: `closed` closes the
/// pipe after the first line (`udpecho server | head -n 1`), `stalled` never reads past it (a consumer that hangs).
/// Then it sends datagrams one at a time, stops the server with SIGINT and prints how many were echoed, whether the
/// server was still running before the signal, its exit status (or "hung"), and what it wrote on standard error.
let pythonPipedServer = """
    import signal, socket, subprocess, sys, time
    executable, mode, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
    server = subprocess.Popen([executable, "server", "--address", "127.0.0.1:0", "--lines-per-second", "0"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    port = int(server.stdout.readline().decode().strip().rsplit(":", 1)[1])
    if mode == "closed":
        server.stdout.close()
    client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    client.settimeout(2)
    echoed = 0
    for i in range(count):
        if server.poll() is not None:
            break
        payload = b"datagram %d" % i
        client.sendto(payload, ("127.0.0.1", port))
        try:
            echoed += client.recv(100) == payload
        except socket.timeout:
            pass
    alive = server.poll() is None
    server.send_signal(signal.SIGINT)
    try:
        status = server.wait(timeout=10)
    except subprocess.TimeoutExpired:
        server.kill()
        server.wait()
        status = "hung"
    print(f"echoed={echoed} alive={alive} exit={status}", flush=True)
    print(server.stderr.read().decode(), flush=True)
    """

/// The counters of a stopped server's summary line: `received`, `echoed`, `dropped` and each drop reason.
func summaryCounts(_ server: Spawned) throws -> [String: Int] {
    let line = try #require(server.outputLines.last { $0.hasPrefix("summary: ") }, "\(server.outputLines)")
    var counts: [String: Int] = [:]
    for match in line.matches(of: /([a-z-]+)=(\d+)/) { counts[String(match.1)] = Int(match.2) }
    return counts
}

/// Sends one datagram (`payload`, or "forged") forged "from" the server `second` (on the client host of `network`) to
/// the server `first` (on its server host), lets any loop between them run half a second (thousands of echoes at
/// the link's speed), stops both, and returns their summary counts.
func forgeOneDatagram(
    in network: TestNetwork,
    between first: (server: Spawned, port: Int),
    and second: (server: Spawned, port: Int),
    payload: String? = nil
) async throws -> (first: [String: Int], second: [String: Int]) {
    let forged = try await network.run(
        in: network.client,
        [
            "python3", "-c", pythonForge, network.clientAddress, "\(second.port)", network.serverAddress,
            "\(first.port)",
        ] + (payload.map { [$0] } ?? [])
    )
    #expect(forged.lines == ["forged"], "\(forged.error)")
    try await Task.sleep(for: .milliseconds(500))
    first.server.signal(SIGINT)
    second.server.signal(SIGINT)
    #expect(await first.server.waitForExit() == 0)
    #expect(await second.server.waitForExit() == 0)
    return (try summaryCounts(first.server), try summaryCounts(second.server))
}

/// The attacks of an adversarial review (issue 14), each kept as a test: forged sources, loops between two of our own
/// servers, and the local services a forged source could reach.
@Suite struct AdversarialTests {
    /// One datagram forged "from" one udpecho server to another must not start an endless echo loop (CVE-1999-0103
    /// between two copies of this server). On the same port (a fleet), the first server drops it at once (its own
    /// port as a source port); on the default port, the deny list does; on two arbitrary ports the loop detector ends
    /// it after a handful of echoes.
    @Test(
        .enabled(if: TestNetwork.available, "needs root and ip to make network namespaces"),
        arguments: [(1337, 1337), (7000, 1337), (7000, 7001)]
    )
    func oneForgedDatagramCannotStartALoopBetweenTwoServers(ports: (Int, Int)) async throws {
        try await withHosts(try await TestNetwork()) { network in
            let (first, _) = try await startServer(["-q", "--address", ":\(ports.0)"], inNamespace: network.server)
            let (second, _) = try await startServer(["-q", "--address", ":\(ports.1)"], inNamespace: network.client)
            // An ordinary client is answered (and the hosts learn each other's link addresses first).
            let client = try await network.run(
                in: network.client,
                ["python3", "-c", pythonBoundClient, network.clientAddress, network.serverAddress, "\(ports.0)"]
            )
            #expect(client.lines == ["echoed"], "\(client.error)")
            let (a, b) = try await forgeOneDatagram(in: network, between: (first, ports.0), and: (second, ports.1))
            // Besides the ordinary client's one echo: a handful at most.
            let (echoedA, echoedB) = (try #require(a["echoed"], "\(a)"), try #require(b["echoed"], "\(b)"))
            #expect(echoedA - 1 + echoedB <= 10, "\(a) \(b)")
            #expect(try #require(a["received"]) >= 2)
            if ports.0 == ports.1 || ports.1 == 1337 {
                #expect(a["echoed"] == 1 && a["source-port"] == 1, "\(a)")
            } else {
                #expect(a["loop", default: 0] + b["loop", default: 0] >= 1, "\(a) \(b)")
            }
        }
    }

    /// The same attack between two servers that reflect markings and fill in udpecho ping's marking report: the
    /// forged datagram asks for a report, each server writes what it arrived with into it, and the loop detector
    /// still ends the loop (a report rewritten with the same values is the same datagram again).
    @Test(.enabled(if: TestNetwork.available, "needs root and ip to make network namespaces"))
    func aForgedMarkingReportCannotStartALoop() async throws {
        try await withHosts(try await TestNetwork()) { network in
            let arguments = ["-q", "--reflect-tos", "--address"]
            let (first, _) = try await startServer(arguments + [":7000"], inNamespace: network.server)
            let (second, _) = try await startServer(arguments + [":7001"], inNamespace: network.client)
            let client = try await network.run(
                in: network.client,
                ["python3", "-c", pythonBoundClient, network.clientAddress, network.serverAddress, "7000"]
            )
            #expect(client.lines == ["echoed"], "\(client.error)")
            let (a, b) = try await forgeOneDatagram(
                in: network,
                between: (first, 7000),
                and: (second, 7001),
                payload: "sequence+stamp..UDPE-TOS....a marking report, please"
            )
            let (echoedA, echoedB) = (try #require(a["echoed"], "\(a)"), try #require(b["echoed"], "\(b)"))
            #expect(echoedA - 1 + echoedB <= 10, "\(a) \(b)")
            #expect(a["loop", default: 0] + b["loop", default: 0] >= 1, "\(a) \(b)")
        }
    }

    /// The same attack on two STAMP reflectors (RFC 8762 §4.1 puts reflectors on port 862, senders on others): a
    /// forged test packet "from" a reflector on port 862 is dropped at once (a source port below 1024, as every
    /// reflector's port 862 is), and between reflectors on arbitrary ports the first reflector recognises its own
    /// reply coming back (its T3, copied into the sender-timestamp field) and ends the loop. With a plain echo server
    /// as the partner (which returns each reply unchanged, so no two datagrams of the loop are alike for its loop
    /// detector), the reflector's own T3 is in that field one pass later.
    @Test(
        .enabled(if: TestNetwork.available, "needs root and ip to make network namespaces"),
        arguments: [(862, 862, "stamp"), (7000, 862, "stamp"), (7000, 7001, "stamp"), (7000, 7001, "echo")]
    )
    func oneForgedTestPacketCannotStartALoopBetweenTwoReflectors(ports: (Int, Int, String)) async throws {
        try await withHosts(try await TestNetwork()) { network in
            let (first, _) = try await startServer(
                ["--protocol", "stamp", "-q", "--address", ":\(ports.0)"],
                inNamespace: network.server
            )
            let (second, _) = try await startServer(
                ["--protocol", ports.2, "-q", "--address", ":\(ports.1)"],
                inNamespace: network.client
            )
            // A test packet as a sender writes it: sequence number 7, a timestamp, the rest zero.
            let testPacket = "hex:00000007" + "e9b0c0de00000000" + String(repeating: "00", count: 32)
            let (a, b) = try await forgeOneDatagram(
                in: network,
                between: (first, ports.0),
                and: (second, ports.1),
                payload: testPacket
            )
            if ports.1 == 862 {
                #expect(a["received"] == 1 && a["source-port"] == 1 && b["received"] == 0, "\(a) \(b)")
            } else if ports.2 == "stamp" {
                // The first reflects the forged packet, the second reflects that, and the first finds its own T3
                // in what comes back.
                #expect(a["received"] == 2 && a["echoed"] == 1 && a["loop"] == 1, "\(a) \(b)")
                #expect(b["received"] == 1 && b["echoed"] == 1, "\(a) \(b)")
            } else {
                // The echo returns the reflector's reply as it was: reflected again (its sender-timestamp field
                // still holds the forged packet's), echoed, and then it holds the reflector's T3.
                #expect(a["received"] == 3 && a["echoed"] == 2 && a["loop"] == 1, "\(a) \(b)")
                #expect(b["received"] == 2 && b["echoed"] == 2, "\(a) \(b)")
            }
        }
    }

    /// `udpecho server | head -n 1`: once the reader is gone, writing a line used to kill the server with SIGPIPE
    /// (exit 141, no message). It must go on serving, and say how it ended on standard error.
    @Test func aClosedStandardOutputDoesNotStopServing() async throws {
        let run = try await Spawned.run(python, ["python3", "-c", pythonPipedServer, udpecho, "closed", "20"])
        #expect(run.lines.first == "echoed=20 alive=True exit=0", "\(run.lines) \(run.error)")
        #expect(run.lines.contains { $0.hasPrefix("summary: received=20 echoed=20") }, "\(run.lines)")
    }

    /// Standard output on a pipe nobody reads: lines pile up until the pipe is full. Serving must not wait for it,
    /// the lines that cannot be written are counted, and SIGINT must still end the process (it used to hang, writing
    /// "cancelled").
    @Test func aStalledStandardOutputNeitherSlowsServingNorBlocksStopping() async throws {
        let run = try await Spawned.run(
            python,
            ["python3", "-c", pythonPipedServer, udpecho, "stalled", "3000"],
            timeout: 60
        )
        #expect(run.lines.first == "echoed=3000 alive=True exit=0", "\(run.lines) \(run.error)")
        let summary = try #require(run.lines.first { $0.hasPrefix("summary: ") }, "\(run.lines)")
        #expect(summary.hasPrefix("summary: received=3000 echoed=3000 dropped=0"))
        #expect(summary.contains(/lines-not-printed=[1-9]\d*/), "\(summary)")
    }

    /// A host address added without a broadcast address (as /32 addresses on cloud hosts are) is reported by
    /// getifaddrs as its own broadcast address; local clients using it must still be answered, over IPv4 and IPv6.
    @Test(.enabled(if: TestNetwork.available, "needs root and ip to make network namespaces"))
    func localClientsOnAnAddressWithoutBroadcastAreAnswered() async throws {
        try await withHosts(try await TestNetwork()) { network in
            let (server, port) = try await startServer(["--address", ":0"], inNamespace: network.server)
            for (source, target) in [
                (network.serverAddress, network.serverAddress), (network.serverAddress6, network.serverAddress6),
            ] {
                let client = try await network.run(
                    in: network.server,
                    ["python3", "-c", pythonBoundClient, source, target, "\(port)"]
                )
                #expect(client.lines == ["echoed"], "from \(source) to \(target): \(client.lines) \(client.error)")
            }
            server.signal(SIGINT)
            #expect(await server.waitForExit() == 0)
            #expect(try summaryCounts(server)["dropped"] == 0, "\(server.outputLines)")
        }
    }

    /// A datagram from outside forged "from" the host's own IPv6 address and another port would be echoed to that
    /// local port: Linux drops such IPv4 datagrams (martians) but not IPv6 ones, and does not tell the server where
    /// such a datagram came from. The server drops datagrams from its own IPv6 addresses unless they come from an
    /// ephemeral port (where local clients' ports come from), on a wildcard socket and on one bound to that address,
    /// and the local service on port 7001 hears nothing. (Local clients are answered: the test above.)
    @Test(
        .enabled(if: TestNetwork.available, "needs root and ip to make network namespaces"),
        arguments: [":0", "[2001:db8::1]:0"]
    )
    func aForgedLocalSourceIsNotReflectedToALocalService(address: String) async throws {
        try await withHosts(try await TestNetwork()) { network in
            let (server, port) = try await startServer(["--address", address], inNamespace: network.server)
            let service = try Spawned(
                TestNetwork.ip,
                [
                    "netns", "exec", network.server, "python3", "-c", pythonLocalService, network.serverAddress6,
                    "7001", "1",
                ]
            )
            #expect(await service.waitForLine { $0 == "ready" } != nil, "\(service.errorText)")
            // An ordinary client on the other host is answered (and the hosts know each other's link addresses
            // before the forged datagram goes).
            let client = try await network.run(
                in: network.client,
                ["python3", "-c", pythonBoundClient, network.clientAddress6, network.serverAddress6, "\(port)"]
            )
            #expect(client.lines == ["echoed"], "\(client.error)")
            let forged = try await network.run(
                in: network.client,
                ["python3", "-c", pythonForge, network.serverAddress6, "7001", network.serverAddress6, "\(port)"]
            )
            #expect(forged.lines == ["forged"], "\(forged.error)")
            #expect(await service.waitForExit() == 0)
            #expect(service.outputLines == ["ready", "nothing"])
            server.signal(SIGINT)
            #expect(await server.waitForExit() == 0)
            let counts = try summaryCounts(server)
            #expect(counts["received"] == 2 && counts["echoed"] == 1, "\(counts)")
            #expect(counts["source-address"] == 1, "\(counts)")
        }
    }
}
