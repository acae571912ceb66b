import Foundation
import NIOCore
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

/// The result of a Prometheus instant query, asked of the server on 127.0.0.1:`port` inside the test host
/// `namespace` (Python's urllib, in the host): its series, each with `metric` and `value` (or `histogram`).
func prometheusQuery(in namespace: String, port: Int, _ expression: String) async throws -> [[String: Any]] {
    let encoded = expression.addingPercentEncoding(withAllowedCharacters: .alphanumerics) ?? ""
    let text = try await inHost(
        namespace,
        ["python3", "-c", pythonGet, "http://127.0.0.1:\(port)/api/v1/query?query=\(encoded)"]
    )
    guard let object = try? JSONSerialization.jsonObject(with: Data(text.utf8)) as? [String: Any],
        let result = (object["data"] as? [String: Any])?["result"] as? [[String: Any]]
    else { return [] }
    return result
}

@Suite struct ExporterCommandTests {
    static var prometheus: Bool { FileManager.default.isExecutableFile(atPath: "/usr/bin/prometheus") }

    // A 700 ms timeout: a loaded machine's delay is not loss; the TWAMP module (0.19 s of packets, the timeout and
    // its set-up) still fits the 2 s scrape less its 0.5 s offset.
    static let configuration = """
        modules:
          echo:
            protocol: echo
            count: 20
            interval: 10ms
            timeout: 700ms
          stamp:
            protocol: stamp
            count: 20
            interval: 10ms
            timeout: 700ms
          twamp:
            protocol: twamp
            count: 20
            interval: 10ms
            timeout: 700ms
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
                // The value of each series of `expression` by its instance.
                func query(_ expression: String) async throws -> [String: Double] {
                    var values: [String: Double] = [:]
                    for series in try await prometheusQuery(in: host.name, port: 9090, expression) {
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

/// The fields of Prometheus' `io.prometheus.client` messages that udpecho writes, by number (for protoc to decode
/// our bytes with: an independent reader of the format).
let prometheusProto = """
    syntax = "proto2";
    package io.prometheus.client;
    message LabelPair { optional string name = 1; optional string value = 2; }
    enum MetricType { COUNTER = 0; GAUGE = 1; SUMMARY = 2; UNTYPED = 3; HISTOGRAM = 4; GAUGE_HISTOGRAM = 5; }
    message Gauge { optional double value = 1; }
    message Counter { optional double value = 1; }
    message Quantile { optional double quantile = 1; optional double value = 2; }
    message Summary { optional uint64 sample_count = 1; optional double sample_sum = 2; repeated Quantile quantile = 3; }
    message Untyped { optional double value = 1; }
    message Bucket { optional uint64 cumulative_count = 1; optional double upper_bound = 2; }
    message BucketSpan { optional sint32 offset = 1; optional uint32 length = 2; }
    message Histogram {
      optional uint64 sample_count = 1; optional double sample_sum = 2; repeated Bucket bucket = 3;
      optional sint32 schema = 5; optional double zero_threshold = 6; optional uint64 zero_count = 7;
      repeated BucketSpan positive_span = 12; repeated sint64 positive_delta = 13;
    }
    message Metric {
      repeated LabelPair label = 1; optional Gauge gauge = 2; optional Counter counter = 3; optional Summary summary = 4;
      optional Untyped untyped = 5; optional Histogram histogram = 7;
    }
    message MetricFamily { optional string name = 1; optional string help = 2; optional MetricType type = 3; repeated Metric metric = 4; }
    """

/// Splits a length-delimited stream (argv[1]) into its messages and has protoc decode each (argv[2]: the .proto's
/// folder); prints the decoded text, messages separated by lines of `---`.
let pythonDecodeDelimited = """
    import subprocess, sys
    data, at, out = open(sys.argv[1], 'rb').read(), 0, []
    while at < len(data):
        length, shift = 0, 0
        while True:
            byte = data[at]; at += 1
            length |= (byte & 0x7F) << shift; shift += 7
            if byte < 0x80: break
        message = data[at:at + length]; at += length
        assert len(message) == length, 'cut short'
        decoded = subprocess.run(['protoc', '--decode=io.prometheus.client.MetricFamily', '-I', sys.argv[2],
                                  'prometheus.proto'], input=message, capture_output=True, check=True)
        out.append(decoded.stdout.decode())
    print('\\n---\\n'.join(out))
    """

@Suite struct NativeHistogramTests {
    static var available: Bool {
        FileManager.default.isExecutableFile(atPath: "/usr/bin/prometheus")
            && FileManager.default.isExecutableFile(atPath: "/usr/bin/protoc") && TestNetwork.available
    }

    /// An exporter's continuous target scraped by two Prometheus servers at once: one with native histograms on
    /// (it asks for the protobuf format and keeps one series), one without (text, 21 series a histogram). Their
    /// medians agree within a classic bucket, and protoc reads the protobuf answer.
    @Test(.enabled(if: Self.available, "needs root, ip, Prometheus and protoc (Debian: prometheus, protobuf-compiler)"))
    func nativeAndClassicHistogramsAgree() async throws {
        try await withHosts(try await LoopbackHost()) { host in
            try await withDirectory { directory in
                let (echo, _) = try await startServer(["--address", "127.0.0.1:7007", "-q"], inNamespace: host.name)
                defer { echo.signal(SIGTERM) }
                let config = directory + "/exporter.yml"
                try """
                modules:
                  quick:
                    protocol: echo
                    count: 100
                    interval: 2ms
                    timeout: 200ms
                targets:
                  - target: 127.0.0.1:7007
                    module: quick
                    every: 1s
                """.write(toFile: config, atomically: true, encoding: .utf8)
                let exporter = try Spawned(
                    TestNetwork.ip,
                    ["netns", "exec", host.name, udpecho, "exporter", "--config", config, "--listen", "127.0.0.1:9338"]
                )
                defer { exporter.signal(SIGTERM) }
                #expect(
                    await exporter.waitForLine { $0.contains("udpecho exporter on") } != nil,
                    "\(exporter.errorText)"
                )
                // A mesh agent beside it, probing the same server.
                let agent = try Spawned(
                    TestNetwork.ip,
                    [
                        "netns", "exec", host.name, udpecho, "mesh", "--address", "127.0.0.1:1337", "--peer",
                        "127.0.0.1:7007",
                        "-i", "10ms", "--metrics", "127.0.0.1:9337",
                    ]
                )
                defer { agent.signal(SIGTERM) }
                #expect(await agent.waitForLine { $0.hasPrefix("metrics on ") } != nil, "\(agent.errorText)")
                var servers: [Spawned] = []
                for (name, port, flags) in [
                    ("native", 9090, ["--enable-feature=native-histograms"]), ("classic", 9091, []),
                ] {
                    try """
                    global:
                      scrape_interval: 1s
                      scrape_timeout: 1s
                    scrape_configs:
                      - job_name: exporter
                        static_configs:
                          - targets: ['127.0.0.1:9338']
                      - job_name: mesh
                        static_configs:
                          - targets: ['127.0.0.1:9337']
                    """.write(toFile: "\(directory)/\(name).yml", atomically: true, encoding: .utf8)
                    servers.append(
                        try Spawned(
                            TestNetwork.ip,
                            [
                                "netns", "exec", host.name, "/usr/bin/prometheus",
                                "--config.file=\(directory)/\(name).yml",
                                "--storage.tsdb.path=\(directory)/\(name)", "--web.listen-address=127.0.0.1:\(port)",
                                "--log.level=warn",
                            ] + flags
                        )
                    )
                }
                defer { for server in servers { server.signal(SIGTERM) } }
                func query(_ port: Int, _ expression: String) async throws -> [[String: Any]] {
                    try await prometheusQuery(in: host.name, port: port, expression)
                }
                func scalar(_ port: Int, _ expression: String) async throws -> Double? {
                    let result = try await query(port, expression)
                    guard let pair = result.first?["value"] as? [Any], let text = pair.last as? String else {
                        return nil
                    }
                    return Double(text)
                }
                // Until each holds 5 scrapes of each job with round trips in them.
                let deadline = ContinuousClock.now + .seconds(60)
                var medians: [String: (native: Double?, classic: Double?)] = [:]
                let histograms = ["exporter": "udpecho_target_rtt_seconds", "mesh": "udpecho_mesh_rtt_seconds"]
                while ContinuousClock.now < deadline {
                    for (job, name) in histograms {
                        medians[job] = (
                            try await scalar(9090, "histogram_quantile(0.5, \(name))"),
                            try await scalar(9091, "histogram_quantile(0.5, \(name)_bucket)")
                        )
                    }
                    let scrapes = try await scalar(9090, "min(count_over_time(up[5m]))") ?? 0
                    let ready = medians.values.allSatisfy { ($0.native ?? 0) > 0 && ($0.classic ?? 0) > 0 }
                    if ready && medians.count == 2 && scrapes >= 5 { break }
                    try await Task.sleep(for: .seconds(1))
                }
                let up = try await query(9090, "up")
                #expect(up.count == 2, "\(up)")
                let targets = try await inHost(
                    host.name,
                    ["python3", "-c", pythonGet, "http://127.0.0.1:9090/api/v1/targets"]
                )
                #expect(
                    up.allSatisfy { ($0["value"] as? [Any])?.last as? String == "1" },
                    "\(up) \(targets) agent: \(agent.errorText)"
                )
                for (job, median) in medians.sorted(by: { $0.key < $1.key }) {
                    let nativeMedian = try #require(median.native, "\(job) native: \(servers[0].errorText)")
                    let classicMedian = try #require(median.classic, "\(job) classic: \(servers[1].errorText)")
                    // Within one classic bucket: the classic estimate interpolates inside the bucket that holds the
                    // median; the native one (9 % buckets) must fall inside that bucket too.
                    let bounds =
                        [0.0] + [
                            0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                            1, 2.5, 5,
                            10,
                        ]
                    let bucket = try #require(bounds.indices.dropFirst().first { classicMedian <= bounds[$0] })
                    #expect(
                        nativeMedian > bounds[bucket - 1] * 0.91 && nativeMedian <= bounds[bucket] * 1.09,
                        "\(job): native \(nativeMedian) s, classic \(classicMedian) s in (\(bounds[bucket - 1]), \(bounds[bucket])]"
                    )
                }
                // The smoke dashboard's queries answer on both servers: from native histograms and from classic ones.
                let dashboardURL = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
                    .deletingLastPathComponent()
                    .deletingLastPathComponent().appendingPathComponent("contrib/grafana/udpecho-smoke.json")
                let dashboard = try #require(
                    try JSONSerialization.jsonObject(with: Data(contentsOf: dashboardURL)) as? [String: Any]
                )
                let panels = try #require(dashboard["panels"] as? [[String: Any]])
                var queried = 0
                for panel in panels {
                    for target in panel["targets"] as? [[String: Any]] ?? [] {
                        let expr = try #require(target["expr"] as? String)
                            .replacingOccurrences(of: "$__rate_interval", with: "1m")
                            .replacingOccurrences(of: "$peer", with: "127.0.0.1:7007")
                            .replacingOccurrences(of: "$agent", with: ".*")
                            .replacingOccurrences(of: "$target", with: "127.0.0.1:7007")
                        #expect(!expr.contains("$"), "\(expr)")
                        for port in [9090, 9091] {
                            let value = try await scalar(port, expr)
                            #expect(value != nil && value!.isFinite, "\(panel["title"] ?? "") on \(port): \(expr)")
                            queried += 1
                        }
                    }
                }
                #expect(queried == 24)
                // The native server keeps one series for the histogram, the classic one 20 (18 buckets, sum, count).
                let nativeSeries = try await scalar(9090, "count({__name__=~\"udpecho_target_rtt_seconds.*\"})")
                let classicSeries = try await scalar(9091, "count({__name__=~\"udpecho_target_rtt_seconds.*\"})")
                #expect(
                    nativeSeries == 1 && classicSeries == 20,
                    "series: native \(nativeSeries ?? -1), classic \(classicSeries ?? -1)"
                )
                let histogram = try await query(9090, "udpecho_target_rtt_seconds")
                #expect(histogram.first?["histogram"] != nil, "a native histogram sample: \(histogram)")
                // protoc reads the bytes the native server was sent.
                try prometheusProto.write(toFile: directory + "/prometheus.proto", atomically: true, encoding: .utf8)
                let body = directory + "/metrics.bin"
                _ = try await inHost(
                    host.name,
                    [
                        "python3", "-c",
                        "import sys, urllib.request\n"
                            + "r = urllib.request.Request('http://127.0.0.1:9338/metrics', headers={'Accept': "
                            + "'application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;encoding=delimited'})\n"
                            + "open(sys.argv[1], 'wb').write(urllib.request.urlopen(r).read())",
                        body,
                    ]
                )
                let decoded = try await Spawned.run(
                    "/usr/bin/env",
                    ["python3", "-c", pythonDecodeDelimited, body, directory]
                )
                #expect(decoded.status == 0, "\(decoded.error)")
                let text = String(decoding: decoded.output, as: UTF8.self)
                #expect(text.contains("name: \"udpecho_target_rtt_seconds\"") && text.contains("type: HISTOGRAM"))
                #expect(
                    text.contains("schema: 3") && text.contains("positive_span {") && text.contains("positive_delta: ")
                )
                #expect(text.contains("name: \"udpecho_exporter_probes_total\"") && text.contains("type: COUNTER"))
            }
        }
    }
}

/// Starts `udpecho exporter` with the configuration `yaml` on an ephemeral loopback port; returns it with its address.
func startExporter(_ yaml: String, in directory: String) async throws -> (Spawned, SocketAddress) {
    let path = directory + "/exporter-\(UInt32.random(in: 0...UInt32.max)).yml"
    try yaml.write(toFile: path, atomically: true, encoding: .utf8)
    let exporter = try Spawned(udpecho, ["exporter", "--config", path, "--listen", "127.0.0.1:0"])
    guard let line = await exporter.waitForLine({ $0.contains("udpecho exporter on") }),
        let port = line.firstMatch(of: /127\.0\.0\.1:(\d+)\//).flatMap({ Int($0.1) })
    else { throw StartError(output: exporter.errorText) }
    return (exporter, try SocketAddress(ipAddress: "127.0.0.1", port: port))
}

/// The exporter's timing, in a process of its own (as it runs): in the library's test process, the tasks of the
/// whole suite share two threads, and an HTTP answer waits seconds for one.
@Suite struct ExporterTimingTests {
    static let modules = """
        modules:
          echo:
            protocol: echo
            count: 20
            interval: 5ms
            timeout: 500ms
          slow:
            protocol: echo
            count: 100
            interval: 50ms
            timeout: 500ms
          silent_twamp:
            protocol: twamp
            count: 1
            timeout: 100ms
        allow:
          - 127.0.0.0/8
        limits:
          concurrent_probes: 1
        """

    @Test func theScrapeTimeoutCutsTheProbe() async throws {
        try await withDirectory { directory in
            let (server, port) = try await startServer(["--address", "127.0.0.1:0", "-q"])
            defer { server.signal(SIGTERM) }
            let (exporter, address) = try await startExporter(Self.modules, in: directory)
            defer { exporter.signal(SIGTERM) }
            // slow: 100 packets take 5.45 s; the scrape allows 3 s less 0.5 s: 1 + (2500 - 500) / 50 = 41 packets.
            let started = ContinuousClock.now
            let answer = try await HTTPExchange.send(
                "GET",
                "/probe?target=127.0.0.1:\(port)&module=slow",
                to: address,
                headers: ["X-Prometheus-Scrape-Timeout-Seconds": "3"]
            )
            let took = ContinuousClock.now - started
            let cut = try #require(
                answer.body.firstMatch(of: /(\d+) of the module's 100 packets sent/).flatMap { Int($0.1) },
                "\(answer.body)"
            )
            // 41 from the scrape's start, less what its name and checks took.
            #expect((30...41).contains(cut), "\(answer.body)")
            // The answer comes by the deadline (the timeout less 0.5 s; the packets sent, above, say the probe was
            // cut to fit it, its last reply's wait included: about 2 s here), not when the whole probe would have
            // ended: a probe that could not finish in time fails or is cut and says so, it does not make the answer
            // late. The whole probe would take its 5.45 s at least, as the exporter timed it and from here; the
            // bounds are just short of that, not tight, since a loaded clean-clone run (the whole suite starting at
            // once on 2 cores) has delayed a process by seconds.
            let duration = try #require(answer.value("probe_duration_seconds"), "\(answer.body)")
            #expect(duration < 5.4, "\(answer.body)")
            #expect(took < .milliseconds(5400), "\(took)")
            if answer.value("probe_success") == 1 {
                #expect(answer.value("udpecho_probe_packets_sent") == Double(cut), "\(answer.body)")
            } else {
                #expect(answer.body.contains("did not finish within the scrape's timeout"), "\(answer.body)")
            }
        }
    }

    /// A probe that cannot end in time is answered at its deadline, failed, not when it ends: a TWAMP server that
    /// accepts the connection and never greets holds the client for its control timeout (5 s); the scrape allows 1 s.
    @Test func aProbeThatOverrunsIsAnsweredAtItsDeadline() async throws {
        try await withDirectory { directory in
            let (silent, port) = try await startPythonPeer(
                """
                import socket, time
                s = socket.socket()
                s.bind(("127.0.0.1", 0))
                s.listen(8)
                print(s.getsockname()[1], flush=True)
                held = []
                while True:
                    c, _ = s.accept()
                    held.append(c)
                """,
                []
            )
            defer { silent.signal(SIGTERM) }
            let (exporter, address) = try await startExporter(Self.modules, in: directory)
            defer { exporter.signal(SIGTERM) }
            let started = ContinuousClock.now
            let answer = try await HTTPExchange.send(
                "GET",
                "/probe?target=127.0.0.1:\(port)&module=silent_twamp",
                to: address,
                headers: ["X-Prometheus-Scrape-Timeout-Seconds": "1"]
            )
            let took = ContinuousClock.now - started
            // Not before the deadline (1 s less 0.25 s) as the exporter timed it, and not at the client's 5 s
            // control timeout: the upper bounds are short of that, not tight, since a loaded clean-clone run has
            // delayed a process by seconds.
            let duration = try #require(answer.value("probe_duration_seconds"), "\(answer.body)")
            #expect(duration >= 0.74 && duration < 4.5, "\(answer.body)")
            #expect(took < .milliseconds(4500), "answered after \(took)")
            #expect(answer.value("probe_success") == 0, "\(answer.body)")
            #expect(
                answer.body.contains("# udpecho: probe failed: the probe did not finish within the scrape's timeout"),
                "\(answer.body)"
            )
        }
    }

    /// A client that leaves mid-probe: its probe runs out and its slot (the only one) comes back.
    @Test func aClientThatLeavesMidProbeGivesItsSlotBack() async throws {
        try await withDirectory { directory in
            let (server, port) = try await startServer(["--address", "127.0.0.1:0", "-q"])
            defer { server.signal(SIGTERM) }
            let (exporter, address) = try await startExporter(Self.modules, in: directory)
            defer { exporter.signal(SIGTERM) }
            do {
                let client = try TestTCPClient(connectTo: address)
                #expect(
                    client.send(
                        Array(
                            "GET /probe?target=127.0.0.1:\(port)&module=slow HTTP/1.1\r\nHost: x\r\nX-Prometheus-Scrape-Timeout-Seconds: 10\r\n\r\n"
                                .utf8
                        )
                    )
                )
                // Until the exporter has admitted it (a loaded machine can take a while).
                let admitted = ContinuousClock.now + .seconds(20)
                while ContinuousClock.now < admitted {
                    let own = try await HTTPExchange.send("GET", "/metrics", to: address)
                    if own.value("udpecho_exporter_probes_running") == 1 { break }
                    try await Task.sleep(for: .milliseconds(20))
                }
            }
            // Meanwhile the only slot is taken.
            let busy = try await HTTPExchange.send("GET", "/probe?target=127.0.0.1:\(port)&module=echo", to: address)
            #expect(busy.status == 503 && busy.body.contains("concurrent_probes"), "\(busy.status) \(busy.body)")
            // The client is gone; its probe runs out (5.45 s at most: the whole module) and the slot comes back.
            var running = 1.0
            let deadline = ContinuousClock.now + .seconds(20)
            while running != 0 && ContinuousClock.now < deadline {
                try await Task.sleep(for: .milliseconds(100))
                running =
                    try await HTTPExchange.send("GET", "/metrics", to: address).value("udpecho_exporter_probes_running")
                    ?? -1
            }
            #expect(running == 0)
            let answer = try await HTTPExchange.send("GET", "/probe?target=127.0.0.1:\(port)&module=echo", to: address)
            #expect(answer.status == 200 && answer.value("probe_success") == 1, "\(answer.status) \(answer.body)")
        }
    }
}

/// The keyed and one-way protocols through the exporter: an OWAMP module both ways, and a TWAMP module in
/// authenticated mode with its key file, against our servers on a test host.
@Suite struct ExporterProtocolTests {
    @Test(.enabled(if: TestNetwork.available, "needs root and ip to make a network namespace"))
    func owampAndAuthenticatedTwampModulesProbe() async throws {
        try await withHosts(try await LoopbackHost()) { host in
            try await withDirectory { directory in
                let keys = try writeKeyFile(in: directory)
                let (owamp, _) = try await startServer(
                    ["--protocol", "owamp", "--address", "127.0.0.1:861", "-q"],
                    inNamespace: host.name
                )
                let (twamp, _) = try await startServer(
                    ["--protocol", "twamp", "--address", "127.0.0.2:862", "--key-file", keys, "-q"],
                    inNamespace: host.name
                )
                defer { for server in [owamp, twamp] { server.signal(SIGTERM) } }
                let config = directory + "/exporter.yml"
                try """
                modules:
                  one_way:
                    protocol: owamp
                    count: 10
                    interval: 10ms
                    timeout: 500ms
                  twamp_auth:
                    protocol: twamp
                    mode: authenticated
                    key_file: \(keys)
                    key_id: alice
                    count: 10
                    interval: 10ms
                    timeout: 500ms
                allow:
                  - 127.0.0.0/8
                """.write(toFile: config, atomically: true, encoding: .utf8)
                let exporter = try Spawned(
                    TestNetwork.ip,
                    ["netns", "exec", host.name, udpecho, "exporter", "--config", config, "--listen", "127.0.0.1:9338"]
                )
                defer { exporter.signal(SIGTERM) }
                #expect(
                    await exporter.waitForLine { $0.contains("udpecho exporter on") } != nil,
                    "\(exporter.errorText)"
                )
                func probe(_ query: String) async throws -> String {
                    try await inHost(
                        host.name,
                        ["python3", "-c", pythonGet, "http://127.0.0.1:9338/probe?\(query)"],
                        timeout: 30
                    )
                }
                func value(_ text: String, _ series: String) -> Double? {
                    text.split(separator: "\n").first { $0.hasPrefix(series + " ") }.flatMap {
                        Double($0.split(separator: " ").last!)
                    }
                }
                // OWAMP: a session each way, 10 packets each, one-way delays both ways.
                let oneWay = try await probe("target=127.0.0.1&module=one_way")
                #expect(value(oneWay, "probe_success") == 1, "\(oneWay)")
                #expect(value(oneWay, "udpecho_probe_direction_packets_sent{direction=\"forward\"}") == 10, "\(oneWay)")
                #expect(value(oneWay, "udpecho_probe_direction_packets_sent{direction=\"backward\"}") == 10)
                #expect(value(oneWay, "udpecho_probe_packets_received") == 20)
                #expect(value(oneWay, "udpecho_probe_loss_ratio") == 0)
                for direction in ["forward", "backward"] {
                    let median = value(
                        oneWay,
                        "udpecho_probe_one_way_delay_seconds{direction=\"\(direction)\",quantile=\"0.5\"}"
                    )
                    #expect(median != nil && median! >= 0 && median! < 0.1, "\(direction): \(oneWay)")
                }
                #expect(
                    oneWay.contains(
                        "udpecho_probe_info{protocol=\"owamp\",module=\"one_way\",address=\"127.0.0.1:861\"} 1"
                    )
                )
                // TWAMP, authenticated with the key file's identity: the server counts an authenticated session.
                let keyed = try await probe("target=127.0.0.2&module=twamp_auth")
                #expect(value(keyed, "probe_success") == 1, "\(keyed)")
                #expect(value(keyed, "udpecho_probe_packets_received") == 10, "\(keyed)")
                #expect(value(keyed, "udpecho_probe_reflector_time_seconds_count") == 10, "\(keyed)")
                // A module whose key the server does not have: refused by the server, the probe fails and says so.
                try
                    "modules:\n  wrong:\n    protocol: twamp\n    mode: authenticated\n    key_file: \(directory)/other.pfs\nallow:\n  - 127.0.0.0/8\n"
                    .write(toFile: config, atomically: true, encoding: .utf8)
                try "bob 00112233445566778899aabbccddeeff\n".write(
                    toFile: directory + "/other.pfs",
                    atomically: true,
                    encoding: .utf8
                )
                exporter.signal(SIGHUP)
                #expect(
                    await exporter.waitForLine { $0 == "configuration reloaded: 1 modules" } != nil,
                    "\(exporter.errorText)"
                )
                let refused = try await probe("target=127.0.0.2&module=wrong")
                #expect(value(refused, "probe_success") == 0, "\(refused)")
                #expect(refused.contains("# udpecho: probe failed: "), "\(refused)")
            }
        }
    }
}
