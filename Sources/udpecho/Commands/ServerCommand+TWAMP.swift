import ArgumentParser
import Logging
import NIOCore
import ServiceLifecycle
import UDPEcho

extension ServerCommand {
    /// `udpecho server --protocol twamp`: TWAMP-Control on TCP and the Session-Reflector on UDP, until a signal.
    func runTwamp(format: LogFormat, logger: Logger) async throws {
        let server: TwampServer
        do {
            let configuration = try self.twamp.configuration(
                address: try self.listenAddress(),
                threads: self.threads ?? 1
            )
            try DescriptorLimit.ensure(
                DescriptorLimit.runtime + 4 * configuration.threads + configuration.maximumConnections
            )
            server = try await TwampServer(configuration: configuration, logger: logger)
        } catch let error as ValidationError {
            throw error
        } catch {
            Stream.err.line("udpecho: error: \(error)")
            throw ExitCode.failure
        }
        var services: [ServiceGroupConfiguration.ServiceConfiguration] = [.init(service: server)]
        var metricsURL: String?
        if let metricsAddress = self.metrics {
            do {
                let exporter = try await PrometheusExporter(
                    address: try await resolveTarget(metricsAddress),
                    server: server.reflectorServer
                ) {
                    var text: String? = server.metricsText()
                    return MetricsStream { buffer in
                        if let chunk = text { buffer.writeString(chunk) }
                        text = nil
                        return false
                    }
                }
                metricsURL = exporter.url
                services.append(.init(service: exporter))
            } catch {
                Stream.err.line("udpecho: error: cannot serve metrics on \(metricsAddress): \(error)")
                throw ExitCode.failure
            }
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
        if let metricsURL { self.say(format, "metrics", "metrics on \(metricsURL)", [("url", metricsURL)]) }
        let group = ServiceGroup(
            configuration: .init(services: services, gracefulShutdownSignals: [.sigterm, .sigint], logger: logger)
        )
        try await group.run()
        let statistics = server.statistics
        let reflected = server.reflectorStatistics
        let fields: [(String, String)] = [
            ("connections", "\(statistics.connections)"), ("refused", "\(statistics.connectionsRefused)"),
            ("sessions", "\(statistics.sessionsAccepted)"), ("sessions-refused", "\(statistics.sessionsRefused)"),
            ("auth-failures", "\(statistics.authenticationFailures)"),
            ("protocol-errors", "\(statistics.protocolErrors)"), ("stalled", "\(statistics.stalled)"),
            ("reflected", "\(reflected.echoed)"), ("dropped", "\(reflected.drops.values.reduce(0, +))"),
        ]
        let summary = fields.map { "\($0.0)=\($0.1)" }.joined(separator: " ")
        Stream.out.line(self.line(format, "cancelled", "cancelled", []))
        Stream.out.line(self.line(format, "summary", summary, fields))
    }
}
