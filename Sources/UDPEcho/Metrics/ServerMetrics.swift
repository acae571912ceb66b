import Metrics
import ServiceLifecycle
import Synchronization

/// Publishes a server's counters through swift-metrics, under Prometheus-style names:
///
/// | metric | labels | meaning |
/// |---|---|---|
/// | `udpecho_datagrams_total` | `direction`: `received`, `echoed` | datagrams |
/// | `udpecho_bytes_total` | `direction`: `received`, `echoed` | payload bytes |
/// | `udpecho_dropped_total` | `reason`: a ``DropReason`` (`write-timeout`, `rate-limited`...) | datagrams not echoed |
/// | `udpecho_receive_errors_total` | | errors reading the socket |
/// | `udpecho_thread_datagrams_total` | `thread`: 0, 1... | datagrams received by each serving thread |
/// | `udpecho_rate_limit_sources` | | sources in the rate limiter's tables (a gauge) |
/// | `udpecho_rate_limit_evictions_total` | | sources forgotten to make room |
/// | `udpecho_stamp_sessions` | | sessions in a stateful STAMP reflector's tables (a gauge) |
/// | `udpecho_offload_runs_total` | | runs of datagrams received coalesced (UDP GRO) and answered with one write |
/// | `udpecho_offload_fallbacks_total` | | segmented writes refused and sent datagram by datagram |
/// | `udpecho_xdp_answered_total` | | datagrams answered in XDP (also in `udpecho_datagrams_total`) |
/// | `udpecho_xdp_passed_total` | `reason`: an ``XDPPassReason`` | datagrams XDP passed up to the sockets |
/// | `udpecho_xdp_attached` | `interface`, `mode` (`native`, `generic`) | 1 while the XDP program is attached |
///
/// What a guard drops in XDP counts in `udpecho_dropped_total` under its reason, as on the sockets.
///
/// The serving threads count in their own memory, without touching swift-metrics; ``publish()`` adds what they
/// counted since the last call. Run it as a `Service` to publish every `interval`, and call ``publish()`` before a
/// scrape so that the numbers are current.
public final class ServerMetrics: Service, Sendable {
    private let server: EchoServer
    private let interval: Duration
    private let state: Mutex<EchoServerStatistics>
    private let datagrams: [String: Counter]
    private let bytes: [String: Counter]
    private let dropped: [DropReason: Counter]
    private let receiveErrors: Counter
    private let perThread: [Counter]
    private let rateLimitSources: Gauge
    private let rateLimitEvictions: Counter
    private let stampSessions: Gauge
    private let offloadRuns: Counter
    private let offloadFallbacks: Counter
    private let xdpAnswered: Counter?
    private let xdpPassed: [XDPPassReason: Counter]
    private let xdpAttached: Gauge?

    /// Publishes `server`'s counters every `interval` once run.
    ///
    /// - Parameters:
    ///   - server: The server whose counters to publish.
    ///   - interval: How often ``run()`` publishes.
    ///   - factory: Where the metrics go: the process's metrics system unless given (``PrometheusExporter`` gives a
    ///     registry of its own).
    public init(server: EchoServer, interval: Duration = .seconds(1), factory: MetricsFactory = MetricsSystem.factory) {
        self.server = server
        self.interval = interval
        var empty = EchoServerStatistics()
        empty.receivedPerThread = Array(repeating: 0, count: server.configuration.threads)
        self.state = Mutex(empty)
        self.datagrams = Dictionary(
            uniqueKeysWithValues: ["received", "echoed"].map {
                ($0, Counter(label: "udpecho_datagrams_total", dimensions: [("direction", $0)], factory: factory))
            }
        )
        self.bytes = Dictionary(
            uniqueKeysWithValues: ["received", "echoed"].map {
                ($0, Counter(label: "udpecho_bytes_total", dimensions: [("direction", $0)], factory: factory))
            }
        )
        self.dropped = Dictionary(
            uniqueKeysWithValues: DropReason.allCases.map {
                ($0, Counter(label: "udpecho_dropped_total", dimensions: [("reason", $0.rawValue)], factory: factory))
            }
        )
        self.receiveErrors = Counter(label: "udpecho_receive_errors_total", factory: factory)
        self.perThread = (0..<server.configuration.threads).map {
            Counter(label: "udpecho_thread_datagrams_total", dimensions: [("thread", "\($0)")], factory: factory)
        }
        self.rateLimitSources = Gauge(label: "udpecho_rate_limit_sources", factory: factory)
        self.rateLimitEvictions = Counter(label: "udpecho_rate_limit_evictions_total", factory: factory)
        self.stampSessions = Gauge(label: "udpecho_stamp_sessions", factory: factory)
        self.offloadRuns = Counter(label: "udpecho_offload_runs_total", factory: factory)
        self.offloadFallbacks = Counter(label: "udpecho_offload_fallbacks_total", factory: factory)
        if let xdp = server.configuration.xdp, let mode = server.xdpMode {
            self.xdpAnswered = Counter(label: "udpecho_xdp_answered_total", factory: factory)
            self.xdpPassed = Dictionary(
                uniqueKeysWithValues: XDPPassReason.allCases.map {
                    (
                        $0,
                        Counter(
                            label: "udpecho_xdp_passed_total",
                            dimensions: [("reason", $0.rawValue)],
                            factory: factory
                        )
                    )
                }
            )
            self.xdpAttached = Gauge(
                label: "udpecho_xdp_attached",
                dimensions: [("interface", xdp.interface), ("mode", mode.rawValue)],
                factory: factory
            )
        } else {
            self.xdpAnswered = nil
            self.xdpPassed = [:]
            self.xdpAttached = nil
        }
    }

    /// Adds to the metrics what the server counted since the last call. Safe to call from several threads at once
    /// (concurrent scrapes, and the periodic publication): the counters are read inside the lock, so that each call
    /// sees at least what the previous one saw and a delta is never negative.
    public func publish() {
        self.state.withLock { last in
            let now = self.server.statistics
            func add(_ counter: Counter, _ current: Int, _ previous: Int) {
                if current > previous { counter.increment(by: Int64(current - previous)) }
            }
            add(self.datagrams["received"]!, now.received, last.received)
            add(self.datagrams["echoed"]!, now.echoed, last.echoed)
            add(self.bytes["received"]!, now.receivedBytes, last.receivedBytes)
            add(self.bytes["echoed"]!, now.echoedBytes, last.echoedBytes)
            for reason in DropReason.allCases {
                add(self.dropped[reason]!, now.drops[reason, default: 0], last.drops[reason, default: 0])
            }
            add(self.receiveErrors, now.receiveErrors, last.receiveErrors)
            for (thread, counter) in self.perThread.enumerated() where thread < now.receivedPerThread.count {
                add(counter, now.receivedPerThread[thread], last.receivedPerThread[thread])
            }
            self.rateLimitSources.record(now.rateTableEntries)
            add(self.rateLimitEvictions, now.rateTableEvictions, last.rateTableEvictions)
            self.stampSessions.record(now.stampSessions)
            add(self.offloadRuns, now.coalescedRuns, last.coalescedRuns)
            add(self.offloadFallbacks, now.offloadFallbacks, last.offloadFallbacks)
            if let xdp = now.xdp {
                let before = last.xdp
                if let answered = self.xdpAnswered {
                    add(answered, xdp.echoed + xdp.reflected, (before?.echoed ?? 0) + (before?.reflected ?? 0))
                }
                for (reason, counter) in self.xdpPassed {
                    add(counter, xdp.passed[reason, default: 0], before?.passed[reason, default: 0] ?? 0)
                }
                self.xdpAttached?.record(self.server.isXDPAttached ? 1 : 0)
            }
            last = now
        }
    }

    /// Each metric's HELP text, by name.
    public static let help: [String: String] = [
        "udpecho_datagrams_total": "Datagrams received and echoed, by direction.",
        "udpecho_bytes_total": "Payload bytes received and echoed, by direction.",
        "udpecho_dropped_total": "Datagrams not echoed, by reason.",
        "udpecho_receive_errors_total": "Errors reading the server's sockets.",
        "udpecho_thread_datagrams_total": "Datagrams received by each serving thread.",
        "udpecho_rate_limit_sources": "Sources in the rate limiter's tables.",
        "udpecho_rate_limit_evictions_total": "Sources the rate limiter forgot to make room.",
        "udpecho_stamp_sessions": "Sessions in a stateful STAMP reflector's tables.",
        "udpecho_offload_runs_total": "Runs of datagrams received coalesced (UDP GRO) and answered with one write.",
        "udpecho_offload_fallbacks_total": "Segmented writes refused and sent datagram by datagram.",
        "udpecho_xdp_answered_total": "Datagrams answered in XDP, in the driver (also counted as echoed).",
        "udpecho_xdp_passed_total": "Datagrams to the server that XDP passed up to the sockets, by reason.",
        "udpecho_xdp_attached": "1 while the XDP program is attached to the interface, in this mode.",
    ]

    /// `exposition` (Prometheus' text format, as swift-prometheus writes it without help) with a HELP line before
    /// each TYPE line of a metric in ``help``.
    public static func addingHelp(to exposition: String) -> String {
        var lines: [Substring] = []
        for line in exposition.split(separator: "\n", omittingEmptySubsequences: false) {
            if line.hasPrefix("# TYPE "), let name = line.split(separator: " ").dropFirst(2).first,
                let text = Self.help[String(name)]
            {
                lines.append("# HELP \(name) \(text)")
            }
            lines.append(line)
        }
        return lines.joined(separator: "\n")
    }

    /// Publishes every `interval` until graceful shutdown or cancellation, then once more.
    public func run() async throws {
        await cancelWhenGracefulShutdown {
            while !Task.isCancelled {
                self.publish()
                try? await Task.sleep(for: self.interval)
            }
        }
        self.publish()
    }
}
