import Foundation
import TestSupport
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// Python's HTTP client inside a test host: GET of argv[1], the body printed (Prometheus' API, the exporter).
let pythonGet = """
    import sys, urllib.request
    try:
        with urllib.request.urlopen(sys.argv[1], timeout=10) as r:
            print(r.read().decode())
    except urllib.error.HTTPError as e:
        print(e.code, e.read().decode())
    """

/// Runs `arguments` inside the test host `namespace` and returns its standard output.
func inHost(_ namespace: String, _ arguments: [String], timeout: TimeInterval = 30) async throws -> String {
    let result = try await Spawned.run(TestNetwork.ip, ["netns", "exec", namespace] + arguments, timeout: timeout)
    return String(decoding: result.output, as: UTF8.self)
}

/// A directory of the test's own, removed afterwards.
func withDirectory<Result>(_ body: (String) async throws -> Result) async throws -> Result {
    let directory = NSTemporaryDirectory() + "udpecho-\(uniqueHostID())-\(UInt32.random(in: 0...UInt32.max))"
    try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
    defer { try? FileManager.default.removeItem(atPath: directory) }
    return try await body(directory)
}

@Suite struct ExporterCommandTests {
    static var prometheus: Bool { FileManager.default.isExecutableFile(atPath: "/usr/bin/prometheus") }

    static let configuration = """
        modules:
          echo:
            protocol: echo
            count: 20
            interval: 10ms
            timeout: 300ms
          stamp:
            protocol: stamp
            count: 20
            interval: 10ms
            timeout: 300ms
          twamp:
            protocol: twamp
            count: 20
            interval: 10ms
            timeout: 300ms
        allow:
          - 127.0.0.0/8
        """

    /// Debian's Prometheus scrapes three targets of three protocols through the exporter with blackbox_exporter's
    /// relabelling recipe; the STAMP reflector's host drops about 30 % of what reaches it. Prometheus' own API must
    /// show loss on exactly that target, no more than the firewall dropped, and none on the two others.
    @Test(
        .enabled(if: FirewalledHost.available && prometheus, "needs root, ip, nft and Prometheus (Debian: prometheus)")
    )
    func prometheusSeesLossOnExactlyTheLossyTarget() async throws {
        try await withHosts(try await FirewalledHost()) { host in
            try await withDirectory { directory in
                let config = directory + "/exporter.yml"
                try Self.configuration.write(toFile: config, atomically: true, encoding: .utf8)
                let (echo, _) = try await startServer(["--address", "127.0.0.1:7007", "-q"], inNamespace: host.name)
                let (stamp, _) = try await startServer(
                    ["--protocol", "stamp", "--address", "127.0.0.2:862", "-q"],
                    inNamespace: host.name
                )
                let (twamp, _) = try await startServer(
                    ["--protocol", "twamp", "--address", "127.0.0.3:862", "-q"],
                    inNamespace: host.name
                )
                defer { for server in [echo, stamp, twamp] { server.signal(SIGTERM) } }
                let drop = try await Spawned.run(
                    TestNetwork.ip,
                    [
                        "netns", "exec", host.name, "nft", "add", "rule", "inet", "udpecho", "in", "ip", "daddr",
                        "127.0.0.2", "udp", "dport", "862", "numgen", "random", "mod", "10", "<", "3", "counter",
                        "drop",
                    ]
                )
                #expect(drop.status == 0, "\(drop.error)")
                let exporter = try Spawned(
                    TestNetwork.ip,
                    ["netns", "exec", host.name, udpecho, "exporter", "--config", config, "--listen", "127.0.0.1:9338"]
                )
                defer { exporter.signal(SIGTERM) }
                #expect(
                    await exporter.waitForLine { $0.contains("udpecho exporter on") } != nil,
                    "\(exporter.errorText)"
                )
                // blackbox_exporter's recipe: the target becomes the `target` parameter and the instance label, the
                // exporter the address scraped; the module is a label of each target group (`__param_module`).
                let prometheusConfig = """
                    global:
                      scrape_interval: 2s
                      scrape_timeout: 2s
                    scrape_configs:
                      - job_name: udpecho
                        metrics_path: /probe
                        static_configs:
                          - targets: ['127.0.0.1:7007']
                            labels: {__param_module: echo}
                          - targets: ['127.0.0.2:862']
                            labels: {__param_module: stamp}
                          - targets: ['127.0.0.3']
                            labels: {__param_module: twamp}
                        relabel_configs:
                          - source_labels: [__address__]
                            target_label: __param_target
                          - source_labels: [__param_target]
                            target_label: instance
                          - target_label: __address__
                            replacement: 127.0.0.1:9338
                    """
                try prometheusConfig.write(toFile: directory + "/prometheus.yml", atomically: true, encoding: .utf8)
                let check = try await Spawned.run(
                    "/usr/bin/promtool",
                    ["check", "config", directory + "/prometheus.yml"]
                )
                #expect(check.status == 0, "\(check.lines) \(check.error)")
                let prometheus = try Spawned(
                    TestNetwork.ip,
                    [
                        "netns", "exec", host.name, "/usr/bin/prometheus",
                        "--config.file=\(directory)/prometheus.yml", "--storage.tsdb.path=\(directory)/data",
                        "--web.listen-address=127.0.0.1:9090", "--log.level=warn",
                    ]
                )
                defer { prometheus.signal(SIGTERM) }
                let api = "http://127.0.0.1:9090/api/v1/query?query="
                func query(_ expression: String) async throws -> [String: Double] {
                    let encoded = expression.addingPercentEncoding(withAllowedCharacters: .alphanumerics) ?? ""
                    let text = try await inHost(host.name, ["python3", "-c", pythonGet, api + encoded])
                    guard let data = text.data(using: .utf8),
                        let object = try? JSONSerialization.jsonObject(with: data) as? [String: Any],
                        let result = (object["data"] as? [String: Any])?["result"] as? [[String: Any]]
                    else { return [:] }
                    var values: [String: Double] = [:]
                    for series in result {
                        let instance = (series["metric"] as? [String: String])?["instance"] ?? "?"
                        if let pair = series["value"] as? [Any], let text = pair.last as? String {
                            values[instance] = Double(text)
                        }
                    }
                    return values
                }
                // Until Prometheus holds 6 successful probes of each target (a minute and a half at most).
                var successes: [String: Double] = [:]
                let deadline = ContinuousClock.now + .seconds(90)
                while ContinuousClock.now < deadline {
                    successes = try await query("sum_over_time(probe_success[5m])")
                    if successes.count == 3 && successes.values.allSatisfy({ $0 >= 6 }) { break }
                    try await Task.sleep(for: .seconds(1))
                }
                let instances = ["127.0.0.1:7007", "127.0.0.2:862", "127.0.0.3"]
                #expect(Set(successes.keys) == Set(instances), "\(successes) \(prometheus.errorText)")
                for instance in instances {
                    #expect((successes[instance] ?? 0) >= 6, "\(instance): \(successes)")
                }
                let sent = try await query("sum_over_time(udpecho_probe_packets_sent[5m])")
                let lost = try await query("sum_over_time(udpecho_probe_packets_lost[5m])")
                let ratio = try await query("max_over_time(udpecho_probe_loss_ratio[5m])")
                let up = try await query("min_over_time(up[5m])")
                #expect(up.count == 3 && up.values.allSatisfy { $0 == 1 }, "\(up)")
                // 20 packets a probe, every one counted.
                for instance in instances {
                    #expect((sent[instance] ?? 0) >= 120, "\(instance): \(sent)")
                }
                #expect(lost["127.0.0.1:7007"] == 0, "\(lost)")
                #expect(lost["127.0.0.3"] == 0, "\(lost)")
                let stampLost = try #require(lost["127.0.0.2:862"], "\(lost)")
                let rules = try await inHost(host.name, ["nft", "list", "chain", "inet", "udpecho", "in"])
                let dropped = try #require(
                    rules.firstMatch(of: /counter packets (\d+)/).flatMap { Int($0.1) },
                    "\(rules)"
                )
                // About 30 % of at least 120; what a probe lost was dropped by the firewall.
                #expect(stampLost >= 15 && stampLost <= Double(dropped), "lost \(stampLost), dropped \(dropped)")
                #expect((ratio["127.0.0.2:862"] ?? 0) > 0 && ratio["127.0.0.1:7007"] == 0 && ratio["127.0.0.3"] == 0)
                // The reflector's time and the one-way delays reach Prometheus for the STAMP and TWAMP targets.
                let held = try await query("udpecho_probe_reflector_time_seconds{quantile=\"0.5\"}")
                #expect(
                    held["127.0.0.2:862"] != nil && held["127.0.0.3"] != nil && held["127.0.0.1:7007"] == nil,
                    "\(held)"
                )
            }
        }
    }

    @Test func theConfigurationIsCheckedWithItsLine() async throws {
        try await withDirectory { directory in
            let good = directory + "/good.yml"
            try "modules:\n  echo:\n    protocol: echo\nallow:\n  - 192.0.2.0/24\n".write(
                toFile: good,
                atomically: true,
                encoding: .utf8
            )
            let passed = try await Spawned.run(udpecho, ["exporter", "--config", good, "--config.check"])
            #expect(passed.status == 0, "\(passed.error)")
            #expect(passed.lines == ["\(good): good: 1 modules, 1 prefixes and 0 names allowed, 0 continuous targets"])
            let bad = directory + "/bad.yml"
            try "modules:\n  echo:\n    protocol: echo\n    count: -1\n".write(
                toFile: bad,
                atomically: true,
                encoding: .utf8
            )
            let failed = try await Spawned.run(udpecho, ["exporter", "--config", bad, "--config.check"])
            #expect(failed.status == 1)
            #expect(
                failed.error.contains("\(bad): line 4: count '-1' is not a whole number from 1 to 10000"),
                "\(failed.error)"
            )
            // Started with it: a setup error, before anything listens.
            let refused = try await Spawned.run(udpecho, ["exporter", "--config", bad, "--listen", "127.0.0.1:0"])
            #expect(refused.status == 2 && refused.lines.isEmpty, "\(refused.lines)")
            let fifo = directory + "/fifo.yml"
            #expect(mkfifo(fifo, 0o600) == 0)
            let notRegular = try await Spawned.run(udpecho, ["exporter", "--config", fifo, "--config.check"])
            #expect(notRegular.status == 1 && notRegular.error.contains("is a FIFO, not a regular file"))
        }
    }

    @Test func sighupReloadsAndABadFileKeepsTheOneInForce() async throws {
        try await withDirectory { directory in
            let path = directory + "/exporter.yml"
            try "modules:\n  first:\n    protocol: echo\nallow:\n  - 127.0.0.1\n".write(
                toFile: path,
                atomically: true,
                encoding: .utf8
            )
            let exporter = try Spawned(udpecho, ["exporter", "--config", path, "--listen", "127.0.0.1:0"])
            defer { exporter.signal(SIGTERM) }
            let start = try #require(
                await exporter.waitForLine { $0.contains("udpecho exporter on") },
                "\(exporter.errorText)"
            )
            #expect(start.hasSuffix("1 modules (first)"), "\(start)")
            try "modules:\n  second:\n    protocol: stamp\n  third:\n    protocol: echo\nallow: []\n".write(
                toFile: path,
                atomically: true,
                encoding: .utf8
            )
            exporter.signal(SIGHUP)
            #expect(
                await exporter.waitForLine { $0 == "configuration reloaded: 2 modules" } != nil,
                "\(exporter.outputLines)"
            )
            try "modules:\n  - not a mapping\n".write(toFile: path, atomically: true, encoding: .utf8)
            exporter.signal(SIGHUP)
            #expect(
                await exporter.waitForError(
                    "configuration not reloaded, the one in force is kept: \(path): line 2: modules: expected a mapping"
                ),
                "\(exporter.errorText)"
            )
            exporter.signal(SIGTERM)
            #expect(await exporter.waitForExit() == 0, "\(exporter.errorText)")
        }
    }
}
