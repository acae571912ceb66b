import Atomics
public import NIOCore
import NIOHTTP1
import NIOPosix
public import ServiceLifecycle

/// An HTTP/1.1 endpoint that answers `GET /metrics` with a text body (Prometheus' exposition format), on SwiftNIO,
/// built to stay small whatever its clients do.
///
/// - A connection's responses are written only as fast as the client reads them: while the socket's send buffer is
///   full the endpoint neither reads further requests nor answers the ones it has, so pipelined requests whose
///   responses are never read cost one read's worth of memory, not one response each.
/// - At most ``Configuration/maximumConnections`` connections are served at once; more are closed at once.
/// - A request must be complete within ``Configuration/requestTimeout`` of the connection opening, and the next one
///   within ``Configuration/idleTimeout`` of a response; otherwise the connection is closed (slow or idle clients
///   cannot hold connections open).
/// - `Connection: close` and HTTP/1.0 requests (without keep-alive) get their response and then the connection is
///   closed.
///
/// ```swift
/// let endpoint = try await MetricsEndpoint(address: address) { registry.emitToString() }
/// ```
public final class MetricsEndpoint: Service, Sendable {
    /// Limits of the endpoint; the defaults suit Prometheus scraping every few seconds.
    public struct Configuration: Sendable {
        /// Connections served at once.
        public var maximumConnections: Int
        /// How long a new connection may take to send a complete request.
        public var requestTimeout: Duration
        /// How long a connection may wait, after a response, before its next complete request.
        public var idleTimeout: Duration

        /// Limits; see each property.
        public init(
            maximumConnections: Int = 64,
            requestTimeout: Duration = .seconds(10),
            idleTimeout: Duration = .seconds(120)
        ) {
            self.maximumConnections = maximumConnections
            self.requestTimeout = requestTimeout
            self.idleTimeout = idleTimeout
        }
    }

    private let channel: any Channel
    private let connections: ManagedAtomic<Int>

    /// Binds the endpoint; it answers from then on, until ``run()`` returns on shutdown.
    ///
    /// - Parameters:
    ///   - address: Where to listen.
    ///   - configuration: The limits.
    ///   - body: Makes the body of a `GET /metrics` response; called on an event loop for each request.
    public convenience init(
        address: SocketAddress,
        configuration: Configuration = Configuration(),
        body: @escaping @Sendable () -> String
    ) async throws {
        try await self.init(address: address, configuration: configuration) { allocator in
            allocator.buffer(string: body())
        }
    }

    /// Binds the endpoint with a body written straight into a buffer.
    public convenience init(
        address: SocketAddress,
        configuration: Configuration = Configuration(),
        bytes body: @escaping @Sendable (ByteBufferAllocator) -> ByteBuffer
    ) async throws {
        try await self.init(address: address, configuration: configuration) {
            var sent = false
            return MetricsStream { buffer in
                if !sent {
                    var whole = body(ByteBufferAllocator())
                    buffer.writeBuffer(&whole)
                    sent = true
                }
                return false
            }
        }
    }

    /// Binds the endpoint with a body written a piece at a time, each piece when the connection has taken the
    /// previous one (chunked transfer encoding): a large body (a mesh agent's, tens of megabytes) is never held
    /// whole.
    public init(
        address: SocketAddress,
        configuration: Configuration = Configuration(),
        stream body: @escaping @Sendable () -> MetricsStream
    ) async throws {
        let connections = ManagedAtomic(0)
        self.connections = connections
        self.channel = try await ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            // At most 4 KiB a read: a request is a few hundred bytes, and every request one read brings in is
            // parsed and queued behind the response in progress, so a client pipelining requests it never reads
            // the answers to could otherwise queue some 1,700 requests a read (64 KiB), which cost memory and,
            // once it is gone, CPU to throw away.
            .childChannelOption(
                .recvAllocator,
                value: AdaptiveRecvByteBufferAllocator(minimum: 64, initial: 1024, maximum: 4096)
            )
            .childChannelInitializer { channel in
                guard connections.loadThenWrappingIncrement(ordering: .relaxed) < configuration.maximumConnections
                else {
                    connections.wrappingDecrement(ordering: .relaxed)
                    return channel.close()
                }
                channel.closeFuture.whenComplete { _ in connections.wrappingDecrement(ordering: .relaxed) }
                return channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(BackPressureHandler())
                    try channel.pipeline.syncOperations.configureHTTPServerPipeline()
                    try channel.pipeline.syncOperations.addHandler(
                        ScrapeHandler(configuration: configuration, body: body)
                    )
                }
            }
            .bind(to: address)
            .get()
    }

    /// The address the endpoint listens on, with the real port.
    public var localAddress: SocketAddress? { self.channel.localAddress }

    /// Connections open now.
    public var openConnections: Int { self.connections.load(ordering: .relaxed) }

    /// Serves until graceful shutdown or cancellation, then closes the listening socket.
    public func run() async throws {
        await withGracefulShutdownHandler {
            await withTaskCancellationHandler {
                try? await self.channel.closeFuture.get()
            } onCancel: {
                self.channel.close(promise: nil)
            }
        } onGracefulShutdown: {
            self.channel.close(promise: nil)
        }
    }
}

/// A response body made a piece at a time: each call appends the next piece to the buffer and returns whether more
/// follows. Called on the connection's event loop only.
public struct MetricsStream {
    let next: (inout ByteBuffer) -> Bool

    /// A stream whose pieces `next` appends, returning false after the last.
    public init(_ next: @escaping (inout ByteBuffer) -> Bool) { self.next = next }
}

/// Answers each request of one connection, in order (SwiftNIO's pipelining handler hands them over one at a time).
private final class ScrapeHandler: ChannelInboundHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias OutboundOut = HTTPServerResponsePart

    private let configuration: MetricsEndpoint.Configuration
    private let body: @Sendable () -> MetricsStream
    /// The body being sent, and whether the connection stays open after it.
    private var streaming: (stream: MetricsStream, keepAlive: Bool)?
    private var pumping = false
    private var request: HTTPRequestHead?
    /// A complete request whose response waits until the client reads what it was sent before.
    private var waiting: HTTPRequestHead?
    private var deadline: Scheduled<Void>?

    init(configuration: MetricsEndpoint.Configuration, body: @escaping @Sendable () -> MetricsStream) {
        self.configuration = configuration
        self.body = body
    }

    func channelActive(context: ChannelHandlerContext) {
        self.arm(context, self.configuration.requestTimeout)
        context.fireChannelActive()
    }

    func channelInactive(context: ChannelHandlerContext) {
        self.deadline?.cancel()
        context.fireChannelInactive()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch self.unwrapInboundIn(data) {
        case .head(let head):
            self.request = head
        case .body:
            break
        case .end:
            guard let head = self.request else { return }
            self.request = nil
            self.deadline?.cancel()
            if context.channel.isWritable && self.streaming == nil {
                self.respond(context, to: head)
            } else {
                self.waiting = head
            }
        }
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        if context.channel.isWritable && self.streaming != nil {
            self.pump(context)
        } else if context.channel.isWritable, let head = self.waiting {
            self.waiting = nil
            self.respond(context, to: head)
        }
        context.fireChannelWritabilityChanged()
    }

    private func respond(_ context: ChannelHandlerContext, to head: HTTPRequestHead) {
        let path = head.uri.split(separator: "?", maxSplits: 1, omittingEmptySubsequences: false).first ?? ""
        let found = head.method == .GET && path == "/metrics"
        var headers = HTTPHeaders()
        headers.add(name: "Content-Type", value: found ? "text/plain; version=0.0.4; charset=utf-8" : "text/plain")
        let keepAlive = head.isKeepAlive
        headers.add(name: "Connection", value: keepAlive ? "keep-alive" : "close")
        let stream: MetricsStream
        if found {
            // No Content-Length: HTTP/1.1 gets a chunked body, HTTP/1.0 one that ends with the connection.
            stream = self.body()
        } else {
            let text = "udpecho serves its metrics at GET /metrics\n"
            headers.add(name: "Content-Length", value: "\(text.utf8.count)")
            var sent = false
            stream = MetricsStream { buffer in
                if !sent { buffer.writeString(text) }
                sent = true
                return false
            }
        }
        let response = HTTPResponseHead(version: head.version, status: found ? .ok : .notFound, headers: headers)
        context.write(self.wrapOutboundOut(.head(response)), promise: nil)
        self.streaming = (stream, keepAlive)
        self.pump(context)
    }

    /// Writes pieces of the body while the connection takes them; ends the response after the last.
    private func pump(_ context: ChannelHandlerContext) {
        // A flush can make the channel writable again and call back in here: the loop goes on by itself then, since
        // it looks at the channel again after each flush.
        guard !self.pumping else { return }
        self.pumping = true
        defer { self.pumping = false }
        while let streaming = self.streaming, context.channel.isWritable {
            var buffer = context.channel.allocator.buffer(capacity: 64 << 10)
            let more = streaming.stream.next(&buffer)
            if buffer.readableBytes > 0 {
                context.write(self.wrapOutboundOut(.body(.byteBuffer(buffer))), promise: nil)
            }
            guard more else {
                self.streaming = nil
                self.finish(context, keepAlive: streaming.keepAlive)
                return
            }
            context.flush()
        }
    }

    private func finish(_ context: ChannelHandlerContext, keepAlive: Bool) {
        if keepAlive {
            context.writeAndFlush(self.wrapOutboundOut(.end(nil)), promise: nil)
            self.arm(context, self.configuration.idleTimeout)
            if context.channel.isWritable, let head = self.waiting {
                self.waiting = nil
                self.respond(context, to: head)
            }
        } else {
            let loopBound = NIOLoopBound(context, eventLoop: context.eventLoop)
            context.writeAndFlush(self.wrapOutboundOut(.end(nil))).whenComplete { _ in
                loopBound.value.close(promise: nil)
            }
        }
    }

    /// Closes the connection unless a complete request arrives within `timeout`.
    private func arm(_ context: ChannelHandlerContext, _ timeout: Duration) {
        self.deadline?.cancel()
        let loopBound = NIOLoopBound(context, eventLoop: context.eventLoop)
        self.deadline = context.eventLoop.scheduleTask(in: .nanoseconds(timeout.nanoseconds)) {
            loopBound.value.close(promise: nil)
        }
    }
}
