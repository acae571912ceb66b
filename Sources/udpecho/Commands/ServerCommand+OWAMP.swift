import ArgumentParser
import Logging
import NIOCore
import ServiceLifecycle
import UDPEcho

extension ServerCommand {
    /// `udpecho server --protocol owamp`: OWAMP-Control on TCP and its test sessions on UDP, until a signal.
    func runOwamp(format: LogFormat, logger: Logger) async throws {
        let server: OwampServer
        do {
            let configuration = try self.twamp.owampConfiguration(address: try self.listenAddress())
            try DescriptorLimit.ensure(
                DescriptorLimit.runtime + configuration.maximumConnections + configuration.maximumSessions
            )
            server = try await OwampServer(configuration: configuration, logger: logger)
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
                let exporter = try await MetricsEndpoint(address: try await resolveTarget(metricsAddress)) {
                    var text: String? = server.metricsText()
                    return MetricsStream { buffer in
                        if let chunk = text { buffer.writeString(chunk) }
                        text = nil
                        return false
                    }
                }
                metricsURL = "http://\(exporter.localAddress?.hostPortDescription ?? "?")/metrics"
                services.append(.init(service: exporter))
            } catch {
                Stream.err.line("udpecho: error: cannot serve metrics on \(metricsAddress): \(error)")
                throw ExitCode.failure
            }
        }
        let control = server.controlAddress?.hostPortDescription ?? "?"
        let modes = server.configuration.modes.description
        self.say(
            format,
            "running",
            "running as an OWAMP server (\(modes)) on \(control) (TCP)",
            [("address", control), ("modes", modes)]
        )
        if let metricsURL { self.say(format, "metrics", "metrics on \(metricsURL)", [("url", metricsURL)]) }
        let group = ServiceGroup(
            configuration: .init(services: services, gracefulShutdownSignals: [.sigterm, .sigint], logger: logger)
        )
        try await group.run()
        let statistics = server.statistics
        let fields: [(String, String)] = [
            ("connections", "\(statistics.connections)"), ("refused", "\(statistics.connectionsRefused)"),
            ("sessions", "\(statistics.sessionsAccepted)"), ("sessions-refused", "\(statistics.sessionsRefused)"),
            ("fetches", "\(statistics.fetches)"), ("fetches-refused", "\(statistics.fetchesRefused)"),
            ("auth-failures", "\(statistics.authenticationFailures)"),
            ("protocol-errors", "\(statistics.protocolErrors)"), ("stalled", "\(statistics.stalled)"),
        ]
        let summary = fields.map { "\($0.0)=\($0.1)" }.joined(separator: " ")
        Stream.out.line(self.line(format, "cancelled", "cancelled", []))
        Stream.out.line(self.line(format, "summary", summary, fields))
    }
}
