import ArgumentParser
import Logging
import NIOCore
import NIOPosix
import ServiceLifecycle
import UDPEcho
import UnixSignals

struct ExporterCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "exporter",
        abstract: "Probe targets when Prometheus scrapes, as blackbox_exporter does: echo, STAMP, TWAMP, OWAMP.",
        discussion: """
            Each scrape of /probe?target=HOST:PORT&module=NAME runs one probe of the module against the target and \
            answers its results as metrics: probe_success, probe_duration_seconds, and udpecho_probe_* (packets \
            sent, received, lost, duplicate, corrupt; loss ratio; round-trip quantiles and jitter; for STAMP and \
            TWAMP the reflector's time, forward and backward delay, hops and DSCP; for OWAMP each direction's \
            one-way delay and loss). /metrics has the exporter's own; POST /-/reload (or SIGHUP) reads the file \
            again, and a file with a bad line is refused whole, the one in force kept.

              udpecho exporter --config /etc/udpecho/exporter.yml --listen :9338

            The configuration (YAML) has the modules, the allow list (nothing may be probed that it does not list: \
            address prefixes, and names, which are resolved only when listed) and the limits:

              modules:
                echo:
                  protocol: echo
                stamp_ef:
                  protocol: stamp      # echo, stamp, twamp or owamp
                  count: 20            # packets a probe (OWAMP: each way)
                  interval: 50ms       # between them
                  timeout: 1s          # a packet later than this is lost
                  dscp: 46             # also ecn, ttl, size, flows; twamp/owamp: mode, key_file, key_id
                  fail_if_loss_above: 0.05
              allow: [192.0.2.0/24, 2001:db8::/32, router1.example.net]
              limits:                  # the defaults
                concurrent_probes: 16
                concurrent_probes_per_target: 2
                probes_per_second: 20
                packets_per_second: 10000

            A probe ends within the scrape's timeout (Prometheus' X-Prometheus-Scrape-Timeout-Seconds header, less \
            --timeout-offset), sending fewer packets when all would not fit; past a limit a scrape gets 503 at once.

            Prometheus' relabelling, as for blackbox_exporter:
              - job_name: udpecho
                metrics_path: /probe
                params: { module: [stamp_ef] }
                static_configs: [{ targets: ['192.0.2.1:862'] }]
                relabel_configs:
                  - { source_labels: [__address__], target_label: __param_target }
                  - { source_labels: [__param_target], target_label: instance }
                  - { target_label: __address__, replacement: '127.0.0.1:9338' }

            --config.check reads the file, says what is wrong with it (with its line) and exits: 0 when it is good.
            """
    )

    @Option(
        name: [.customLong("config"), .customLong("config.file")],
        help: ArgumentHelp("The configuration file (YAML): modules, allow list, limits.", valueName: "file")
    )
    var configPath: String

    @Option(
        name: [.customLong("listen"), .customLong("web.listen-address")],
        help: ArgumentHelp("Where to serve HTTP. (default: :9338)", valueName: "host:port"),
        transform: parseAddress
    )
    var listen: HostAndPort?

    @Flag(name: .customLong("config.check"), help: "Check the configuration file and exit (0: good, 1: not).")
    var check = false

    @Option(
        parsing: .unconditional,
        help: ArgumentHelp(
            "How long a probe may take when the scrape does not say (Prometheus sends X-Prometheus-Scrape-Timeout-Seconds).",
            valueName: "duration"
        ),
        transform: parseDuration
    )
    var defaultTimeout: Duration = .seconds(10)

    @Option(
        parsing: .unconditional,
        help: ArgumentHelp(
            "Taken off the scrape's timeout, so that the answer reaches Prometheus in time.",
            valueName: "duration"
        ),
        transform: parseDuration
    )
    var timeoutOffset: Duration = .milliseconds(500)

    @Flag(name: [.short, .long], help: "Say nothing but errors (reloads are said otherwise).")
    var quiet = false

    func validate() throws {
        if self.defaultTimeout <= .zero { throw ValidationError("--default-timeout must be more than 0") }
        if self.timeoutOffset < .zero { throw ValidationError("--timeout-offset must not be negative") }
    }

    func run() async throws {
        let configuration: ExporterConfiguration
        switch ExporterConfiguration.load(path: self.configPath) {
        case .success(let loaded):
            configuration = loaded
        case .failure(let error):
            Stream.err.line("udpecho: error: \(self.configPath): \(error)")
            throw self.check ? ExitCode.failure : ExitCode(2)
        }
        if self.check {
            Stream.out.line(
                "\(self.configPath): good: \(configuration.modules.count) modules, "
                    + "\(configuration.allow.prefixes.count) prefixes and \(configuration.allow.names.count) names allowed, "
                    + "\(configuration.targets.count) continuous targets"
            )
            return
        }
        if configuration.allow.prefixes.isEmpty && configuration.allow.names.isEmpty {
            Stream.err.line(
                "udpecho: warning: \(self.configPath) allows no target (allow:): every probe will be refused"
            )
        }
        var options = ProbeExporter.Options(path: self.configPath)
        options.defaultScrapeTimeout = self.defaultTimeout
        options.timeoutOffset = self.timeoutOffset
        let quiet = self.quiet
        let exporter = ProbeExporter(configuration: configuration, options: options) { event in
            switch event {
            case .reloaded(let modules):
                if !quiet { Stream.out.line("configuration reloaded: \(modules) modules") }
            case .reloadFailed(let reason):
                Stream.err.line("udpecho: error: configuration not reloaded, the one in force is kept: \(reason)")
            }
        }
        let listen = self.listen ?? HostAndPort(host: nil, port: 9338)
        let address: SocketAddress
        do {
            let resolved = try await NIOThreadPool.singleton.runIfActive {
                try NameResolver.resolve(listen, passive: true)
            }
            address = try await exporter.bind(address: resolved[0])
        } catch {
            Stream.err.line("udpecho: error: cannot serve on \(listen): \(error)")
            throw ExitCode.failure
        }
        Stream.out.line(
            "udpecho exporter on http://\(address.hostPortDescription)/probe: \(configuration.modules.count) modules "
                + "(\(configuration.modules.keys.sorted().joined(separator: ", ")))"
        )
        let hangups = Task {
            for await _ in await UnixSignalsSequence(trapping: .sighup) { exporter.reload() }
        }
        defer { hangups.cancel() }
        var logger = Logger(label: "udpecho.exporter")
        logger.logLevel = .warning
        let group = ServiceGroup(
            configuration: .init(
                services: [.init(service: exporter)],
                gracefulShutdownSignals: [.sigterm, .sigint],
                logger: logger
            )
        )
        try await group.run()
    }
}
