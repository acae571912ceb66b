import Foundation
import TestSupport
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// The deployment files in contrib/, checked as far as this machine allows: Prometheus' own checker and rule unit
/// tests, YAML and JSON parsers, and the names they use against what the agent exports.
@Suite struct ContribTests {
    static let contrib = packageRoot.appendingPathComponent("contrib")
    static var promtool: String? {
        FileManager.default.isExecutableFile(atPath: "/usr/bin/promtool") ? "/usr/bin/promtool" : nil
    }

    @Test(.enabled(if: promtool != nil, "needs promtool (Debian: prometheus)"))
    func prometheusRulesAndConfigurationPassPromtool() async throws {
        let directory = Self.contrib.appendingPathComponent("prometheus").path
        for arguments in [
            ["check", "rules", "\(directory)/udpecho-mesh.rules.yml"],
            ["check", "config", "\(directory)/prometheus.yml"],
            // The alerts fire for the pair that loses and the peer that is down, and only for them.
            ["test", "rules", "\(directory)/udpecho-mesh.rules.test.yml"],
        ] {
            let result = try await Spawned.run(Self.promtool!, arguments)
            #expect(result.status == 0, "promtool \(arguments.joined(separator: " ")): \(result.lines) \(result.error)")
        }
    }

    /// The Kubernetes manifests parse, hold the kinds and fields the README promises (a DaemonSet on the host
    /// network as a non-root user with resources and scrape annotations; a headless Service), and the agent's
    /// arguments are ones `udpecho mesh` takes.
    @Test func kubernetesManifestsHoldTogether() async throws {
        let script = """
            import json, sys, yaml
            docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d]
            scrape = yaml.safe_load(open(sys.argv[2]))
            print(json.dumps({"docs": docs, "scrape": scrape}))
            """
        // PyYAML, in the test environment `.ci/run` makes.
        let parsed = try await Spawned.run(
            scapyPython,
            [
                "-c", script, Self.contrib.appendingPathComponent("kubernetes/udpecho-mesh.yaml").path,
                Self.contrib.appendingPathComponent("kubernetes/prometheus-scrape.yml").path,
            ]
        )
        #expect(parsed.status == 0, "\(parsed.error)")
        let object = try #require(try JSONSerialization.jsonObject(with: parsed.output) as? [String: Any])
        let documents = try #require(object["docs"] as? [[String: Any]])
        #expect(documents.compactMap { $0["kind"] as? String } == ["Namespace", "Service", "DaemonSet"])
        let service = try #require(documents.first { $0["kind"] as? String == "Service" })
        #expect((service["spec"] as? [String: Any])?["clusterIP"] as? String == "None")
        let daemonSet = try #require(documents.first { $0["kind"] as? String == "DaemonSet" })
        #expect(daemonSet["apiVersion"] as? String == "apps/v1")
        let template = try #require((daemonSet["spec"] as? [String: Any])?["template"] as? [String: Any])
        let annotations = try #require((template["metadata"] as? [String: Any])?["annotations"] as? [String: String])
        #expect(annotations["prometheus.io/scrape"] == "true" && annotations["prometheus.io/port"] == "9337")
        let pod = try #require(template["spec"] as? [String: Any])
        #expect(pod["hostNetwork"] as? Bool == true)
        #expect((pod["securityContext"] as? [String: Any])?["runAsNonRoot"] as? Bool == true)
        let container = try #require((pod["containers"] as? [[String: Any]])?.first)
        let resources = try #require(container["resources"] as? [String: Any])
        #expect(resources["requests"] != nil && resources["limits"] != nil)
        let arguments = try #require(container["args"] as? [String])
        #expect(arguments.first == "mesh")
        // The same arguments, with --once and a peer that resolves here, are accepted by udpecho mesh.
        let run = try await Spawned.run(
            udpecho,
            arguments.filter { !$0.hasPrefix("--peer=") && !$0.hasPrefix("--metrics=") }
                + ["--peer=127.0.0.1:9", "--once", "-d", "300ms", "-i", "50ms", "-W", "100ms"]
        )
        #expect(run.status == 1, "\(run.lines) \(run.error)")  // nothing answers on port 9: every probe lost
        #expect(run.error.contains("peers: 1 targets"), "\(run.error)")
        let scrape = try #require(object["scrape"] as? [String: Any])
        #expect((scrape["scrape_configs"] as? [[String: Any]])?.first?["kubernetes_sd_configs"] != nil)
    }

    /// The systemd units pass `systemd-analyze verify` (with the binary's path pointed at the one built here): no
    /// unknown key, no bad value.
    @Test(
        .enabled(
            if: FileManager.default.isExecutableFile(atPath: "/usr/bin/systemd-analyze"),
            "needs systemd-analyze (Debian: systemd)"
        )
    )
    func systemdUnitsVerify() async throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("udpecho-units-\(getpid())")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: directory) }
        var paths: [String] = []
        for unit in ["udpecho.service", "udpecho.socket", "udpecho-mesh.service"] {
            let text = try String(contentsOf: Self.contrib.appendingPathComponent("systemd/\(unit)"), encoding: .utf8)
            let path = directory.appendingPathComponent(unit).path
            try text.replacingOccurrences(of: "/usr/local/bin/udpecho", with: udpecho)
                .write(toFile: path, atomically: true, encoding: .utf8)
            paths.append(path)
        }
        let result = try await Spawned.run("/usr/bin/systemd-analyze", ["verify"] + paths)
        let ours = (result.error.split(separator: "\n") + result.lines.map { Substring($0) }).filter {
            $0.contains(directory.path) || $0.contains("udpecho")
        }
        #expect(ours.isEmpty, "\(ours)")
    }

    /// The dashboard is JSON Grafana reads, and every query names a recording rule of the rules file or a metric
    /// the agent exports.
    @Test func theDashboardQueriesWhatExists() throws {
        let data = try Data(contentsOf: Self.contrib.appendingPathComponent("grafana/udpecho-mesh.json"))
        let dashboard = try #require(try JSONSerialization.jsonObject(with: data) as? [String: Any])
        let panels = try #require(dashboard["panels"] as? [[String: Any]])
        let titles = panels.compactMap { $0["title"] as? String }
        #expect(titles.contains { $0.hasPrefix("Loss heatmap") } && titles.contains { $0.hasPrefix("RTT heatmap") })
        let rules = try String(
            contentsOf: Self.contrib.appendingPathComponent("prometheus/udpecho-mesh.rules.yml"),
            encoding: .utf8
        )
        let recorded = Set(rules.matches(of: /record: (\S+)/).map { String($0.1) })
        #expect(recorded == ["udpecho_mesh:loss_ratio:rate5m", "udpecho_mesh:rtt_seconds:p99_5m"])
        let exported = ["udpecho_mesh_peer_up", "udpecho_mesh_probes_lost_total", "udpecho_mesh_probes_sent_total"]
        for panel in panels {
            for target in panel["targets"] as? [[String: Any]] ?? [] {
                let expr = try #require(target["expr"] as? String)
                let names = expr.matches(of: /udpecho_mesh[a-z_:0-9]*/).map { String($0.0) }
                #expect(
                    !names.isEmpty && names.allSatisfy { recorded.contains($0) || exported.contains($0) },
                    "\(expr)"
                )
            }
        }
    }
}
