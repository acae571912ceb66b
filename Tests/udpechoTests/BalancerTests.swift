import Foundation
import TestSupport
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// Four test hosts of our own: a client, a balancer and two backends, each a network namespace, the balancer
/// routing between the client's link and one link to each backend. Documentation addresses only, and only inside
/// these namespaces: client 192.0.2.2, balancer 192.0.2.1, 198.51.100.1 and 198.51.100.17, backends 198.51.100.2 and
/// 198.51.100.18, and the service's virtual address 198.51.100.200, which is on no link: where it lives depends on
/// the kind of balancer.
struct BalancedHosts: NamespaceHosts {
    /// How the virtual address reaches the backends.
    enum Kind {
        /// nftables DNAT on the balancer: the virtual address is rewritten to a backend's, picked by `numgen`
        /// over a map, as kube-proxy's nftables mode spreads a Service; the replies are rewritten back.
        case dnat
        /// A proxy on the balancer (nginx's stream module): the virtual address is on the balancer's loopback.
        case proxy
        /// Direct server return: the virtual address is on each backend's loopback; the balancer only forwards
        /// (an equal-cost route over both backends, hashed on ports), and the replies go straight to the client.
        case directServerReturn
    }

    static var available: Bool {
        TestNetwork.available && FileManager.default.isExecutableFile(atPath: "/usr/sbin/nft")
    }

    static let virtualAddress = "198.51.100.200"
    static let port = 7000
    let client: String
    let balancer: String
    let backends: [String]
    let backendAddresses = ["198.51.100.2", "198.51.100.18"]
    /// The balancer's address on each backend's link: the source a proxy's datagrams have at the backend.
    let balancerBackendSide = ["198.51.100.1", "198.51.100.17"]

    init(_ kind: Kind) async throws {
        let id = uniqueHostID()
        self.client = "udpecho-bc-\(id)"
        self.balancer = "udpecho-bl-\(id)"
        self.backends = ["udpecho-ba-\(id)", "udpecho-bb-\(id)"]
        let (c, l, a, b) = (self.client, self.balancer, self.backends[0], self.backends[1])
        let clientLink = "ubc\(id)"
        let balancerClientLink = "ublc\(id)"
        let balancerLinks = ["ubla\(id)", "ublb\(id)"]
        let backendLinks = ["uba\(id)", "ubb\(id)"]
        var commands: [[String]] = [
            ["netns", "add", c], ["netns", "add", l], ["netns", "add", a], ["netns", "add", b],
            ["link", "add", clientLink, "type", "veth", "peer", "name", balancerClientLink],
            ["link", "set", clientLink, "netns", c], ["link", "set", balancerClientLink, "netns", l],
            ["-n", c, "addr", "add", "192.0.2.2/24", "dev", clientLink],
            ["-n", l, "addr", "add", "192.0.2.1/24", "dev", balancerClientLink],
            ["-n", c, "link", "set", clientLink, "up"], ["-n", l, "link", "set", balancerClientLink, "up"],
        ]
        for index in 0..<2 {
            let backend = self.backends[index]
            commands += [
                ["link", "add", balancerLinks[index], "type", "veth", "peer", "name", backendLinks[index]],
                ["link", "set", balancerLinks[index], "netns", l],
                ["link", "set", backendLinks[index], "netns", backend],
                ["-n", l, "addr", "add", "\(self.balancerBackendSide[index])/28", "dev", balancerLinks[index]],
                ["-n", backend, "addr", "add", "\(self.backendAddresses[index])/28", "dev", backendLinks[index]],
                ["-n", l, "link", "set", balancerLinks[index], "up"],
                ["-n", backend, "link", "set", backendLinks[index], "up"],
                ["-n", backend, "route", "add", "default", "via", self.balancerBackendSide[index]],
            ]
        }
        for namespace in self.namespaces { commands.append(["-n", namespace, "link", "set", "lo", "up"]) }
        commands += [
            ["-n", c, "route", "add", "default", "via", "192.0.2.1"],
            ["netns", "exec", l, "sysctl", "-qw", "net.ipv4.ip_forward=1"],
        ]
        switch kind {
        case .dnat:
            break
        case .proxy:
            commands.append(["-n", l, "addr", "add", "\(Self.virtualAddress)/32", "dev", "lo"])
        case .directServerReturn:
            for backend in self.backends {
                commands += [
                    ["-n", backend, "addr", "add", "\(Self.virtualAddress)/32", "dev", "lo"],
                    // The backends must not answer ARP for the virtual address on their links.
                    ["netns", "exec", backend, "sysctl", "-qw", "net.ipv4.conf.all.arp_ignore=1"],
                ]
            }
            commands += [
                [
                    "-n", l, "route", "add", "\(Self.virtualAddress)/32",
                    "nexthop", "via", self.backendAddresses[0], "nexthop", "via", self.backendAddresses[1],
                ],
                // Flows spread by their ports too (layer 4 hash), not only by addresses.
                ["netns", "exec", l, "sysctl", "-qw", "net.ipv4.fib_multipath_hash_policy=1"],
            ]
        }
        try await setUp(commands, namespaces: self.namespaces)
    }

    var namespaces: [String] { [self.client, self.balancer] + self.backends }

    /// Runs `arguments` in `namespace` to completion, with `input` on standard input.
    func run(
        in namespace: String,
        _ arguments: [String],
        input: [UInt8] = [],
        timeout: TimeInterval = 20
    ) async throws -> (status: Int32, lines: [String], error: String) {
        let result = try await Spawned.run(
            TestNetwork.ip,
            ["netns", "exec", namespace] + arguments,
            input: input,
            timeout: timeout
        )
        return (result.status, result.lines, result.error)
    }

    /// Loads an nftables ruleset (or a batch of changes, applied at once) on the balancer.
    func nftOnBalancer(_ ruleset: String) async throws {
        let result = try await self.run(in: self.balancer, ["nft", "-f", "-"], input: Array(ruleset.utf8))
        if result.status != 0 { throw SetupError(description: "nft -f: \(result.error)") }
    }

    /// Starts `udpecho server` on every backend, on every address at ``port``, printing a line for every datagram.
    func startServers() async throws -> [Spawned] {
        var servers: [Spawned] = []
        for backend in self.backends {
            let (server, _) = try await startServer(
                ["--address", ":\(Self.port)", "--lines-per-second", "0"],
                inNamespace: backend
            )
            servers.append(server)
        }
        return servers
    }

    /// Starts the balancing client in the client's namespace (see ``pythonBalancedClient``).
    func startClient(flows: Int, count: Int, interval: Double, wait: Double = 10) throws -> Spawned {
        try Spawned(
            TestNetwork.ip,
            [
                "netns", "exec", self.client, "python3", "-c", pythonBalancedClient, Self.virtualAddress,
                "\(Self.port)", "\(flows)", "\(count)", "\(interval)", "\(wait)",
            ]
        )
    }
}

/// A client of a balanced service: `COUNT` datagrams to HOST:PORT, one every INTERVAL seconds, in turn from FLOWS
/// source ports (each a flow a balancer may send to another backend), each datagram carrying its number. Waits for
/// the service first (one datagram a tenth of a second until one is answered from HOST:PORT, up to WAIT seconds,
/// default 10; past that it prints a JSON object with `error` and `foreign` and exits 1), prints `progress N` every
/// 50 datagrams, and at the end one JSON object: `sent` ([number, source port, time sent]), `replies` (number -> the
/// address it came from) and `foreign` (replies from any other address than HOST:PORT). The sockets are not connected,
/// so that a reply from another address is seen rather than filtered out by the kernel.
let pythonBalancedClient = """
    import json, select, socket, sys, time
    host, port, flows, count, interval = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), \\
        float(sys.argv[5])
    wait = float(sys.argv[6]) if len(sys.argv) > 6 else 10
    sockets = []
    for _ in range(flows):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind(("0.0.0.0", 0))
        s.setblocking(False)
        sockets.append(s)
    replies, foreign = {}, []
    def drain(until):
        while True:
            left = until - time.time()
            ready, _, _ = select.select(sockets, [], [], max(left, 0))
            for s in ready:
                while True:
                    try:
                        data, source = s.recvfrom(2048)
                    except (BlockingIOError, ConnectionRefusedError):
                        break
                    text = data.decode(errors="replace")
                    if source != (host, port):
                        foreign.append([text, "%s:%d" % source])
                    elif text.startswith("probe "):
                        replies[int(text.split()[1])] = "%s:%d" % source
                    else:
                        replies.setdefault("ready", text)
            if left <= 0:
                return
    waiter = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    waiter.settimeout(0.1)
    for _ in range(int(wait * 10)):
        waiter.sendto(b"ready?", (host, port))
        try:
            data, source = waiter.recvfrom(2048)
            if source == (host, port):
                break
            foreign.append([data.decode(errors="replace"), "%s:%d" % source])
        except socket.timeout:
            pass
    else:
        print(json.dumps({"error": "the service did not answer in %g s" % wait, "foreign": foreign}), flush=True)
        sys.exit(1)
    waiter.close()
    sent = []
    start = time.time()
    for number in range(count):
        s = sockets[number % flows]
        now = time.time()
        s.sendto(b"probe %d " % number + b"x" * 32, (host, port))
        sent.append([number, s.getsockname()[1], now])
        if (number + 1) % 50 == 0:
            print("progress", number + 1, flush=True)
        drain(start + (number + 1) * interval)
    drain(time.time() + 1.0)
    print(json.dumps({"sent": sent, "replies": replies, "foreign": foreign}), flush=True)
    """

/// What the balancing client printed at its end.
struct BalancedRun {
    /// Number, source port and time sent (seconds since 1970) of each datagram.
    var sent: [(number: Int, port: Int, time: Double)]
    /// Number -> the address its reply came from.
    var replies: [Int: String]
    /// Replies from another address than the one the datagram was sent to.
    var foreign: [String]
    /// Why the client gave up, if it did.
    var error: String?

    init(_ client: Spawned) throws {
        let line = try #require(client.outputLines.last, "the client printed nothing: \(client.errorText)")
        let object = try #require(
            try JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any],
            "not JSON: \(line)"
        )
        self.error = object["error"] as? String
        self.sent = (object["sent"] as? [[Any]] ?? []).map {
            (($0[0] as? Int) ?? -1, ($0[1] as? Int) ?? -1, ($0[2] as? Double) ?? 0)
        }
        var replies: [Int: String] = [:]
        for (key, value) in object["replies"] as? [String: String] ?? [:] {
            if let number = Int(key) { replies[number] = value }
        }
        self.replies = replies
        self.foreign = (object["foreign"] as? [[String]] ?? []).map { $0.joined(separator: " from ") }
    }

    var lost: [(number: Int, port: Int, time: Double)] { self.sent.filter { self.replies[$0.number] == nil } }
}

/// The client ports (or addresses) a backend's `packet-received` lines name.
func receivedFrom(_ server: Spawned, addressOnly: Bool = false) -> Set<String> {
    Set(
        server.outputLines.compactMap { line -> String? in
            guard line.hasPrefix("packet-received:"), let from = line.firstMatch(of: /from=(\S+):(\d+)/) else {
                return nil
            }
            return addressOnly ? String(from.1) : String(from.2)
        }
    )
}

/// The article's Go server and client (`../shared/bench/ref/go-seed`), built once into `.build/peers/go-seed` when Go
/// and the source are there: a server that replies with `WriteTo` from a socket bound to every address, so the
/// kernel picks the reply's source address by route.
let goSeed: String? = {
    let source = packageRoot.appendingPathComponent("../shared/bench/ref/go-seed").standardized.path
    let binary = packageRoot.appendingPathComponent(".build/peers/go-seed").path
    guard FileManager.default.fileExists(atPath: source + "/main.go"),
        FileManager.default.isExecutableFile(atPath: "/usr/bin/go")
    else { return nil }
    let cache = packageRoot.appendingPathComponent(".build/peers/go-cache").path
    let build = Process()
    build.executableURL = URL(fileURLWithPath: "/usr/bin/env")
    build.arguments = [
        "GO111MODULE=on", "GOFLAGS=", "GOPROXY=off", "GOTOOLCHAIN=local", "GOCACHE=\(cache)/build",
        "GOPATH=\(cache)/path", "go", "build", "-o", binary, ".",
    ]
    build.currentDirectoryURL = URL(fileURLWithPath: source)
    guard (try? build.run()) != nil else { return nil }
    build.waitUntilExit()
    return build.terminationStatus == 0 ? binary : nil
}()

/// udpecho behind the three ways a UDP service is spread over machines, each built in network namespaces.
@Suite(.serialized) struct BalancerTests {
    /// nftables DNAT spreads the virtual address over two backends, one flow (source port) per backend in turn.
    /// Every reply comes from the virtual address; both backends serve. Backend A is then stopped mid-run, and the
    /// balancer does what kube-proxy does when an endpoint goes: A leaves the map and its flows' conntrack entries are
    /// deleted. Only datagrams of A's flows sent between the stop and the removal are lost; A's flows are served by
    /// B afterwards.
    @Test(.enabled(if: BalancedHosts.available && conntrackAvailable, "needs root, ip, nft and conntrack"))
    func nftablesDNATSpreadsAndLosesOnlyWhatWasInFlightToAStoppedBackend() async throws {
        try await withHosts(try await BalancedHosts(.dnat)) { hosts in
            let servers = try await hosts.startServers()
            defer { for server in servers { server.signal(SIGKILL) } }
            try await hosts.nftOnBalancer(
                """
                table ip udpecho_balancer {
                  map backends {
                    typeof numgen inc mod 2 : ip daddr
                    elements = { 0 : \(hosts.backendAddresses[0]), 1 : \(hosts.backendAddresses[1]) }
                  }
                  chain prerouting {
                    type nat hook prerouting priority dstnat; policy accept;
                    ip daddr \(BalancedHosts.virtualAddress) udp dport \(BalancedHosts.port) \
                dnat to numgen inc mod 2 map @backends
                  }
                }
                """
            )
            let client = try hosts.startClient(flows: 8, count: 600, interval: 0.005)
            let midway = await client.waitForLine(timeout: 20) { $0 == "progress 200" }
            try #require(midway != nil, "the client did not get going: \(client.outputLines) \(client.errorText)")

            let stopped = Date().timeIntervalSince1970
            servers[0].signal(SIGTERM)
            #expect(await servers[0].waitForExit() == 0)
            try await hosts.nftOnBalancer(
                """
                delete element ip udpecho_balancer backends { 0 }
                add element ip udpecho_balancer backends { 0 : \(hosts.backendAddresses[1]) }
                """
            )
            let flush = try await hosts.run(
                in: hosts.balancer,
                ["conntrack", "-D", "-p", "udp", "--reply-src", hosts.backendAddresses[0]]
            )
            #expect(flush.error.contains("flow entries have been deleted"), "\(flush.error)")
            let removed = Date().timeIntervalSince1970

            #expect(await client.waitForExit(timeout: 30) == 0, "\(client.errorText)")
            let run = try BalancedRun(client)
            #expect(run.error == nil, "\(run.error ?? "")")
            #expect(run.sent.count == 600)
            #expect(run.foreign.isEmpty, "replies from elsewhere than the virtual address: \(run.foreign.prefix(5))")
            #expect(Set(run.replies.values) == ["\(BalancedHosts.virtualAddress):\(BalancedHosts.port)"])

            let portsOfA = receivedFrom(servers[0])
            let portsOfB = receivedFrom(servers[1])
            let flowPorts = Set(run.sent.map { String($0.port) })
            // One flow in two each (the client's first datagram, from another port, waited for the service).
            #expect(portsOfA.intersection(flowPorts).count == 4, "A served \(portsOfA)")
            #expect(flowPorts.subtracting(portsOfA).isSubset(of: portsOfB), "B served \(portsOfB)")

            // Every datagram lost was on one of A's flows, sent between the stop (less the time one might wait in
            // A's socket) and the removal.
            let lost = run.lost
            for datagram in lost {
                #expect(portsOfA.contains(String(datagram.port)), "lost \(datagram.number) on B's flow")
                #expect(
                    datagram.time > stopped - 0.25 && datagram.time < removed + 0.25,
                    "lost \(datagram.number), sent \(datagram.time - stopped) s after the stop"
                )
            }
            // A's flows went on, served by B.
            let afterRemoval = run.sent.filter { $0.time > removed + 0.25 && portsOfA.contains(String($0.port)) }
            #expect(afterRemoval.count > 50)
            #expect(afterRemoval.allSatisfy { run.replies[$0.number] != nil })
            #expect(lost.count < 100, "\(lost.count) lost")
        }
    }

    /// nginx's stream module proxies the virtual address to two backends (`listen ... udp`, one response each):
    /// every datagram is answered from the virtual address, both backends serve, and they see nginx, not the client.
    @Test(
        .enabled(
            if: BalancedHosts.available && nginxStreamAvailable,
            "needs root, ip, nft, nginx and its stream module"
        )
    )
    func nginxStreamModuleProxiesToTwoBackends() async throws {
        try await withHosts(try await BalancedHosts(.proxy)) { hosts in
            let servers = try await hosts.startServers()
            defer { for server in servers { server.signal(SIGKILL) } }
            let directory = FileManager.default.temporaryDirectory.appendingPathComponent("udpecho-nginx-\(getpid())")
            try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
            defer { try? FileManager.default.removeItem(at: directory) }
            let configuration = directory.appendingPathComponent("nginx.conf")
            try nginxConfiguration(
                backends: hosts.backendAddresses.map { "\($0):\(BalancedHosts.port)" },
                pidFile: directory.appendingPathComponent("nginx.pid").path
            ).write(to: configuration, atomically: true, encoding: .utf8)
            let nginx = try Spawned(
                TestNetwork.ip,
                [
                    "netns", "exec", hosts.balancer, nginxPath, "-e", "stderr", "-p", directory.path, "-c",
                    configuration.path, "-g", "daemon off;",
                ]
            )
            defer {
                nginx.signal(SIGQUIT)
            }

            let client = try hosts.startClient(flows: 8, count: 200, interval: 0.005)
            #expect(await client.waitForExit(timeout: 30) == 0, "\(client.errorText) \(nginx.errorText)")
            let run = try BalancedRun(client)
            #expect(run.error == nil, "\(run.error ?? "")")
            #expect(run.sent.count == 200)
            #expect(run.lost.isEmpty, "\(run.lost.count) lost; nginx: \(nginx.errorText)")
            #expect(run.foreign.isEmpty, "\(run.foreign.prefix(5))")
            #expect(Set(run.replies.values) == ["\(BalancedHosts.virtualAddress):\(BalancedHosts.port)"])
            // Both served, and saw the balancer's own address on their link, as a proxy's backends do.
            #expect(receivedFrom(servers[0], addressOnly: true) == [hosts.balancerBackendSide[0]])
            #expect(receivedFrom(servers[1], addressOnly: true) == [hosts.balancerBackendSide[1]])
            nginx.signal(SIGQUIT)
            #expect(await nginx.waitForExit() == 0, "\(nginx.errorText)")
        }
    }

    /// Direct server return: the virtual address on each backend's loopback, the balancer only forwarding (an
    /// equal-cost route). udpecho, listening on every address, replies from the address each datagram came to,
    /// so every reply comes from the virtual address, both backends serve, and connected clients (udpecho's and the
    /// article's) get their echo. Servers that reply from a socket bound to every address without saying the source
    /// (socat, and the article's Go server where Go is there) answer from the backend's own address: a connected
    /// client never gets that reply.
    @Test(.enabled(if: BalancedHosts.available, "needs root, ip and nft"))
    func directServerReturnNeedsRepliesFromTheVirtualAddress() async throws {
        try await withHosts(try await BalancedHosts(.directServerReturn)) { hosts in
            let servers = try await hosts.startServers()
            let client = try hosts.startClient(flows: 16, count: 160, interval: 0.005)
            #expect(await client.waitForExit(timeout: 30) == 0, "\(client.errorText)")
            let run = try BalancedRun(client)
            #expect(run.error == nil, "\(run.error ?? "")")
            #expect(run.lost.isEmpty, "\(run.lost.count) lost")
            #expect(run.foreign.isEmpty, "\(run.foreign.prefix(5))")
            #expect(Set(run.replies.values) == ["\(BalancedHosts.virtualAddress):\(BalancedHosts.port)"])
            #expect(!receivedFrom(servers[0]).isEmpty && !receivedFrom(servers[1]).isEmpty, "one backend served all")

            let target = "\(BalancedHosts.virtualAddress):\(BalancedHosts.port)"
            let ours = try await hosts.run(
                in: hosts.client,
                [udpecho, "client", "--address", target, "--timeout", "2s"],
                input: Array("through DSR\n".utf8)
            )
            #expect(ours.status == 0, "\(ours.lines) \(ours.error)")
            #expect(ours.lines.contains { $0.hasPrefix("packet-received:") && $0.contains(target) }, "\(ours.lines)")
            if let goSeed {
                let article = try await hosts.run(
                    in: hosts.client,
                    [goSeed, "-client", "-address", target, "-timeout", "2s"],
                    input: Array("through DSR\n".utf8)
                )
                #expect(article.status == 0, "\(article.lines) \(article.error)")
                #expect(article.lines.contains { $0.hasPrefix("packet-received:") }, "\(article.lines)")
            }
            for server in servers {
                server.signal(SIGTERM)
                #expect(await server.waitForExit() == 0)
            }

            // Servers without the reply source.
            var others: [(name: String, arguments: [String])] = [
                ("socat", ["socat", "UDP4-RECVFROM:\(BalancedHosts.port),fork", "EXEC:cat"])
            ]
            if let goSeed {
                others.append(("the article's Go server", [goSeed, "-address", ":\(BalancedHosts.port)", "-quiet"]))
            }
            for other in others {
                let started = try hosts.backends.map { backend in
                    try Spawned(TestNetwork.ip, ["netns", "exec", backend] + other.arguments)
                }
                defer { for server in started { server.signal(SIGKILL) } }
                try await Task.sleep(for: .milliseconds(300))
                let blind = try hosts.startClient(flows: 4, count: 8, interval: 0.01, wait: 2)
                #expect(await blind.waitForExit(timeout: 30) == 1)
                // Every answer comes from a backend's own address: the client never sees the service answer.
                let failed = try BalancedRun(blind)
                #expect(failed.error?.contains("did not answer") == true, "\(other.name): \(blind.outputLines)")
                #expect(!failed.foreign.isEmpty, "\(other.name): no answer at all")
                #expect(
                    failed.foreign.allSatisfy { answer in
                        hosts.backendAddresses.contains { answer.hasSuffix(" from \($0):\(BalancedHosts.port)") }
                    },
                    "\(other.name): \(failed.foreign)"
                )
                let connected = try await hosts.run(
                    in: hosts.client,
                    [udpecho, "client", "--address", target, "--timeout", "1s"],
                    input: Array("through DSR\n".utf8)
                )
                #expect(connected.status != 0, "\(other.name): \(connected.lines)")
                #expect(connected.error.contains("no reply"), "\(other.name): \(connected.error)")
                if let goSeed {
                    let article = try await hosts.run(
                        in: hosts.client,
                        [goSeed, "-client", "-address", target, "-timeout", "1s"],
                        input: Array("through DSR\n".utf8)
                    )
                    #expect(article.status == 1 && article.error.contains("i/o timeout"), "\(other.name): \(article)")
                }
            }
        }
    }
}

let conntrackAvailable = FileManager.default.isExecutableFile(atPath: "/usr/sbin/conntrack")
let nginxPath = "/usr/sbin/nginx"
let nginxStreamModule = "/usr/lib/nginx/modules/ngx_stream_module.so"
let nginxStreamAvailable =
    FileManager.default.isExecutableFile(atPath: nginxPath) && FileManager.default.fileExists(atPath: nginxStreamModule)

/// nginx in front of `backends`: UDP on the virtual address, one response per datagram (an echo), round robin.
func nginxConfiguration(backends: [String], pidFile: String) -> String {
    """
    load_module \(nginxStreamModule);
    worker_processes 1;
    pid \(pidFile);
    error_log stderr notice;
    events { worker_connections 1024; }
    stream {
        upstream udpecho {
    \(backends.map { "        server \($0);" }.joined(separator: "\n"))
        }
        server {
            listen \(BalancedHosts.virtualAddress):\(BalancedHosts.port) udp;
            proxy_pass udpecho;
            proxy_responses 1;
            proxy_timeout 2s;
        }
    }
    """
}
