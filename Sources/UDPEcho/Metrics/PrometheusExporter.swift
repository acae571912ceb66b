public import NIOCore
import Prometheus
public import ServiceLifecycle

/// A server's metrics served in Prometheus' text format at `http://ADDRESS/metrics`: a registry of its own, the
/// publication of the server's counters (``ServerMetrics``) and the endpoint (``MetricsEndpoint``), as one `Service`.
/// `udpecho server --metrics` and `udpecho mesh --metrics` both run one; the mesh appends its targets' metrics.
///
/// ```swift
/// let exporter = try await PrometheusExporter(address: address, server: server)
/// print("metrics on \(exporter.url)")
/// let group = ServiceGroup(services: [server, exporter], logger: logger)
/// ```
public final class PrometheusExporter: Service, Sendable {
    private let metrics: ServerMetrics
    private let endpoint: MetricsEndpoint
    /// Where the metrics are served, with the real port: `http://127.0.0.1:9107/metrics`.
    public let url: String

    /// Binds the endpoint at once (so that an address in use is an error before anything says it runs).
    ///
    /// - Parameters:
    ///   - address: Where to listen.
    ///   - server: The server whose counters to serve; each scrape publishes them first, so that they are current.
    ///   - configuration: The endpoint's limits.
    ///   - more: Called for each scrape: a body served after the server's metrics, a piece at a time as the scraper
    ///     reads it (a mesh agent's targets: tens of megabytes for 10,000 peers, never held whole).
    ///   - moreProtobuf: The same in Prometheus' protobuf format, for scrapes that ask for it (native histograms);
    ///     without it every scrape gets text.
    ///   - routes: Answers requests for other paths than `/metrics` (a live page at `/`).
    /// - Throws: ``EchoError/socket(operation:address:errno:)`` when the address cannot be bound.
    public init(
        address: SocketAddress,
        server: EchoServer,
        configuration: MetricsEndpoint.Configuration = MetricsEndpoint.Configuration(),
        more: (@Sendable () -> MetricsStream)? = nil,
        moreProtobuf: (@Sendable () -> MetricsStream)? = nil,
        routes: (@Sendable (EndpointRequest) async -> EndpointResponse)? = nil
    ) async throws {
        let registry = PrometheusCollectorRegistry()
        let metrics = ServerMetrics(server: server, factory: PrometheusMetricsFactory(registry: registry))
        self.metrics = metrics
        var protobuf: (@Sendable () -> MetricsStream)?
        if let moreProtobuf {
            protobuf = { @Sendable () -> MetricsStream in
                metrics.publish()
                let families = ProtobufExposition.families(
                    fromText: ServerMetrics.addingHelp(to: registry.emitToString())
                )
                var head: [ProtobufExposition.Family]? = families
                let tail = moreProtobuf()
                return MetricsStream { buffer in
                    if let families = head {
                        for family in families { ProtobufExposition.write(family, into: &buffer) }
                        head = nil
                        return true
                    }
                    return tail.next(&buffer)
                }
            }
        }
        self.endpoint = try await MetricsEndpoint(
            address: address,
            configuration: configuration,
            stream: {
                metrics.publish()
                var head: String? = ServerMetrics.addingHelp(to: registry.emitToString())
                let tail = more?()
                return MetricsStream { buffer in
                    if let text = head {
                        buffer.writeString(text)
                        head = nil
                        return tail != nil
                    }
                    return tail?.next(&buffer) ?? false
                }
            },
            protobuf: protobuf,
            routes: routes
        )
        self.url = "http://\(self.endpoint.localAddress?.hostPortDescription ?? "?")/metrics"
    }

    /// Publishes and serves until graceful shutdown or cancellation.
    public func run() async throws {
        try await withThrowingDiscardingTaskGroup { group in
            group.addTask { try await self.metrics.run() }
            group.addTask { try await self.endpoint.run() }
        }
    }
}
