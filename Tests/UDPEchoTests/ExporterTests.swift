import Foundation
import NIOCore
import Synchronization
import TestSupport
import Testing

@testable import UDPEcho

/// An exporter on an ephemeral loopback port, run for `body`.
func withExporter<Result>(
    _ configuration: ExporterConfiguration,
    options: ProbeExporter.Options = .init(),
    _ body: (ProbeExporter, SocketAddress) async throws -> Result
) async throws -> Result {
    let exporter = ProbeExporter(configuration: configuration, options: options)
    let address = try await exporter.bind(address: try SocketAddress(ipAddress: "127.0.0.1", port: 0))
    let running = Task { try await exporter.run() }
    return try await untilDone(running) { try await body(exporter, address) }
}

func parsedConfiguration(_ text: String) throws -> ExporterConfiguration {
    switch ExporterConfiguration.parse(Array(text.utf8)) {
    case .success(let configuration): return configuration
    case .failure(let error): throw error
    }
}

func configurationError(_ text: String) -> ExporterConfiguration.ParseError? {
    if case .failure(let error) = ExporterConfiguration.parse(Array(text.utf8)) { return error }
    return nil
}

@Suite struct YAMLReaderTests {
    @Test func readsMappingsListsAndScalars() throws {
        let text = """
            ---
            # a comment
            modules:
              echo:
                protocol: echo   # trailing comment
                count: 10
              "quoted key": 'it''s # not a comment'
            allow:
            - 192.0.2.0/24
            - "2001:db8::/32"
            flow: [a, "b c", 3]
            empty: []
            none:
            items:
              - name: one
                value: 1
              - name: two
              -
                nested: yes
            """
        let node = try YAMLReader.read(text).get()
        guard case .mapping(let top, _) = node else {
            Issue.record("not a mapping: \(node)")
            return
        }
        #expect(top.map(\.key) == ["modules", "allow", "flow", "empty", "none", "items"])
        guard case .mapping(let modules, _) = top[0].value, case .mapping(let echo, _) = modules[0].value else {
            Issue.record("modules: \(top[0].value)")
            return
        }
        #expect(echo.map(\.key) == ["protocol", "count"])
        #expect(echo[0].value == .scalar("echo", quoted: false, line: 5))
        #expect(modules[1].key == "quoted key")
        #expect(modules[1].value == .scalar("it's # not a comment", quoted: true, line: 7))
        #expect(
            top[1].value
                == .list(
                    [
                        .scalar("192.0.2.0/24", quoted: false, line: 9),
                        .scalar("2001:db8::/32", quoted: true, line: 10),
                    ],
                    line: 9
                )
        )
        #expect(
            top[2].value
                == .list(
                    [
                        .scalar("a", quoted: false, line: 11), .scalar("b c", quoted: true, line: 11),
                        .scalar("3", quoted: false, line: 11),
                    ],
                    line: 11
                )
        )
        #expect(top[3].value == .list([], line: 12))
        #expect(top[4].value == .null(line: 13))
        guard case .list(let items, _) = top[5].value, items.count == 3, case .mapping(let first, _) = items[0] else {
            Issue.record("items: \(top[5].value)")
            return
        }
        #expect(first.map(\.key) == ["name", "value"])
        guard case .mapping(let third, _) = items[2] else {
            Issue.record("third item: \(items[2])")
            return
        }
        #expect(third.map(\.key) == ["nested"])
    }

    @Test(
        arguments: [
            ("a: 1\n\tb: 2\n", 2, "tab"),
            ("a: 1\na: 2\n", 2, "twice"),
            ("a: &x 1\nb: *x\n", 1, "anchors"),
            ("a: !!str 1\n", 1, "tags"),
            ("a: |\n  text\n", 1, "block scalars"),
            ("a: {b: 1}\n", 1, "flow mappings"),
            ("a: 1\n---\nb: 2\n", 2, "second document"),
            ("a: 'open\n", 1, "not closed"),
            ("a:\n  b: 1\n c: 2\n", 3, "indented"),
            ("a: b: c\n", 1, "': ' in a value"),
            ("a: [1, 2\n", 1, "close with ']'"),
            ("a: \"\\q\"\n", 1, "escape"),
            ("- a\nb: 1\n", 2, "does not continue a list"),
            ("a: 1\n  b: 2\n", 2, "has a value on its line"),
            ("plain\n  continued\n", 2, "several lines"),
        ]
    )
    func refusesWhatItDoesNotTakeWithItsLine(text: String, line: Int, words: String) {
        switch YAMLReader.read(text) {
        case .success(let node):
            Issue.record("read \(text.debugDescription) as \(node)")
        case .failure(let error):
            #expect(error.line == line, "\(error)")
            #expect(error.reason.contains(words), "\(error)")
        }
    }

    @Test func nestingIsBounded() {
        var text = ""
        for depth in 0..<100 { text += String(repeating: " ", count: depth) + "k\(depth):\n" }
        guard case .failure(let error) = YAMLReader.read(text) else {
            Issue.record("100 levels read")
            return
        }
        #expect(error.reason.contains("nested more than \(YAMLReader.maximumDepth)"))
    }

    @Test func binaryIsRefusedNotRead() {
        let bytes: [UInt8] = [0x6D, 0x3A, 0x20, 0xFF, 0xFE, 0x00, 0x0A]
        guard case .failure(let error) = YAMLReader.read(bytes) else {
            Issue.record("binary read")
            return
        }
        #expect(error.line == 1 && error.reason.contains("UTF-8"))
    }
}

@Suite struct ExporterConfigurationTests {
    @Test func readsModulesAllowListLimitsAndTargets() throws {
        let configuration = try parsedConfiguration(
            """
            modules:
              echo:
                protocol: echo
              stamp_ef:
                protocol: stamp
                count: 20
                interval: 50ms
                timeout: 500ms
                dscp: 46
                ecn: ect0
                ttl: 64
                flows: 4
                fail_if_loss_above: 0.05
              one_way:
                protocol: owamp
                direction: to
                ip_protocol: ip6
            allow:
              - 192.0.2.0/24
              - 2001:db8::/32
              - Router1.Example.NET
            limits:
              concurrent_probes: 4
              probes_per_second: 5
            targets:
              - target: 192.0.2.1:862
                module: stamp_ef
                every: 10s
            """
        )
        #expect(configuration.modules.keys.sorted() == ["echo", "one_way", "stamp_ef"])
        let echo = try #require(configuration.modules["echo"])
        #expect(echo == ProbeModule())
        let stamp = try #require(configuration.modules["stamp_ef"])
        #expect(stamp.probeProtocol == .stamp && stamp.count == 20 && stamp.interval == .milliseconds(50))
        #expect(stamp.timeout == .milliseconds(500) && stamp.flows == 4 && stamp.failIfLossAbove == 0.05)
        #expect(stamp.marking.trafficClass == TrafficClass(dscp: 46, ecn: .ect0) && stamp.marking.ttl == 64)
        let owamp = try #require(configuration.modules["one_way"])
        #expect(owamp.directions == .toServer && owamp.preferIPv6)
        #expect(configuration.allow.prefixes.map(\.description) == ["192.0.2.0/24", "2001:db8::/32"])
        #expect(configuration.allow.allows(name: "router1.example.net"))
        #expect(configuration.limits.concurrentProbes == 4 && configuration.limits.probesPerSecond == 5)
        #expect(configuration.limits.concurrentProbesPerTarget == ExporterLimits().concurrentProbesPerTarget)
        #expect(
            configuration.targets == [
                ContinuousTarget(target: "192.0.2.1:862", module: "stamp_ef", every: .seconds(10))
            ]
        )
    }

    @Test(
        arguments: [
            ("modules:\n  m:\n    count: 1000000\n", 3, "count '1000000' is not a whole number from 1 to 10000"),
            ("modules:\n  m:\n    protocol: icmp\n", 3, "protocol 'icmp' is not one of"),
            ("modules:\n  m:\n    interval: 0s\n", 3, "interval 0s is out of range"),
            ("modules:\n  m:\n    colour: red\n", 3, "unknown key 'colour'"),
            ("modules:\n  m:\n    dscp: 64\n", 3, "dscp '64'"),
            ("modules:\n  m:\n    protocol: stamp\n    size: 20\n", 2, "module m"),
            ("modules:\n  m:\n    protocol: echo\n    mode: encrypted\n", 2, "mode, key_file and key_id are for twamp"),
            ("modules:\n  m:\n    protocol: twamp\n    mode: encrypted\n", 2, "needs key_file"),
            ("modules:\n  m:\n    protocol: twamp\n    flows: 2\n", 2, "flows need echo or stamp"),
            ("modules:\n  \"a b\":\n    count: 1\n", 2, "is not a module name"),
            ("allow:\n  - 192.0.2.0/33\n", 2, "prefix length"),
            ("allow:\n  - exa mple\n", 2, "neither an address prefix nor a host name"),
            ("allow: 192.0.2.0/24\n", 1, "expected a list"),
            ("limits:\n  concurrent_probes: 0\n", 2, "concurrent_probes '0'"),
            ("modules: [a]\n", 1, "expected a mapping"),
            ("colour: red\n", 1, "unknown key 'colour'"),
            ("targets:\n  - target: 192.0.2.1:7\n", 2, "needs 'module: NAME'"),
            ("targets:\n  - target: 192.0.2.1:7\n    module: nope\n", 2, "module 'nope', which is not defined"),
            (
                "modules:\n  m:\n    protocol: echo\ntargets:\n  - target: 192.0.2.1\n    module: m\n", 5,
                "has no port"
            ),
            (
                "modules:\n  m:\n    protocol: echo\ntargets:\n  - target: 192.0.2.1:7\n    module: m\n  - target: 192.0.2.1:7\n    module: m\n",
                7, "listed twice"
            ),
            (
                "modules:\n  slow:\n    count: 100\n    interval: 1s\ntargets:\n  - target: 192.0.2.1:7\n    module: slow\n    every: 10s\n",
                6, "less than its module 'slow' takes"
            ),
        ]
    )
    func aBadLineIsNamed(text: String, line: Int, words: String) {
        guard let error = configurationError(text) else {
            Issue.record("taken: \(text.debugDescription)")
            return
        }
        #expect(error.line == line, "\(error)")
        #expect(error.reason.contains(words), "\(error)")
    }

    @Test func theKeyFileIsReadAndItsIdentityChosen() throws {
        let file = IPPMKeyFile(secrets: ["alice": [1, 2, 3], "bob": [4, 5]])
        let text = "modules:\n  t:\n    protocol: twamp\n    mode: authenticated\n    key_file: /k\n    key_id: bob\n"
        guard case .success(let configuration) = ExporterConfiguration.parse(Array(text.utf8), readKey: { _ in file })
        else {
            Issue.record("refused")
            return
        }
        #expect(configuration.modules["t"]?.keyID == "bob" && configuration.modules["t"]?.secret == [4, 5])
        let unnamed = "modules:\n  t:\n    protocol: twamp\n    key_file: /k\n"
        guard case .failure(let error) = ExporterConfiguration.parse(Array(unnamed.utf8), readKey: { _ in file }) else {
            Issue.record("two keys and no key_id taken")
            return
        }
        #expect(error.line == 4 && error.reason.contains("has 2 keys: say which with key_id"))
    }

    @Test func filesThatAreNotRegularAreRefused() throws {
        let directory = NSTemporaryDirectory() + "udpecho-exporter-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let fifo = directory + "/fifo.yml"
        #expect(mkfifo(fifo, 0o600) == 0)
        guard case .failure(let error) = ExporterConfiguration.load(path: fifo) else {
            Issue.record("a FIFO was read")
            return
        }
        #expect(error.reason.contains("is a FIFO"))
        let huge = directory + "/huge.yml"
        _ = FileManager.default.createFile(
            atPath: huge,
            contents: Data(count: ExporterConfiguration.maximumFileSize + 1)
        )
        guard case .failure(let tooLarge) = ExporterConfiguration.load(path: huge) else {
            Issue.record("a huge file was read")
            return
        }
        #expect(tooLarge.reason.contains("more than the \(ExporterConfiguration.maximumFileSize) bytes"))
    }

    @Test func targetsAreCheckedAgainstTheAllowList() throws {
        let configuration = try parsedConfiguration(
            "allow:\n  - 192.0.2.0/24\n  - 2001:db8::/32\n  - router1.example.net\n"
        )
        let allow = configuration.allow
        #expect(try ExporterProbe.parseTarget("192.0.2.9:7", protocol: .echo, allow: allow).port == 7)
        #expect(
            try ExporterProbe.parseTarget("[2001:db8::5]:862", protocol: .stamp, allow: allow).host == "2001:db8::5"
        )
        #expect(try ExporterProbe.parseTarget("ROUTER1.example.net", protocol: .twamp, allow: allow).port == 862)
        #expect(try ExporterProbe.parseTarget("2001:db8::5", protocol: .owamp, allow: allow).port == 861)
        for (text, expected) in [
            ("198.51.100.1:7", ProbeRefusal.notAllowed("198.51.100.1 is not inside a prefix of the allow list")),
            ("unlisted.example.net:7", .notAllowed("the name unlisted.example.net is not on the allow list")),
            ("192.0.2.9", .badTarget("'192.0.2.9' has no port; write HOST:PORT, for example 192.0.2.9:1337")),
            ("192.0.2.9:0", .badTarget("port 0 cannot be probed")),
            ("", .badTarget("target= is empty; give HOST:PORT")),
            (
                "192.0.2.9:7\nprobe_success 1",
                .badTarget("the target '192.0.2.9:7\\nprobe_success 1' has spaces, control or non-ASCII characters")
            ),
            ("a_b.example:7", .badTarget("'a_b.example' is neither an address nor a host name")),
        ] {
            #expect(throws: expected, "\(text)") {
                _ = try ExporterProbe.parseTarget(text, protocol: .echo, allow: allow)
            }
        }
        let long = String(repeating: "a", count: 400)
        #expect(throws: ProbeRefusal.badTarget("the target is 400 bytes long; at most 300 are taken")) {
            _ = try ExporterProbe.parseTarget(long, protocol: .echo, allow: allow)
        }
    }

    @Test func theCountIsCutToFitTheTimeout() {
        var module = ProbeModule()
        module.count = 100
        module.interval = .milliseconds(50)
        module.timeout = .milliseconds(500)
        // 100 packets take 99 x 50 ms + 500 ms.
        #expect(ExporterProbe.countThatFits(module, within: .seconds(10)) == 100)
        #expect(ExporterProbe.countThatFits(module, within: .milliseconds(5450)) == 100)
        #expect(ExporterProbe.countThatFits(module, within: .milliseconds(5449)) == 99)
        #expect(ExporterProbe.countThatFits(module, within: .seconds(1)) == 11)
        #expect(ExporterProbe.countThatFits(module, within: .milliseconds(500)) == 1)
        #expect(ExporterProbe.countThatFits(module, within: .milliseconds(499)) == 0)
    }
}

@Suite struct ExporterTests {
    static let echoModules = """
        modules:
          echo:
            protocol: echo
            count: 20
            interval: 5ms
            timeout: 500ms
          slow:
            protocol: echo
            count: 40
            interval: 50ms
            timeout: 500ms
          strict:
            protocol: echo
            count: 4
            interval: 5ms
            timeout: 300ms
            fail_if_loss_above: 0.1
        allow:
          - 127.0.0.0/8
        """

    @Test func aScrapeProbesTheTargetAndAnswersItsResults() async throws {
        try await withServer { server in
            let target = try clientAddress(of: server).hostPortDescription
            try await withExporter(try parsedConfiguration(Self.echoModules)) { _, address in
                let answer = try await HTTPExchange.send("GET", "/probe?target=\(target)&module=echo", to: address)
                #expect(answer.status == 200, "\(answer.body)")
                #expect(answer.headers["content-type"]?.hasPrefix("text/plain; version=0.0.4") == true)
                #expect(answer.value("probe_success") == 1, "\(answer.body)")
                #expect(answer.value("udpecho_probe_packets_sent") == 20)
                #expect(answer.value("udpecho_probe_packets_received") == 20)
                #expect(answer.value("udpecho_probe_loss_ratio") == 0)
                #expect(answer.value("probe_ip_protocol") == 4)
                let median = try #require(answer.value("udpecho_probe_rtt_seconds", "quantile=\"0.5\""))
                let maximum = try #require(answer.value("udpecho_probe_rtt_seconds", "quantile=\"1\""))
                #expect(median > 0 && median <= maximum && maximum < 0.5)
                #expect(answer.value("udpecho_probe_rtt_seconds_count") == 20)
                let duration = try #require(answer.value("probe_duration_seconds"))
                // 19 gaps of 5 ms at least, in seconds (milliseconds taken for seconds would be 95 or more). Not a
                // speed bound: a clean-clone CI run, the whole suite starting at once on 2 cores, took 5.6 s.
                #expect(duration >= 0.095 && duration < 60, "\(duration)")
                #expect(
                    answer.body.contains(
                        "udpecho_probe_info{protocol=\"echo\",module=\"echo\",address=\"\(target)\"} 1"
                    )
                )
            }
        }
    }

    @Test func aTargetThatDoesNotAnswerFailsTheProbeNotTheScrape() async throws {
        // A port where nothing answers: refused (ICMP), so every packet is lost.
        let refusing = try TestSocket.refusing()
        defer { refusing.close() }
        let port = refusing.localAddress.port!
        try await withExporter(try parsedConfiguration(Self.echoModules)) { _, address in
            let answer = try await HTTPExchange.send(
                "GET",
                "/probe?target=127.0.0.1:\(port)&module=strict",
                to: address
            )
            #expect(answer.status == 200)
            #expect(answer.value("probe_success") == 0, "\(answer.body)")
            #expect(answer.value("udpecho_probe_packets_received") == 0)
            #expect(answer.body.contains("# udpecho: probe failed: no packet came back"), "\(answer.body)")
            #expect(answer.value("udpecho_probe_loss_ratio") == 1, "\(answer.body)")
            #expect(answer.value("udpecho_probe_packets_refused") == 4, "ICMP port unreachable: \(answer.body)")
            let own = try await HTTPExchange.send("GET", "/metrics", to: address)
            #expect(own.value("udpecho_exporter_probes_total", "module=\"strict\",result=\"failure\"") == 1)
        }
    }

    @Test func urlsCannotInjectSamplesOrSeries() async throws {
        try await withExporter(try parsedConfiguration(Self.echoModules)) { _, address in
            for (query, status, words) in [
                ("target=127.0.0.1:7%0Aprobe_success%201&module=echo", 400, "control or non-ASCII"),
                ("target=127.0.0.1:7&module=echo%22,x%3D%22y", 400, "unknown module"),
                ("target=127.0.0.1:7&module=echo&debug=true", 400, "unknown parameter 'debug'"),
                ("target=127.0.0.1:7&target=127.0.0.2:7&module=echo", 400, "give target once"),
                ("target=127.0.0.1:7%zz&module=echo", 400, "malformed percent escape"),
                ("module=echo", 400, "target parameter is missing"),
                ("target=127.0.0.1:7", 400, "module parameter is missing; the modules are echo, slow, strict"),
                ("target=10.1.2.3:7&module=echo", 403, "not inside a prefix of the allow list"),
                ("target=evil.example:7&module=echo", 403, "not on the allow list"),
            ] {
                let answer = try await HTTPExchange.send("GET", "/probe?\(query)", to: address)
                #expect(answer.status == status, "\(query): \(answer.status) \(answer.body)")
                #expect(answer.body.contains(words), "\(query): \(answer.body)")
                // Whatever the URL holds, the answer has no sample: no line but the one refusal.
                #expect(answer.body.split(separator: "\n").count == 1, "\(query): \(answer.body)")
            }
            let own = try await HTTPExchange.send("GET", "/metrics", to: address)
            #expect(own.value("udpecho_exporter_probes_refused_total", "reason=\"bad_request\"") == 6)
            #expect(own.value("udpecho_exporter_probes_refused_total", "reason=\"unknown_module\"") == 1)
            #expect(own.value("udpecho_exporter_probes_refused_total", "reason=\"not_allowed\"") == 2)
            // No series named by a URL: the modules are the configuration's.
            #expect(!own.body.contains("x=") && !own.body.contains("evil"))
            #expect(own.body.split(separator: "\n").filter { $0.hasPrefix("udpecho_exporter_probes_total") }.count == 6)
            for (method, path, status) in [
                ("GET", "/-/reload", 405), ("POST", "/probe", 405), ("GET", "/nothing", 404),
                ("GET", "/-/healthy", 200),
            ] {
                let answer = try await HTTPExchange.send(method, path, to: address)
                #expect(answer.status == status, "\(method) \(path): \(answer.status)")
            }
        }
    }

    @Test func probesAtOnceAreCappedInAllAndPerTarget() async throws {
        try await withServer { server in
            let target = try clientAddress(of: server).hostPortDescription
            var configuration = try parsedConfiguration(Self.echoModules)
            configuration.limits.concurrentProbes = 3
            configuration.limits.concurrentProbesPerTarget = 2
            // 5.45 s a probe: the five scrapes overlap even on a loaded machine.
            configuration.modules["slow"]?.count = 100
            try await withExporter(configuration) { exporter, address in
                // Five scrapes of one target at once: two probe it, three are refused at once.
                let statuses = try await withThrowingTaskGroup(of: (Int, String).self) { group in
                    for _ in 0..<5 {
                        group.addTask {
                            let answer = try await HTTPExchange.send(
                                "GET",
                                "/probe?target=\(target)&module=slow",
                                to: address
                            )
                            return (answer.status, answer.body)
                        }
                    }
                    return try await group.reduce(into: []) { $0.append($1) }
                }
                #expect(statuses.filter { $0.0 == 200 }.count == 2, "\(statuses)")
                let refused = statuses.filter { $0.0 == 503 }
                #expect(refused.count == 3, "\(statuses)")
                #expect(refused.allSatisfy { $0.1.contains("concurrent_probes_per_target") }, "\(refused)")
                #expect(exporter.metricsText().contains("udpecho_exporter_probes_running 0"))
                let own = try await HTTPExchange.send("GET", "/metrics", to: address)
                #expect(own.value("udpecho_exporter_probes_refused_total", "reason=\"target_concurrency\"") == 3)
            }
        }
    }

    @Test func aSweepOfAPrefixIsRateLimitedAndLeavesNothingBehind() async throws {
        var configuration = try parsedConfiguration(Self.echoModules)
        configuration.limits.probesPerSecond = 1
        configuration.limits.concurrentProbes = 64
        // The HTTP endpoint's connections per source (32, its own test's) would queue some of the 40 and, on a loaded
        // machine, close them in favour of others: this test is the token bucket's.
        var options = ProbeExporter.Options()
        options.endpoint.maximumConnectionsPerSource = 64
        try await withExporter(configuration, options: options) { exporter, address in
            // 40 scrapes at once of 40 different addresses of 127/8 (nothing listens: each probe is refused by ICMP).
            let statuses = try await withThrowingTaskGroup(of: Int.self) { group in
                for index in 0..<40 {
                    group.addTask {
                        try await HTTPExchange.send(
                            "GET",
                            "/probe?target=127.9.0.\(1 + index):9&module=strict",
                            to: address
                        ).status
                    }
                }
                return try await group.reduce(into: [Int: Int]()) { $0[$1, default: 0] += 1 }
            }
            // A bucket of 1, refilled at 1 a second: 1 and one more a second the 40 took to arrive; the rest 503.
            let probed = statuses[200] ?? 0
            #expect(probed >= 1 && probed <= 20, "\(statuses)")
            #expect(statuses[503] == 40 - probed, "\(statuses)")
            let text = exporter.metricsText()
            #expect(text.contains("udpecho_exporter_probes_running 0"))
            #expect(!text.contains("127.9."), "a target named a series")
            let refused = text.split(separator: "\n").first {
                $0.hasPrefix("udpecho_exporter_probes_refused_total{reason=\"rate\"}")
            }
            #expect(refused?.hasSuffix(" \(40 - probed)") == true, "\(refused ?? "")")
        }
    }

    @Test func aBadReloadKeepsTheConfigurationInForce() async throws {
        let directory = NSTemporaryDirectory() + "udpecho-exporter-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let path = directory + "/exporter.yml"
        try Self.echoModules.write(toFile: path, atomically: true, encoding: .utf8)
        try await withExporter(try parsedConfiguration(Self.echoModules), options: .init(path: path)) {
            exporter,
            address in
            try "modules:\n  echo:\n    count: many\n".write(toFile: path, atomically: true, encoding: .utf8)
            let refused = try await HTTPExchange.send("POST", "/-/reload", to: address)
            #expect(refused.status == 500)
            #expect(refused.body.contains("line 3: count 'many' is not a whole number"), "\(refused.body)")
            #expect(exporter.configuration.modules.count == 3)
            var own = try await HTTPExchange.send("GET", "/metrics", to: address)
            #expect(own.value("udpecho_exporter_config_last_reload_successful") == 0)
            try "modules:\n  only:\n    protocol: echo\nallow:\n  - 127.0.0.1\n".write(
                toFile: path,
                atomically: true,
                encoding: .utf8
            )
            let taken = try await HTTPExchange.send("POST", "/-/reload", to: address)
            #expect(taken.status == 200 && taken.body == "reloaded\n")
            #expect(exporter.configuration.modules.keys.sorted() == ["only"])
            own = try await HTTPExchange.send("GET", "/metrics", to: address)
            #expect(own.value("udpecho_exporter_config_last_reload_successful") == 1)
            #expect(own.value("udpecho_exporter_modules") == 1)
        }
    }

}

@Suite struct ContinuousTargetTests {
    @Test func continuousTargetsAddUpOverTimeAndAreDrawn() async throws {
        try await withServer { server in
            let target = try clientAddress(of: server).hostPortDescription
            let closed = try TestSocket.refusing()
            defer { closed.close() }
            let closedPort = closed.localAddress.port!
            let configuration = try parsedConfiguration(
                """
                modules:
                  quick:
                    protocol: echo
                    count: 10
                    interval: 5ms
                    timeout: 200ms
                targets:
                  - target: \(target)
                    module: quick
                    every: 1s
                  - target: 127.0.0.1:\(closedPort)
                    module: quick
                    every: 1s
                """
            )
            try await withExporter(configuration) { _, address in
                // Each target is probed within its first second, then every second.
                var own = try await HTTPExchange.send("GET", "/metrics", to: address)
                let labels = "target=\"\(target)\",module=\"quick\""
                let closedLabels = "target=\"127.0.0.1:\(closedPort)\",module=\"quick\""
                let deadline = ContinuousClock.now + .seconds(30)
                while ContinuousClock.now < deadline
                    && ((own.value("udpecho_target_probes_total", labels + ",result=\"success\"") ?? 0) < 3
                        || (own.value("udpecho_target_probes_total", closedLabels + ",result=\"failure\"") ?? 0) < 3)
                {
                    try await Task.sleep(for: .milliseconds(200))
                    own = try await HTTPExchange.send("GET", "/metrics", to: address)
                }
                let sent = try #require(own.value("udpecho_target_packets_sent_total", labels), "\(own.body)")
                #expect(sent >= 30 && sent.truncatingRemainder(dividingBy: 10) == 0, "\(sent)")
                #expect(own.value("udpecho_target_packets_lost_total", labels) == 0)
                #expect(own.value("udpecho_target_up", labels) == 1)
                #expect(own.value("udpecho_target_up", closedLabels) == 0)
                // Nothing listens there: every packet sent is counted unanswered.
                #expect(
                    own.value("udpecho_target_packets_lost_total", closedLabels)
                        == own.value("udpecho_target_packets_sent_total", closedLabels)
                )
                let count = try #require(own.value("udpecho_target_rtt_seconds_count", labels))
                #expect(count >= sent, "every answered packet in the histogram: \(count) of \(sent)")
                #expect(own.value("udpecho_target_rtt_seconds_bucket", labels + ",le=\"+Inf\"") == count)
                let page = try await HTTPExchange.send("GET", "/", to: address)
                #expect(page.status == 200 && page.headers["content-type"]?.hasPrefix("text/html") == true)
                #expect(page.body.components(separatedBy: "<svg").count == 3, "two graphs")
                #expect(page.body.contains("<meta http-equiv=\"refresh\" content=\"30\">"))
                #expect(!page.body.contains("<script") && !page.body.contains("src="), "nothing fetched, no scripts")
                let graphs = page.body.components(separatedBy: "<div class=\"target\"").dropFirst()
                #expect(graphs.count == 2)
                // The clean target's graph has a median and no loss mark; the closed one's only loss marks.
                #expect(
                    graphs.first?.contains("class=\"median\"") == true
                        && graphs.first?.contains("class=\"lost\"") == false
                )
                #expect(
                    graphs.last?.contains("class=\"lost\"") == true
                        && graphs.last?.contains("class=\"median\"") == false
                )
            }
        }
    }
}

@Suite struct LiveSeriesTests {
    @Test func aMinuteKeepsItsCountsExactlyAndItsPercentilesFromASample() {
        var series = LiveSeries()
        let minute: Int64 = 60_000_000_000
        // Minute 10: 10,000 round trips of 1..10,000 us, 100 lost; minute 12: one lost probe.
        for index in 0..<10_000 { series.record(at: 10 * minute + Int64(index), roundTrip: Int64(index + 1) * 1000) }
        for _ in 0..<100 { series.record(at: 10 * minute + 20_000, roundTrip: nil) }
        series.record(at: 12 * minute, roundTrip: nil)
        let columns = series.columns(now: 12 * minute + 5)
        #expect(columns.count == 60)
        let tenth = columns[columns.count - 3]
        #expect(tenth.sent == 10_100 && tenth.lost == 100)
        let median = try! #require(tenth.percentiles?[3])
        // 64 of 10,000 chosen uniformly: the median within a generous band of 5 ms.
        #expect(median > 3_000_000 && median < 7_000_000, "\(median)")
        #expect(columns[columns.count - 2].sent == 0)
        #expect(columns.last?.sent == 1 && columns.last?.lost == 1 && columns.last?.percentiles == nil)
        // An hour later the minute is gone.
        #expect(series.columns(now: 71 * minute).allSatisfy { $0.sent == 0 || $0.start >= 0 })
        #expect(series.totals(now: 70 * minute + 1).sent == 1)
        #expect(series.totals(now: 73 * minute).sent == 0)
    }
}
