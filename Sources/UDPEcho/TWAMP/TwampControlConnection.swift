import CUDPEcho
import Crypto

/// The server's side of one TWAMP-Control connection (RFC 5357 §3), without its socket: bytes in, bytes and
/// session changes out. ``TwampServer`` runs one per TCP connection on SwiftNIO; the tests and the fuzz targets feed
/// it bytes directly.
///
/// The connection goes through set-up (Server Greeting, then the client's Set-Up-Response, answered by Server-Start),
/// then requests (Request-TW-Session, each answered by Accept-Session), Start-Sessions (Start-Ack; the sessions are
/// answered from then on), and Stop-Sessions (each session answered for its timeout more, then ended). Anything out of
/// place, malformed, or with an HMAC that does not verify closes the connection, and its sessions end with it.
struct TwampControlConnection: ControlServerConnection {
    typealias Action = ControlAction
    typealias Phase = ControlPhase

    /// The context a connection needs from its server.
    struct Context {
        var configuration: TwampServerConfiguration
        var table: TwampSessionTable
        /// The control client's and this server's addresses on the connection.
        var peer: IPKey
        var local: IPKey
        /// The Session-Reflector's UDP port.
        var testPort: UInt16
        /// Reserves room for a session among the server's; false when the server has no room.
        var reserve: () -> Bool
        /// Gives back reserved room.
        var release: (Int) -> Void
        var count: (WritableKeyPath<TwampServerStatistics, Int>) -> Void
        /// CLOCK_REALTIME and CLOCK_MONOTONIC, ns.
        var realtime: () -> Int64 = { cudpecho_realtime_ns() }
        var monotonic: () -> Int64 = { cudpecho_now_ns() }
        /// The server's start, as an NTP timestamp.
        var startTime: UInt64 = 0
    }

    private let context: Context
    var phase = Phase.setUp
    var channel: ControlServerChannel
    /// Sessions accepted and not yet started, those started, and those stopped but still answered for their timeout
    /// (until `deadline`). All three count against the limits, and all end when the connection closes.
    private(set) var pending: [(session: TwampTestSession, timeout: Int64)] = []
    private(set) var running: [(session: TwampTestSession, timeout: Int64)] = []
    private(set) var stopping: [(session: TwampTestSession, deadline: Int64)] = []

    /// The connection's sessions, in every state.
    var sessionCount: Int { self.pending.count + self.running.count + self.stopping.count }

    /// The most bytes a client may send ahead of the server's answers: two of the largest messages. More is a
    /// client that does not read, or a flood.
    static let maximumBuffered = 2 * SessionRequest.size
    var maximumBuffered: Int { Self.maximumBuffered }
    var startTime: UInt64 { self.context.startTime }
    func count(_ key: WritableKeyPath<IPPMServerStatistics, Int>) { self.context.count(key) }

    init(context: Context) {
        self.context = context
        self.channel = ControlServerChannel(
            modes: context.configuration.modes,
            keys: context.configuration.keys,
            keyDerivationCount: context.configuration.keyDerivationCount
        )
    }

    mutating func command(_ command: UInt8, _ actions: inout [Action]) -> Bool? {
        let size: Int
        switch ControlCommand(rawValue: command) {
        case .requestTWSession where self.phase == .requests: size = SessionRequest.size
        case .startSessions where self.phase == .requests: size = StartSessions.size
        case .stopSessions where self.phase == .testing: size = StopSessions.size
        case .requestSession?, .fetchSession?:
            actions += self.fail("command \(command) is OWAMP's, not TWAMP's")
            return nil
        default:
            let place = self.phase == .testing ? "while sessions run" : "before Start-Sessions"
            actions += self.fail("command \(command) is not allowed \(place)")
            return nil
        }
        guard let message = self.takeMessage(size, &actions) else { return self.phase == .closed ? nil : false }
        switch ControlCommand(rawValue: command)! {
        case .requestTWSession: actions += self.request(message)
        case .startSessions: actions += self.start()
        case .stopSessions: actions += self.stop(message)
        default: break
        }
        return true
    }

    private mutating func request(_ bytes: [UInt8]) -> [Action] {
        self.pruneStopped()
        let request: SessionRequest
        do {
            request = try SessionRequest(decoding: bytes)
        } catch {
            return self.fail("Request-TW-Session: \(error)")
        }
        switch self.admit(request) {
        case .failure(let refusal):
            self.context.count(\.sessionsRefused)
            return [.send(self.sealed(AcceptSession(accept: refusal.accept).encoded()))]
        case .success(let session):
            self.context.count(\.sessionsAccepted)
            let timeout = min(
                IPPMTime.nanoseconds(ntp: request.timeout),
                self.context.configuration.maximumSessionTimeout.nanoseconds
            )
            self.pending.append((session, timeout))
            let accept = AcceptSession(accept: .ok, port: self.context.testPort, sid: session.sid)
            return [.send(self.sealed(accept.encoded()))]
        }
    }

    struct Refusal: Error {
        var accept: IPPMAccept
        var reason: String
    }

    /// Whether the request may have a session, and the session if so.
    private func admit(_ request: SessionRequest) -> Result<TwampTestSession, Refusal> {
        let configuration = self.context.configuration
        guard self.sessionCount < configuration.maximumSessionsPerConnection else {
            return .failure(Refusal(accept: .permanentLimitation, reason: "the connection has its most sessions"))
        }
        let peerIsIPv4 = self.context.peer.isIPv4
        guard (request.ipVersion == 4) == peerIsIPv4 else {
            return .failure(Refusal(accept: .notSupported, reason: "the session's IP version is not the connection's"))
        }
        let zero = request.senderAddress.allSatisfy { $0 == 0 }
        guard let named = IPKey(bytes: request.senderAddress) else {
            return .failure(Refusal(accept: .failure, reason: "bad sender address"))
        }
        let sender = zero ? self.context.peer : named
        let receiverZero = request.receiverAddress.allSatisfy { $0 == 0 }
        let receiver = IPKey(bytes: request.receiverAddress)
        if !configuration.allowThirdParty {
            guard sender == self.context.peer else {
                return .failure(Refusal(accept: .failure, reason: "the sender is not the control client"))
            }
            guard receiverZero || receiver == self.context.local else {
                return .failure(Refusal(accept: .failure, reason: "the receiver is not this server"))
            }
        }
        guard request.senderPort >= 1024 else {
            // The serving path drops datagrams from well-known ports (GuardConfiguration): such a session would
            // never be answered.
            return .failure(Refusal(accept: .notSupported, reason: "sender port \(request.senderPort) is below 1024"))
        }
        guard request.paddingLength <= configuration.maximumPadding else {
            return .failure(Refusal(accept: .notSupported, reason: "padding \(request.paddingLength) is too long"))
        }
        // Type-P: RFC 5357 §3.5's DSCP form (the top two bits zero); the replies leave with that DSCP. Only the control
        // client's own address gets them (no third party by default), so it chooses the marking of its own replies.
        guard request.typeP >> 30 == 0 else {
            return .failure(Refusal(accept: .notSupported, reason: "Type-P \(request.typeP) is not a DSCP"))
        }
        let now = self.context.realtime()
        let start = StampTimestampFormat.ntp.decode(request.startTime, taiOffset: 0)
        let window = configuration.startTimeWindow.nanoseconds
        guard request.startTime == 0 || abs(start - now) <= window else {
            return .failure(Refusal(accept: .failure, reason: "the start time is too far from now"))
        }
        let endpoint = EndpointKey(address: sender, port: request.senderPort)
        guard !self.pending.contains(where: { $0.session.sender == endpoint }),
            !self.running.contains(where: { $0.session.sender == endpoint }),
            !self.stopping.contains(where: { $0.session.sender == endpoint }),
            !self.context.table.contains(endpoint)
        else {
            return .failure(Refusal(accept: .temporaryLimitation, reason: "the sender's port has a session already"))
        }
        guard self.context.reserve() else {
            return .failure(Refusal(accept: .temporaryLimitation, reason: "the server has its most sessions"))
        }
        let sid = sessionIdentifier(address: self.context.local, now: now)
        let cipher = self.channel.sessionKeys.map {
            TestSessionCipher(encrypted: self.channel.mode == .encrypted, sid: sid, control: $0)
        }
        let dscp = UInt8(request.typeP & 0x3F)
        return .success(
            TwampTestSession(
                sid: sid,
                sender: endpoint,
                cipher: cipher,
                tos: dscp == 0 ? nil : dscp << 2,
                deadline: .max
            )
        )
    }

    private mutating func start() -> [Action] {
        let now = self.context.monotonic()
        let duration = self.context.configuration.maximumSessionDuration.nanoseconds
        for entry in self.pending { entry.session.end(at: now &+ duration) }
        guard self.context.table.start(self.pending.map(\.session), now: now) else {
            // Another connection's session took a sender's port meanwhile.
            self.context.release(self.pending.count)
            self.pending.removeAll()
            return [.send(self.sealed(StartAck(accept: .temporaryLimitation).encoded()))]
        }
        self.running += self.pending
        self.pending.removeAll()
        self.phase = .testing
        return [.send(self.sealed(StartAck(accept: .ok).encoded()))]
    }

    private mutating func stop(_ bytes: [UInt8]) -> [Action] {
        do {
            _ = try StopSessions(decoding: bytes)
        } catch {
            return self.fail("Stop-Sessions: \(error)")
        }
        // Each session is answered for its timeout more (packets still in flight), then ends; until then it counts
        // against the limits, so that stopping and starting again cannot pile up sessions.
        let now = self.context.monotonic()
        for entry in self.running {
            let deadline = now &+ entry.timeout
            entry.session.end(at: deadline)
            self.stopping.append((entry.session, deadline))
        }
        self.running.removeAll()
        self.pruneStopped()
        self.phase = .requests
        return []
    }

    /// Ends the stopped sessions past their timeout: out of the reflector's table, and their room given back.
    private mutating func pruneStopped() {
        let now = self.context.monotonic()
        let ended = self.stopping.filter { $0.deadline <= now }
        guard !ended.isEmpty else { return }
        self.stopping.removeAll { $0.deadline <= now }
        self.context.table.remove(ended.map(\.session))
        self.context.release(ended.count)
    }

    /// Ends every session of the connection at once (it closed), stopped ones in their timeout too.
    mutating func close() {
        self.context.table.remove(self.running.map(\.session) + self.stopping.map(\.session))
        self.context.release(self.sessionCount)
        self.running.removeAll()
        self.pending.removeAll()
        self.stopping.removeAll()
        self.phase = .closed
    }
}
