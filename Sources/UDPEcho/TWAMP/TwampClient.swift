import CUDPEcho
public import NIOCore
import NIOPosix

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// What a TWAMP Control-Client asks of a server (RFC 5357 §3): the mode, the key, and the test session.
public struct TwampClientConfiguration: Sendable {
    /// The server's TWAMP-Control address (TCP, port 862 by default).
    public var server: SocketAddress
    /// The mode to use; nil takes the most protected one the server offers that this configuration can speak
    /// (encrypted, then authenticated, with a key; unauthenticated without).
    public var mode: IPPMModes?
    /// The key identity and shared secret of the keyed modes (as in a pfstore file).
    public var keyID: String?
    public var secret: [UInt8]?
    /// How long the control exchange may take, from connecting to the Start-Ack.
    public var controlTimeout: Duration
    /// How long after Stop-Sessions the reflector should still answer (the request's Timeout).
    public var sessionTimeout: Duration
    /// The DSCP of the test packets, in the request's Type-P descriptor.
    public var dscp: UInt8

    /// A configuration; see each property.
    public init(
        server: SocketAddress,
        mode: IPPMModes? = nil,
        keyID: String? = nil,
        secret: [UInt8]? = nil,
        controlTimeout: Duration = .seconds(10),
        sessionTimeout: Duration = .seconds(2),
        dscp: UInt8 = 0
    ) {
        self.server = server
        self.mode = mode
        self.keyID = keyID
        self.secret = secret
        self.controlTimeout = controlTimeout
        self.sessionTimeout = sessionTimeout
        self.dscp = dscp
    }
}

/// A negotiated and started TWAMP test session: where to send the test packets from and to, and how to protect them.
public struct TwampSession: Sendable {
    /// The mode the connection runs in.
    public var mode: IPPMModes
    /// The Session-Reflector's address (the server's address, with the port of its Accept-Session).
    public var reflector: SocketAddress
    /// The local port the test packets must come from (the request named it).
    public var senderPort: Int
    /// The session identifier.
    public var sid: [UInt8]
    /// The test packets' keys, in the keyed modes.
    var cipher: TestSessionCipher?
}

/// Pings through a TWAMP session (RFC 5357): sets it up with TWAMP-Control, sends its test packets as
/// ``EchoPinger`` sends STAMP's (the same events, statistics and summary: round trip without the reflector's time,
/// forward and backward delay, the reflector's sequence numbers for the loss split), then stops it.
public enum TwampPinger {
    /// Runs `configuration` (its target and STAMP settings are replaced by the session's) through a session that
    /// `twamp` sets up; `size` is each test packet's size, nil for the mode's smallest.
    ///
    /// - Throws: ``EchoError/control(peer:reason:)`` when the server refuses or breaks the control protocol, and what
    ///   ``EchoPinger/run(_:onStart:onEvent:)`` throws.
    public static func run(
        _ configuration: EchoPinger.Configuration,
        twamp: TwampClientConfiguration,
        size: Int? = nil,
        onSession: (@Sendable (TwampSession, Int) -> Void)? = nil,
        onStart: (@Sendable (TimestampSource) -> Void)? = nil,
        onEvent: @escaping @Sendable (ProbeEvent) -> Void
    ) async throws -> EchoBenchmark.Result {
        try await Self.withTestSession(twamp, size: size) { session, size, stamp in
            var run = configuration
            run.target = session.reflector
            run.size = size
            run.sourcePort = session.senderPort
            run.stamp = stamp
            onSession?(session, size)
            return try await EchoPinger.run(run, onStart: onStart, onEvent: onEvent)
        }
    }

    /// Loads a TWAMP session as ``EchoBenchmark`` loads a STAMP reflector: `configuration`'s target, size, flows and
    /// STAMP settings are replaced by the session's (one flow: one session), `size` is each test packet's size, nil
    /// for the mode's smallest.
    ///
    /// - Throws: ``EchoError/control(peer:reason:)`` when the server refuses or breaks the control protocol, and what
    ///   ``EchoBenchmark/run(_:onProgress:)`` throws.
    public static func bench(
        _ configuration: EchoBenchmark.Configuration,
        twamp: TwampClientConfiguration,
        size: Int? = nil,
        onSession: (@Sendable (TwampSession, Int) -> Void)? = nil,
        onProgress: (@Sendable (ProbeProgress) -> Void)? = nil
    ) async throws -> EchoBenchmark.Result {
        try await Self.withTestSession(twamp, size: size) { session, size, stamp in
            var run = configuration
            run.target = session.reflector
            run.size = size
            run.flows = 1
            run.sourcePort = session.senderPort
            run.stamp = stamp
            try run.validate()
            onSession?(session, size)
            return try await EchoBenchmark.run(run, onProgress: onProgress)
        }
    }

    /// Sets up and starts one session from a free local port, runs `body` with it, the test packets' size (`size`,
    /// or the mode's smallest that the probe engine sends: at least 16 bytes) and the sender's settings, then stops it.
    private static func withTestSession<Result: Sendable>(
        _ twamp: TwampClientConfiguration,
        size: Int?,
        _ body: (TwampSession, Int, StampSenderConfiguration) async throws -> Result
    ) async throws -> Result {
        let senderPort = try Self.freePort(ipv6: twamp.server.protocol == .inet6)
        let sizeFor = { (mode: IPPMModes) -> Int in
            let smallest = TwampTestFormat.senderSize(keyed: mode.usesKey)
            return max(size ?? max(16, smallest), smallest)
        }
        // The request names the padding after the mode's fields.
        let padding = { (mode: IPPMModes) in sizeFor(mode) - TwampTestFormat.senderSize(keyed: mode.usesKey) }
        return try await TwampControlClient.withSession(twamp, senderPort: senderPort, padding: padding) { session in
            var stamp = StampSenderConfiguration(ssid: 0)
            stamp.twamp = TwampTestFormat(cipher: session.cipher)
            return try await body(session, sizeFor(session.mode), stamp)
        }
    }

    /// A UDP port free now, for the session's sender (the request must name it before the socket is made). Chosen
    /// below the kernel's ephemeral range, where no other socket's automatic port lands between this choice and the
    /// test socket's bind (a port from the range was taken meanwhile, now and then, by a busy host's other sockets);
    /// the kernel's own choice where that range is too small.
    private static func freePort(ipv6: Bool) throws(EchoError) -> Int {
        let ephemeral = EphemeralPorts.current()
        let below = 10_000..<max(10_000, ephemeral.lowerBound)
        if below.count >= 1000 {
            for _ in 0..<32 {
                let port = Int.random(in: below)
                if let free = try? Self.bindable(port, ipv6: ipv6) { return free }
            }
        }
        return try Self.bindable(0, ipv6: ipv6)
    }

    /// Binds a UDP socket to `port` (0: the kernel's choice) and closes it; the port it had.
    private static func bindable(_ port: Int, ipv6: Bool) throws(EchoError) -> Int {
        let wildcard = try! SocketAddress(ipAddress: ipv6 ? "::" : "0.0.0.0", port: port)
        let fd: Int32
        do { fd = try SystemCall.udpSocket(family: ipv6 ? AF_INET6 : AF_INET) } catch {
            throw .socket(operation: "socket for", address: wildcard.hostPortDescription, errno: error.errno)
        }
        defer { close(fd) }
        do {
            try SystemCall.posix("bind") { wildcard.withRawAddress { bind(fd, $0, $1) } }
        } catch {
            throw .socket(operation: "bind", address: wildcard.hostPortDescription, errno: error.errno)
        }
        return SocketAddress.local(of: fd)?.port ?? 0
    }
}

/// The Control-Client's side of TWAMP-Control, over a SwiftNIO connection: set up, request one session, start it,
/// and, when the test is done, stop it.
enum TwampControlClient {
    /// Opens the control connection, requests and starts one session whose test packets come from `senderPort` with
    /// `padding` bytes after their fields, runs `body` with it, then sends Stop-Sessions and closes.
    static func withSession<Result: Sendable>(
        _ configuration: TwampClientConfiguration,
        senderPort: Int,
        padding: (IPPMModes) -> Int,
        _ body: (TwampSession) async throws -> Result
    ) async throws -> Result {
        let peer = configuration.server.hostPortDescription
        let channel = try await ControlClient.connect(
            configuration.server,
            timeout: configuration.controlTimeout,
            name: "TWAMP"
        )
        // The whole control exchange has one deadline: past it the connection is closed, which ends any read.
        let deadline = channel.channel.eventLoop.scheduleTask(
            in: .nanoseconds(configuration.controlTimeout.nanoseconds)
        ) { [channel = channel.channel] in channel.close(promise: nil) }
        return try await channel.executeThenClose { inbound, outbound in
            var reader = ControlReader(iterator: inbound.makeAsyncIterator(), peer: peer, name: "TWAMP")
            var exchange = ClientExchange(configuration: configuration, peer: peer)
            try await exchange.setUp(reader: &reader, outbound: outbound)
            try await outbound.write(
                ByteBuffer(
                    bytes: exchange.request(
                        senderPort: senderPort,
                        padding: padding(exchange.mode),
                        timeout: configuration.sessionTimeout,
                        dscp: configuration.dscp
                    )
                )
            )
            let accept = try exchange.accepted(try await reader.read(AcceptSession.size))
            try await outbound.write(ByteBuffer(bytes: exchange.seal(StartSessions().encoded())))
            try exchange.acknowledged(try await reader.read(StartAck.size))
            deadline.cancel()
            var reflector = configuration.server
            reflector.port = Int(accept.port)
            let session = TwampSession(
                mode: exchange.mode,
                reflector: reflector,
                senderPort: senderPort,
                sid: accept.sid,
                cipher: exchange.keys.map {
                    TestSessionCipher(encrypted: exchange.mode == .encrypted, sid: accept.sid, control: $0)
                }
            )
            let result = try await body(session)
            try? await outbound.write(ByteBuffer(bytes: exchange.seal(StopSessions(sessionCount: 1).encoded())))
            return result
        }
    }
}

extension ClientExchange {
    /// A Request-TW-Session for one session from `senderPort`.
    mutating func request(senderPort: Int, padding: Int, timeout: Duration, dscp: UInt8) -> [UInt8] {
        let ipv6 = if case .v6 = self.server { true } else { false }
        let request = SessionRequest(
            ipVersion: ipv6 ? 6 : 4,
            senderPort: UInt16(senderPort),
            receiverPort: UInt16(self.server.port ?? 0),
            // Zeros: the addresses of the control connection (the server's is the receiver).
            senderAddress: [UInt8](repeating: 0, count: ipv6 ? 16 : 4),
            receiverAddress: [UInt8](repeating: 0, count: ipv6 ? 16 : 4),
            paddingLength: UInt32(padding),
            startTime: StampTimestampFormat.ntp.encode(cudpecho_realtime_ns(), taiOffset: 0),
            timeout: IPPMTime.ntpDuration(nanoseconds: timeout.nanoseconds),
            typeP: UInt32(dscp & 0x3F)
        )
        return self.seal(request.encoded())
    }
}

/// How a TWAMP session's test packets are made: in the clear, or with the session's keys.
struct TwampTestFormat: Sendable {
    var cipher: TestSessionCipher?

    /// A sender's packet without padding: 14 bytes unauthenticated, 48 in the keyed modes.
    var senderSize: Int { Self.senderSize(keyed: self.cipher != nil) }

    static func senderSize(keyed: Bool) -> Int {
        keyed ? TestSessionCipher.senderSize : TwampReflector.shortestUnauthenticated
    }
}

extension ClientExchange {
    /// A TWAMP client's exchange, as `configuration` asks.
    init(configuration: TwampClientConfiguration, peer: String) {
        self.init(
            server: configuration.server,
            mode: configuration.mode,
            keyID: configuration.keyID,
            secret: configuration.secret,
            peer: peer,
            name: "TWAMP"
        )
    }
}
