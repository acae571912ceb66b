import Atomics
import CUDPEcho
public import Logging
public import NIOCore
public import ServiceLifecycle
import Synchronization

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// A UDP echo server (RFC 862): every datagram is written back, byte for byte, to the address it came from.
///
/// The server binds when it is made, so its real address is known (also when port 0 asked for an ephemeral one) and
/// binding errors surface before anything runs. ``run()`` then serves on one thread per socket until the task is
/// cancelled or, inside a `ServiceGroup`, until graceful shutdown; it returns once the last replies have gone out.
///
/// ```swift
/// let server = try EchoServer(configuration: .init(address: HostAndPort(host: "127.0.0.1", port: 0)))
/// print("listening on", server.localAddress.hostPortDescription)
/// let group = ServiceGroup(services: [server], gracefulShutdownSignals: [.sigint, .sigterm], logger: logger)
/// try await group.run()
/// print(server.statistics)
/// ```
///
/// Each socket is served by a dedicated thread that moves datagrams in batches (`recvmmsg`/`sendmmsg`); with more
/// than one thread the sockets share the port through `SO_REUSEPORT` and the kernel spreads clients over them.
/// Events go to the event handler on a thread of their own, so that reporting never slows serving.
/// Errors about one datagram (a refused or unreachable peer, a full send buffer past the write deadline, no buffer
/// memory) drop that datagram and are counted in ``statistics``; they never stop the server.
public final class EchoServer: Service, Sendable {
    /// How a server is set up. Every field has a default that suits a server started by hand.
    public struct Configuration: Sendable {
        /// Where to listen. A `nil` host (`:PORT`) means every local address, IPv4 and IPv6 on one dual-stack socket.
        public var address: HostAndPort
        /// How long one reply may wait for room in the socket's send buffer before it is dropped (the article's write
        /// deadline).
        public var writeTimeout: Duration
        /// Sockets and threads serving the port (``EchoServer/defaultThreads`` unless set).
        public var threads: Int
        /// Datagrams moved per system call.
        public var batchSize: Int
        /// Receive buffer of each socket, in bytes (`SO_RCVBUF`), sized to absorb bursts; `nil` keeps the system's.
        public var receiveBufferSize: Int?
        /// Send buffer of each socket, in bytes (`SO_SNDBUF`); `nil` keeps the system's.
        public var sendBufferSize: Int?
        /// Which events go to the event handler.
        public var reporting: EventReporting
        /// At most this many datagrams are reported per second (per thread); past it, one
        /// ``ServerEvent/notShown(datagrams:interval:)`` a second says how many were not. `nil` reports every one.
        public var eventsPerSecond: Int?
        /// The guards against loops, reflection and floods (all on by default).
        public var guards: GuardConfiguration
        /// Answer as a STAMP Session-Reflector (RFC 8762) instead of echoing; nil echoes.
        public var stamp: StampReflectorConfiguration?
        /// Let the kernel coalesce runs of same-sized datagrams from one sender into one buffer (UDP GRO) and answer
        /// each run with one segmented write (UDP GSO) that it cuts into the same datagrams again. Every datagram
        /// still counts as one for the guards, the counters and the events. On by default where the kernel offers
        /// it (Linux 5.0); a STAMP reflector answers datagram by datagram.
        public var offload: Bool
        /// How long a serving thread polls its socket without blocking, after the last datagram, before it sleeps
        /// in the kernel until the next: a thread that does not sleep is not woken, which takes the wake-up out of
        /// the round trip, at the cost of a core kept busy. Zero (the default) never polls.
        public var busyPoll: Duration
        /// Reply with the DSCP and ECN each datagram arrived with (congestion experienced goes back as ECT(0)), and
        /// fill in what a `udpecho ping` probe arrived with where it asks (``MarkingReport``). Off by default: an
        /// echo server's replies otherwise carry the system's default marking, so a client learns nothing of how
        /// the path treats its marking on the way back. Datagrams are then taken one by one (no offload).
        public var reflectTOS: Bool
        /// Answer the test packets of these TWAMP sessions (RFC 5357 §4.2) instead of echoing; ``TwampServer`` sets
        /// it for the test port it negotiates.
        var twampSessions: TwampSessionTable?
        /// Also answer in XDP, on this interface: echo datagrams and unauthenticated STAMP test packets to the
        /// server's address and port are answered in the driver, after the guards (which run there too), and
        /// everything else comes up to the sockets as before. nil (the default) answers on the sockets only.
        public var xdp: XDPConfiguration?

        /// Whether each datagram is a test packet to reflect (STAMP or TWAMP), not an echo.
        var reflects: Bool { self.stamp != nil || self.twampSessions != nil }

        /// Creates a configuration; see each property for its meaning.
        public init(
            address: HostAndPort = HostAndPort(host: nil, port: 1337),
            writeTimeout: Duration = .seconds(15),
            threads: Int = EchoServer.defaultThreads,
            batchSize: Int = 64,
            receiveBufferSize: Int? = 4 << 20,
            sendBufferSize: Int? = 4 << 20,
            reporting: EventReporting = .all,
            eventsPerSecond: Int? = 50,
            guards: GuardConfiguration = GuardConfiguration(),
            stamp: StampReflectorConfiguration? = nil,
            offload: Bool = true,
            busyPoll: Duration = .zero,
            reflectTOS: Bool = false
        ) {
            self.address = address
            self.writeTimeout = writeTimeout
            self.threads = threads
            self.batchSize = batchSize
            self.receiveBufferSize = receiveBufferSize
            self.sendBufferSize = sendBufferSize
            self.reporting = reporting
            self.eventsPerSecond = eventsPerSecond
            self.guards = guards
            self.stamp = stamp
            self.offload = offload
            self.busyPoll = busyPoll
            self.reflectTOS = reflectTOS
        }

        /// Whether runs are taken coalesced: a STAMP reflector and `reflectTOS` look at each datagram alone.
        var offloads: Bool { self.offload && !self.reflects && !self.reflectTOS }

        /// The serving threads a server may have.
        public static let threadRange = 1...1024
        /// The socket buffer sizes a server may ask for, in bytes (the kernel may grant less: `net.core.rmem_max`).
        public static let bufferSizeRange = 1...(1 << 30)
        /// The sources the rate limiter and the STAMP session table may remember per thread: their memory is
        /// allocated at start, so a size past this is refused instead of exhausting memory (a million entries of the
        /// rate table take about 40 MB per thread).
        public static let tableSizeRange = 4...(1 << 20)
        /// The echo-loop detector's limit: repeats of one datagram allowed in a row.
        public static let loopLimitRange = 1...1_000_000

        /// Checks every size and count before anything is allocated or bound.
        ///
        /// - Throws: ``EchoError/invalidConfiguration(_:)`` naming the setting and its range.
        public func validate() throws(EchoError) {
            func check(_ value: Int, _ range: ClosedRange<Int>, _ name: String) throws(EchoError) {
                guard range.contains(value) else {
                    throw .invalidConfiguration(
                        "\(name) \(value) is out of range; give \(range.lowerBound) to \(range.upperBound)"
                    )
                }
            }
            try check(self.threads, Self.threadRange, "the thread count")
            try check(self.batchSize, 1...1024, "the batch size")
            if let size = self.receiveBufferSize { try check(size, Self.bufferSizeRange, "the receive buffer size") }
            if let size = self.sendBufferSize { try check(size, Self.bufferSizeRange, "the send buffer size") }
            if let size = self.guards.maximumSize { try check(size, 0...65535, "the largest datagram size") }
            if let limit = self.guards.loopLimit { try check(limit, Self.loopLimitRange, "the loop limit") }
            if let rate = self.guards.rateLimit {
                try check(rate.tableSize, Self.tableSizeRange, "the rate table size")
            }
            if let stamp = self.stamp, stamp.stateful {
                try check(stamp.sessionTableSize, Self.tableSizeRange, "the STAMP session table size")
            }
            if let events = self.eventsPerSecond { try check(events, 1...1_000_000, "the events per second") }
            if let xdp = self.xdp {
                guard self.twampSessions == nil else {
                    throw .invalidConfiguration("XDP answers echo and STAMP; a TWAMP server's test port has none")
                }
                guard !xdp.interface.isEmpty, xdp.interface.utf8.count < 16, !xdp.interface.contains("/") else {
                    throw .invalidConfiguration("'\(xdp.interface)' is not an interface name (ip link lists them)")
                }
            }
            guard self.writeTimeout >= .zero, self.busyPoll >= .zero, self.busyPoll <= .seconds(1) else {
                throw .invalidConfiguration("the write timeout cannot be negative, and busy polling goes from 0 to 1s")
            }
        }
    }

    /// Half the CPU cores, at least one: each serving thread can keep a core busy, and the kernel's own work for
    /// every datagram (and, on a shared machine, the clients) needs the others. Measured on a 2-core machine with the
    /// load generator beside the server, one thread echoed more than two: see BENCHMARKS.md.
    public static var defaultThreads: Int { max(1, System.coreCount / 2) }

    /// Slot size of the receive buffers: above the largest UDP payload (65527 bytes over IPv6), so nothing is cut.
    static let slotSize = 65536

    /// The configuration the server was made with.
    public let configuration: Configuration
    /// The address the server is bound to, with the real port.
    public let localAddress: SocketAddress

    private let sockets: [ServerSocket]
    private let workers: [EchoWorker]
    private let delivery: EventDelivery?
    /// The XDP program answering before the sockets, if ``Configuration/xdp`` asked for it.
    private let xdp: XDPPath?
    private let stopping = ManagedAtomic(false)
    private let state = Mutex(State.idle)
    /// Called once ``run()`` has returned (the end of a ``ServerEvents`` sequence); nil once it has.
    private let onStopped = Mutex<[@Sendable () -> Void]?>([])
    private let logger: Logger

    private enum State {
        case idle, running, finished
    }

    /// Resolves the configured address and binds the server's sockets.
    ///
    /// - Parameters:
    ///   - configuration: Where and how to serve.
    ///   - logger: Receives start and stop messages (never one per datagram); silent by default.
    ///   - onEvent: Called for each reported ``ServerEvent``, in order per serving thread, on the server's event
    ///     thread (never on a serving thread). Events it cannot keep up with are counted in
    ///     ``EchoServerStatistics/eventsNotDelivered``, not waited for. ``run()`` returns after the last call, so
    ///     keep it from blocking for long.
    /// - Throws: ``EchoError`` when the name does not resolve or a socket cannot be bound.
    public convenience init(
        configuration: Configuration = Configuration(),
        logger: Logger = Logger(label: "udpecho.server", factory: { _ in SwiftLogNoOpLogHandler() }),
        onEvent: (@Sendable (ServerEvent) -> Void)? = nil
    ) throws(EchoError) {
        try configuration.validate()
        let target = try Self.bindAddress(for: configuration.address)
        let options = Self.socketOptions(configuration)
        var sockets: [ServerSocket] = []
        do throws(EchoError) {
            var firstOptions = options
            firstOptions.first = true
            let first = try ServerSocket.bind(to: target, options: firstOptions)
            sockets.append(first)
            // The other sockets join the first one's port, which is the real one even if port 0 was asked for.
            let shared = try SocketAddress.port(first.localAddress.port ?? configuration.address.port, of: target)
            for _ in 1..<configuration.threads {
                sockets.append(try ServerSocket.bind(to: shared, options: options))
            }
        } catch {
            for socket in sockets { socket.close() }
            throw error
        }
        try self.init(configuration: configuration, sockets: sockets, logger: logger, onEvent: onEvent)
    }

    /// Serves on UDP sockets that someone else opened and bound, such as those systemd passes to a socket-activated
    /// service (see ``SocketActivation``), so that the server can use port 7 without running as root. One thread
    /// serves each socket; the configuration's address and thread count are not used.
    ///
    /// - Throws: ``EchoError`` if a descriptor is not a UDP socket.
    public convenience init(
        configuration: Configuration = Configuration(),
        adopting descriptors: [Int32],
        logger: Logger = Logger(label: "udpecho.server", factory: { _ in SwiftLogNoOpLogHandler() }),
        onEvent: (@Sendable (ServerEvent) -> Void)? = nil
    ) throws(EchoError) {
        precondition(!descriptors.isEmpty, "adopting needs at least one descriptor")
        var checked = configuration
        checked.threads = descriptors.count
        try checked.validate()
        let options = Self.socketOptions(configuration)
        var sockets: [ServerSocket] = []
        for descriptor in descriptors {
            sockets.append(try ServerSocket.adopt(descriptor, options: options))
        }
        var adopted = configuration
        adopted.threads = sockets.count
        try self.init(configuration: adopted, sockets: sockets, logger: logger, onEvent: onEvent)
    }

    private init(
        configuration: Configuration,
        sockets: [ServerSocket],
        logger: Logger,
        onEvent: (@Sendable (ServerEvent) -> Void)?
    ) throws(EchoError) {
        precondition(configuration.batchSize >= 1, "an EchoServer needs a batch size of at least one")
        self.configuration = configuration
        self.logger = logger
        self.sockets = sockets
        self.localAddress = sockets[0].localAddress
        let settings = EchoWorker.Settings(
            batchSize: configuration.batchSize,
            slotSize: Self.slotSize,
            writeTimeout: configuration.writeTimeout,
            reporting: configuration.reporting,
            eventsPerSecond: configuration.eventsPerSecond.map { max(1, $0 / configuration.threads) },
            guards: configuration.guards,
            threads: configuration.threads,
            stamp: configuration.stamp,
            offload: configuration.offloads,
            busyPoll: configuration.busyPoll,
            reflectTOS: configuration.reflectTOS && !configuration.reflects,
            twampSessions: configuration.twampSessions
        )
        var workers: [EchoWorker] = []
        do throws(EchoError) {
            let delivery =
                if let onEvent, configuration.reporting != .none {
                    try EventDelivery(workers: sockets.count, reporting: configuration.reporting, handler: onEvent)
                } else {
                    nil as EventDelivery?
                }
            self.delivery = delivery
            for (index, socket) in sockets.enumerated() {
                workers.append(
                    try EchoWorker(
                        socket: socket,
                        stopping: self.stopping,
                        settings: settings,
                        events: delivery?.channel(index)
                    )
                )
            }
            // Last: once attached, the program answers (what it passes up waits in the sockets until run()).
            self.xdp = try configuration.xdp.map { xdp throws(EchoError) in
                try XDPPath(
                    xdp,
                    local: sockets[0].localAddress,
                    guards: configuration.guards,
                    stamp: configuration.stamp,
                    reflectTOS: configuration.reflectTOS
                )
            }
        } catch {
            for socket in sockets { socket.close() }
            throw error
        }
        self.workers = workers
    }

    /// How the XDP program is attached (``XDPAttachMode/native`` or ``XDPAttachMode/generic``); nil without XDP.
    public var xdpMode: XDPAttachMode? { self.xdp?.mode }

    /// Whether the XDP program is attached now (until ``run()`` returns).
    var isXDPAttached: Bool { self.xdp?.isAttached ?? false }

    private static func socketOptions(_ configuration: Configuration) -> ServerSocket.Options {
        ServerSocket.Options(
            reusePort: configuration.threads > 1,
            receiveBufferSize: configuration.receiveBufferSize,
            sendBufferSize: configuration.sendBufferSize,
            datagramInfo: configuration.reflects,
            offload: configuration.offloads,
            receiveMarks: configuration.reflectTOS && !configuration.reflects,
            hopLimit: configuration.twampSessions == nil ? nil : 255
        )
    }

    /// Whether ``run()`` has started the serving threads (and not yet returned): a readiness check. Datagrams sent
    /// before are not lost (they wait in the socket), but a client with a short timeout may give up on them when
    /// the task that runs the server starts late.
    public var isRunning: Bool { self.state.withLock { $0 == .running } }

    /// Whether ``run()`` has been called (it may have returned since).
    var hasStarted: Bool { self.state.withLock { $0 != .idle } }

    /// The addresses of all the server's sockets (several when it adopted several).
    public var localAddresses: [SocketAddress] { self.sockets.map(\.localAddress) }

    deinit {
        let finished = self.state.withLock { $0 == .finished }
        if !finished {
            self.xdp?.detach()
            for socket in self.sockets { socket.close() }
        }
    }

    /// The counters so far, summed over all threads. Safe to read from any thread at any time.
    public var statistics: EchoServerStatistics {
        var statistics = EchoServerStatistics()
        for worker in self.workers { worker.counters.accumulate(into: &statistics) }
        if let xdp = self.xdp {
            // One server: what XDP judged counts beside what the sockets did (what it passed up, the sockets count).
            let answered = xdp.statistics
            statistics.received += answered.judged
            statistics.receivedBytes += answered.judgedBytes
            statistics.echoed += answered.echoed + answered.reflected
            statistics.echoedBytes += answered.answeredBytes
            statistics.rateTableEntries += answered.rateSources
            statistics.rateTableEvictions += answered.rateEvictions
            for (reason, count) in answered.drops { statistics.drops[reason, default: 0] += count }
            statistics.xdp = answered
        }
        return statistics
    }

    /// The receive and send buffer sizes the kernel granted the first socket (Linux reports twice the usable size).
    public var socketBufferSizes: (receive: Int, send: Int) {
        (self.sockets[0].bufferSize(SO_RCVBUF), self.sockets[0].bufferSize(SO_SNDBUF))
    }

    /// Serves until the task is cancelled or graceful shutdown is triggered, then stops reading, lets the replies in
    /// flight go out, closes the sockets and returns. A server runs once.
    ///
    /// - Throws: ``EchoError/alreadyRunning`` if called a second time; ``EchoError/threadsExhausted(purpose:errno:)``
    ///   if a thread it needs cannot be started (it stops first, as it does when cancelled).
    public func run() async throws {
        try self.state.withLock { state throws(EchoError) in
            guard state == .idle else { throw .alreadyRunning }
            state = .running
        }
        self.logger.debug(
            "serving",
            metadata: ["address": "\(self.localAddress.hostPortDescription)", "threads": "\(self.workers.count)"]
        )
        let failure: EchoError? = await withTaskCancellationHandler {
            await withGracefulShutdownHandler {
                await withCheckedContinuation { (continuation: CheckedContinuation<EchoError?, Never>) in
                    self.startThreads(continuation)
                }
            } onGracefulShutdown: {
                self.stop()
            }
        } onCancel: {
            self.stop()
        }
        self.xdp?.detach()
        for socket in self.sockets { socket.close() }
        self.state.withLock { $0 = .finished }
        self.logger.debug("stopped", metadata: ["address": "\(self.localAddress.hostPortDescription)"])
        for body in self.onStopped.withLock({ bodies in
            defer { bodies = nil }
            return bodies ?? []
        }) { body() }
        if let failure { throw failure }
    }

    /// Starts the event thread, the XDP refresher and the serving threads; `continuation` is resumed once they have
    /// all finished (the event thread last, once it has delivered their last events). A thread that cannot be started
    /// (the process's limit of threads) stops the server: those already started finish, and `continuation` is
    /// resumed with the error.
    private func startThreads(_ continuation: CheckedContinuation<EchoError?, Never>) {
        let failure = Mutex<EchoError?>(nil)
        let delivery = self.delivery
        let remaining = ManagedAtomic(self.workers.count)
        // Once for each serving thread when it returns, or in its place if it never started.
        let finishOne: @Sendable () -> Void = {
            guard remaining.wrappingDecrementThenLoad(ordering: .acquiringAndReleasing) == 0 else { return }
            if let delivery { delivery.finish() } else { continuation.resume(returning: failure.withLock { $0 }) }
        }
        func failed(_ purpose: String, _ status: Int32) {
            failure.withLock { $0 = .threadsExhausted(purpose: purpose, errno: status) }
            self.stop()
        }
        if let delivery {
            let status = WorkerThread.start {
                cudpecho_set_thread_name("udpecho-events")
                delivery.run()
                continuation.resume(returning: failure.withLock { $0 })
            }
            guard status == 0 else {
                failed("the server's event thread", status)
                continuation.resume(returning: failure.withLock { $0 })
                return
            }
        }
        if let xdp = self.xdp {
            // The clock's offset (STAMP timestamps) and the host's addresses, every second.
            let stopping = self.stopping
            let logger = self.logger
            let status = WorkerThread.start {
                cudpecho_set_thread_name("udpecho-xdp")
                var ticks = 0
                while !stopping.load(ordering: .acquiring) {
                    usleep(100_000)
                    ticks += 1
                    guard ticks % 10 == 0 else { continue }
                    do { try xdp.refresh() } catch {
                        logger.warning("XDP refresh failed", metadata: ["error": "\(error)"])
                    }
                }
            }
            guard status == 0 else {
                failed("the XDP refresher", status)
                for _ in self.workers { finishOne() }
                return
            }
        }
        for (index, worker) in self.workers.enumerated() {
            let status = WorkerThread.start {
                cudpecho_set_thread_name("udpecho-\(index)")
                worker.run()
                finishOne()
            }
            guard status == 0 else {
                failed("serving thread \(index + 1) of \(self.workers.count)", status)
                for _ in index..<self.workers.count { finishOne() }
                return
            }
        }
    }

    /// Calls `body` once ``run()`` has returned, after the last event (at once if it has returned already).
    func whenStopped(_ body: @escaping @Sendable () -> Void) {
        let finished = self.onStopped.withLock { bodies -> Bool in
            guard bodies != nil else { return true }
            bodies!.append(body)
            return false
        }
        if finished { body() }
    }

    /// Asks the serving threads to finish: they stop reading and send what they hold. Shutting a socket down for
    /// reading wakes the thread blocked in it (the sockets stay open, and can still send, until `run()` closes them).
    private func stop() {
        guard !self.stopping.exchange(true, ordering: .acquiringAndReleasing) else { return }
        for socket in self.sockets { socket.shutdownReading() }
    }

    /// The single address to bind for `address`: the dual-stack wildcard for a missing host (plain IPv4 where the
    /// system has no IPv6), else the first address of the name, IPv4 preferred as Go's `ListenPacket` does.
    static func bindAddress(for address: HostAndPort) throws(EchoError) -> SocketAddress {
        guard let host = address.host else {
            let probe = socket(AF_INET6, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
            if probe >= 0 {
                close(probe)
                return try SocketAddress.port(address.port, of: try! SocketAddress(ipAddress: "::", port: 0))
            }
            return try SocketAddress.port(address.port, of: try! SocketAddress(ipAddress: "0.0.0.0", port: 0))
        }
        let addresses = try NameResolver.resolve(HostAndPort(host: host, port: address.port), passive: true)
        return addresses.first { if case .v4 = $0 { true } else { false } } ?? addresses[0]
    }
}

extension SocketAddress {
    /// `address` with its port replaced.
    static func port(_ port: Int, of address: SocketAddress) throws(EchoError) -> SocketAddress {
        var copy = address
        copy.port = port
        return copy
    }
}
