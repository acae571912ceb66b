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
    private let shared: ControlServerShared
    private let logger: Logger
    private let serving = ManagedAtomic(false)

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
        let shared = ControlServerShared(maximumSessions: configuration.maximumSessions)
        self.shared = shared
        let testPort = UInt16(reflector.localAddress.port ?? 0)
        let startTime = StampTimestampFormat.ntp.encode(cudpecho_realtime_ns(), taiOffset: 0)
        let address = try EchoServer.bindAddress(for: configuration.controlAddress)
        // No control connection is taken before run(): a session started before the reflector serves would have
        // its test packets wait in the socket. (If the port cannot be bound, the reflector's socket closes with it.)
        self.channel = try await ControlServerHandler.bind(
            address,
            limits: configuration.limits,
            shared: shared,
            logger: logger
        ) { peer, local in
            TwampControlConnection(
                context: TwampControlConnection.Context(
                    configuration: configuration,
                    table: table,
                    peer: peer,
                    local: local,
                    testPort: testPort,
                    reserve: { shared.reserve() },
                    release: { shared.release($0) },
                    count: { shared.count($0) },
                    startTime: startTime
                )
            )
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
        self.statistics.metricsText(
            protocol: "TWAMP",
            open: self.openConnections,
            running: "Test sessions the reflector answers now."
        )
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
