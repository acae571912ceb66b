import Atomics
import CUDPEcho
import Logging
public import NIOCore
import NIOPosix
public import ServiceLifecycle

/// An OWAMP server (RFC 4656): OWAMP-Control on TCP, and the test sessions it negotiates: for each, a UDP socket that
/// receives the client's test packets (their records kept for Fetch-Session) or sends this server's to the client on
/// the session's schedule.
///
/// A control connection costs no thread: the connections are SwiftNIO channels on its shared event loops, each with
/// an `OwampControlConnection` state machine. A running test session has a thread of its own (as owampd has a
/// process), within ``OwampServerConfiguration/maximumSessions``.
///
/// ```swift
/// let server = try await OwampServer(configuration: OwampServerConfiguration())
/// try await server.run()
/// ```
public final class OwampServer: Service, Sendable {
    public let configuration: OwampServerConfiguration
    private let channel: any Channel
    private let shared: ControlServerShared
    private let results: OwampResultStore
    private let serving = ManagedAtomic(false)

    /// Binds OWAMP-Control's TCP port (its reads start in ``run()``).
    ///
    /// - Throws: ``EchoError`` for an invalid configuration, or a port that cannot be bound.
    public convenience init(
        configuration: OwampServerConfiguration,
        logger: Logger = Logger(label: "udpecho.owamp", factory: { _ in SwiftLogNoOpLogHandler() })
    ) async throws {
        try await self.init(configuration: configuration, logger: logger, startThread: WorkerThread.start)
    }

    /// As ``init(configuration:logger:)``, with the function that starts a test session's thread (0, or the errno
    /// of one that could not be started): tests stand in for the limit of threads with it.
    init(
        configuration: OwampServerConfiguration,
        logger: Logger,
        startThread: @escaping @Sendable (@escaping @Sendable () -> Void) -> Int32
    ) async throws {
        try configuration.validate()
        self.configuration = configuration
        let shared = ControlServerShared(maximumSessions: configuration.maximumSessions)
        self.shared = shared
        let results = OwampResultStore(capacity: configuration.maximumSessions)
        self.results = results
        let startTime = StampTimestampFormat.ntp.encode(cudpecho_realtime_ns(), taiOffset: 0)
        let address = try EchoServer.bindAddress(for: configuration.controlAddress)
        self.channel = try await ControlServerHandler.bind(
            address,
            limits: configuration.limits,
            shared: shared,
            logger: logger
        ) { peer, local in
            OwampControlConnection(
                context: OwampControlConnection.Context(
                    configuration: configuration,
                    results: results,
                    peer: peer,
                    local: local,
                    reserve: { shared.reserve() },
                    release: { shared.release($0) },
                    count: { shared.count($0) },
                    run: { endpoint in startThread { endpoint.run() } },
                    startTime: startTime
                )
            )
        }
    }

    /// OWAMP-Control's address, with the real port.
    public var controlAddress: SocketAddress? { self.channel.localAddress }

    /// The server's counts now.
    public var statistics: OwampServerStatistics {
        var statistics = self.shared.state.withLock { $0.statistics }
        statistics.runningSessions = self.shared.reserved
        return statistics
    }

    /// Whether ``run()`` takes control connections.
    var isServing: Bool { self.serving.load(ordering: .acquiring) }

    /// Control connections open now.
    public var openConnections: Int { self.shared.state.withLock { $0.open } }

    /// Finished sessions kept for Fetch-Session now.
    public var keptResults: Int { self.results.count }

    /// The control protocol's counters in Prometheus' text format, for ``PrometheusExporter``'s `more`.
    public func metricsText() -> String {
        var text = self.statistics.metricsText(
            protocol: "OWAMP",
            open: self.openConnections,
            running: "Test sessions requested and not yet stopped (sending, receiving, or waiting to start)."
        )
        text += "# HELP udpecho_owamp_results_kept Finished sessions kept for Fetch-Session.\n"
        text += "# TYPE udpecho_owamp_results_kept gauge\nudpecho_owamp_results_kept \(self.keptResults)\n"
        return text
    }

    /// Serves until cancelled or shut down gracefully; then closes the control port (sessions end with their
    /// connections).
    public func run() async throws {
        try? await self.channel.setOption(.autoRead, value: true).get()
        self.serving.store(true, ordering: .releasing)
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
