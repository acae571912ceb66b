import CUDPEcho
import NIOCore

/// The server's side of one OWAMP-Control connection (RFC 4656 §3), without its socket: bytes in, bytes and test
/// sessions out. ``OwampServer`` runs one per TCP connection on SwiftNIO; the tests and the fuzz targets feed it bytes
/// directly.
///
/// After set-up the client requests sessions (Request-Session and its schedule: this server either receives the
/// client's test packets or sends its own to the client), starts them (Start-Sessions), and stops them
/// (Stop-Sessions, which this server answers with its own, describing the sessions it sent); then it may fetch
/// the records of the sessions this server received (Fetch-Session), on this connection or a later one.
struct OwampControlConnection: ControlServerConnection {
    typealias Action = ControlAction

    /// The context a connection needs from its server.
    struct Context {
        var configuration: OwampServerConfiguration
        var results: OwampResultStore
        /// The control client's and this server's addresses on the connection.
        var peer: IPKey
        var local: IPKey
        var reserve: () -> Bool
        var release: (Int) -> Void
        var count: (WritableKeyPath<IPPMServerStatistics, Int>) -> Void
        /// Runs a started session's endpoint (on a thread of its own); it closes its socket when it ends. Returns 0,
        /// or the errno of a thread that could not be started (then the endpoint does not run).
        var run: (OwampEndpoint) -> Int32
        var realtime: () -> Int64 = { cudpecho_realtime_ns() }
        var startTime: UInt64 = 0
    }

    private let context: Context
    var phase = ControlPhase.setUp
    var channel: ControlServerChannel
    /// Sessions accepted and not yet started, and those running; each holds its room among the server's.
    private(set) var pending: [OwampEndpoint] = []
    private(set) var running: [OwampEndpoint] = []

    var sessionCount: Int { self.pending.count + self.running.count }

    init(context: Context) {
        self.context = context
        self.channel = ControlServerChannel(
            modes: context.configuration.modes,
            keys: context.configuration.keys,
            keyDerivationCount: context.configuration.keyDerivationCount
        )
    }

    var startTime: UInt64 { self.context.startTime }
    func count(_ key: WritableKeyPath<IPPMServerStatistics, Int>) { self.context.count(key) }

    /// The most bytes a client may send ahead of the server's answers: the largest request (its most slots), or the
    /// largest Stop-Sessions.
    var maximumBuffered: Int {
        max(
            2 * (SessionRequest.size + OwampServerConfiguration.maximumSlots * ScheduleSlot.size + 16),
            32 + self.sessionCount * OwampSessionDescription.size(skips: OwampServerConfiguration.maximumSkips)
        )
    }

    mutating func command(_ command: UInt8, _ actions: inout [Action]) -> Bool? {
        switch ControlCommand(rawValue: command) {
        case .requestSession where self.phase == .requests:
            return self.takeRequest(&actions)
        case .startSessions where self.phase == .requests:
            guard let message = self.takeMessage(StartSessions.size, &actions) else {
                return self.phase == .closed ? nil : false
            }
            actions += self.start(message)
        case .fetchSession where self.phase == .requests:
            guard let message = self.takeMessage(FetchSession.size, &actions) else {
                return self.phase == .closed ? nil : false
            }
            actions += self.fetch(message)
        case .stopSessions where self.phase == .testing:
            return self.takeStop(&actions)
        case .requestTWSession?:
            actions += self.fail("command 5 is TWAMP's Request-TW-Session, not OWAMP's")
            return nil
        default:
            let place = self.phase == .testing ? "while sessions run" : "before Start-Sessions"
            actions += self.fail("command \(command) is not allowed \(place)")
            return nil
        }
        return self.phase == .closed ? nil : true
    }

    /// Request-Session: the 112-byte request, then its slots and their HMAC.
    private mutating func takeRequest(_ actions: inout [Action]) -> Bool? {
        guard let preamble = self.channel.peek(0..<SessionRequest.size) else { return false }
        let slots = Int(Array(preamble).get(UInt32.self, at: 4))
        guard (1...OwampServerConfiguration.maximumSlots).contains(slots) else {
            actions += self.fail("Request-Session has \(slots) slots, not 1...\(OwampServerConfiguration.maximumSlots)")
            return nil
        }
        let total = SessionRequest.size + slots * ScheduleSlot.size + 16
        guard self.channel.peek(0..<total) != nil else { return false }
        guard let request = self.takeMessage(SessionRequest.size, &actions),
            let schedule = self.takeMessage(slots * ScheduleSlot.size + 16, &actions)
        else { return nil }
        actions += self.request(request, schedule: Array(schedule.dropLast(16)))
        return self.phase == .closed ? nil : true
    }

    private mutating func request(_ bytes: [UInt8], schedule: [UInt8]) -> [Action] {
        let request: SessionRequest
        var slots: [ScheduleSlot] = []
        do {
            request = try SessionRequest(decoding: bytes)
            for offset in stride(from: 0, to: schedule.count, by: ScheduleSlot.size) {
                slots.append(try ScheduleSlot(decoding: schedule[offset..<(offset + ScheduleSlot.size)]))
            }
        } catch {
            return self.fail("Request-Session: \(error)")
        }
        switch self.admit(request, slots: slots, bytes: bytes + schedule) {
        case .failure(let refusal):
            self.context.count(\.sessionsRefused)
            return [.send(self.sealed(AcceptSession(accept: refusal.accept).encoded()))]
        case .success(let endpoint):
            self.context.count(\.sessionsAccepted)
            self.pending.append(endpoint)
            let accept = AcceptSession(accept: .ok, port: endpoint.socket.port, sid: endpoint.plan.sid)
            return [.send(self.sealed(accept.encoded()))]
        }
    }

    struct Refusal: Error {
        var accept: IPPMAccept
        var reason: String
    }

    /// Whether the request may have a session, and its endpoint (its socket bound) if so.
    private func admit(
        _ request: SessionRequest,
        slots: [ScheduleSlot],
        bytes: [UInt8]
    ) -> Result<OwampEndpoint, Refusal> {
        let configuration = self.context.configuration
        guard self.sessionCount < configuration.maximumSessionsPerConnection else {
            return .failure(Refusal(accept: .permanentLimitation, reason: "the connection has its most sessions"))
        }
        guard (request.ipVersion == 4) == self.context.peer.isIPv4 else {
            return .failure(Refusal(accept: .notSupported, reason: "the session's IP version is not the connection's"))
        }
        guard let namedSender = IPKey(bytes: request.senderAddress),
            let namedReceiver = IPKey(bytes: request.receiverAddress)
        else { return .failure(Refusal(accept: .failure, reason: "bad address")) }
        let serverSends = request.confSender
        // The client's end and this server's end of the session; zeros name the control connection's.
        let clientBytes = serverSends ? request.receiverAddress : request.senderAddress
        let serverBytes = serverSends ? request.senderAddress : request.receiverAddress
        let client =
            clientBytes.allSatisfy { $0 == 0 } ? self.context.peer : (serverSends ? namedReceiver : namedSender)
        let serverNamed = serverBytes.allSatisfy { $0 == 0 } ? nil : (serverSends ? namedSender : namedReceiver)
        if !configuration.allowThirdParty {
            guard client == self.context.peer else {
                return .failure(Refusal(accept: .failure, reason: "the session's other end is not the control client"))
            }
            guard serverNamed == nil || serverNamed == self.context.local else {
                return .failure(Refusal(accept: .failure, reason: "the session's end here is not this server"))
            }
        }
        guard request.packetCount >= 1, request.packetCount <= configuration.maximumPackets else {
            return .failure(Refusal(accept: .notSupported, reason: "\(request.packetCount) packets is out of range"))
        }
        guard request.paddingLength <= configuration.maximumPadding else {
            return .failure(Refusal(accept: .notSupported, reason: "padding \(request.paddingLength) is too long"))
        }
        guard request.typeP >> 30 == 0 else {
            return .failure(Refusal(accept: .notSupported, reason: "Type-P \(request.typeP) is not a DSCP"))
        }
        let timeout = IPPMTime.nanoseconds(ntp: request.timeout)
        guard timeout <= configuration.maximumLossTimeout.nanoseconds else {
            return .failure(Refusal(accept: .notSupported, reason: "the loss timeout is too long"))
        }
        if serverSends {
            let shortest = IPPMTime.ntpDuration(nanoseconds: configuration.minimumInterval.nanoseconds)
            guard slots.allSatisfy({ $0.parameter >= shortest }) else {
                return .failure(Refusal(accept: .notSupported, reason: "a slot's gap is shorter than allowed"))
            }
            guard request.receiverPort >= 1024 else {
                return .failure(
                    Refusal(accept: .notSupported, reason: "receiver port \(request.receiverPort) is below 1024")
                )
            }
        }
        let now = self.context.realtime()
        let start = StampTimestampFormat.ntp.decode(request.startTime, taiOffset: 0)
        guard abs(start - now) <= configuration.startTimeWindow.nanoseconds else {
            return .failure(Refusal(accept: .failure, reason: "the start time is too far from now"))
        }
        let sid = serverSends ? request.sid : sessionIdentifier(address: self.context.local, now: now)
        let plan = OwampSessionPlan(
            sid: sid,
            slots: slots,
            count: request.packetCount,
            start: start,
            padding: Int(request.paddingLength),
            timeout: timeout,
            cipher: self.channel.sessionKeys.map {
                TestSessionCipher(encrypted: self.channel.mode == .encrypted, sid: sid, control: $0)
            }
        )
        var schedule = OwampSchedule(sid: sid, slots: slots)
        for _ in 1..<request.packetCount { _ = schedule.next() }
        let last = IPPMTime.nanoseconds(ntp: schedule.next())
        guard last <= configuration.maximumSessionDuration.nanoseconds else {
            return .failure(Refusal(accept: .notSupported, reason: "the schedule lasts longer than allowed"))
        }
        guard self.context.reserve() else {
            return .failure(Refusal(accept: .temporaryLimitation, reason: "the server has its most sessions"))
        }
        let socket: OwampSocket
        do {
            socket = try Self.bind(self.context.local, ports: configuration.testPorts)
        } catch {
            self.context.release(1)
            return .failure(Refusal(accept: .temporaryLimitation, reason: "no test port: \(error)"))
        }
        if serverSends {
            if request.typeP & 0x3F != 0 {
                let family = self.context.local.isIPv4 ? AF_INET : AF_INET6
                _ = cudpecho_set_marking(socket.fd, family, Int32(request.typeP & 0x3F) << 2, -1, 0)
            }
            let destination = client.socketAddress(port: Int(request.receiverPort))
            return .success(.sender(OwampSender(plan: plan, socket: socket, destination: destination)))
        }
        let receiver = OwampReceiver(plan: plan, socket: socket, sender: client)
        // The request as a fetch repeats it: with the SID this server chose, and the addresses and port it stood for.
        var repeated = bytes
        repeated.replaceSubrange(48..<64, with: sid)
        repeated.put(socket.port, at: 14)
        if request.senderAddress.allSatisfy({ $0 == 0 }) {
            repeated.replaceSubrange(16..<(16 + client.bytes.count), with: client.bytes)
        }
        if request.receiverAddress.allSatisfy({ $0 == 0 }) {
            repeated.replaceSubrange(32..<(32 + self.context.local.bytes.count), with: self.context.local.bytes)
        }
        return .success(.receiver(receiver, deadline: start &+ last &+ timeout &+ 1_000_000_000, request: repeated))
    }

    /// A socket on this server's address, on the first free port of `ports` (any free port without).
    private static func bind(_ local: IPKey, ports: ClosedRange<Int>?) throws(EchoError) -> OwampSocket {
        guard let ports else { return try OwampSocket(local: local.socketAddress(port: 0)) }
        var last: EchoError?
        for port in ports {
            do { return try OwampSocket(local: local.socketAddress(port: port)) } catch { last = error }
        }
        throw last!
    }

    private mutating func start(_ bytes: [UInt8]) -> [Action] {
        while let endpoint = self.pending.first {
            endpoint.socket.retain()
            let status = self.context.run(endpoint)
            guard status == 0 else {
                // No thread for this session (the process is at its limit of threads): none of them runs. Those
                // started stop, every socket and room is given back, and the client hears why (RFC 4656 §3.7:
                // Accept 5, a temporary resource limitation) before the connection closes.
                endpoint.socket.threadEnded()
                let reason = EchoError.threadsExhausted(purpose: "an OWAMP test session", errno: status)
                self.close()
                return [.send(self.sealed(StartAck(accept: .temporaryLimitation).encoded())), .close("\(reason)")]
            }
            self.running.append(self.pending.removeFirst())
        }
        self.phase = .testing
        return [.send(self.sealed(StartAck(accept: .ok).encoded()))]
    }

    private mutating func takeStop(_ actions: inout [Action]) -> Bool? {
        let length: Int?
        do {
            length = try OwampStopSessions.length(
                of: { self.channel.peek($0) },
                maximumSessions: self.sessionCount,
                maximumSkips: OwampServerConfiguration.maximumSkips
            )
        } catch {
            actions += self.fail("Stop-Sessions: \(error)")
            return nil
        }
        guard let length else { return false }
        guard let bytes = self.channel.take(length) else { return false }
        guard self.channel.verify(bytes) else {
            actions += self.fail("a message's HMAC does not verify")
            return nil
        }
        let stop: OwampStopSessions
        do { stop = try OwampStopSessions(decoding: bytes) } catch {
            actions += self.fail("Stop-Sessions: \(error)")
            return nil
        }
        actions += self.stop(stop)
        return self.phase == .closed ? nil : true
    }

    /// Stops every session: keeps the records of those this server received (the client's descriptions say how far
    /// it sent), and answers with the descriptions of those it sent.
    private mutating func stop(_ message: OwampStopSessions) -> [Action] {
        let now = self.context.realtime()
        var sent: [OwampSessionDescription] = []
        for endpoint in self.running {
            switch endpoint {
            case .sender(let sender):
                sent.append(sender.stop())
            case .receiver(let receiver, _, let request):
                receiver.stop()
                guard let description = message.sessions.first(where: { $0.sid == receiver.plan.sid }) else {
                    continue  // not described: unfinished, and not kept
                }
                self.context.results.keep(
                    OwampResult(
                        owner: self.context.peer,
                        plan: receiver.plan,
                        request: Array(request.prefix(SessionRequest.size)),
                        slots: Array(request.dropFirst(SessionRequest.size)),
                        description: description,
                        records: receiver.records(
                            nextSequence: description.nextSequence,
                            skips: description.skips,
                            stopTime: now
                        )
                    ),
                    now: now,
                    retention: self.context.configuration.resultRetention.nanoseconds
                )
            }
        }
        for endpoint in self.running { endpoint.socket.release() }
        self.context.release(self.running.count)
        self.running.removeAll()
        self.phase = .requests
        return [.send(self.sealed(OwampStopSessions(accept: .ok, sessions: sent).encoded()))]
    }

    /// Fetch-Session: the Fetch-Ack, then (if the client has a finished session of that SID here) the session's
    /// request and schedule, its skipped ranges, and its records in the range asked, each part with its HMAC.
    private mutating func fetch(_ bytes: [UInt8]) -> [Action] {
        let fetch: FetchSession
        do { fetch = try FetchSession(decoding: bytes) } catch { return self.fail("Fetch-Session: \(error)") }
        guard
            let result = self.context.results.result(
                sid: fetch.sid,
                owner: self.context.peer,
                now: self.context.realtime()
            )
        else {
            self.context.count(\.fetchesRefused)
            return [.send(self.sealed(FetchAck(accept: .failure).encoded()))]
        }
        self.context.count(\.fetches)
        let records = result.records.filter { $0.sequence >= fetch.begin && $0.sequence <= fetch.end }
        let ack = FetchAck(
            accept: .ok,
            finished: true,
            nextSequence: result.description.nextSequence,
            skipCount: UInt32(result.description.skips.count),
            recordCount: UInt32(records.count)
        )
        var reply = self.sealed(ack.encoded())
        reply += self.sealed(result.request)
        reply += self.sealed(result.slots + [UInt8](repeating: 0, count: 16))
        let ranges = result.description.skips
        var skips = [UInt8](repeating: 0, count: 8 * ranges.count)
        for (index, skip) in ranges.enumerated() {
            skips.put(skip.first, at: 8 * index)
            skips.put(skip.last, at: 8 * index + 4)
        }
        reply += self.sealed(skips.padded(to: (skips.count + 15) / 16 * 16) + [UInt8](repeating: 0, count: 16))
        reply += self.sealed(OwampRecord.packed(records) + [UInt8](repeating: 0, count: 16))
        return [.send(reply)]
    }

    /// Ends every session of the connection at once (it closed).
    mutating func close() {
        for endpoint in self.running { endpoint.stop() }
        for endpoint in self.running + self.pending { endpoint.socket.release() }
        self.context.release(self.sessionCount)
        self.running.removeAll()
        self.pending.removeAll()
        self.phase = .closed
    }
}

/// One end of a test session this server takes part in.
enum OwampEndpoint: Sendable {
    case sender(OwampSender)
    /// A receiver, when it stops waiting (CLOCK_REALTIME ns: the schedule's end plus the loss timeout), and the
    /// request and slots that made it (a fetch repeats them).
    case receiver(OwampReceiver, deadline: Int64, request: [UInt8])

    var plan: OwampSessionPlan {
        switch self {
        case .sender(let sender): sender.plan
        case .receiver(let receiver, _, _): receiver.plan
        }
    }

    var socket: OwampSocket {
        switch self {
        case .sender(let sender): sender.socket
        case .receiver(let receiver, _, _): receiver.socket
        }
    }

    /// Sends or receives until the session ends, on a thread the socket was retained for.
    func run() {
        switch self {
        case .sender(let sender): sender.run()
        case .receiver(let receiver, let deadline, _): receiver.run(until: deadline)
        }
        self.socket.threadEnded()
    }

    func stop() {
        switch self {
        case .sender(let sender): _ = sender.stop()
        case .receiver(let receiver, _, _): receiver.stop()
        }
    }
}
