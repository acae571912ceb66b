import ArgumentParser
import FoundationEssentials
import Logging
import NIOCore
import ServiceLifecycle
import UDPEcho
import UnixSignals

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

struct MeshCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "mesh",
        abstract: "Run one agent of a latency mesh: an echo server, and a prober of its peers with Prometheus metrics.",
        discussion: """
            Each host of a fleet runs one agent: it answers its peers' probes (an echo server on --address) and \
            probes each of its peers every --interval, from --flows source ports in turn (ECMP sends each port over \
            its own path), with random jitter so that agents do not probe in step. Per peer, the loss, duplicates, \
            corrupt replies and round trips are served as Prometheus metrics (--metrics): Prometheus collects them \
            from every agent, and its queries and alerts tell which pair of hosts is bad, and since when.

              udpecho mesh --peers /etc/udpecho/peers --metrics :9337

            Peers: --peer HOST:PORT (repeatable) and --peers FILE (one a line, # for comments), re-read when the file \
            changes and on SIGHUP; names are resolved again every --resolve-interval (a Kubernetes headless Service \
            answers one address per pod), and each address is probed as its own target under the peer's name. A \
            peer that leaves the list stops being probed at once and stops being exported after --grace.

            Hard caps hold whatever the list says: --max-rate probes and --max-bytes-rate bytes a second over all \
            peers (the defaults keep 1000 peers at 1/s under 1 Mbit/s); probes beyond them are skipped and counted.

            --once probes every peer for --duration and prints the loss and round trips per peer (--json: one JSON \
            document), without serving, for scripts and CI checks; exit 1 when a peer lost every probe.
            """
    )

    @Option(
        name: .long,
        help: ArgumentHelp("Where the agent's echo server listens. (default: :1337)", valueName: "host:port"),
        transform: parseAddress
    )
    var address: HostAndPort?

    @Option(
        help: ArgumentHelp(
            "Also answer STAMP test packets (RFC 8762) here, so that peers and routers' STAMP or TWAMP-Light senders can measure each direction (off unless given; STAMP's port is 862).",
            valueName: "host:port"
        ),
        transform: parseAddress
    )
    var stampAddress: HostAndPort?

    @Option(name: .customLong("peer"), help: ArgumentHelp("A peer to probe (repeatable).", valueName: "host:port"))
    var peerTexts: [String] = []

    @Option(
        help: ArgumentHelp(
            "A file of peers, one HOST:PORT a line; re-read when it changes and on SIGHUP.",
            valueName: "file"
        )
    )
    var peers: String?

    @Option(
        parsing: .unconditional,
        help: ArgumentHelp("The port of a peer written without one.", valueName: "port")
    )
    var defaultPort = 1337

    @Option(
        parsing: .unconditional,
        help: ArgumentHelp("How often peer names are resolved again.", valueName: "duration"),
        transform: parseDuration
    )
    var resolveInterval: Duration = .seconds(30)

    @Option(
        name: [.short, .long],
        parsing: .unconditional,
        help: ArgumentHelp("Time between probes to each peer (each within ±10% of it).", valueName: "duration"),
        transform: parseDuration
    )
    var interval: Duration = .seconds(1)

    @OptionGroup(title: "Flows and loss") var probe: ProbeOptions<MeshRole>

    @Option(
        parsing: .unconditional,
        help: ArgumentHelp("At most this many probes a second over all peers.", valueName: "n")
    )
    var maxRate: Double = 1100

    @Option(
        parsing: .unconditional,
        help: ArgumentHelp(
            "At most this many bytes a second over all peers, IP and UDP headers included.",
            valueName: "n"
        )
    )
    var maxBytesRate: Double = 125_000

    @Option(
        parsing: .unconditional,
        help: ArgumentHelp("How long a peer that left the list is still exported.", valueName: "duration"),
        transform: parseDuration
    )
    var grace: Duration = .seconds(300)

    @Option(
        help: ArgumentHelp("Serve Prometheus metrics at http://HOST:PORT/metrics.", valueName: "host:port"),
        transform: parseAddress
    )
    var metrics: HostAndPort?

    @Flag(help: "Export counts per peer and source port too (the series multiply by --flows).")
    var perFlowMetrics = false

    @Option(
        help: ArgumentHelp(
            "Export one series per group of peers that share these labels of the peers file (zone,rack), instead of one per peer: for fleets where per-pair series are too many.",
            valueName: "label,..."
        )
    )
    var aggregateBy: String?

    @Flag(
        inversion: .prefixedNo,
        help: "Keep the last hour of the first 100 peers (about 3.5 KB each) for the live graphs at http://--metrics/."
    )
    var graphs = true

    @Option(
        help: ArgumentHelp(
            "With --once: also draw each peer's round trips over time into FILE (SVG), as smokeping does, one graph a peer.",
            valueName: "file.svg"
        )
    )
    var plot: String?

    @Flag(help: "Probe every peer for --duration, print the result and exit (no server, no metrics).")
    var once = false

    @Option(
        name: [.customShort("d"), .long],
        parsing: .unconditional,
        help: ArgumentHelp("With --once: how long to probe.", valueName: "duration"),
        transform: parseDuration
    )
    var duration: Duration = .seconds(10)

    @Flag(help: "With --once: print one JSON document.")
    var json = false

    func validate() throws {
        if self.peerTexts.isEmpty && self.peers == nil {
            throw ValidationError("give the peers: --peer HOST:PORT (repeatable) or --peers FILE")
        }
        for text in self.peerTexts {
            if case .failure(let error) = MeshPeerList.peer(text, defaultPort: self.defaultPort) {
                throw ValidationError("--peer \(text): \(error)")
            }
        }
        if !(1...65535).contains(self.defaultPort) { throw ValidationError("--default-port: from 1 to 65535") }
        if self.json && !self.once { throw ValidationError("--json is for --once") }
        if self.plot != nil && !self.once {
            throw ValidationError("--plot is for --once (the agent draws its live graphs at http://--metrics/)")
        }
        if let names = self.aggregateLabels {
            if self.perFlowMetrics { throw ValidationError("--aggregate-by and --per-flow-metrics: give one") }
            for name in names {
                if let problem = MeshPeerList.labelNameProblem(name) {
                    throw ValidationError("--aggregate-by: '\(name)' \(problem)")
                }
            }
        }
        if self.resolveInterval < .seconds(1) { throw ValidationError("--resolve-interval must be at least 1s") }
        if self.once && !(self.duration > .zero && self.duration <= .seconds(3600)) {
            throw ValidationError("--duration must be more than 0 and at most 1h")
        }
        do { try self.proberConfiguration().validate() } catch { throw ValidationError("\(error)") }
    }

    func proberConfiguration() -> MeshProber.Configuration {
        var configuration = MeshProber.Configuration(
            interval: self.interval,
            flows: self.probe.flows,
            size: self.probe.sizeOption ?? 64,
            timeout: self.probe.timeout,
            maximumRate: self.maxRate,
            maximumBytesPerSecond: self.maxBytesRate,
            perFlow: self.perFlowMetrics,
            percentiles: self.once,
            grace: self.grace
        )
        configuration.samples = self.once && self.plot != nil
        configuration.liveGraphs = !self.once && self.metrics != nil && self.graphs
        return configuration
    }

    /// The labels of --aggregate-by.
    var aggregateLabels: [String]? {
        self.aggregateBy.map { $0.split(separator: ",", omittingEmptySubsequences: false).map(String.init) }
    }

    func run() async throws {
        signal(SIGPIPE, SIG_IGN)
        let peers = self.peerTexts.compactMap { try? MeshPeerList.peer($0, defaultPort: self.defaultPort).get() }
        let prober: MeshProber
        do { prober = try MeshProber(self.proberConfiguration()) } catch {
            Stream.err.line("udpecho: error: \(error)")
            throw ExitCode(2)
        }
        // The prober's sockets (a flow each, IPv4 and IPv6) and its wake-ups; the echo server's and the STAMP
        // reflector's sockets, the metrics endpoint's, and SwiftNIO's loops: checked before any is opened (a flow
        // whose socket cannot be opened would probe less than asked).
        let threads = EchoServer.defaultThreads
        let serving = self.once ? 0 : 4 * threads * (self.stampAddress == nil ? 1 : 2) + (self.metrics == nil ? 0 : 80)
        do { try DescriptorLimit.ensure(DescriptorLimit.runtime + 2 * self.probe.flows + 4 + serving) } catch {
            Stream.err.line("udpecho: error: \(error)")
            throw ExitCode.failure
        }
        let once = self.once
        let agent = MeshAgent(
            .init(
                peers: peers,
                peersFile: self.peers,
                defaultPort: self.defaultPort,
                resolveInterval: self.resolveInterval
            ),
            prober: prober
        ) { event in
            switch event {
            case .targets(let count, let added, let removed):
                // With --once the report is the output; what the agent does goes to standard error.
                let line = "peers: \(count) targets (\(added) added, \(removed) removed)"
                if once { Stream.err.line(line) } else { Stream.out.line(line) }
            case .peersFileRejected(let reason):
                Stream.err.line("udpecho: peers file: \(reason)")
            case .nameNotResolved(let reason):
                Stream.err.line("udpecho: cannot resolve \(reason)")
            }
        }
        if self.once {
            try await self.runOnce(agent, prober: prober)
            return
        }
        var logger = Logger(label: "udpecho.mesh")
        logger.logLevel = .warning
        let server: EchoServer
        do {
            server = try EchoServer(
                configuration: .init(address: self.address ?? HostAndPort(host: nil, port: 1337), reporting: .none),
                logger: logger
            )
        } catch {
            Stream.err.line("udpecho: error: \(error)")
            throw ExitCode.failure
        }
        var said = [
            "mesh agent: serving echo on \(server.localAddresses.map(\.hostPortDescription).joined(separator: ", "))"
        ]
        var services: [ServiceGroupConfiguration.ServiceConfiguration] = [
            .init(service: server), .init(service: agent),
        ]
        if let stampAddress = self.stampAddress {
            do {
                let reflector = try EchoServer(
                    configuration: .init(address: stampAddress, reporting: .none, stamp: StampReflectorConfiguration()),
                    logger: logger
                )
                let addresses = reflector.localAddresses.map(\.hostPortDescription).joined(separator: ", ")
                said.append("mesh agent: STAMP reflector on \(addresses)")
                services.append(.init(service: reflector))
            } catch {
                Stream.err.line("udpecho: error: \(error)")
                throw ExitCode.failure
            }
        }
        if let metricsAddress = self.metrics {
            do {
                // The mesh's metrics go out a piece at a time as the scraper reads them: 10,000 peers make 26 MB.
                let aggregate = self.aggregateLabels
                let exporter = try await PrometheusExporter(
                    address: try await resolveTarget(metricsAddress),
                    server: server,
                    more: {
                        if let aggregate {
                            let families = MeshMetrics.families(prober.snapshot(), aggregateBy: aggregate)
                            return .once(families.map(ProtobufExposition.text).joined())
                        }
                        var writer = MeshMetrics.Writer(prober.snapshot())
                        return MetricsStream { buffer in writer.write(into: &buffer, budget: 256 << 10) }
                    },
                    moreProtobuf: {
                        var writer = MeshMetrics.ProtobufWriter(prober.snapshot(), aggregateBy: aggregate)
                        return MetricsStream { buffer in writer.write(into: &buffer) }
                    },
                    routes: { request in
                        guard request.path == "/" && request.method == "GET" else {
                            return EndpointResponse(status: 404, text: "not found: the agent serves /metrics and /\n")
                        }
                        return EndpointResponse(
                            contentType: "text/html; charset=utf-8",
                            text: meshPage(prober.snapshot())
                        )
                    }
                )
                said.append("metrics on \(exporter.url)")
                services.append(.init(service: exporter))
            } catch {
                Stream.err.line("udpecho: error: cannot serve metrics on \(metricsAddress): \(error)")
                throw ExitCode.failure
            }
        }
        // Everything is bound before the agent says it serves.
        for line in said { Stream.out.line(line) }
        let hangups = Task {
            for await _ in await UnixSignalsSequence(trapping: .sighup) { agent.reload() }
        }
        defer { hangups.cancel() }
        let group = ServiceGroup(
            configuration: .init(services: services, gracefulShutdownSignals: [.sigterm, .sigint], logger: logger)
        )
        try await group.run()
    }

    private func runOnce(_ agent: MeshAgent, prober: MeshProber) async throws {
        let count = await agent.refresh()
        guard count > 0 else {
            Stream.err.line("udpecho: error: no peer to probe (none resolved)")
            throw ExitCode(2)
        }
        let probing = Task { try await prober.run() }
        // The duration counts from when the prober has taken the targets.
        for _ in 0..<3000 where prober.snapshot().targets.count < count {
            try? await Task.sleep(for: .milliseconds(10))
        }
        try? await Task.sleep(for: self.duration)
        prober.finishSending()
        // The replies still on their way; a probe not answered by then is lost. A bit past the timeout, so that
        // the last expiry and publication have run.
        try? await Task.sleep(for: self.probe.timeout + .milliseconds(600))
        probing.cancel()
        try await probing.value
        let snapshot = prober.snapshot()
        if let path = self.plot {
            let ordered = snapshot.targets.sorted {
                ($0.target.peer.description, $0.target.address.hostPortDescription)
                    < ($1.target.peer.description, $1.target.address.hostPortDescription)
            }
            let plots = ordered.map { target -> SmokePlot in
                var plot = SmokePlot(
                    title: "\(target.target.peer) (\(target.target.address.hostPortDescription))",
                    clock: "CLOCK_MONOTONIC around the system calls"
                )
                for sample in target.samples ?? [] { plot.add(time: sample.time, roundTrip: sample.roundTrip) }
                return plot
            }
            try writeReport(SmokePlot.stacked(plots), to: path)
        }
        if self.json {
            Stream.out.line(jsonLine(MeshOnceJSON(snapshot, duration: self.duration)))
        } else {
            for line in meshOnceLines(snapshot) { Stream.out.line(line) }
        }
        if snapshot.targets.contains(where: { $0.sent > 0 && $0.received == 0 }) { throw ExitCode(1) }
    }
}

/// The agent's live page: each peer's last hour.
func meshPage(_ snapshot: MeshSnapshot) -> String {
    // The prober keeps the last hour of the first LivePage.maximumGraphs peers only; the others are counted.
    let listed = snapshot.targets.filter { !$0.removed }
    let graphs = listed.prefix(LivePage.maximumGraphs).compactMap { target -> LivePage.Graph? in
        guard let live = target.live else { return nil }
        return LivePage.Graph(
            title: "\(target.target.peer) (\(target.target.address.hostPortDescription))",
            status: target.up ? "up" : "down",
            series: live,
            clock: "CLOCK_MONOTONIC around the system calls"
        )
    }
    return LivePage.html(
        heading: "udpecho mesh agent",
        introduction: """
            <p>Each peer's round trips over the last hour; the metrics are at <a href="/metrics">/metrics</a>. \
            This page refreshes itself every 30 seconds.</p>
            """,
        graphs: graphs,
        notDrawn: listed.count - graphs.count,
        empty: "No live graphs: no peers yet, or the agent runs with --no-graphs."
    )
}

/// `mesh --once`: a line per target.
func meshOnceLines(_ snapshot: MeshSnapshot) -> [String] {
    var lines = ["peer  address  sent  received  lost  loss  duplicate  corrupt  p50 ms  p99 ms"]
    for target in snapshot.targets.sorted(by: {
        ($0.target.peer.description, $0.target.address.hostPortDescription) < (
            $1.target.peer.description, $1.target.address.hostPortDescription
        )
    }) {
        let loss = target.sent == 0 ? 0 : Double(target.lost) / Double(target.sent) * 100
        let times = target.times
        let p50 = times.map { $0.count > 0 ? milliseconds($0.percentile(50)) : "-" } ?? "-"
        let p99 = times.map { $0.count > 0 ? milliseconds($0.percentile(99)) : "-" } ?? "-"
        lines.append(
            "\(target.target.peer)  \(target.target.address.hostPortDescription)  \(target.sent)  \(target.received)  "
                + "\(target.lost)  \(EchoBenchmark.Result.percent(loss))  \(target.duplicate)  \(target.corrupt)  "
                + "\(p50)  \(p99)"
        )
    }
    return lines
}

/// `mesh --once --json`.
struct MeshOnceJSON: Encodable {
    struct Peer: Encodable {
        var peer, address: String
        var sent, received, lost, duplicate, corrupt, skipped: UInt64
        var loss_percent: Double
        var rtt_ms: [String: Double]?
    }

    var type = "mesh"
    var duration_s: Double
    var peers: [Peer]

    init(_ snapshot: MeshSnapshot, duration: Duration) {
        self.duration_s = duration.seconds
        self.peers = snapshot.targets.map { target in
            Peer(
                peer: target.target.peer.description,
                address: target.target.address.hostPortDescription,
                sent: target.sent,
                received: target.received,
                lost: target.lost,
                duplicate: target.duplicate,
                corrupt: target.corrupt,
                skipped: target.skipped,
                loss_percent: target.sent == 0 ? 0 : Double(target.lost) / Double(target.sent) * 100,
                rtt_ms: target.times.flatMap { $0.count > 0 ? $0.milliseconds([50, 90, 99]) : nil }
            )
        }
    }
}
