import Atomics
import Dispatch
public import NIOCore
import NIOEmbedded
import NIOHTTP1
import NIOPosix
public import ServiceLifecycle
import Synchronization

/// An HTTP/1.1 endpoint that answers `GET /metrics` with a text body (Prometheus' exposition format), or its
/// protobuf format when the scrape asks for it and a protobuf body is given, and other paths through `routes` (the
/// exporter's `/probe`, the live pages), on SwiftNIO, built to stay small whatever its clients do.
///
/// - A connection's responses are written only as fast as the client reads them: while the socket's send buffer is
///   full the endpoint neither reads further requests nor answers the ones it has, so pipelined requests whose
///   responses are never read cost one read's worth of memory, not one response each.
/// - At most ``Configuration/maximumConnections`` connections are served at once, and at most
///   ``Configuration/maximumConnectionsPerSource`` from one address. Past that, new connections wait in a queue
///   (``Configuration/maximumQueuedConnections``, then they are closed) and, in order of arrival, take the place of
///   connections that have waited more than ``Configuration/requestGrace`` for a complete request: clients that
///   open connections and dribble requests a line at a time (slowloris) cannot keep a scraper out, since a scraper's
///   request is complete at once. The grace begins when the connection is active on its event loop, and that loop
///   closes it only if no complete request came by the time it has read what the connection sent.
/// - A request must be complete within ``Configuration/requestTimeout`` of the connection opening, and the next one
///   within ``Configuration/idleTimeout`` of a response; otherwise the connection is closed (slow or idle clients
///   cannot hold connections open).
/// - `Connection: close` and HTTP/1.0 requests (without keep-alive) get their response and then the connection is
///   closed.
/// - A route's answer is made in a task; meanwhile the connection's further requests wait, as they wait for a
///   response being sent.
///
/// ```swift
/// let endpoint = try await MetricsEndpoint(address: address) { registry.emitToString() }
/// ```
public final class MetricsEndpoint: Service, Sendable {
    /// Limits of the endpoint; the defaults suit Prometheus scraping every few seconds.
    public struct Configuration: Sendable {
        /// Connections served at once.
        public var maximumConnections: Int
        /// Connections served at once from one address.
        public var maximumConnectionsPerSource: Int
        /// Connections that may wait, accepted but not yet read, for a slot while the endpoint is full.
        public var maximumQueuedConnections: Int
        /// How long a connection keeps its slot while it waits for a complete request, when others wait for one.
        public var requestGrace: Duration
        /// How long a new connection may take to send a complete request.
        public var requestTimeout: Duration
        /// How long a connection may wait, after a response, before its next complete request.
        public var idleTimeout: Duration

        /// Limits; see each property.
        public init(
            maximumConnections: Int = 64,
            maximumConnectionsPerSource: Int = 32,
            maximumQueuedConnections: Int = 512,
            requestGrace: Duration = .milliseconds(250),
            requestTimeout: Duration = .seconds(10),
            idleTimeout: Duration = .seconds(120)
        ) {
            self.maximumConnections = maximumConnections
            self.maximumConnectionsPerSource = maximumConnectionsPerSource
            self.maximumQueuedConnections = maximumQueuedConnections
            self.requestGrace = requestGrace
            self.requestTimeout = requestTimeout
            self.idleTimeout = idleTimeout
        }
    }

    private let channel: any Channel
    private let connections: ConnectionTable
    private let queueTimer: RepeatedTask

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
    ///
    /// - Throws: ``EchoError/socket(operation:address:errno:)`` when the address cannot be bound.
    public init(
        address: SocketAddress,
        configuration: Configuration = Configuration(),
        stream body: @escaping @Sendable () -> MetricsStream,
        protobuf: (@Sendable () -> MetricsStream)? = nil,
        routes: (@Sendable (EndpointRequest) async -> EndpointResponse)? = nil
    ) async throws {
        let connections = ConnectionTable(configuration)
        self.connections = connections
        do {
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
                    // The connection is read only once it has a slot: until then it waits, accepted, in the queue.
                    let ready = channel.eventLoop.makePromise(of: Void.self)
                    let admitted = connections.admit(channel, refuse: { ready.fail(ChannelError.ioOnClosedChannel) }) {
                        slot in
                        channel.eventLoop.execute {
                            channel.closeFuture.whenComplete { _ in connections.remove(slot) }
                            ready.completeWith(
                                Result {
                                    try channel.pipeline.syncOperations.addHandler(BackPressureHandler())
                                    try channel.pipeline.syncOperations.configureHTTPServerPipeline()
                                    try channel.pipeline.syncOperations.addHandler(
                                        ScrapeHandler(
                                            configuration: configuration,
                                            slot: slot,
                                            table: connections,
                                            body: body,
                                            protobuf: protobuf,
                                            routes: routes
                                        )
                                    )
                                }
                            )
                        }
                    }
                    guard admitted else {
                        ready.fail(ChannelError.ioOnClosedChannel)
                        return ready.futureResult
                    }
                    return ready.futureResult
                }
                .bind(to: address)
                .get()
        } catch let error as IOError {
            throw EchoError.socket(operation: "bind", address: address.hostPortDescription, errno: error.errnoCode)
        }
        // While connections wait in the queue, the slots of those that waited past the grace are given to them.
        let interval = max(configuration.requestGrace / 4, .milliseconds(10))
        self.queueTimer = self.channel.eventLoop.scheduleRepeatedTask(
            initialDelay: .nanoseconds(interval.nanoseconds),
            delay: .nanoseconds(interval.nanoseconds)
        ) { _ in
            if connections.queuedCount > 0 { connections.serveQueue() }
        }
    }

    /// The address the endpoint listens on, with the real port.
    public var localAddress: SocketAddress? { self.channel.localAddress }

    /// Connections served now.
    public var openConnections: Int { self.connections.count }

    /// Connections that wait in the queue for a slot now.
    public var queuedConnections: Int { self.connections.queuedCount }

    /// Serves until graceful shutdown or cancellation, then closes the listening socket.
    public func run() async throws {
        await withGracefulShutdownHandler {
            await withTaskCancellationHandler {
                try? await self.channel.closeFuture.get()
                self.queueTimer.cancel()
                self.connections.closeQueued()
            } onCancel: {
                self.channel.close(promise: nil)
            }
        } onGracefulShutdown: {
            self.channel.close(promise: nil)
        }
    }
}

/// A request to a route of a ``MetricsEndpoint``: its method, path, query parameters and headers.
public struct EndpointRequest: Sendable {
    /// `GET`, `POST`, ...
    public var method: String
    /// The path, without the query.
    public var path: String
    /// The query's parameters in order, percent-decoded (`+` as a space); a parameter may appear more than once.
    public var query: [(name: String, value: String)]
    /// Whether the query had a malformed percent escape (`%` not followed by two hex digits).
    public var malformedQuery: Bool
    /// The headers, names in lower case.
    public var headers: [(name: String, value: String)]
    /// The client's address.
    public var remote: SocketAddress?

    /// A request.
    public init(
        method: String,
        path: String,
        query: [(name: String, value: String)] = [],
        malformedQuery: Bool = false,
        headers: [(name: String, value: String)] = [],
        remote: SocketAddress? = nil
    ) {
        self.method = method
        self.path = path
        self.query = query
        self.malformedQuery = malformedQuery
        self.headers = headers
        self.remote = remote
    }

    init(head: HTTPRequestHead, remote: SocketAddress?) {
        let parts = head.uri.split(separator: "?", maxSplits: 1, omittingEmptySubsequences: false)
        var malformed = false
        var query: [(String, String)] = []
        if parts.count == 2 {
            for pair in parts[1].split(separator: "&", omittingEmptySubsequences: true) {
                let sides = pair.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false)
                let name = Self.decode(sides[0], malformed: &malformed)
                let value = sides.count == 2 ? Self.decode(sides[1], malformed: &malformed) : ""
                query.append((name, value))
            }
        }
        self.init(
            method: head.method.rawValue,
            path: String(parts.first ?? ""),
            query: query,
            malformedQuery: malformed,
            headers: head.headers.map { ($0.name.lowercased(), $0.value) },
            remote: remote
        )
    }

    /// The values of the query parameter `name`.
    public func parameters(_ name: String) -> [String] { self.query.filter { $0.name == name }.map(\.value) }

    /// The value of the header `name` (case does not matter), the first if there are several.
    public func header(_ name: String) -> String? {
        let lower = name.lowercased()
        return self.headers.first { $0.name == lower }?.value
    }

    private static func decode(_ text: Substring, malformed: inout Bool) -> String {
        var bytes: [UInt8] = []
        bytes.reserveCapacity(text.utf8.count)
        var iterator = Array(text.utf8)[...]
        while let byte = iterator.popFirst() {
            if byte == UInt8(ascii: "+") {
                bytes.append(UInt8(ascii: " "))
            } else if byte == UInt8(ascii: "%") {
                guard iterator.count >= 2, let high = Self.hex(iterator[iterator.startIndex]),
                    let low = Self.hex(iterator[iterator.startIndex + 1])
                else {
                    malformed = true
                    bytes.append(byte)
                    continue
                }
                bytes.append(high << 4 | low)
                iterator = iterator.dropFirst(2)
            } else {
                bytes.append(byte)
            }
        }
        return String(decoding: bytes, as: UTF8.self)
    }

    private static func hex(_ byte: UInt8) -> UInt8? {
        switch byte {
        case UInt8(ascii: "0")...UInt8(ascii: "9"): byte - UInt8(ascii: "0")
        case UInt8(ascii: "a")...UInt8(ascii: "f"): byte - UInt8(ascii: "a") + 10
        case UInt8(ascii: "A")...UInt8(ascii: "F"): byte - UInt8(ascii: "A") + 10
        default: nil
        }
    }
}

/// A route's answer: status, content type, extra headers and the whole body.
public struct EndpointResponse: Sendable {
    /// The HTTP status code.
    public var status: Int
    /// The Content-Type.
    public var contentType: String
    /// Headers besides Content-Type, Content-Length and Connection.
    public var headers: [(String, String)]
    /// The body.
    public var body: ByteBuffer

    /// An answer of `status` with `body`.
    public init(
        status: Int = 200,
        contentType: String = "text/plain; charset=utf-8",
        headers: [(String, String)] = [],
        body: ByteBuffer
    ) {
        self.status = status
        self.contentType = contentType
        self.headers = headers
        self.body = body
    }

    /// An answer of `status` with the text `body`.
    public init(
        status: Int = 200,
        contentType: String = "text/plain; charset=utf-8",
        headers: [(String, String)] = [],
        text: String
    ) {
        self.init(status: status, contentType: contentType, headers: headers, body: ByteBuffer(string: text))
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
    private let slot: Int
    private let table: ConnectionTable
    private let body: @Sendable () -> MetricsStream
    /// The body being sent, and whether the connection stays open after it.
    private var streaming: (stream: MetricsStream, keepAlive: Bool)?
    private let routes: (@Sendable (EndpointRequest) async -> EndpointResponse)?
    /// The body in Prometheus' protobuf format, for the scrapes that ask for it.
    private let protobuf: (@Sendable () -> MetricsStream)?
    /// A route's answer is being made, in a task.
    private var pending = false
    private var pumping = false
    /// A response is about to start, in a task of the event loop.
    private var scheduled = false
    private var request: HTTPRequestHead?
    /// A complete request whose response waits until the client reads what it was sent before.
    private var waiting: HTTPRequestHead?
    private var deadline: Scheduled<Void>?

    init(
        configuration: MetricsEndpoint.Configuration,
        slot: Int,
        table: ConnectionTable,
        body: @escaping @Sendable () -> MetricsStream,
        protobuf: (@Sendable () -> MetricsStream)? = nil,
        routes: (@Sendable (EndpointRequest) async -> EndpointResponse)? = nil
    ) {
        self.configuration = configuration
        self.slot = slot
        self.table = table
        self.body = body
        self.protobuf = protobuf
        self.routes = routes
    }

    func channelActive(context: ChannelHandlerContext) {
        self.arm(context, self.configuration.requestTimeout)
        // Its grace for a request begins now that it reads, not when it was given its slot.
        self.table.waiting(self.slot)
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
            self.table.answering(self.slot)
            if context.channel.isWritable && self.streaming == nil && !self.scheduled && !self.pending {
                self.respondSoon(context, to: head)
            } else {
                self.waiting = head
            }
        }
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        if context.channel.isWritable && self.streaming != nil {
            self.pump(context)
        } else if context.channel.isWritable && !self.scheduled && !self.pending, let head = self.waiting {
            self.waiting = nil
            self.respondSoon(context, to: head)
        }
        context.fireChannelWritabilityChanged()
    }

    /// Answers `head` in a task of the event loop rather than at once: a client that pipelines thousands of requests
    /// gets them answered one a turn of the loop, so the other connections of that loop (a scraper's) are served in
    /// between. (Answered back to back, 3,200 requests queued in the socket of a client that had gone held a
    /// scrape on the same loop for 8.6 s on a loaded machine, in the test of never-read pipelined requests.)
    private func respondSoon(_ context: ChannelHandlerContext, to head: HTTPRequestHead) {
        self.scheduled = true
        let loopBound = NIOLoopBound((self, context), eventLoop: context.eventLoop)
        context.eventLoop.execute {
            let (handler, context) = loopBound.value
            handler.scheduled = false
            guard context.channel.isActive else { return }
            handler.respond(context, to: head)
        }
    }

    private func respond(_ context: ChannelHandlerContext, to head: HTTPRequestHead) {
        let path = head.uri.split(separator: "?", maxSplits: 1, omittingEmptySubsequences: false).first ?? ""
        let found = head.method == .GET && path == "/metrics"
        if !found, let routes = self.routes {
            self.answerLater(context, to: head, routes: routes)
            return
        }
        var headers = HTTPHeaders()
        // Prometheus asks for its protobuf format first when its native histograms are on.
        let protobuf =
            found
            ? self.protobuf.flatMap {
                ProtobufExposition.accepts(head.headers["Accept"].joined(separator: ",")) ? $0 : nil
            } : nil
        let contentType =
            protobuf != nil
            ? ProtobufExposition.contentType : found ? "text/plain; version=0.0.4; charset=utf-8" : "text/plain"
        headers.add(name: "Content-Type", value: contentType)
        let keepAlive = head.isKeepAlive
        headers.add(name: "Connection", value: keepAlive ? "keep-alive" : "close")
        let stream: MetricsStream
        if let protobuf {
            stream = protobuf()
        } else if found {
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

    /// Answers `head` with what `routes` makes of it, in a task: the connection's further requests wait meanwhile.
    private func answerLater(
        _ context: ChannelHandlerContext,
        to head: HTTPRequestHead,
        routes: @escaping @Sendable (EndpointRequest) async -> EndpointResponse
    ) {
        self.pending = true
        let request = EndpointRequest(head: head, remote: context.channel.remoteAddress)
        let loopBound = NIOLoopBound((self, context), eventLoop: context.eventLoop)
        context.eventLoop.makeFutureWithTask { await routes(request) }.whenSuccess { response in
            let (handler, context) = loopBound.value
            handler.pending = false
            guard context.channel.isActive else { return }
            var headers = HTTPHeaders()
            headers.add(name: "Content-Type", value: response.contentType)
            for (name, value) in response.headers { headers.add(name: name, value: value) }
            headers.add(name: "Content-Length", value: "\(response.body.readableBytes)")
            let keepAlive = head.isKeepAlive
            headers.add(name: "Connection", value: keepAlive ? "keep-alive" : "close")
            let status = HTTPResponseStatus(statusCode: response.status)
            context.write(
                handler.wrapOutboundOut(
                    .head(HTTPResponseHead(version: head.version, status: status, headers: headers))
                ),
                promise: nil
            )
            var sent = false
            let body = response.body
            handler.streaming = (
                MetricsStream { buffer in
                    if !sent {
                        var whole = body
                        buffer.writeBuffer(&whole)
                    }
                    sent = true
                    return false
                }, keepAlive
            )
            handler.pump(context)
        }
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
            if self.waiting == nil { self.table.waiting(self.slot) }
            if context.channel.isWritable, let head = self.waiting {
                self.waiting = nil
                self.respondSoon(context, to: head)
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

extension MetricsEndpoint {
    /// The fuzzer's entry: `request` as a client's bytes on one connection, through the pipeline a real one gets,
    /// on an embedded channel, in pieces of the sizes the bytes themselves choose; then the connection's timers run
    /// out. Whatever the bytes, the handler must neither crash nor trip one of SwiftNIO's preconditions.
    static func fuzz(request: UnsafeRawBufferPointer) {
        let configuration = Configuration()
        let table = ConnectionTable(configuration)
        let channel = EmbeddedChannel()
        let given = ManagedAtomic(-1)
        let admitted = table.admit(channel, refuse: {}, start: { given.store($0, ordering: .relaxed) })
        let slot = given.load(ordering: .relaxed)
        precondition(admitted && slot >= 0, "a first connection is refused")
        do {
            try channel.pipeline.syncOperations.addHandler(BackPressureHandler())
            try channel.pipeline.syncOperations.configureHTTPServerPipeline()
            try channel.pipeline.syncOperations.addHandler(
                ScrapeHandler(configuration: configuration, slot: slot, table: table) {
                    var pieces = 3
                    return MetricsStream { buffer in
                        buffer.writeString("udpecho_fuzz_piece \(pieces)\n")
                        pieces -= 1
                        return pieces > 0
                    }
                }
            )
            try channel.connect(to: SocketAddress(ipAddress: "127.0.0.1", port: 9)).wait()
        } catch {
            preconditionFailure("pipeline: \(error)")
        }
        // In pieces, as a client's bytes come in several reads.
        var offset = 0
        while offset < request.count && channel.isActive {
            let piece = min(request.count - offset, 1 + Int(request[offset]) % 512)
            let buffer = channel.allocator.buffer(
                bytes: UnsafeRawBufferPointer(rebasing: request[offset..<offset + piece])
            )
            // A request SwiftNIO's decoder refuses is answered 400 and the connection closed: not a fault.
            _ = try? channel.writeInbound(buffer)
            channel.embeddedEventLoop.run()
            offset += piece
        }
        channel.embeddedEventLoop.advanceTime(by: .seconds(120))
        while (try? channel.readOutbound(as: IOData.self)) != nil {}
        _ = try? channel.finish()
        table.remove(slot)
    }
}
