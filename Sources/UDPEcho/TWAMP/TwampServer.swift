import Atomics
import CUDPEcho
import Logging
public import NIOCore
import NIOPosix
public import ServiceLifecycle
import Synchronization

/// A TWAMP server (RFC 5357): TWAMP-Control on TCP, and the Session-Reflector of the sessions it negotiates on one
/// UDP port, through the batched serving path of ``EchoServer``.
///
/// Every session's test packets go to the same port (the Accept-Session names it); the reflector tells sessions apart
/// by their sender's address and port, and answers only the senders of running sessions. A control connection costs
/// no thread: the connections are SwiftNIO channels on its shared event loops, each with a
/// `TwampControlConnection` state machine.
///
/// ```swift
/// let server = try await TwampServer(configuration: TwampServerConfiguration(modes: .unauthenticated))
/// try await server.run()
/// ```
public final class TwampServer: Service, Sendable {
    public let configuration: TwampServerConfiguration
    private let reflector: EchoServer
    private let table: TwampSessionTable
    private let channel: any Channel
    private let shared: Shared
    private let logger: Logger
    private let serving = ManagedAtomic(false)

    /// The counters and the connections per source, under one lock.
    final class Shared: Sendable {
        let state = Mutex<(statistics: TwampServerStatistics, perSource: [IPKey: Int], open: Int, reserved: Int)>(
            (TwampServerStatistics(), [:], 0, 0)
        )
        let maximumSessions: Int

        init(maximumSessions: Int) { self.maximumSessions = maximumSessions }

        func count(_ key: WritableKeyPath<TwampServerStatistics, Int>) {
            self.state.withLock { $0.statistics[keyPath: key] += 1 }
        }

        func reserve() -> Bool {
            self.state.withLock { state in
                guard state.reserved < self.maximumSessions else { return false }
                state.reserved += 1
                return true
            }
        }

        func release(_ count: Int) { self.state.withLock { $0.reserved -= count } }
    }

    /// Binds TWAMP-Control's TCP port and the reflector's UDP port.
    ///
    /// - Throws: ``EchoError`` for an invalid configuration, or a port that cannot be bound.
    public init(
        configuration: TwampServerConfiguration,
        logger: Logger = Logger(label: "udpecho.twamp", factory: { _ in SwiftLogNoOpLogHandler() })
    ) async throws {
        try configuration.validate()
        self.configuration = configuration
        self.logger = logger
        let table = TwampSessionTable()
        self.table = table
        var reflection = EchoServer.Configuration(
            address: HostAndPort(host: configuration.controlAddress.host, port: configuration.testPort),
            threads: configuration.threads,
            reporting: .none
        )
        reflection.twampSessions = table
        let reflector = try EchoServer(configuration: reflection, logger: logger)
        self.reflector = reflector
        let shared = Shared(maximumSessions: configuration.maximumSessions)
        self.shared = shared
        let testPort = UInt16(reflector.localAddress.port ?? 0)
        let startTime = StampTimestampFormat.ntp.encode(cudpecho_realtime_ns(), taiOffset: 0)
        let address = try EchoServer.bindAddress(for: configuration.controlAddress)
        do {
            self.channel = try await ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton)
                .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
                // No control connection is taken before run(): a session started before the reflector serves would
                // have its test packets wait in the socket (the kernel still completes handshakes into the backlog).
                .serverChannelOption(.autoRead, value: false)
                .childChannelOption(.socketOption(.tcp_nodelay), value: 1)
                .childChannelOption(
                    .recvAllocator,
                    value: AdaptiveRecvByteBufferAllocator(minimum: 64, initial: 512, maximum: 4096)
                )
                .childChannelInitializer { channel in
                    channel.eventLoop.makeCompletedFuture {
                        try channel.pipeline.syncOperations.addHandler(
                            TwampControlHandler(
                                configuration: configuration,
                                table: table,
                                shared: shared,
                                testPort: testPort,
                                startTime: startTime,
                                logger: logger
                            )
                        )
                    }
                }
                .bind(to: address)
                .get()
        } catch let error as IOError {
            // The reflector's socket closes with it (EchoServer's deinit).
            throw EchoError.socket(operation: "bind", address: address.hostPortDescription, errno: error.errnoCode)
        }
    }

    /// TWAMP-Control's address, with the real port.
    public var controlAddress: SocketAddress? { self.channel.localAddress }

    /// The Session-Reflector's address, with the real port.
    public var testAddress: SocketAddress { self.reflector.localAddress }

    /// The server's counts now.
    public var statistics: TwampServerStatistics {
        var statistics = self.shared.state.withLock { $0.statistics }
        statistics.runningSessions = self.table.sessionCount
        return statistics
    }

    /// The reflector's counts (test packets answered, and dropped by reason).
    public var reflectorStatistics: EchoServerStatistics { self.reflector.statistics }

    /// The serving path of the test packets, whose counters ``PrometheusExporter`` serves.
    public var reflectorServer: EchoServer { self.reflector }

    /// Whether ``run()`` has started the reflector and takes control connections.
    var isServing: Bool { self.serving.load(ordering: .acquiring) }

    /// Control connections open now.
    public var openConnections: Int { self.shared.state.withLock { $0.open } }

    /// The control protocol's counters in Prometheus' text format, for ``PrometheusExporter``'s `more`.
    public func metricsText() -> String {
        let statistics = self.statistics
        let open = self.openConnections
        var text = ""
        func family(_ name: String, _ type: String, _ help: String, _ samples: [(String, Int)]) {
            text += "# HELP udpecho_twamp_\(name) \(help)\n# TYPE udpecho_twamp_\(name) \(type)\n"
            for (labels, value) in samples { text += "udpecho_twamp_\(name)\(labels) \(value)\n" }
        }
        family(
            "control_connections_total",
            "counter",
            "TWAMP-Control connections, served or refused at a limit (total or per source).",
            [("{result=\"served\"}", statistics.connections), ("{result=\"refused\"}", statistics.connectionsRefused)]
        )
        family("control_connections", "gauge", "TWAMP-Control connections open now.", [("", open)])
        family(
            "setup_failures_total",
            "counter",
            "Set-Up-Responses refused: a mode not offered, or a key identity or secret that does not match.",
            [
                ("{reason=\"mode\"}", statistics.modeRefused),
                ("{reason=\"authentication\"}", statistics.authenticationFailures),
            ]
        )
        family(
            "control_closed_total",
            "counter",
            "TWAMP-Control connections closed by the server: a malformed or out-of-order message or a bad HMAC, or a stall.",
            [("{reason=\"protocol-error\"}", statistics.protocolErrors), ("{reason=\"stalled\"}", statistics.stalled)]
        )
        family(
            "sessions_total",
            "counter",
            "Test sessions requested, accepted or refused (a policy or a limit).",
            [
                ("{result=\"accepted\"}", statistics.sessionsAccepted),
                ("{result=\"refused\"}", statistics.sessionsRefused),
            ]
        )
        family(
            "sessions_running",
            "gauge",
            "Test sessions the reflector answers now.",
            [("", statistics.runningSessions)]
        )
        return text
    }

    /// Serves until cancelled or shut down gracefully; then closes the control port and the reflector.
    public func run() async throws {
        let sweeper = self.channel.eventLoop.scheduleRepeatedTask(initialDelay: .seconds(1), delay: .seconds(1)) {
            [table] _ in table.sweep()
        }
        defer { sweeper.cancel() }
        try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask { try await self.reflector.run() }
            // Control connections once the reflector's threads serve.
            while !self.reflector.hasStarted && !Task.isCancelled { try? await Task.sleep(for: .milliseconds(1)) }
            try? await self.channel.setOption(.autoRead, value: true).get()
            self.serving.store(true, ordering: .releasing)
            group.addTask {
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
            // Whichever ends first (cancelled, shut down, or failed) ends the other.
            _ = try await group.next()
            self.channel.close(promise: nil)
            group.cancelAll()
            try await group.waitForAll()
        }
    }
}

/// One control connection on its channel: feeds the bytes to its state machine and carries out what it says.
private final class TwampControlHandler: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    private let configuration: TwampServerConfiguration
    private let table: TwampSessionTable
    private let shared: TwampServer.Shared
    private let testPort: UInt16
    private let startTime: UInt64
    private let logger: Logger
    private var connection: TwampControlConnection?
    private var peer: IPKey?
    private var timer: Scheduled<Void>?

    init(
        configuration: TwampServerConfiguration,
        table: TwampSessionTable,
        shared: TwampServer.Shared,
        testPort: UInt16,
        startTime: UInt64,
        logger: Logger
    ) {
        self.configuration = configuration
        self.table = table
        self.shared = shared
        self.testPort = testPort
        self.startTime = startTime
        self.logger = logger
    }

    func channelActive(context: ChannelHandlerContext) {
        context.fireChannelActive()
        guard let remote = context.remoteAddress, let local = context.localAddress,
            let peer = remote.withRawAddress({ raw, _ in IPKey(raw) }),
            let localKey = local.withRawAddress({ raw, _ in IPKey(raw) })
        else {
            context.close(promise: nil)
            return
        }
        let admitted = self.shared.state.withLock { state -> Bool in
            guard state.open < self.configuration.maximumConnections,
                state.perSource[peer, default: 0] < self.configuration.maximumConnectionsPerSource
            else {
                state.statistics.connectionsRefused += 1
                return false
            }
            state.open += 1
            state.perSource[peer, default: 0] += 1
            state.statistics.connections += 1
            return true
        }
        guard admitted else {
            // A greeting that offers no mode: the server will not talk (RFC 4656 §3.1).
            let refusal = ServerGreeting(modes: [], challenge: [], salt: [], count: 0).encoded()
            let channel = context.channel
            context.writeAndFlush(self.wrapOutboundOut(channel.allocator.buffer(bytes: refusal)))
                .whenComplete { _ in channel.close(promise: nil) }
            self.logger.info(
                "TWAMP control connection refused: at the connection limit",
                metadata: ["peer": "\(remote)"]
            )
            return
        }
        self.peer = peer
        let shared = self.shared
        let connection = TwampControlConnection(
            context: TwampControlConnection.Context(
                configuration: self.configuration,
                table: self.table,
                peer: peer,
                local: localKey,
                testPort: self.testPort,
                reserve: { shared.reserve() },
                release: { shared.release($0) },
                count: { shared.count($0) },
                startTime: self.startTime
            )
        )
        let greeting = connection.greetingBytes()
        self.connection = connection
        context.writeAndFlush(self.wrapOutboundOut(context.channel.allocator.buffer(bytes: greeting)), promise: nil)
        self.arm(context)
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard var connection = self.connection else { return }
        let buffer = self.unwrapInboundIn(data)
        let actions = buffer.withUnsafeReadableBytes { connection.receive($0) }
        self.connection = connection
        for action in actions {
            switch action {
            case .send(let bytes):
                context.write(self.wrapOutboundOut(context.channel.allocator.buffer(bytes: bytes)), promise: nil)
            case .close(let reason):
                self.logger.info("TWAMP control connection closed", metadata: ["reason": "\(reason)"])
                let channel = context.channel
                context.writeAndFlush(self.wrapOutboundOut(channel.allocator.buffer(capacity: 0)))
                    .whenComplete { _ in channel.close(promise: nil) }
                return
            }
        }
        context.flush()
        self.arm(context)
    }

    /// Closes the connection if it stalls: a message begun and not finished within the message timeout, or silence
    /// with no session running for the idle timeout.
    private func arm(_ context: ChannelHandlerContext) {
        self.timer?.cancel()
        guard let connection = self.connection else { return }
        let stalled = connection.hasPartialMessage
        if !stalled && connection.phase == .testing { return }  // sessions run: the client may be silent
        let delay = stalled ? self.configuration.messageTimeout : self.configuration.idleTimeout
        let channel = context.channel
        self.timer = context.eventLoop.scheduleTask(in: .nanoseconds(delay.nanoseconds)) { [shared] in
            if stalled { shared.count(\.stalled) }
            channel.close(promise: nil)
        }
    }

    func channelInactive(context: ChannelHandlerContext) {
        self.timer?.cancel()
        if var connection = self.connection {
            connection.close()
            self.connection = nil
        }
        if let peer = self.peer {
            self.shared.state.withLock { state in
                state.open -= 1
                state.perSource[peer, default: 1] -= 1
                if state.perSource[peer] == 0 { state.perSource[peer] = nil }
            }
            self.peer = nil
        }
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        context.close(promise: nil)
    }
}
