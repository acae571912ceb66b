import Foundation
import TestSupport
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// A small fleet of our own: four hosts and a Prometheus host, network namespaces on one bridge (itself in a
/// namespace of its own), documentation addresses 192.0.2.1-4 and .10 only inside them.
struct Fleet: NamespaceHosts {
    static var available: Bool {
        TestNetwork.available && FileManager.default.isExecutableFile(atPath: "/usr/sbin/nft")
            && FileManager.default.isExecutableFile(atPath: "/usr/bin/prometheus")
    }

    let switchName: String
    let hosts: [String]
    let monitor: String
    var namespaces: [String] { [self.switchName, self.monitor] + self.hosts }
    func address(_ host: Int) -> String { "192.0.2.\(host + 1)" }
    let monitorAddress = "192.0.2.10"

    init() async throws {
        let id = uniqueHostID()
        self.switchName = "udpecho-fs-\(id)"
        self.hosts = (0..<4).map { "udpecho-f\($0)-\(id)" }
        self.monitor = "udpecho-fp-\(id)"
        var commands: [[String]] = [
            ["netns", "add", self.switchName],
            ["-n", self.switchName, "link", "add", "br0", "type", "bridge"],
            ["-n", self.switchName, "link", "set", "br0", "up"],
        ]
        let members = self.hosts.enumerated().map { ($1, "192.0.2.\($0 + 1)") } + [(self.monitor, "192.0.2.10")]
        for (index, (namespace, address)) in members.enumerated() {
            let host = "ufh\(index)\(id)"
            let port = "ufb\(index)\(id)"
            commands += [
                ["netns", "add", namespace],
                ["link", "add", host, "type", "veth", "peer", "name", port],
                ["link", "set", host, "netns", namespace],
                ["link", "set", port, "netns", self.switchName],
                ["-n", self.switchName, "link", "set", port, "master", "br0"],
                ["-n", self.switchName, "link", "set", port, "up"],
                ["-n", namespace, "addr", "add", "\(address)/24", "dev", host],
                ["-n", namespace, "link", "set", host, "up"],
                ["-n", namespace, "link", "set", "lo", "up"],
            ]
        }
        try await setUp(commands, namespaces: [self.switchName, self.monitor] + self.hosts)
    }

    /// Runs `arguments` in `namespace` to completion.
    func run(
        in namespace: String,
        _ arguments: [String]
    ) async throws -> (status: Int32, output: Data, lines: [String], error: String) {
        try await Spawned.run(TestNetwork.ip, ["netns", "exec", namespace] + arguments)
    }

    /// A PromQL query against the Prometheus host: the result vector's metrics and values.
    func query(_ promql: String) async throws -> [(labels: [String: String], value: Double)] {
        let script = """
            import json, sys, urllib.parse, urllib.request
            url = "http://%s:9090/api/v1/query?%s" % (sys.argv[1], urllib.parse.urlencode({"query": sys.argv[2]}))
            print(json.dumps(json.load(urllib.request.urlopen(url, timeout=5))))
            """
        let result = try await self.run(in: self.monitor, ["python3", "-c", script, self.monitorAddress, promql])
        guard result.status == 0,
            let object = try JSONSerialization.jsonObject(with: result.output) as? [String: Any],
            let data = object["data"] as? [String: Any], let vector = data["result"] as? [[String: Any]]
        else { throw SetupError(description: "query \(promql): \(result.error)") }
        return vector.compactMap { sample in
            guard let labels = sample["metric"] as? [String: String], let value = sample["value"] as? [Any],
                let text = value.last as? String, let number = Double(text)
            else { return nil }
            return (labels, number)
        }
    }
}

/// The mesh as its users run it: an agent on each host of a fleet, Prometheus scraping them all, and one host whose
/// link loses packets.
@Suite(.serialized) struct MeshFleetTests {
    /// nftables drops 30% of the UDP packets that reach the fourth host (the probes to it and the replies to its
    /// own). Prometheus, asked through its HTTP API, finds loss on exactly the six pairs that involve that host,
    /// none on the other six, and the shipped loss alert (its windows shortened from minutes to seconds for the
    /// test) firing for those six only.
    @Test(.enabled(if: Fleet.available, "needs root, ip, nft and prometheus (Debian: prometheus)"))
    func prometheusFindsTheLossyHost() async throws {
        try await withHosts(try await Fleet()) { fleet in
            let lossy = 3
            let rule = try await fleet.run(
                in: fleet.hosts[lossy],
                [
                    "nft",
                    "add table inet loss; add chain inet loss in { type filter hook input priority 0; }; "
                        + "add rule inet loss in meta l4proto udp numgen random mod 10 < 3 drop",
                ]
            )
            #expect(rule.status == 0, "\(rule.error)")
            var agents: [Spawned] = []
            for host in 0..<4 {
                let peers = (0..<4).filter { $0 != host }.flatMap { ["--peer", "\(fleet.address($0)):1337"] }
                agents.append(
                    try Spawned(
                        TestNetwork.ip,
                        [
                            "netns", "exec", fleet.hosts[host], udpecho, "mesh", "--address",
                            "\(fleet.address(host)):1337",
                            "--metrics", "\(fleet.address(host)):9337", "-i", "100ms", "-W", "500ms", "--flows", "4",
                        ] + peers
                    )
                )
            }
            // Prometheus with the shipped rules, their windows shortened: [5m] -> [10s], for: Nm -> for: 5s.
            let directory = FileManager.default.temporaryDirectory.appendingPathComponent(
                "udpecho-prom-\(uniqueHostID())"
            )
            try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
            defer { try? FileManager.default.removeItem(at: directory) }
            let shipped = try String(
                contentsOf: packageRoot.appendingPathComponent("contrib/prometheus/udpecho-mesh.rules.yml"),
                encoding: .utf8
            )
            let rules = shipped.replacingOccurrences(of: "[5m]", with: "[10s]")
                .replacing(/for: \d+m/, with: "for: 5s")
            try rules.write(to: directory.appendingPathComponent("rules.yml"), atomically: true, encoding: .utf8)
            let targets = (0..<4).map { "'\(fleet.address($0)):9337'" }.joined(separator: ", ")
            try """
            global: {scrape_interval: 1s, evaluation_interval: 1s}
            rule_files: [rules.yml]
            scrape_configs:
              - job_name: udpecho-mesh
                static_configs: [{targets: [\(targets)]}]
            """.write(to: directory.appendingPathComponent("prometheus.yml"), atomically: true, encoding: .utf8)
            let prometheus = try Spawned(
                TestNetwork.ip,
                [
                    "netns", "exec", fleet.monitor, "/usr/bin/prometheus",
                    "--config.file=\(directory.path)/prometheus.yml",
                    "--storage.tsdb.path=\(directory.path)/data",
                    "--web.listen-address=\(fleet.monitorAddress):9090",
                ]
            )
            defer {
                prometheus.signal(SIGTERM)
                for agent in agents { agent.signal(SIGTERM) }
            }
            // A pair is (the agent that probed, the peer it probed).
            func pair(_ labels: [String: String]) -> String {
                "\(labels["instance"]?.split(separator: ":").first ?? "?")->\(labels["peer"]?.split(separator: ":").first ?? "?")"
            }
            let involved = Set(
                (0..<4).filter { $0 != lossy }.flatMap {
                    ["\(fleet.address($0))->\(fleet.address(lossy))", "\(fleet.address(lossy))->\(fleet.address($0))"]
                }
            )
            var lossyPairs: Set<String> = []
            var cleanPairs: Set<String> = []
            var firing: Set<String> = []
            for _ in 0..<60 {
                try await Task.sleep(for: .seconds(1))
                guard let ratios = try? await fleet.query("udpecho_mesh:loss_ratio:rate5m") else { continue }
                lossyPairs = Set(ratios.filter { $0.value > 0.05 }.map { pair($0.labels) })
                cleanPairs = Set(ratios.filter { $0.value == 0 }.map { pair($0.labels) })
                let alerts =
                    (try? await fleet.query("ALERTS{alertname=\"UdpechoMeshPairLoss\",alertstate=\"firing\"}")) ?? []
                firing = Set(alerts.map { pair($0.labels) })
                if lossyPairs == involved && cleanPairs.count == 6 && firing == involved { break }
            }
            #expect(lossyPairs == involved, "loss on \(lossyPairs.sorted())")
            #expect(cleanPairs.count == 6 && cleanPairs.isDisjoint(with: involved), "none on \(cleanPairs.sorted())")
            #expect(firing == involved, "firing for \(firing.sorted())")
            prometheus.signal(SIGTERM)
            for agent in agents { agent.signal(SIGTERM) }
            #expect(await prometheus.waitForExit() == 0)
            for agent in agents { #expect(await agent.waitForExit() == 0) }
        }
    }
}
