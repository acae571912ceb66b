import Foundation
import TestSupport
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// Three test hosts of our own in a line: a client, a router and a server, each a network namespace, the router
/// forwarding between two links, with an nftables table on it whose forward chain the test fills. Documentation
/// addresses only, and only inside these namespaces: client 192.0.2.2 and 2001:db8:1::2, router 192.0.2.1 and
/// 198.51.100.1 (2001:db8:1::1, 2001:db8:2::1), server 198.51.100.2 and 2001:db8:2::2.
struct RoutedHosts: NamespaceHosts {
    static var available: Bool {
        TestNetwork.available && FileManager.default.isExecutableFile(atPath: "/usr/sbin/nft")
    }

    let client: String
    let router: String
    let server: String
    /// The router's interfaces towards the client and towards the server.
    let towardsClient: String
    let towardsServer: String
    let serverAddress = "198.51.100.2"
    let serverAddress6 = "2001:db8:2::2"
    let clientAddress = "192.0.2.2"

    /// - Parameter farMTU: the MTU of the link between the router and the server (both ends).
    init(farMTU: Int = 1500) async throws {
        let id = uniqueHostID()
        self.client = "udpecho-pc-\(id)"
        self.router = "udpecho-pr-\(id)"
        self.server = "udpecho-ps-\(id)"
        let short = id
        let clientLink = "upc\(short)"
        self.towardsClient = "uprc\(short)"
        self.towardsServer = "uprs\(short)"
        let serverLink = "ups\(short)"
        let (c, r, s) = (self.client, self.router, self.server)
        var commands = [
            ["netns", "add", c], ["netns", "add", r], ["netns", "add", s],
            ["link", "add", clientLink, "type", "veth", "peer", "name", self.towardsClient],
            ["link", "add", self.towardsServer, "type", "veth", "peer", "name", serverLink],
            ["link", "set", clientLink, "netns", c], ["link", "set", self.towardsClient, "netns", r],
            ["link", "set", self.towardsServer, "netns", r], ["link", "set", serverLink, "netns", s],
            ["-n", c, "addr", "add", "192.0.2.2/24", "dev", clientLink],
            ["-n", c, "addr", "add", "2001:db8:1::2/64", "dev", clientLink, "nodad"],
            ["-n", r, "addr", "add", "192.0.2.1/24", "dev", self.towardsClient],
            ["-n", r, "addr", "add", "2001:db8:1::1/64", "dev", self.towardsClient, "nodad"],
            ["-n", r, "addr", "add", "198.51.100.1/24", "dev", self.towardsServer],
            ["-n", r, "addr", "add", "2001:db8:2::1/64", "dev", self.towardsServer, "nodad"],
            ["-n", s, "addr", "add", "198.51.100.2/24", "dev", serverLink],
            ["-n", s, "addr", "add", "2001:db8:2::2/64", "dev", serverLink, "nodad"],
            ["-n", r, "link", "set", self.towardsServer, "mtu", "\(farMTU)"],
            ["-n", s, "link", "set", serverLink, "mtu", "\(farMTU)"],
        ]
        for (namespace, link) in [(c, clientLink), (r, self.towardsClient), (r, self.towardsServer), (s, serverLink)] {
            commands.append(["-n", namespace, "link", "set", link, "up"])
        }
        for namespace in [c, r, s] { commands.append(["-n", namespace, "link", "set", "lo", "up"]) }
        commands += [
            ["-n", c, "route", "add", "default", "via", "192.0.2.1"],
            ["-n", c, "-6", "route", "add", "default", "via", "2001:db8:1::1"],
            ["-n", s, "route", "add", "default", "via", "198.51.100.1"],
            ["-n", s, "-6", "route", "add", "default", "via", "2001:db8:2::1"],
            ["netns", "exec", r, "sysctl", "-qw", "net.ipv4.ip_forward=1"],
            ["netns", "exec", r, "sysctl", "-qw", "net.ipv6.conf.all.forwarding=1"],
            ["netns", "exec", r, "nft", "add", "table", "inet", "path"],
            [
                "netns", "exec", r, "nft", "add", "chain", "inet", "path", "forward",
                "{ type filter hook forward priority 0; }",
            ],
            [
                "netns", "exec", r, "nft", "add", "chain", "inet", "path", "output",
                "{ type filter hook output priority 0; }",
            ],
        ]
        try await setUp(commands, namespaces: [c, r, s])
    }

    var namespaces: [String] { [self.client, self.router, self.server] }

    /// Adds an nftables rule to the router's forward chain, e.g. `oifname X ip dscp set 0`.
    func addRule(_ rule: String) async throws {
        let result = try await Spawned.run(
            TestNetwork.ip,
            ["netns", "exec", self.router, "nft", "add rule inet path forward \(rule)"]
        )
        if result.status != 0 { throw SetupError(description: "nft add rule \(rule): \(result.error)") }
    }

    /// Adds an nftables rule to the router's output chain (what the router itself sends, as its ICMP messages).
    func addOutputRule(_ rule: String) async throws {
        let result = try await Spawned.run(
            TestNetwork.ip,
            ["netns", "exec", self.router, "nft", "add rule inet path output \(rule)"]
        )
        if result.status != 0 { throw SetupError(description: "nft add rule \(rule): \(result.error)") }
    }

    /// Runs udpecho with `arguments` in the client's namespace to completion.
    func udpechoOnClient(_ arguments: [String]) async throws -> (status: Int32, lines: [String], error: String) {
        let result = try await Spawned.run(TestNetwork.ip, ["netns", "exec", self.client, udpecho] + arguments)
        return (result.status, result.lines, result.error)
    }
}

/// Diagnosing a path: markings and hop counts in both directions, through a router that the test makes change them.
@Suite(.serialized) struct PathDiagnosisTests {
    /// The router bleaches the DSCP of packets towards the client only. ping with --dscp 46 against a server with
    /// --reflect-tos sees 46 arrive at the server and 0 come back, and names the way back; the TTL at the server
    /// and here is one less than sent (one router), and the hop counts say 1.
    @Test(.enabled(if: RoutedHosts.available, "needs root, ip and nft to make network namespaces"))
    func aDSCPBleachedOnTheWayBackIsNamed() async throws {
        try await withHosts(try await RoutedHosts()) { hosts in
            try await hosts.addRule("oifname \"\(hosts.towardsClient)\" ip dscp set 0")
            try await hosts.addRule("oifname \"\(hosts.towardsClient)\" ip6 dscp set 0")
            let (server, port) = try await startServer(
                ["--address", "[::]:0", "--reflect-tos", "--quiet"],
                inNamespace: hosts.server
            )
            for target in [hosts.serverAddress, "[\(hosts.serverAddress6)]"] {
                let ping = try await hosts.udpechoOnClient([
                    // -W 3s: the first probes wait for neighbour discovery on the new links (up to a second).
                    "ping", "\(target):\(port)", "-c", "10", "-i", "20ms", "-W", "3s", "--dscp", "46", "--ecn", "ect0",
                ])
                #expect(ping.status == 0, "\(ping.lines) \(ping.error)")
                let replies = ping.lines.filter { $0.contains("bytes from") }
                #expect(replies.count == 10, "\(ping.lines)")
                #expect(
                    replies.allSatisfy {
                        $0.hasSuffix("ttl=63 dscp=0 ecn=ect0 (at the server: ttl=63 dscp=46 ecn=ect0)")
                    },
                    "\(replies)"
                )
                #expect(
                    ping.lines.contains(
                        "marking: DSCP 46 sent, 46 at the server, 0 back here: bleached on the way back (DSCP 46 became 0)"
                    ),
                    "\(ping.lines)"
                )
                #expect(ping.lines.contains { $0.hasPrefix("marking: at the server: ") && $0.hasSuffix("; 1 hop") })
                #expect(ping.lines.contains { $0.hasSuffix("; about 1 hop (from the TTL that arrived)") })
            }

            // Without --reflect-tos the server says nothing: ping sees 0 back and says it cannot tell the direction.
            let plain = try await startServer(["--address", "0.0.0.0:0", "--quiet"], inNamespace: hosts.server)
            let ping = try await hosts.udpechoOnClient([
                "ping", "\(hosts.serverAddress):\(plain.1)", "-c", "3", "-i", "20ms", "-W", "3s", "--dscp", "46",
            ])
            #expect(
                ping.lines.contains {
                    $0.hasPrefix("marking: DSCP 46 sent, 0 back here: changed on the path; the server did not say")
                },
                "\(ping.lines)"
            )
            for spawned in [server, plain.0] { spawned.signal(SIGTERM) }
            for spawned in [server, plain.0] { await spawned.waitForExit() }
        }
    }

    /// The router marks CE on packets towards the server only, then (a second run) towards the client only: each
    /// time the CE marks are counted in that direction and none in the other.
    @Test(.enabled(if: RoutedHosts.available, "needs root, ip and nft to make network namespaces"))
    func congestionMarksAreCountedPerDirection() async throws {
        try await withHosts(try await RoutedHosts()) { hosts in
            let (server, port) = try await startServer(
                ["--address", "\(hosts.serverAddress):0", "--reflect-tos", "--quiet"],
                inNamespace: hosts.server
            )
            func ping() async throws -> [String: Any] {
                let result = try await hosts.udpechoOnClient([
                    "ping", "\(hosts.serverAddress):\(port)", "-c", "8", "-i", "10ms", "-W", "3s", "--ecn", "ect1",
                    "--json",
                    "-q",
                ])
                let summary = try #require(try jsonObjects(result.lines).last, "\(result.lines) \(result.error)")
                return try #require(summary["marking"] as? [String: Any], "\(summary)")
            }
            try await hosts.addRule("oifname \"\(hosts.towardsServer)\" ip ecn set ce")
            let forward = try await ping()
            #expect(forward["ce_there"] as? Int == 8 && forward["ce_back"] as? Int == 0, "\(forward)")

            let flush = try await Spawned.run(
                TestNetwork.ip,
                ["netns", "exec", hosts.router, "nft", "flush chain inet path forward"]
            )
            #expect(flush.status == 0)
            try await hosts.addRule("oifname \"\(hosts.towardsClient)\" ip ecn set ce")
            let backward = try await ping()
            #expect(backward["ce_there"] as? Int == 0 && backward["ce_back"] as? Int == 8, "\(backward)")
            server.signal(SIGTERM)
            await server.waitForExit()
        }
    }

    /// A STAMP reflector says in its Class of Service TLV what arrived: ping --stamp --dscp 46 names the way back
    /// when the router bleaches towards the client.
    @Test(.enabled(if: RoutedHosts.available, "needs root, ip and nft to make network namespaces"))
    func aSTAMPReflectorTellsTheDirectionToo() async throws {
        try await withHosts(try await RoutedHosts()) { hosts in
            try await hosts.addRule("oifname \"\(hosts.towardsClient)\" ip dscp set 0")
            let (server, port) = try await startServer(
                ["--address", "\(hosts.serverAddress):0", "--protocol", "stamp", "--quiet", "--reflect-tos"],
                inNamespace: hosts.server
            )
            let ping = try await hosts.udpechoOnClient([
                "ping", "--stamp", "\(hosts.serverAddress):\(port)", "-c", "5", "-i", "20ms", "-W", "3s", "--dscp",
                "46",
            ])
            #expect(ping.status == 0, "\(ping.lines) \(ping.error)")
            #expect(
                ping.lines.contains(
                    "marking: DSCP 46 sent, 46 at the reflector, 0 back here: bleached on the way back (DSCP 46 became 0)"
                ),
                "\(ping.lines)"
            )
            server.signal(SIGTERM)
            await server.waitForExit()
        }
    }

    /// A bad member of an ECMP group, as nftables can make one: the router drops 30% of the client's packets whose
    /// source port is odd. `ping --flows 16 --flow-stats` names exactly the odd ports among its 16, and no even one.
    @Test(.enabled(if: RoutedHosts.available, "needs root, ip and nft to make network namespaces"))
    func flowStatisticsNameTheBadPaths() async throws {
        try await withHosts(try await RoutedHosts()) { hosts in
            try await hosts.addRule(
                "iifname \"\(hosts.towardsClient)\" udp sport & 1 == 1 numgen random mod 10 < 3 drop"
            )
            let (server, port) = try await startServer(
                ["--address", "\(hosts.serverAddress):0", "--quiet"],
                inNamespace: hosts.server
            )
            let ping = try await hosts.udpechoOnClient([
                "ping", "\(hosts.serverAddress):\(port)", "-c", "3200", "-i", "500us", "-W", "2s", "--flows", "16",
                "--flow-stats", "-q", "--json",
            ])
            let summary = try #require(try jsonObjects(ping.lines).last, "\(ping.lines) \(ping.error)")
            let flows = try #require(summary["flows"] as? [[String: Any]], "\(summary)")
            #expect(flows.count == 16)
            let ports = flows.compactMap { $0["port"] as? Int }
            #expect(Set(ports).count == 16, "\(ports)")
            #expect(flows.allSatisfy { $0["sent"] as? Int == 200 }, "\(flows)")
            let odd = Set(ports.filter { $0 % 2 == 1 })
            // The ports named for their loss are exactly the odd ones. (A port may also stand apart by its latency
            // alone when the machine is loaded: nothing on the path delays packets, so that says nothing of the
            // router's rule, and is not what this test looks for.)
            let named = Set(try #require(summary["flows_apart"] as? [Int]))
            let namedForLoss = Set(
                flows.filter { ($0["apart_by"] as? [String])?.contains("loss") == true }.compactMap {
                    $0["port"] as? Int
                }
            )
            #expect(namedForLoss == odd, "named for loss \(namedForLoss.sorted()), odd \(odd.sorted()): \(flows)")
            #expect(named.isSuperset(of: namedForLoss), "\(named) \(namedForLoss)")
            for flow in flows {
                let lost = try #require(flow["lost"] as? Int)
                if let port = flow["port"] as? Int, port % 2 == 0 { #expect(lost == 0, "\(flow)") }
            }

            // The text names the same ports.
            let text = try await hosts.udpechoOnClient([
                "ping", "\(hosts.serverAddress):\(port)", "-c", "1600", "-i", "500us", "-W", "2s", "--flows", "8",
                "--flow-stats", "-q",
            ])
            #expect(text.lines.contains("flows: 8 source ports"), "\(text.lines)")
            // The rows name the 8 ports; the verdict names exactly the odd ones for their loss (or says none stands
            // apart when, once in 256 runs, every port is even).
            let rows = text.lines.compactMap { line in
                line.wholeMatch(of: /\s*(\d+)\s+200\s+\d+\s+.*/).flatMap { Int($0.1) }
            }
            #expect(rows.count == 8, "\(text.lines)")
            let oddRows = Set(rows.filter { $0 % 2 == 1 })
            let verdict = try #require(text.lines.last)
            if oddRows.isEmpty {
                #expect(verdict == "flows: no source port stands apart from the others", "\(verdict)")
            } else {
                #expect(verdict.hasPrefix("flows: standing apart: "), "\(verdict)")
                let namedForLoss = Set(
                    verdict.dropFirst("flows: standing apart: ".count).matches(of: /(?:^|, )(\d+) \(loss\s/).map {
                        Int($0.1)!
                    }
                )
                #expect(namedForLoss == oddRows, "\(verdict)")
            }
            server.signal(SIGTERM)
            await server.waitForExit()
        }
    }

    /// The link between the router and the server has MTU 1400: `udpecho mtu` finds 1372 bytes of UDP payload over
    /// IPv4 and 1352 over IPv6, once with the router's ICMP "fragmentation needed" / "packet too big" flowing, once
    /// with it dropped (a black hole), each in a bounded number of probes.
    @Test(
        .enabled(if: RoutedHosts.available, "needs root, ip and nft to make network namespaces"),
        arguments: [(false, false), (false, true), (true, false), (true, true)]
    )
    func mtuFindsThePathMTUWithAndWithoutICMP(ipv6: Bool, blackHole: Bool) async throws {
        try await withHosts(try await RoutedHosts(farMTU: 1400)) { hosts in
            if blackHole {
                try await hosts.addOutputRule("icmp type destination-unreachable drop")
                try await hosts.addOutputRule("icmpv6 type packet-too-big drop")
            }
            let (server, port) = try await startServer(
                ["--address", "[::]:0", "--quiet"],
                inNamespace: hosts.server
            )
            let target = ipv6 ? "[\(hosts.serverAddress6)]:\(port)" : "\(hosts.serverAddress):\(port)"
            // Neighbour discovery on the new links first, so that the first probe is not lost to it.
            _ = try await hosts.udpechoOnClient(["ping", target, "-c", "1", "-W", "3s", "-q"])
            let result = try await hosts.udpechoOnClient(["mtu", target, "--json"])
            #expect(result.status == 0, "\(result.lines) \(result.error)")
            let object = try #require(try jsonObjects(result.lines).first, "\(result.lines) \(result.error)")
            #expect(object["largest_payload"] as? Int == (ipv6 ? 1352 : 1372), "\(object)")
            #expect(object["ip_mtu"] as? Int == 1400)
            #expect(object["confirmed"] as? Bool == true)
            let probes = try #require(object["probes"] as? Int)
            #expect(probes <= (blackHole ? 40 : 8), "\(probes) probes: \(object)")
            let icmp = try #require(object["icmp_mtus"] as? [Int])
            if blackHole {
                #expect(icmp.isEmpty && object["black_hole"] as? Bool == true, "\(object)")
            } else {
                #expect(icmp.contains(1400) && object["black_hole"] as? Bool == false, "\(object)")
            }
            if !ipv6 && !blackHole {
                // ping --df: a probe larger than the path's MTU is refused (the kernel learnt 1400 from the ICMP
                // message) instead of being fragmented; without it, fragments carry it through.
                let df = try await hosts.udpechoOnClient([
                    "ping", target, "-c", "3", "-i", "20ms", "-s", "1400", "--df",
                ])
                #expect(df.status == 1, "\(df.lines)")
                #expect(df.lines.contains { $0.hasPrefix("send failed: Message too long") }, "\(df.lines)")
                #expect(df.lines.contains { $0.contains(", 3 not sent (Message too long)") }, "\(df.lines)")
                let fragmented = try await hosts.udpechoOnClient([
                    "ping", target, "-c", "3", "-i", "20ms", "-s", "1400",
                ])
                #expect(fragmented.status == 0, "\(fragmented.lines)")
            }
            server.signal(SIGTERM)
            await server.waitForExit()
        }
    }

    /// On loopback the whole datagram maximum goes through; a port nobody serves is a clear failure (exit 1); bad
    /// options are usage errors (exit 2).
    @Test func mtuOnLoopbackAndItsErrors() async throws {
        let (server, port) = try await startServer(["--address", "127.0.0.1:0", "--quiet"])
        let found = try await Spawned.run(udpecho, ["mtu", "127.0.0.1:\(port)", "--json"])
        let object = try #require(try jsonObjects(found.lines).first, "\(found.lines) \(found.error)")
        #expect(found.status == 0 && object["largest_payload"] as? Int == 65507 && object["ip_mtu"] as? Int == 65535)
        server.signal(SIGTERM)
        await server.waitForExit()

        // A port that stays refused for the whole run (the server's own, once let go, another test could take).
        let closed = try TestSocket.refusing()
        defer { closed.close() }
        let refused = try await Spawned.run(udpecho, ["mtu", "127.0.0.1:\(closed.localAddress.port!)"])
        #expect(refused.status == 1)
        #expect(refused.error.contains("refused the datagram: nothing listens on that port"), "\(refused.error)")
        for (arguments, message) in [
            (["--attempts", "0"], "--attempts 0: from 1 to 10"), (["--timeout", "0"], "--timeout must be more than 0"),
        ] {
            let bad = try await Spawned.run(udpecho, ["mtu", "127.0.0.1:9"] + arguments)
            #expect(bad.status == 2 && bad.error.contains("Error: \(message)"), "\(bad.error)")
        }
    }

    /// bench marks its load as asked: a server of our own (Python) sees every request with DSCP 46, ECT(1) and TTL
    /// 7, and echoes it.
    @Test func benchMarksItsLoad() async throws {
        let recorder = try Spawned(
            python,
            [
                "python3", "-c",
                """
                import socket, sys
                s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                s.setsockopt(socket.IPPROTO_IP, socket.IP_RECVTOS, 1)
                s.setsockopt(socket.IPPROTO_IP, 12, 1)  # IP_RECVTTL
                s.bind(("127.0.0.1", 0))
                s.settimeout(1)
                print(s.getsockname()[1], flush=True)
                seen = {}
                try:
                    while True:
                        data, ancillary, _, peer = s.recvmsg(65536, 256)
                        marks = tuple(sorted((t, v[0]) for l, t, v in ancillary if l == socket.IPPROTO_IP))
                        seen[marks] = seen.get(marks, 0) + 1
                        s.sendto(data, peer)
                except socket.timeout:
                    pass
                print(repr(sorted(seen.items())), flush=True)
                """,
            ]
        )
        let port = try #require(await recorder.waitForLine { Int($0) != nil }.flatMap { Int($0) })
        let bench = try await Spawned.run(
            udpecho,
            ["bench", "127.0.0.1:\(port)", "-c", "500", "--dscp", "46", "--ecn", "ect1", "--ttl", "7", "--json"]
        )
        let object = try #require(try jsonObjects(bench.lines).first, "\(bench.lines) \(bench.error)")
        #expect(object["received"] as? Int == 500)
        await recorder.waitForExit()
        // IP_TOS is 1, IP_TTL 2: every datagram with TOS 46 << 2 | 1 and TTL 7.
        #expect(recorder.outputLines.last == "[(((1, \(46 << 2 | 1)), (2, 7)), 500)]", "\(recorder.outputLines)")
    }

    /// Against an echo server that is not ours (socat, echoing what it reads through a pipe; one peer, so no fork): with a 64 KiB buffer
    /// the whole datagram maximum comes back; with a 1500-byte buffer larger echoes come back cut, and `mtu` finds
    /// 1500 at once and says the limit is the server's, not the path's.
    @Test(.enabled(if: FileManager.default.isExecutableFile(atPath: "/usr/bin/socat"), "needs socat"))
    func mtuAgainstSocat() async throws {
        for (buffer, expected) in [(65536, 65507), (1500, 1500)] {
            let port = Int.random(in: 20000...29999)
            let socat = try Spawned(
                "/usr/bin/socat",
                ["-b", "\(buffer)", "-T", "1", "UDP4-LISTEN:\(port),bind=127.0.0.1,reuseaddr", "PIPE"]
            )
            try await Task.sleep(for: .milliseconds(300))
            let result = try await Spawned.run(udpecho, ["mtu", "127.0.0.1:\(port)", "--json"])
            socat.signal(SIGTERM)
            await socat.waitForExit()
            let object = try #require(try jsonObjects(result.lines).first, "\(result.lines) \(result.error)")
            #expect(object["largest_payload"] as? Int == expected, "\(object)")
            #expect(object["confirmed"] as? Bool == true)
            if expected == 1500 {
                #expect(object["truncated_at"] as? Int == 1500 && object["black_hole"] as? Bool == false, "\(object)")
                #expect((object["probes"] as? Int ?? 99) <= 6, "\(object)")
            }
        }
    }

    /// A server that cuts every echo by a byte, or changes its last byte, answers every probe: `mtu` ended with "no
    /// reply ... the server may be down" after 100 answered probes. Now it says the echoes are not the probes.
    @Test(arguments: [("cut1", "came back as 65505"), ("flip-last", "came back with byte 15 changed")])
    func mtuSaysWhenEchoesAreNotTheProbes(mode: String, words: String) async throws {
        let (server, port) = try await startPythonServer(mode)
        defer { server.signal(SIGKILL) }
        let result = try await Spawned.run(udpecho, ["mtu", "127.0.0.1:\(port)"], timeout: 60)
        #expect(result.status == 1, "\(result.status) \(result.error)")
        #expect(result.error.contains("answers, but not with the datagram it was sent"), "\(result.error)")
        #expect(result.error.contains(words), "\(result.error)")
        #expect(!result.error.contains("may be down"), "\(result.error)")
    }

    /// A server that answers half the datagrams at random (a fixed seed): once a try is lost at a size that comes
    /// back later, sizes get more tries, so loss is not taken for size (it reported 24,318 bytes and a black hole on
    /// loopback); the output says how lossy the path is.
    @Test func mtuOnALossyPathIsNotFooledByLoss() async throws {
        let (server, port) = try await startPythonServer("half")
        defer { server.signal(SIGKILL) }
        let result = try await Spawned.run(
            udpecho,
            ["mtu", "127.0.0.1:\(port)", "--json", "-W", "500ms"],
            timeout: 200
        )
        let object = try #require(try jsonObjects(result.lines).first, "\(result.lines) \(result.error)")
        #expect(object["largest_payload"] as? Int == 65507, "\(object)")
        #expect((object["loss_rate"] as? Double ?? 0) > 0.2, "\(object)")
        #expect(object["black_hole"] as? Bool == false, "\(object)")
    }

    /// Out-of-range marking options are usage errors that say what the range is.
    @Test(arguments: [
        (["--dscp", "64"], "--dscp 64: a DSCP goes from 0 to 63"),
        (["--ttl", "0"], "--ttl 0: a TTL goes from 1 to 255"),
        (["--ecn", "foo"], "--ecn foo: not an ECN codepoint; use not-ect, ect0, ect1 or ce"),
        (["--tos", "256"], "--tos 256: the TOS byte goes from 0 to 255"),
        (["--tos", "4", "--dscp", "1"], "--tos sets DSCP and ECN at once: give it alone, or --dscp and --ecn"),
        (["--flows", "0"], "--flows 0: from 1 to 64 source ports"),
        (["--flows", "65"], "--flows 65: from 1 to 64 source ports"),
        (["--flow-stats"], "--flow-stats compares the flows with each other: give --flows 3 or more"),
    ])
    func badMarkingIsAUsageError(arguments: [String], message: String) async throws {
        let result = try await Spawned.run(udpecho, ["ping", "127.0.0.1:9"] + arguments)
        #expect(result.status == 2, "\(result.status)")
        #expect(result.error.contains("Error: \(message)"), "\(result.error)")
    }
}
