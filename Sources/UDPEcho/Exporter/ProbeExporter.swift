public import NIOCore
public import ServiceLifecycle
import Synchronization

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// A multi-target prober in blackbox_exporter's style: each scrape of `/probe?target=HOST:PORT&module=NAME` runs one
/// probe burst of the module against the target and answers its results as metrics (``ProbeMetrics``).
///
/// | path | what it answers |
/// |---|---|
/// | `GET /probe?target=T&module=M` | a probe of `T` with module `M` (the only module when the configuration has one) |
/// | `GET /metrics` | the exporter's own metrics: probes by module and result, refusals by reason, the reload's state |
/// | `POST /-/reload` | reads the configuration file again; a bad file is refused whole and the old one kept |
/// | `GET /` | a page naming the modules, with links |
///
/// An exporter makes its host send traffic where a URL says, so it refuses what it was not told to allow:
/// - targets only from the allow list (``TargetAllowList``; nothing by default), names resolved only when listed;
/// - probes at once capped in all and per target, probe starts a second capped (a token bucket), and the packets a
///   second of the running probes capped (``ExporterLimits``); past a cap a scrape gets 503 at once, no queue;
/// - a probe ends within the scrape's timeout (Prometheus' `X-Prometheus-Scrape-Timeout-Seconds` header, less an
///   offset), sending fewer packets than the module's count when all would not fit;
/// - what a URL chooses never names a series of the exporter's own metrics (modules come from the configuration).
public final class ProbeExporter: Service, Sendable {
    /// How the exporter serves.
    public struct Options: Sendable {
        /// The configuration file, read again on ``reload()``; nil for a configuration given whole.
        public var path: String?
        /// The scrape timeout when the request has no header for it (Prometheus' default, 10 s).
        public var defaultScrapeTimeout: Duration = .seconds(10)
        /// Taken off the scrape timeout so that the answer reaches Prometheus in time (blackbox_exporter's
        /// `--timeout-offset`).
        public var timeoutOffset: Duration = .milliseconds(500)
        /// The HTTP endpoint's limits.
        public var endpoint = MetricsEndpoint.Configuration()

        /// Options; see each property.
        public init(path: String? = nil) { self.path = path }
    }

    /// What the exporter tells its log.
    public enum Event: Sendable {
        /// The configuration was read again, with this many modules.
        case reloaded(modules: Int)
        /// The file was refused; the previous configuration is kept.
        case reloadFailed(String)
    }

    private struct State {
        var configuration: ExporterConfiguration
        var running = 0
        var perTarget: [String: Int] = [:]
        var packetRate = 0.0
        var bucket = TokenBucket(tokens: 0, last: 0)
        var results: [String: (success: UInt64, failure: UInt64)] = [:]
        var refused: [String: UInt64] = [:]
        var lastReloadSucceeded = true
        var lastReloadTime = 0.0
    }

    /// Why a scrape was refused, the label of `udpecho_exporter_probes_refused_total`.
    static let refusalReasons = [
        "bad_request", "unknown_module", "not_allowed", "concurrency", "target_concurrency", "rate", "packet_rate",
    ]

    private let options: Options
    private let state: Mutex<State>
    private let continuous = ContinuousProbes()
    private let onEvent: @Sendable (Event) -> Void
    private let endpoint: Mutex<MetricsEndpoint?> = Mutex(nil)

    /// An exporter of `configuration`; ``bind(address:)`` starts serving it.
    public init(
        configuration: ExporterConfiguration,
        options: Options = Options(),
        onEvent: @escaping @Sendable (Event) -> Void = { _ in }
    ) {
        self.options = options
        var state = State(configuration: configuration)
        state.bucket.tokens = configuration.limits.probesPerSecond
        state.bucket.last = Self.now()
        state.lastReloadTime = Self.wallClock()
        self.state = Mutex(state)
        self.onEvent = onEvent
    }

    /// Binds the HTTP endpoint; returns its address (with the real port).
    ///
    /// - Throws: ``EchoError/socket(operation:address:errno:)`` when the address cannot be bound.
    @discardableResult
    public func bind(address: SocketAddress) async throws -> SocketAddress {
        let endpoint = try await MetricsEndpoint(
            address: address,
            configuration: self.options.endpoint,
            stream: { [self] in .once(self.metricsText()) },
            protobuf: { [self] in
                var buffer = ByteBufferAllocator().buffer(capacity: 4096)
                for family in self.metricFamilies() { ProtobufExposition.write(family, into: &buffer) }
                return .once(buffer)
            },
            routes: { [self] request in await self.answer(request) }
        )
        self.endpoint.withLock { $0 = endpoint }
        return endpoint.localAddress ?? address
    }

    /// Serves, and probes the continuous targets, until graceful shutdown or cancellation.
    public func run() async throws {
        guard let endpoint = self.endpoint.withLock({ $0 }) else {
            throw EchoError.invalidConfiguration("the exporter runs once bound")
        }
        let probing = Task { await self.continuous.run { [self] in self.configuration } }
        defer { probing.cancel() }
        try await endpoint.run()
    }

    /// The configuration in force.
    public var configuration: ExporterConfiguration { self.state.withLock { $0.configuration } }

    /// Reads the configuration file again (SIGHUP, `POST /-/reload`); a file that is wrong is refused whole and the
    /// configuration in force kept. Returns the error when it was refused.
    @discardableResult
    public func reload() -> ExporterConfiguration.ParseError? {
        guard let path = self.options.path else { return nil }
        switch ExporterConfiguration.load(path: path) {
        case .success(let configuration):
            // One critical section: two reloads at once cannot both miss that the targets changed.
            let changed = self.state.withLock { state -> Bool in
                let changed = state.configuration.targets != configuration.targets
                state.configuration = configuration
                state.lastReloadSucceeded = true
                state.lastReloadTime = Self.wallClock()
                state.bucket.tokens = min(state.bucket.tokens, configuration.limits.probesPerSecond)
                return changed
            }
            if changed { self.continuous.restart() }
            self.onEvent(.reloaded(modules: configuration.modules.count))
            return nil
        case .failure(let error):
            self.state.withLock { $0.lastReloadSucceeded = false }
            self.onEvent(.reloadFailed("\(path): \(error)"))
            return error
        }
    }

    // MARK: Routes

    /// Answers one request of the HTTP endpoint (every path but `GET /metrics`).
    func answer(_ request: EndpointRequest) async -> EndpointResponse {
        switch (request.method, request.path) {
        case ("GET", "/probe"):
            return await self.probe(request)
        case ("POST", "/-/reload"), ("PUT", "/-/reload"):
            if let error = self.reload() {
                return EndpointResponse(status: 500, text: "failed to reload the configuration: \(error)\n")
            }
            guard self.options.path != nil else {
                return EndpointResponse(status: 400, text: "this exporter was given its configuration, not a file\n")
            }
            return EndpointResponse(text: "reloaded\n")
        case (_, "/-/reload"):
            return EndpointResponse(status: 405, headers: [("Allow", "POST")], text: "reload with POST\n")
        case ("GET", "/"):
            return EndpointResponse(contentType: "text/html; charset=utf-8", text: self.indexPage())
        case ("GET", "/-/healthy"):
            return EndpointResponse(text: "Healthy\n")
        case (_, "/probe"), (_, "/"):
            return EndpointResponse(status: 405, headers: [("Allow", "GET")], text: "use GET\n")
        default:
            return EndpointResponse(
                status: 404,
                text:
                    "not found: the exporter serves /probe?target=HOST:PORT&module=NAME, /metrics, / and POST /-/reload\n"
            )
        }
    }

    /// A scrape refused before probing: its answer, and the reason counted.
    struct RefusalAnswer: Error {
        var response: EndpointResponse
        var reason: String
    }

    private func refusal(_ status: Int, _ reason: String, _ text: String, retry: Bool = false) -> RefusalAnswer {
        self.state.withLock { $0.refused[reason, default: 0] += 1 }
        return RefusalAnswer(
            response: EndpointResponse(status: status, headers: retry ? [("Retry-After", "1")] : [], text: text + "\n"),
            reason: reason
        )
    }

    /// A probe that a scrape may run: admitted, its slot taken until ``release(_:)``.
    struct Admitted: Sendable {
        var module: ProbeModule
        var moduleName: String
        var endpoint: HostAndPort
        var key: String
        var rate: Double
        var deadline: ContinuousClock.Instant
    }

    /// Checks a `/probe` request against the configuration and the limits: a refusal to answer, or the probe to run
    /// (its slot taken). Nothing here waits or touches the network.
    func admit(_ request: EndpointRequest, started: ContinuousClock.Instant) -> Result<Admitted, RefusalAnswer> {
        guard !request.malformedQuery else {
            return .failure(self.refusal(400, "bad_request", "the query has a malformed percent escape"))
        }
        for parameter in request.query where parameter.name != "target" && parameter.name != "module" {
            return .failure(
                self.refusal(
                    400,
                    "bad_request",
                    "unknown parameter '\(parameter.name.excerpt(40))': /probe takes target and module"
                )
            )
        }
        let targets = request.parameters("target")
        guard targets.count == 1, let targetText = targets.first else {
            return .failure(
                self.refusal(
                    400,
                    "bad_request",
                    targets.isEmpty
                        ? "target parameter is missing: /probe?target=HOST:PORT&module=NAME" : "give target once"
                )
            )
        }
        let configuration = self.configuration
        let modules = request.parameters("module")
        let names = configuration.modules.keys.sorted().joined(separator: ", ")
        let moduleName: String
        switch modules.count {
        case 0:
            guard configuration.modules.count == 1, let only = configuration.modules.keys.first else {
                return .failure(
                    self.refusal(400, "bad_request", "module parameter is missing; the modules are \(names)")
                )
            }
            moduleName = only
        case 1:
            moduleName = modules[0]
        default:
            return .failure(self.refusal(400, "bad_request", "give module once"))
        }
        guard let module = configuration.modules[moduleName] else {
            return .failure(
                self.refusal(
                    400,
                    "unknown_module",
                    "unknown module '\(moduleName.excerpt(40))'; the modules are \(names)"
                )
            )
        }
        let endpoint: HostAndPort
        do {
            endpoint = try ExporterProbe.parseTarget(
                targetText,
                protocol: module.probeProtocol,
                allow: configuration.allow
            )
        } catch {
            if case .notAllowed = error { return .failure(self.refusal(403, "not_allowed", "\(error)")) }
            return .failure(self.refusal(400, "bad_request", "\(error)"))
        }
        let timeout = self.scrapeTimeout(request)
        let deadline = started + timeout - min(self.options.timeoutOffset, timeout / 4)
        let key = endpoint.description.lowercased()
        let rate = Double(module.count) / max(module.expectedDuration.seconds, 1e-3)
        let refused: (status: Int, reason: String, text: String)? = self.state.withLock { state in
            let limits = state.configuration.limits
            if state.running >= limits.concurrentProbes {
                return (503, "concurrency", "\(state.running) probes are running, the most at once (concurrent_probes)")
            }
            if state.perTarget[key, default: 0] >= limits.concurrentProbesPerTarget {
                return (
                    503, "target_concurrency",
                    "\(limits.concurrentProbesPerTarget) probes of \(key) are running, the most at once (concurrent_probes_per_target)"
                )
            }
            if state.packetRate + rate > limits.packetsPerSecond {
                return (
                    503, "packet_rate",
                    "the running probes send \(Int(state.packetRate)) packets a second; this one would pass packets_per_second (\(Int(limits.packetsPerSecond)))"
                )
            }
            guard state.bucket.take(now: Self.now(), rate: limits.probesPerSecond, burst: limits.probesPerSecond) else {
                return (
                    503, "rate", "more than probes_per_second (\(Int(limits.probesPerSecond))) probes were asked for"
                )
            }
            state.running += 1
            state.perTarget[key, default: 0] += 1
            state.packetRate += rate
            return nil
        }
        if let refused {
            return .failure(self.refusal(refused.status, refused.reason, refused.text, retry: true))
        }
        return .success(
            Admitted(
                module: module,
                moduleName: moduleName,
                endpoint: endpoint,
                key: key,
                rate: rate,
                deadline: deadline
            )
        )
    }

    /// Gives an admitted probe's slot back and counts its result.
    func release(_ probe: Admitted, success: Bool) {
        self.state.withLock { state in
            state.running -= 1
            state.packetRate = max(0, state.packetRate - probe.rate)
            let left = state.perTarget[probe.key, default: 1] - 1
            state.perTarget[probe.key] = left > 0 ? left : nil
            // Only configured modules name a series.
            if state.configuration.modules[probe.moduleName] != nil {
                if success {
                    state.results[probe.moduleName, default: (0, 0)].success += 1
                } else {
                    state.results[probe.moduleName, default: (0, 0)].failure += 1
                }
            }
        }
    }

    /// Probes running now.
    var runningProbes: Int { self.state.withLock { $0.running } }

    private func probe(_ request: EndpointRequest) async -> EndpointResponse {
        let started = ContinuousClock.now
        let probe: Admitted
        switch self.admit(request, started: started) {
        case .success(let admitted): probe = admitted
        case .failure(let refusal): return refusal.response
        }
        let report = await ExporterProbe.run(
            probe.module,
            endpoint: probe.endpoint,
            started: started,
            deadline: probe.deadline
        )
        self.release(probe, success: report.success)
        return EndpointResponse(
            contentType: "text/plain; version=0.0.4; charset=utf-8",
            text: ProbeMetrics.render(report, module: probe.moduleName)
        )
    }

    /// The scrape's timeout from Prometheus' header, or the default; a header that is not a number from 0.01 to
    /// 3600 is ignored.
    func scrapeTimeout(_ request: EndpointRequest) -> Duration {
        if let text = request.header("X-Prometheus-Scrape-Timeout-Seconds"), let seconds = Double(text),
            seconds >= 0.01, seconds <= 3600
        {
            return .nanoseconds(Int64(seconds * 1e9))
        }
        return self.options.defaultScrapeTimeout
    }

    // MARK: Own metrics and page

    /// The exporter's own metrics and its continuous targets' in Prometheus' text format.
    public func metricsText() -> String { self.metricsText(continuous: true) }

    private func metricsText(continuous: Bool) -> String {
        let state = self.state.withLock { $0 }
        var writer = ProbeMetrics.Writer()
        writer.text += "# HELP udpecho_exporter_probes_total Probes run, by module and result.\n"
        writer.text += "# TYPE udpecho_exporter_probes_total counter\n"
        for name in state.configuration.modules.keys.sorted() {
            let counts = state.results[name] ?? (0, 0)
            writer.sample(
                "udpecho_exporter_probes_total",
                [("module", name), ("result", "success")],
                Double(counts.success)
            )
            writer.sample(
                "udpecho_exporter_probes_total",
                [("module", name), ("result", "failure")],
                Double(counts.failure)
            )
        }
        writer.text += "# HELP udpecho_exporter_probes_refused_total Scrapes refused before probing, by reason.\n"
        writer.text += "# TYPE udpecho_exporter_probes_refused_total counter\n"
        for reason in Self.refusalReasons {
            writer.sample(
                "udpecho_exporter_probes_refused_total",
                [("reason", reason)],
                Double(state.refused[reason] ?? 0)
            )
        }
        writer.gauge("udpecho_exporter_probes_running", "Probes running now.", [([], Double(state.running))])
        writer.gauge(
            "udpecho_exporter_modules",
            "Modules in the configuration in force.",
            [([], Double(state.configuration.modules.count))]
        )
        writer.gauge(
            "udpecho_exporter_config_last_reload_successful",
            "1 when the last reading of the configuration file succeeded.",
            [([], state.lastReloadSucceeded ? 1 : 0)]
        )
        writer.gauge(
            "udpecho_exporter_config_last_reload_success_timestamp_seconds",
            "When the configuration in force was read, in seconds since the epoch.",
            [([], state.lastReloadTime)]
        )
        return writer.text + (continuous ? self.continuousText(state.configuration) : "")
    }

    /// The continuous targets' families, a target's labels `target` and `module`.
    private func continuousFamilies(_ configuration: ExporterConfiguration) -> [ProtobufExposition.Family] {
        let series = self.continuous.snapshot(order: configuration.targets)
        guard !series.isEmpty else { return [] }
        typealias Family = ProtobufExposition.Family
        typealias Metric = ProtobufExposition.Metric
        func labels(_ entry: ContinuousProbes.Series) -> [(String, String)] {
            [("target", entry.target.target), ("module", entry.target.module)]
        }
        var probes = Family(
            name: "udpecho_target_probes_total",
            help: "Probes of the continuous targets, by result.",
            kind: .counter
        )
        var up = Family(name: "udpecho_target_up", help: "1 when the target's last probe succeeded.", kind: .gauge)
        var rtt = Family(
            name: "udpecho_target_rtt_seconds",
            help: "Round trips of the continuous targets' packets (OWAMP: one-way delays), in seconds.",
            kind: .histogram
        )
        var counters: [Family] = [
            Family(
                name: "udpecho_target_packets_sent_total",
                help: "Packets the continuous probes sent.",
                kind: .counter
            ),
            Family(
                name: "udpecho_target_packets_received_total",
                help: "Packets answered within the timeout.",
                kind: .counter
            ),
            Family(
                name: "udpecho_target_packets_lost_total",
                help: "Packets without an answer within the timeout (or refused: nothing listens).",
                kind: .counter
            ),
            Family(name: "udpecho_target_packets_duplicate_total", help: "Extra copies of answers.", kind: .counter),
        ]
        for entry in series {
            probes.metrics.append(
                Metric(labels: labels(entry) + [("result", "success")], value: Double(entry.probes.success))
            )
            probes.metrics.append(
                Metric(labels: labels(entry) + [("result", "failure")], value: Double(entry.probes.failure))
            )
            up.metrics.append(Metric(labels: labels(entry), value: entry.up ? 1 : 0))
            var histogram = Metric(labels: labels(entry))
            histogram.histogram = entry.histogram
            rtt.metrics.append(histogram)
            for (index, value) in [entry.sent, entry.received, entry.lost, entry.duplicate].enumerated() {
                counters[index].metrics.append(Metric(labels: labels(entry), value: Double(value)))
            }
        }
        return [probes, up, rtt] + counters
    }

    /// The exporter's own metrics and the continuous targets' as protobuf families (native histograms).
    func metricFamilies() -> [ProtobufExposition.Family] {
        let own = ProtobufExposition.families(fromText: self.metricsText(continuous: false))
        return own + self.continuousFamilies(self.configuration)
    }

    private func continuousText(_ configuration: ExporterConfiguration) -> String {
        var text = ""
        for family in self.continuousFamilies(configuration) { text += ProtobufExposition.text(family) }
        return text
    }

    /// The page at `/`: a live smoke graph of each continuous target's last hour (``LivePage``), then the modules.
    func indexPage() -> String {
        let configuration = self.configuration
        let graphs = self.continuous.snapshot(order: configuration.targets).map { entry in
            LivePage.Graph(
                title: "\(entry.target.target) (module \(entry.target.module))",
                status: (entry.up ? "up" : "down") + (entry.lastFailure.map { ": " + $0 } ?? ""),
                series: entry.live,
                clock: entry.oneWay ? "one-way delays (OWAMP)" : "kernel timestamps"
            )
        }
        var rows = ""
        for name in configuration.modules.keys.sorted() {
            let module = configuration.modules[name]!
            rows +=
                "<tr><td>\(SVGText.escape(name))</td><td>\(module.probeProtocol)</td><td>\(module.count)</td>"
                + "<td>\(module.interval.shortDescription)</td><td>\(module.timeout.shortDescription)</td></tr>\n"
        }
        return LivePage.html(
            heading: "udpecho exporter",
            introduction: """
                <p>Probe a target: <code>/probe?target=HOST:PORT&amp;module=NAME</code>. The exporter's own metrics and \
                the continuous targets': <a href="/metrics">/metrics</a>. This page refreshes itself every 30 seconds.</p>
                <h2>Continuous targets, the last hour</h2>
                """,
            graphs: graphs,
            empty: "No continuous targets (targets: in the configuration).",
            footer: """
                <h2>Modules</h2>
                <table border="1"><tr><th>module</th><th>protocol</th><th>packets</th><th>interval</th><th>timeout</th></tr>
                \(rows)</table>
                <p>\(configuration.allow.prefixes.count) prefixes and \(configuration.allow.names.count) names may be probed.</p>
                """
        )
    }

    private static func now() -> Int64 { ContinuousClock.now.nanosecondsSinceStart }

    private static func wallClock() -> Double {
        var spec = timespec()
        clock_gettime(CLOCK_REALTIME, &spec)
        return Double(spec.tv_sec) + Double(spec.tv_nsec) / 1e9
    }
}

extension MetricsStream {
    /// A body of one piece: `text`.
    public static func once(_ text: String) -> MetricsStream { .once(ByteBuffer(string: text)) }

    /// A body of one piece: `bytes`.
    public static func once(_ bytes: ByteBuffer) -> MetricsStream {
        var sent = false
        return MetricsStream { buffer in
            if !sent {
                var whole = bytes
                buffer.writeBuffer(&whole)
            }
            sent = true
            return false
        }
    }
}

extension ContinuousClock.Instant {
    fileprivate var nanosecondsSinceStart: Int64 {
        let elapsed = self - ContinuousClock.Instant.processStart
        return elapsed.nanoseconds
    }

    fileprivate static let processStart = ContinuousClock.now
}
