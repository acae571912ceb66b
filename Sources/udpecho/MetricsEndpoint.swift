import NIOCore
import NIOHTTP1
import NIOPosix
import Prometheus
import ServiceLifecycle
import UDPEcho

/// `GET /metrics` in Prometheus' text format, on SwiftNIO's HTTP/1 server. Each scrape first publishes the server's
/// latest counters, so that what it shows is current.
final class MetricsEndpoint: Service, Sendable {
    let channel: any Channel

    /// Binds the endpoint; it answers from then on, until ``run()`` returns on shutdown.
    init(address: SocketAddress, registry: PrometheusCollectorRegistry, metrics: ServerMetrics) async throws {
        self.channel = try await ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.configureHTTPServerPipeline()
                    try channel.pipeline.syncOperations.addHandler(ScrapeHandler(registry: registry, metrics: metrics))
                }
            }
            .bind(to: address)
            .get()
    }

    var localAddress: SocketAddress? { self.channel.localAddress }

    func run() async throws {
        await withGracefulShutdownHandler {
            try? await self.channel.closeFuture.get()
        } onGracefulShutdown: {
            self.channel.close(promise: nil)
        }
    }
}

private final class ScrapeHandler: ChannelInboundHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias OutboundOut = HTTPServerResponsePart

    private let registry: PrometheusCollectorRegistry
    private let metrics: ServerMetrics
    private var path = ""

    init(registry: PrometheusCollectorRegistry, metrics: ServerMetrics) {
        self.registry = registry
        self.metrics = metrics
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch self.unwrapInboundIn(data) {
        case .head(let head):
            self.path = head.method == .GET ? head.uri : ""
        case .body:
            break
        case .end:
            let found = self.path == "/metrics" || self.path.hasPrefix("/metrics?")
            let body: String
            if found {
                self.metrics.publish()
                body = self.registry.emitToString()
            } else {
                body = "udpecho serves its metrics at GET /metrics\n"
            }
            var headers = HTTPHeaders()
            headers.add(name: "Content-Type", value: found ? "text/plain; version=0.0.4; charset=utf-8" : "text/plain")
            headers.add(name: "Content-Length", value: "\(body.utf8.count)")
            let head = HTTPResponseHead(version: .http1_1, status: found ? .ok : .notFound, headers: headers)
            context.write(self.wrapOutboundOut(.head(head)), promise: nil)
            context.write(self.wrapOutboundOut(.body(.byteBuffer(ByteBuffer(string: body)))), promise: nil)
            context.writeAndFlush(self.wrapOutboundOut(.end(nil)), promise: nil)
        }
    }
}
