import ArgumentParser
import Logging
import NIOCore
import ServiceLifecycle
import UDPEcho

extension ServerCommand {
    /// `udpecho server --protocol twamp`: TWAMP-Control on TCP and the Session-Reflector on UDP, until a signal.
    func runTwamp(format: LogFormat, logger: Logger) async throws {
        let server = try await exitOnServerSetupError {
            let configuration = try self.twamp.configuration(
                address: try self.listenAddress(),
                threads: self.threads ?? 1
            )
            try DescriptorLimit.ensure(
                DescriptorLimit.runtime + 4 * configuration.threads + configuration.maximumConnections
            )
            return try await TwampServer(configuration: configuration, logger: logger)
        }
        let metrics = try await self.metricsService { address in
            let exporter = try await PrometheusExporter(address: address, server: server.reflectorServer) {
                .once(server.metricsText())
            }
            return (exporter, exporter.url)
        }
        let control = server.controlAddress?.hostPortDescription ?? "?"
        let test = server.testAddress.hostPortDescription
        let modes = server.configuration.modes.description
        self.say(
            format,
            "running",
            "running as a TWAMP server (\(modes)) on \(control) (TCP), reflecting on \(test) (UDP)",
            [("address", control), ("test-address", test), ("modes", modes)]
        )
        try await self.serveControl(server, metrics: metrics, format: format, logger: logger) {
            let reflected = server.reflectorStatistics
            return Self.controlFields(server.statistics) + [
                ("reflected", "\(reflected.echoed)"), ("dropped", "\(reflected.drops.values.reduce(0, +))"),
            ]
        }
    }

    /// `udpecho server --protocol owamp`: OWAMP-Control on TCP and its test sessions on UDP, until a signal.
    func runOwamp(format: LogFormat, logger: Logger) async throws {
        let server = try await exitOnServerSetupError {
            let configuration = try self.twamp.owampConfiguration(address: try self.listenAddress())
            try DescriptorLimit.ensure(
                DescriptorLimit.runtime + configuration.maximumConnections + configuration.maximumSessions
            )
            return try await OwampServer(configuration: configuration, logger: logger)
        }
        let metrics = try await self.metricsService { address in
            let endpoint = try await MetricsEndpoint(address: address) { .once(server.metricsText()) }
            return (endpoint, "http://\(endpoint.localAddress?.hostPortDescription ?? "?")/metrics")
        }
        let control = server.controlAddress?.hostPortDescription ?? "?"
        let modes = server.configuration.modes.description
        self.say(
            format,
            "running",
            "running as an OWAMP server (\(modes)) on \(control) (TCP)",
            [("address", control), ("modes", modes)]
        )
        try await self.serveControl(server, metrics: metrics, format: format, logger: logger) {
            let statistics = server.statistics
            return Self.controlFields(statistics) + [
                ("fetches", "\(statistics.fetches)"), ("fetches-refused", "\(statistics.fetchesRefused)"),
            ]
        }
    }

    /// What a TWAMP or OWAMP server's summary says of its control protocol.
    private static func controlFields(_ statistics: IPPMServerStatistics) -> [(String, String)] {
        [
            ("connections", "\(statistics.connections)"), ("refused", "\(statistics.connectionsRefused)"),
            ("sessions", "\(statistics.sessionsAccepted)"), ("sessions-refused", "\(statistics.sessionsRefused)"),
            ("auth-failures", "\(statistics.authenticationFailures)"),
            ("protocol-errors", "\(statistics.protocolErrors)"), ("stalled", "\(statistics.stalled)"),
        ]
    }

    /// Serves `server` (and the metrics service) until SIGTERM or SIGINT, then says so and prints the summary of
    /// `fields`.
    private func serveControl(
        _ server: any Service,
        metrics: (service: any Service, url: String)?,
        format: LogFormat,
        logger: Logger,
        fields: () -> [(String, String)]
    ) async throws {
        if let metrics { self.say(format, "metrics", "metrics on \(metrics.url)", [("url", metrics.url)]) }
        var services: [ServiceGroupConfiguration.ServiceConfiguration] = [.init(service: server)]
        if let metrics { services.append(.init(service: metrics.service)) }
        let group = ServiceGroup(
            configuration: .init(services: services, gracefulShutdownSignals: [.sigterm, .sigint], logger: logger)
        )
        try await group.run()
        let fields = fields()
        Stream.out.line(self.line(format, "cancelled", "cancelled", []))
        Stream.out.line(self.line(format, "summary", fields.map { "\($0.0)=\($0.1)" }.joined(separator: " "), fields))
    }

    /// The metrics service `--metrics` asks for, `make` binding it on that address now (one that cannot be bound
    /// stops the server before it says it runs), and its URL; nil without `--metrics`.
    func metricsService(
        _ make: (SocketAddress) async throws -> (service: any Service, url: String)
    ) async throws -> (service: any Service, url: String)? {
        guard let metricsAddress = self.metrics else { return nil }
        do {
            return try await make(try await resolveTarget(metricsAddress))
        } catch {
            Stream.err.line("udpecho: error: cannot serve metrics on \(metricsAddress): \(error)")
            throw ExitCode.failure
        }
    }
}

/// Runs a server's setup: a usage error stays one; anything else (a port in use, a key file that cannot be read) is
/// said on standard error, exit code 1.
func exitOnServerSetupError<Result>(_ setup: () async throws -> Result) async throws -> Result {
    do {
        return try await setup()
    } catch let error as ValidationError {
        throw error
    } catch {
        Stream.err.line("udpecho: error: \(error)")
        throw ExitCode.failure
    }
}
