import Logging
import NIOCore
import NIOPosix
import Synchronization

/// A server's side of one OWAMP or TWAMP control connection, without its socket: bytes in, bytes out. The set-up,
/// the framing and the limit on bytes read ahead are shared (this protocol's extension); each protocol adds its
/// commands.
protocol ControlServerConnection {
    var phase: ControlPhase { get set }
    var channel: ControlServerChannel { get set }
    /// The most bytes a client may send ahead of the server's answers; more is a client that does not read, or a
    /// flood.
    var maximumBuffered: Int { get }
    /// The server's start, as an NTP timestamp (for the Server-Start).
    var startTime: UInt64 { get }
    func count(_ key: WritableKeyPath<IPPMServerStatistics, Int>)
    /// One command after set-up, if it is all here: true if one was handled, false if more bytes are needed, nil
    /// when the connection closed.
    mutating func command(_ command: UInt8, _ actions: inout [ControlAction]) -> Bool?
    /// The connection closed: its sessions end.
    mutating func close()
}

extension ControlServerConnection {
    /// The Server Greeting that opens the connection.
    func greetingBytes() -> [UInt8] { self.channel.greetingBytes() }

    /// Whether a message has begun and not finished (the stall timer runs).
    var hasPartialMessage: Bool { self.phase == .setUp || self.channel.buffered > 0 }

    /// Takes bytes from the client and says what to do.
    mutating func receive(_ bytes: some Collection<UInt8>) -> [ControlAction] {
        guard self.phase != .closed else { return [] }
        self.channel.append(bytes)
        var actions: [ControlAction] = []
        while self.phase != .closed {
            guard let progressed = self.step(&actions), progressed else { break }
        }
        if self.phase != .closed && self.channel.buffered > self.maximumBuffered {
            actions += self.fail("the client sent \(self.channel.buffered) bytes ahead of the answers")
        }
        return actions
    }

    /// One message, if it is all here: true if one was handled, false if more bytes are needed, nil when closed.
    private mutating func step(_ actions: inout [ControlAction]) -> Bool? {
        switch self.phase {
        case .closed:
            return nil
        case .setUp:
            guard let response = self.channel.takeSetUpResponse() else { return false }
            switch self.channel.setUp(response, startTime: self.startTime) {
            case .accepted(let start):
                self.phase = .requests
                actions.append(.send(start))
            case .refused(let start, let reason, let mode):
                self.count(mode ? \.modeRefused : \.authenticationFailures)
                self.phase = .closed
                actions += [.send(start), .close(reason)]
            }
            return true
        case .requests, .testing:
            guard let command = self.channel.peek() else { return false }
            return self.command(command, &actions)
        }
    }

    /// Closes the connection for a protocol error.
    mutating func fail(_ reason: String) -> [ControlAction] {
        self.count(\.protocolErrors)
        self.phase = .closed
        return [.close(reason)]
    }

    /// Seals a message whose last 16 bytes are its HMAC.
    mutating func sealed(_ message: [UInt8]) -> [UInt8] { self.channel.sealed(message) }

    /// The next message (or part of one) of `size` bytes, its HMAC checked and zeroed; nil if it is not all here,
    /// or (the connection closed) if its HMAC does not verify.
    mutating func takeMessage(_ size: Int, _ actions: inout [ControlAction]) -> [UInt8]? {
        guard var message = self.channel.take(size) else { return nil }
        guard self.channel.verify(message) else {
            actions += self.fail("a message's HMAC does not verify")
            return nil
        }
        message.replaceSubrange((size - 16)..<size, with: [UInt8](repeating: 0, count: 16))
        return message
    }
}

/// The limits a control server puts on its connections.
struct ControlServerLimits: Sendable {
    /// Checks what an OWAMP or TWAMP server's configuration shares: its modes and keys, its limits (each at least 1,
    /// named), its PBKDF2 count and its padding.
    static func validate(
        name: String,
        modes: IPPMModes,
        keys: IPPMKeyFile?,
        limits: [(Int, String)],
        keyDerivationCount: UInt32,
        maximumPadding: Int
    ) throws(EchoError) {
        guard !modes.isEmpty, modes.rawValue & ~7 == 0 else {
            throw .invalidConfiguration("the \(name) modes must be some of unauthenticated, authenticated, encrypted")
        }
        if modes.usesKey && (keys?.secrets.isEmpty ?? true) {
            throw .invalidConfiguration("authenticated and encrypted modes need a key file with at least one key")
        }
        for (value, limit) in limits where value < 1 {
            throw .invalidConfiguration("the \(limit) must be at least 1, not \(value)")
        }
        guard ControlToken.countRange.contains(keyDerivationCount) else {
            throw .invalidConfiguration("the PBKDF2 count must be within \(ControlToken.countRange)")
        }
        guard (0...65_000).contains(maximumPadding) else {
            throw .invalidConfiguration("the maximum padding must be within 0...65000 bytes")
        }
    }

    /// "OWAMP" or "TWAMP", for the log.
    var name: String
    var maximumConnections: Int
    var maximumConnectionsPerSource: Int
    var messageTimeout: Duration
    var idleTimeout: Duration
}

extension ControlServerHandler {
    /// Binds a control server's TCP port on `address`: each connection gets a handler whose state machine `make`
    /// makes. No connection is read before `autoRead` is turned on (the server's `run()`); the kernel still completes
    /// handshakes into the backlog.
    static func bind(
        _ address: SocketAddress,
        limits: ControlServerLimits,
        shared: ControlServerShared,
        logger: Logger,
        make: @escaping @Sendable (_ peer: IPKey, _ local: IPKey) -> Connection
    ) async throws -> any Channel {
        do {
            return try await ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton)
                .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
                .serverChannelOption(.autoRead, value: false)
                .childChannelOption(.socketOption(.tcp_nodelay), value: 1)
                .childChannelOption(
                    .recvAllocator,
                    value: AdaptiveRecvByteBufferAllocator(minimum: 64, initial: 512, maximum: 16_384)
                )
                .childChannelInitializer { channel in
                    channel.eventLoop.makeCompletedFuture {
                        try channel.pipeline.syncOperations.addHandler(
                            ControlServerHandler(limits: limits, shared: shared, logger: logger, make: make)
                        )
                    }
                }
                .bind(to: address)
                .get()
        } catch let error as IOError {
            throw EchoError.socket(operation: "bind", address: address.hostPortDescription, errno: error.errnoCode)
        }
    }
}

/// A control server's counters, its connections per source and the room for sessions it has promised, under one
/// lock.
final class ControlServerShared: Sendable {
    let state = Mutex<(statistics: IPPMServerStatistics, perSource: [IPKey: Int], open: Int, reserved: Int)>(
        (IPPMServerStatistics(), [:], 0, 0)
    )
    let maximumSessions: Int

    init(maximumSessions: Int) { self.maximumSessions = maximumSessions }

    func count(_ key: WritableKeyPath<IPPMServerStatistics, Int>) {
        self.state.withLock { $0.statistics[keyPath: key] += 1 }
    }

    /// Reserves room for a session; false when the server has its most.
    func reserve() -> Bool {
        self.state.withLock { state in
            guard state.reserved < self.maximumSessions else { return false }
            state.reserved += 1
            return true
        }
    }

    func release(_ count: Int) { self.state.withLock { $0.reserved -= count } }

    /// Sessions reserved now.
    var reserved: Int { self.state.withLock { $0.reserved } }
}

/// One control connection on its channel: admits it within the connection limits, feeds its bytes to its state
/// machine and carries out what it says, and closes it if it stalls.
final class ControlServerHandler<Connection: ControlServerConnection>: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    private let limits: ControlServerLimits
    private let shared: ControlServerShared
    private let logger: Logger
    private let make: (_ peer: IPKey, _ local: IPKey) -> Connection
    private var connection: Connection?
    private var peer: IPKey?
    private var timer: Scheduled<Void>?

    init(
        limits: ControlServerLimits,
        shared: ControlServerShared,
        logger: Logger,
        make: @escaping (_ peer: IPKey, _ local: IPKey) -> Connection
    ) {
        self.limits = limits
        self.shared = shared
        self.logger = logger
        self.make = make
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
            guard state.open < self.limits.maximumConnections,
                state.perSource[peer, default: 0] < self.limits.maximumConnectionsPerSource
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
                "\(self.limits.name) control connection refused: at the connection limit",
                metadata: ["peer": "\(remote)"]
            )
            return
        }
        self.peer = peer
        let connection = self.make(peer, localKey)
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
                self.logger.info("\(self.limits.name) control connection closed", metadata: ["reason": "\(reason)"])
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
        let delay = stalled ? self.limits.messageTimeout : self.limits.idleTimeout
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

extension IPPMServerStatistics {
    /// The control protocol's counters in Prometheus' text format: `udpecho_owamp_…` or `udpecho_twamp_…`.
    func metricsText(protocol name: String, open: Int, running: String) -> String {
        let prefix = "udpecho_\(name.lowercased())_"
        var text = ""
        func family(_ metric: String, _ type: String, _ help: String, _ samples: [(String, Int)]) {
            text += "# HELP \(prefix)\(metric) \(help)\n# TYPE \(prefix)\(metric) \(type)\n"
            for (labels, value) in samples { text += "\(prefix)\(metric)\(labels) \(value)\n" }
        }
        family(
            "control_connections_total",
            "counter",
            "\(name)-Control connections, served or refused at a limit (total or per source).",
            [("{result=\"served\"}", self.connections), ("{result=\"refused\"}", self.connectionsRefused)]
        )
        family("control_connections", "gauge", "\(name)-Control connections open now.", [("", open)])
        family(
            "setup_failures_total",
            "counter",
            "Set-Up-Responses refused: a mode not offered, or a key identity or secret that does not match.",
            [("{reason=\"mode\"}", self.modeRefused), ("{reason=\"authentication\"}", self.authenticationFailures)]
        )
        family(
            "control_closed_total",
            "counter",
            "\(name)-Control connections closed by the server: a malformed or out-of-order message or a bad HMAC, or a stall.",
            [("{reason=\"protocol-error\"}", self.protocolErrors), ("{reason=\"stalled\"}", self.stalled)]
        )
        family(
            "sessions_total",
            "counter",
            "Test sessions requested, accepted or refused (a policy or a limit).",
            [("{result=\"accepted\"}", self.sessionsAccepted), ("{result=\"refused\"}", self.sessionsRefused)]
        )
        family("sessions_running", "gauge", running, [("", self.runningSessions)])
        if name == "OWAMP" {
            family(
                "fetches_total",
                "counter",
                "Fetch-Sessions answered with records, or refused (no finished session of that SID for the client).",
                [("{result=\"answered\"}", self.fetches), ("{result=\"refused\"}", self.fetchesRefused)]
            )
        }
        return text
    }
}
