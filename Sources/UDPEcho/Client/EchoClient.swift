public import NIOCore
import NIOPosix

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// One reply of an echo server.
public struct EchoReply: Sendable {
    /// The bytes that came back.
    public var payload: ByteBuffer
    /// Where they came from (always the server: the client's socket is connected to it).
    public var from: SocketAddress
    /// Time from handing the request to the socket until the reply was read.
    public var roundTripTime: Duration
}

/// A client of a UDP echo server, on a *connected* UDP socket as the article explains: the kernel delivers only the
/// server's datagrams to it, and reports an ICMP "port unreachable" from the server's host as a refusal.
///
/// ```swift
/// let client = try await EchoClient.connect(to: HostAndPort(parsing: "localhost:1337"))
/// let reply = try await client.echo(ByteBuffer(string: "hello"), timeout: .seconds(2))
/// print(reply.payload.readableBytes, "bytes from", reply.from.hostPortDescription, "in", reply.roundTripTime)
/// try await client.close()
/// ```
///
/// One ``echo(_:timeout:onSent:)`` at a time: a reply is matched to the request that is waiting when it arrives, and
/// replies arriving while no request waits (late ones, after a timeout) are discarded.
public final class EchoClient: Sendable {
    /// The server's address.
    public let remoteAddress: SocketAddress
    /// The client's own address (its ephemeral port).
    public let localAddress: SocketAddress?
    private let channel: any Channel
    private let handler: NIOLoopBound<ReplyHandler>

    private init(channel: any Channel, handler: NIOLoopBound<ReplyHandler>, remoteAddress: SocketAddress) {
        self.channel = channel
        self.handler = handler
        self.remoteAddress = remoteAddress
        self.localAddress = channel.localAddress
    }

    /// Resolves `address` (off the caller's thread) and connects to the first address of the name, IPv4 preferred,
    /// as Go's `net.ResolveUDPAddr` does.
    ///
    /// - Throws: ``EchoError/nameNotResolved(host:reason:)`` or a socket error.
    public static func connect(
        to address: HostAndPort,
        group: any EventLoopGroup = MultiThreadedEventLoopGroup.singleton
    ) async throws -> EchoClient {
        try await Self.connect(to: try await NameResolver.resolvePreferringIPv4(address), group: group)
    }

    /// Connects a UDP socket to `address`. No datagram is sent: connecting a UDP socket only fixes its peer.
    public static func connect(
        to address: SocketAddress,
        group: any EventLoopGroup = MultiThreadedEventLoopGroup.singleton
    ) async throws -> EchoClient {
        let channel = try await DatagramBootstrap(group: group)
            // Replies up to the largest datagram arrive whole; the default allocator would cut them at 2048 bytes.
            .channelOption(.recvAllocator, value: FixedSizeRecvByteBufferAllocator(capacity: 65536))
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(ReplyHandler(remoteAddress: address))
                }
            }
            .connect(to: address)
            .get()
        let handler = try await channel.eventLoop.submit { () throws -> NIOLoopBound<ReplyHandler> in
            let handler = try channel.pipeline.syncOperations.handler(type: ReplyHandler.self)
            return NIOLoopBound(handler, eventLoop: channel.eventLoop)
        }.get()
        return EchoClient(channel: channel, handler: handler, remoteAddress: address)
    }

    /// Sends `payload` as one datagram and waits up to `timeout` for the reply.
    ///
    /// - Parameters:
    ///   - payload: The datagram's bytes, 0 to the largest datagram of the server's address family (65507 bytes over
    ///     IPv4, 65527 over IPv6).
    ///   - timeout: How long to wait for the reply once the request is sent (the article's read deadline).
    ///   - onSent: Called once the datagram has been handed to the kernel, before the wait.
    ///
    /// - Throws: ``EchoError/payloadTooLarge(size:limit:peer:)`` before sending anything if the payload does not
    ///   fit one datagram; ``EchoError/timeout(_:peer:)``; ``EchoError/refused(peer:)`` when the server's host
    ///   says nothing listens there; `CancellationError` when the task is cancelled.
    public func echo(
        _ payload: ByteBuffer,
        timeout: Duration,
        onSent: (@Sendable () -> Void)? = nil
    ) async throws -> EchoReply {
        let limit = self.remoteAddress.maximumDatagramPayload
        guard payload.readableBytes <= limit else {
            throw EchoError.payloadTooLarge(size: payload.readableBytes, limit: limit, peer: self.remoteAddress)
        }
        let eventLoop = self.channel.eventLoop
        let promise = eventLoop.makePromise(of: EchoReply.self)
        let handler = self.handler
        let channel = self.channel
        eventLoop.execute {
            handler.value.expectReply(promise, timeout: timeout, eventLoop: eventLoop)
            channel.writeAndFlush(payload).whenComplete { result in
                switch result {
                case .success: onSent?()
                case .failure(let error): handler.value.fail(error)
                }
            }
        }
        return try await withTaskCancellationHandler {
            try await promise.futureResult.get()
        } onCancel: {
            eventLoop.execute { handler.value.fail(CancellationError()) }
        }
    }

    /// Closes the socket.
    public func close() async throws {
        try await self.channel.close()
    }
}

/// Matches replies to the one waiting request, on the channel's event loop.
final class ReplyHandler: ChannelInboundHandler {
    typealias InboundIn = AddressedEnvelope<ByteBuffer>

    private struct Waiting {
        var promise: EventLoopPromise<EchoReply>
        var sentAt: NIODeadline
        var timer: Scheduled<Void>
    }

    private let remoteAddress: SocketAddress
    private var waiting: Waiting?

    init(remoteAddress: SocketAddress) {
        self.remoteAddress = remoteAddress
    }

    func expectReply(_ promise: EventLoopPromise<EchoReply>, timeout: Duration, eventLoop: any EventLoop) {
        self.fail(EchoError.closed)  // an earlier request still waiting is abandoned, never left hanging
        let timer = eventLoop.assumeIsolated().scheduleTask(in: .nanoseconds(timeout.nanoseconds)) { [self] in
            self.fail(EchoError.timeout(timeout, peer: self.remoteAddress))
        }
        self.waiting = Waiting(promise: promise, sentAt: .now(), timer: timer)
    }

    func fail(_ error: any Error) {
        guard let waiting = self.waiting else { return }
        self.waiting = nil
        waiting.timer.cancel()
        waiting.promise.fail(self.translate(error))
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let envelope = self.unwrapInboundIn(data)
        guard let waiting = self.waiting else { return }  // a late reply to a request that gave up
        self.waiting = nil
        waiting.timer.cancel()
        let elapsed = NIODeadline.now() - waiting.sentAt
        waiting.promise.succeed(
            EchoReply(
                payload: envelope.data,
                from: envelope.remoteAddress,
                roundTripTime: .nanoseconds(elapsed.nanoseconds)
            )
        )
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        // Read errors on a datagram channel are not fatal to it (ECONNREFUSED from an ICMP report, for one).
        self.fail(error)
    }

    func channelInactive(context: ChannelHandlerContext) {
        self.fail(EchoError.closed)
        context.fireChannelInactive()
    }

    private func translate(_ error: any Error) -> any Error {
        if let error = error as? IOError, error.errnoCode == ECONNREFUSED {
            return EchoError.refused(peer: self.remoteAddress)
        }
        return error
    }
}
