import Foundation
import Synchronization
import TestSupport
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// Two test hosts of our own: network namespaces joined by a veth pair, made and removed by the test. Traffic
/// between them never leaves this machine.
struct TestNetwork: NamespaceHosts {
    static let ip = "/usr/sbin/ip"
    static var available: Bool {
        geteuid() == 0 && FileManager.default.isExecutableFile(atPath: ip)
            && FileManager.default.isExecutableFile(atPath: "/usr/sbin/tc")
    }

    let server: String
    let client: String
    /// The veth pair's ends: the server's and the client's.
    let serverLink: String
    let clientLink: String
    // Documentation addresses (TEST-NET-1, 2001:db8::/32), only inside these namespaces.
    let serverAddress = "192.0.2.1"
    let clientAddress = "192.0.2.2"
    let serverAddress6 = "2001:db8::1"
    let clientAddress6 = "2001:db8::2"

    /// - Parameter serverRate: If given, replies leave the server's host at this rate (a `tbf` queue, as `8kbit`):
    ///   they wait in the queue, charged to the server's send buffer.
    init(serverRate: String? = nil) async throws {
        let id = uniqueHostID()
        self.server = "udpecho-s-\(id)"
        self.client = "udpecho-c-\(id)"
        let serverLink = "ues\(id)"
        let clientLink = "uec\(id)"
        self.serverLink = serverLink
        self.clientLink = clientLink
        var commands = [
            ["netns", "add", self.server],
            ["netns", "add", self.client],
            ["link", "add", serverLink, "type", "veth", "peer", "name", clientLink],
            ["link", "set", serverLink, "netns", self.server],
            ["link", "set", clientLink, "netns", self.client],
            // Addresses without a broadcast address (no `brd`), as /32 addresses on cloud hosts are.
            ["-n", self.server, "addr", "add", "\(self.serverAddress)/24", "dev", serverLink],
            ["-n", self.client, "addr", "add", "\(self.clientAddress)/24", "dev", clientLink],
            ["-n", self.server, "addr", "add", "\(self.serverAddress6)/64", "dev", serverLink, "nodad"],
            ["-n", self.client, "addr", "add", "\(self.clientAddress6)/64", "dev", clientLink, "nodad"],
            ["-n", self.server, "link", "set", serverLink, "up"],
            ["-n", self.client, "link", "set", clientLink, "up"],
            ["-n", self.server, "link", "set", "lo", "up"],
            ["-n", self.client, "link", "set", "lo", "up"],
        ]
        if let serverRate {
            commands.append([
                "netns", "exec", self.server, "tc", "qdisc", "add", "dev", serverLink, "root", "tbf", "rate",
                serverRate, "burst", "1600", "latency", "60s",
            ])
        }
        try await setUp(commands, namespaces: self.namespaces)
    }

    var namespaces: [String] { [self.server, self.client] }

    /// Runs `arguments` inside `namespace` to completion.
    func run(
        in namespace: String,
        _ arguments: [String]
    ) async throws -> (
        status: Int32, output: Data, lines: [String], error: String
    ) {
        try await Spawned.run(Self.ip, ["netns", "exec", namespace] + arguments)
    }
}

private let hostCounter = Mutex(0)

/// A name part no other test host of this run has (the process and a counter; short enough for an interface name
/// with a 4-letter prefix): tests make hosts in parallel.
func uniqueHostID() -> String {
    let number = hostCounter.withLock { value in
        value += 1
        return value
    }
    return "\(getpid() % 100_000)n\(number)"
}

/// Test hosts made of network namespaces, removed when the test is done with them.
protocol NamespaceHosts {
    var namespaces: [String] { get }
}

extension NamespaceHosts {
    func remove() async {
        await removeNamespaces(self.namespaces)
    }
}

/// Runs `body` with test hosts, and removes them afterwards, whether it passed, failed or threw.
func withHosts<Hosts: NamespaceHosts, Result>(
    _ hosts: Hosts,
    _ body: (Hosts) async throws -> Result
) async throws -> Result {
    do {
        let result = try await body(hosts)
        await hosts.remove()
        return result
    } catch {
        await hosts.remove()
        throw error
    }
}

/// Runs the `ip` commands that make test hosts; if one fails, removes what was made and says which failed.
func setUp(_ commands: [[String]], namespaces: [String]) async throws {
    for command in commands {
        let result = try await Spawned.run(TestNetwork.ip, command)
        if result.status != 0 {
            await removeNamespaces(namespaces)
            throw SetupError(description: "ip \(command.joined(separator: " ")) failed: \(result.error)")
        }
    }
}

func removeNamespaces(_ namespaces: [String]) async {
    for namespace in namespaces {
        // A process left in the host (a peer's daemon and the children it forked) would outlive it, cut off from
        // any network: it is killed first.
        let pids = Spawned.runBlocking(TestNetwork.ip, ["netns", "pids", namespace]).output.split(separator: "\n")
        for pid in pids.compactMap({ Int32($0) }) { kill(pid, SIGKILL) }
        _ = try? await Spawned.run(TestNetwork.ip, ["netns", "del", namespace])
    }
}

struct SetupError: Error, CustomStringConvertible {
    var description: String
}

/// A test host of our own with only loopback, for a server that must listen on a fixed port (the unit's port 7, its
/// metrics port) without meeting anything else on this machine.
struct LoopbackHost: NamespaceHosts {
    let name = "udpecho-lo-\(uniqueHostID())"

    init() async throws {
        try await setUp(
            [["netns", "add", self.name], ["-n", self.name, "link", "set", "lo", "up"]],
            namespaces: [self.name]
        )
    }

    var namespaces: [String] { [self.name] }

    /// The processes running in this host (`ip netns pids`).
    func processes() -> [Int32] {
        Spawned.runBlocking(TestNetwork.ip, ["netns", "pids", self.name]).output.split(separator: "\n").compactMap {
            Int32($0)
        }
    }
}

/// One test host of our own with a firewall: a network namespace with only loopback, and an nftables table whose
/// output chain (drops there fail the sender's call with EPERM) and input chain (drops there are silent, as losses
/// in a network are) the test fills.
struct FirewalledHost: NamespaceHosts {
    static var available: Bool {
        TestNetwork.available && FileManager.default.isExecutableFile(atPath: "/usr/sbin/nft")
    }

    let name = "udpecho-fw-\(uniqueHostID())"

    init() async throws {
        let commands = [
            ["netns", "add", self.name],
            ["-n", self.name, "link", "set", "lo", "up"],
            ["netns", "exec", self.name, "nft", "add", "table", "inet", "udpecho"],
            [
                "netns", "exec", self.name, "nft", "add", "chain", "inet", "udpecho", "out",
                "{ type filter hook output priority 0; }",
            ],
            [
                "netns", "exec", self.name, "nft", "add", "chain", "inet", "udpecho", "in",
                "{ type filter hook input priority 0; }",
            ],
        ]
        try await setUp(commands, namespaces: self.namespaces)
    }

    var namespaces: [String] { [self.name] }
}

/// Inside the firewalled host: client A's replies are forbidden by a rule made after it bound its port; client B is
/// not affected and must still be answered.
let pythonForbiddenPeer = """
    import socket, subprocess, sys
    port = int(sys.argv[1])
    a = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    a.bind(("127.0.0.1", 0))
    subprocess.run(["nft", "add", "rule", "inet", "udpecho", "out", "udp", "dport", str(a.getsockname()[1]), "drop"],
                   check=True)
    for _ in range(3):
        a.sendto(b"blocked", ("127.0.0.1", port))
    b = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    b.settimeout(5)
    b.sendto(b"allowed", ("127.0.0.1", port))
    print("B got", b.recv(100).decode(), flush=True)
    """

@Suite struct NetworkNamespaceTests {
    /// The article's write deadline: a reply that cannot get into a full send buffer in time is dropped and counted,
    /// and the server does not hang on it.
    @Test(.enabled(if: TestNetwork.available, "needs root, ip and tc to make network namespaces"))
    func dropsRepliesPastTheWriteDeadlineAndCountsThem() async throws {
        try await withHosts(try await TestNetwork(serverRate: "8kbit")) { network in
            let (server, port) = try await startServer(
                [
                    "--address", "\(network.serverAddress):0", "--timeout", "200ms", "--send-buffer", "4096",
                    "--threads", "1", "--lines-per-second", "0",
                ],
                inNamespace: network.server
            )
            let burst = try await Spawned.run(
                TestNetwork.ip,
                [
                    "netns", "exec", network.client, "python3", "-c", pythonBurst, network.serverAddress, "\(port)",
                    "40", "1400",
                ]
            )
            #expect(burst.lines == ["sent 40"], "\(burst.error)")
            let dropped = await server.waitForLine { line in line.contains("reason=write-timeout") }
            #expect(
                dropped?.wholeMatch(of: /packet-dropped: bytes=1400 to=192\.0\.2\.2:\d+ reason=write-timeout .*/) != nil
            )
            // Every datagram is accounted for, as echoed or dropped; none silently lost in the server.
            #expect(
                await server.waitForLine { line in line.hasPrefix("packet-received") && line.contains("bytes=1400") }
                    != nil
            )
            server.signal(SIGINT)
            #expect(await server.waitForExit() == 0)
            let summary = try #require(server.outputLines.last)
            let counts = try #require(
                summary.firstMatch(of: /received=(\d+) echoed=(\d+) dropped=(\d+) \(write-timeout=(\d+)\)/)
            )
            #expect(Int(counts.1) == 40)
            #expect(Int(counts.2)! + Int(counts.3)! == 40)
            #expect(Int(counts.4)! > 0)
            #expect(Int(counts.4) == Int(counts.3))
        }
    }

    /// A reply that the kernel refuses to send (here a firewall's EPERM; in the wild ENOBUFS, EMSGSIZE...) drops
    /// that datagram, counted with its reason, and the server goes on serving everyone else. The article's server
    /// exits on the first such error.
    @Test(.enabled(if: FirewalledHost.available, "needs root, ip and nft to make a firewalled network namespace"))
    func aForbiddenReplyIsDroppedAndCountedAndOthersAreStillServed() async throws {
        try await withHosts(try await FirewalledHost()) { host in
            let (server, port) = try await startServer(
                ["--address", "127.0.0.1:0", "--threads", "1"],
                inNamespace: host.name
            )
            let peer = try await Spawned.run(
                TestNetwork.ip,
                ["netns", "exec", host.name, "python3", "-c", pythonForbiddenPeer, "\(port)"]
            )
            #expect(peer.lines == ["B got allowed"], "\(peer.error)")
            let dropped = await server.waitForLine { line in line.hasPrefix("packet-dropped") }
            #expect(
                dropped?.wholeMatch(
                    of: /packet-dropped: bytes=7 to=127\.0\.0\.1:\d+ reason=forbidden error="Operation not permitted"/
                ) != nil,
                "\(String(describing: dropped)) \(server.outputLines)"
            )
            server.signal(SIGTERM)
            #expect(await server.waitForExit() == 0)
            #expect(server.outputLines.last?.hasPrefix("summary: received=4 echoed=1 dropped=3 (forbidden=3)") == true)
        }
    }

    /// About 30% of the requests are dropped at random, silently, as they arrive at the server's host (nftables'
    /// numgen on the input hook); ping and bench must both see that loss, and nothing else.
    @Test(.enabled(if: FirewalledHost.available, "needs root, ip and nft to make a firewalled network namespace"))
    func pingAndBenchSeeRandomLoss() async throws {
        try await withHosts(try await FirewalledHost()) { host in
            let (server, port) = try await startServer(["--address", "127.0.0.1:0", "--quiet"], inNamespace: host.name)
            let rule = try await Spawned.run(
                TestNetwork.ip,
                [
                    "netns", "exec", host.name, "nft", "add", "rule", "inet", "udpecho", "in", "udp", "dport",
                    "\(port)",
                    "numgen", "random", "mod", "10", "<", "3", "drop",
                ]
            )
            #expect(rule.status == 0, "\(rule.error)")
            let ping = try await Spawned.run(
                TestNetwork.ip,
                [
                    "netns", "exec", host.name, udpecho, "ping", "127.0.0.1:\(port)", "-c", "300", "-i", "1ms",
                    "-W", "200ms", "-q", "--json",
                ]
            )
            let pingSummary = try #require(try jsonObjects(ping.lines).last)
            let pingLoss = try #require(pingSummary["loss_percent"] as? Double)
            #expect((15...45).contains(pingLoss), "ping loss \(pingLoss)%")
            #expect(pingSummary["corrupt"] as? Int == 0 && pingSummary["duplicates"] as? Int == 0)

            let bench = try await Spawned.run(
                TestNetwork.ip,
                [
                    "netns", "exec", host.name, udpecho, "bench", "127.0.0.1:\(port)", "--rate", "3000",
                    "--duration", "1s", "--loss-timeout", "200ms", "--json",
                ]
            )
            let object = try #require(try jsonObjects(bench.lines).first, "\(bench.error)")
            let sent = try #require(object["sent"] as? Int)
            let lost = try #require(object["lost"] as? Int)
            #expect(sent >= 2900)
            #expect((0.15...0.45).contains(Double(lost) / Double(sent)), "bench lost \(lost) of \(sent)")
            #expect(object["received"] as? Int == sent - lost)
            server.signal(SIGTERM)
            await server.waitForExit()
        }
    }
}
