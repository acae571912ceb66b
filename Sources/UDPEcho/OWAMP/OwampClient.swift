import CUDPEcho
public import NIOCore
import NIOPosix

/// Which ways an OWAMP test measures.
public struct OwampDirections: OptionSet, Sendable, Hashable {
    public let rawValue: Int
    public init(rawValue: Int) { self.rawValue = rawValue }

    /// This host sends, the server receives (its records fetched afterwards).
    public static let toServer = OwampDirections(rawValue: 1)
    /// The server sends, this host receives.
    public static let fromServer = OwampDirections(rawValue: 2)
    public static let both: OwampDirections = [.toServer, .fromServer]
}

/// What an OWAMP Control-Client asks of a server (RFC 4656 §3): the mode and key, and the test sessions.
public struct OwampClientConfiguration: Sendable {
    /// The server's OWAMP-Control address (TCP, port 861 by default).
    public var server: SocketAddress
    /// The mode; nil takes the most protected one the server offers that this configuration can speak.
    public var mode: IPPMModes?
    /// The key identity and shared secret of the keyed modes (as in a pfstore file).
    public var keyID: String?
    public var secret: [UInt8]?
    /// How long each control exchange may take.
    public var controlTimeout: Duration
    public var directions: OwampDirections
    /// Test packets per direction.
    public var count: Int
    /// The gap between packets: the mean of an exponential distribution (RFC 4656's Poisson stream, as owping
    /// sends), or fixed.
    public var interval: Duration
    public var exponential: Bool
    /// Bytes of padding after each test packet's fields.
    public var padding: Int
    /// How long after its send time a packet counts as lost; the test ends this long after the last packet.
    public var lossTimeout: Duration
    /// The DSCP of the test packets, in the requests' Type-P descriptor.
    public var dscp: UInt8
    /// How long after the requests the sessions start (the control exchange must be done by then).
    public var startDelay: Duration

    /// A configuration; see each property.
    public init(
        server: SocketAddress,
        mode: IPPMModes? = nil,
        keyID: String? = nil,
        secret: [UInt8]? = nil,
        controlTimeout: Duration = .seconds(10),
        directions: OwampDirections = .both,
        count: Int = 100,
        interval: Duration = .milliseconds(100),
        exponential: Bool = true,
        padding: Int = 0,
        lossTimeout: Duration = .seconds(2),
        dscp: UInt8 = 0,
        startDelay: Duration = .seconds(1)
    ) {
        self.server = server
        self.mode = mode
        self.keyID = keyID
        self.secret = secret
        self.controlTimeout = controlTimeout
        self.directions = directions
        self.count = count
        self.interval = interval
        self.exponential = exponential
        self.padding = padding
        self.lossTimeout = lossTimeout
        self.dscp = dscp
        self.startDelay = startDelay
    }

    /// Checks the settings together.
    public func validate() throws(EchoError) {
        guard !self.directions.isEmpty else { throw .invalidConfiguration("measure at least one direction") }
        guard (1...1_000_000).contains(self.count) else {
            throw .invalidConfiguration("the packet count must be within 1...1000000, not \(self.count)")
        }
        guard self.interval > .zero else { throw .invalidConfiguration("the interval must be more than zero") }
        guard (0...65_000).contains(self.padding) else {
            throw .invalidConfiguration("the padding must be within 0...65000 bytes, not \(self.padding)")
        }
        guard self.lossTimeout >= .zero, self.dscp < 64 else {
            throw .invalidConfiguration("the loss timeout must not be negative, and the DSCP within 0...63")
        }
    }
}

/// Measures one-way delay, loss and duplicates to and from an OWAMP server (RFC 4656; perfSONAR's owampd or
/// ``OwampServer``), as perfSONAR's owping: requests a session each way, sends its own test packets on the schedule
/// and receives the server's at once, exchanges Stop-Sessions, then fetches the records of the packets the server
/// received.
public enum OwampPinger {
    /// Runs the sessions `configuration` asks for and returns what each direction measured.
    ///
    /// - Throws: ``EchoError/control(peer:reason:)`` when the server refuses or breaks the control protocol,
    ///   ``EchoError/invalidConfiguration(_:)`` for bad settings, and socket errors.
    public static func run(_ configuration: OwampClientConfiguration) async throws -> OwampResults {
        try configuration.validate()
        let peer = configuration.server.hostPortDescription
        let channel = try await ControlClient.connect(
            configuration.server,
            timeout: configuration.controlTimeout,
            name: "OWAMP"
        )
        return try await channel.executeThenClose { inbound, outbound in
            var reader = ControlReader(iterator: inbound.makeAsyncIterator(), peer: peer, name: "OWAMP")
            var exchange = ClientExchange(
                server: configuration.server,
                mode: configuration.mode,
                keyID: configuration.keyID,
                secret: configuration.secret,
                peer: peer,
                name: "OWAMP"
            )
            var client = OwampControlClient(
                configuration: configuration,
                exchange: exchange,
                local: channel.channel.localAddress
            )
            try await withTimeout(configuration.controlTimeout, channel: channel.channel) {
                try await exchange.setUp(reader: &reader, outbound: outbound)
            }
            client.exchange = exchange
            return try await client.run(reader: &reader, outbound: outbound, channel: channel.channel)
        }
    }

    /// Runs `body` with the control connection closed if it takes longer than `timeout` (which ends any read).
    static func withTimeout<Result>(
        _ timeout: Duration,
        channel: any Channel,
        _ body: () async throws -> Result
    ) async throws -> Result {
        let deadline = channel.eventLoop.scheduleTask(in: .nanoseconds(timeout.nanoseconds)) {
            channel.close(promise: nil)
        }
        defer { deadline.cancel() }
        return try await body()
    }
}

/// One OWAMP control connection's client side, after set-up.
private struct OwampControlClient {
    let configuration: OwampClientConfiguration
    var exchange: ClientExchange
    let local: SocketAddress?

    private var peer: String { self.exchange.peer }

    mutating func run(
        reader: inout ControlReader,
        outbound: NIOAsyncChannelOutboundWriter<ByteBuffer>,
        channel: any Channel
    ) async throws -> OwampResults {
        guard let local = self.local, let localKey = local.withRawAddress({ raw, _ in IPKey(raw) }),
            let serverKey = self.configuration.server.withRawAddress({ raw, _ in IPKey(raw) })
        else { throw EchoError.control(peer: self.peer, reason: "the control connection has no local address") }
        let configuration = self.configuration
        let start = cudpecho_realtime_ns() &+ configuration.startDelay.nanoseconds
        let slots = [
            ScheduleSlot(kind: configuration.exponential ? .exponential : .fixed, duration: configuration.interval)
        ]
        var sender: OwampSender?
        var receiver: (OwampReceiver, deadline: Int64)?
        defer {
            sender?.socket.release()
            receiver?.0.socket.release()
        }
        try await OwampPinger.withTimeout(configuration.controlTimeout, channel: channel) {
            if configuration.directions.contains(.toServer) {
                let (socket, accept) = try await self.request(
                    serverSends: false,
                    localKey: localKey,
                    serverKey: serverKey,
                    sid: [UInt8](repeating: 0, count: 16),
                    slots: slots,
                    start: start,
                    reader: &reader,
                    outbound: outbound
                )
                var destination = self.configuration.server
                destination.port = Int(accept.port)
                let plan = self.plan(sid: accept.sid, slots: slots, start: start)
                sender = OwampSender(plan: plan, socket: socket, destination: destination)
            }
            if configuration.directions.contains(.fromServer) {
                let sid = sessionIdentifier(address: localKey, now: cudpecho_realtime_ns())
                let (socket, _) = try await self.request(
                    serverSends: true,
                    localKey: localKey,
                    serverKey: serverKey,
                    sid: sid,
                    slots: slots,
                    start: start,
                    reader: &reader,
                    outbound: outbound
                )
                let plan = self.plan(sid: sid, slots: slots, start: start)
                let last = plan.sendTimes().last ?? start
                receiver = (
                    OwampReceiver(plan: plan, socket: socket, sender: serverKey),
                    last &+ plan.timeout &+ 500_000_000
                )
            }
            try await outbound.write(ByteBuffer(bytes: self.exchange.seal(StartSessions().encoded())))
            try self.exchange.acknowledged(try await reader.read(StartAck.size))
        }
        // Both ends at once, each on a thread of its own.
        sender?.socket.retain()
        receiver?.0.socket.retain()
        async let sent = Self.runOnThread("OWAMP sender", sender) {
            $0.run()
            $0.socket.threadEnded()
        } stop: {
            _ = $0.stop()
        }
        async let received = Self.runOnThread("OWAMP receiver", receiver) {
            $0.0.run(until: $0.deadline)
            $0.0.socket.threadEnded()
        } stop: {
            $0.0.stop()
        }
        // A thread that could not start never ran: its socket is given back, and the run fails (once the other end,
        // which did start, has run its schedule).
        let (sendingFailed, receivingFailed) = await (sent, received)
        if sendingFailed != nil { sender?.socket.threadEnded() }
        if receivingFailed != nil { receiver?.0.socket.threadEnded() }
        if let failure = sendingFailed ?? receivingFailed { throw failure }
        // What is still queued, if the receiving thread fell behind.
        receiver?.0.stop()
        if let sender {
            // Stop-Sessions only once the last packet's loss timeout has passed (RFC 4656 §3.8: the receiver counts
            // nothing sent later than that before the stop), so that packets still in flight are not cut off.
            let end = (sender.plan.sendTimes().last ?? start) &+ sender.plan.timeout
            let left = end - cudpecho_realtime_ns()
            if left > 0 { try await Task.sleep(for: .nanoseconds(left)) }
        }
        try Task.checkCancellation()
        // Stop-Sessions both ways: ours describes what we sent, the server's what it sent.
        let now = cudpecho_realtime_ns()
        let ours = OwampStopSessions(accept: .ok, sessions: sender.map { [$0.stop()] } ?? [])
        var results = OwampResults(mode: self.exchange.mode)
        try await OwampPinger.withTimeout(configuration.controlTimeout, channel: channel) {
            try await outbound.write(ByteBuffer(bytes: self.exchange.seal(ours.encoded())))
            let theirs = try await self.readStop(reader: &reader)
            if let (receiver, _) = receiver {
                let description =
                    theirs.sessions.first { $0.sid == receiver.plan.sid }
                    ?? OwampSessionDescription(sid: receiver.plan.sid, nextSequence: receiver.plan.count)
                results.fromServer = OwampDirectionResult(
                    sid: receiver.plan.sid,
                    records: receiver.records(
                        nextSequence: description.nextSequence,
                        skips: description.skips,
                        stopTime: now
                    ),
                    nextSequence: description.nextSequence,
                    skips: description.skips
                )
            }
            if let sender {
                let description = sender.stop()
                let records = try await self.fetch(sid: sender.plan.sid, reader: &reader, outbound: outbound)
                results.toServer = OwampDirectionResult(
                    sid: sender.plan.sid,
                    records: records,
                    nextSequence: description.nextSequence,
                    skips: description.skips
                )
            }
        }
        return results
    }

    private func plan(sid: [UInt8], slots: [ScheduleSlot], start: Int64) -> OwampSessionPlan {
        OwampSessionPlan(
            sid: sid,
            slots: slots,
            count: UInt32(self.configuration.count),
            start: start,
            padding: self.configuration.padding,
            timeout: self.configuration.lossTimeout.nanoseconds,
            cipher: self.exchange.keys.map {
                TestSessionCipher(encrypted: self.exchange.mode == .encrypted, sid: sid, control: $0)
            }
        )
    }

    private static func runOnThread<Endpoint: Sendable>(
        _ purpose: String,
        _ endpoint: Endpoint?,
        _ body: @escaping @Sendable (Endpoint) -> Void,
        stop: @escaping @Sendable (Endpoint) -> Void
    ) async -> EchoError? {
        guard let endpoint else { return nil }
        do throws(EchoError) {
            try await runOnOwnThread(purpose) {
                body(endpoint)
            } onCancel: {
                stop(endpoint)
            }
            return nil
        } catch {
            return error
        }
    }

    /// Requests one session (Request-Session, its slot and their HMAC) for a socket of its own, bound here, and
    /// reads the Accept-Session; the socket is closed if the request fails.
    private mutating func request(
        serverSends: Bool,
        localKey: IPKey,
        serverKey: IPKey,
        sid: [UInt8],
        slots: [ScheduleSlot],
        start: Int64,
        reader: inout ControlReader,
        outbound: NIOAsyncChannelOutboundWriter<ByteBuffer>
    ) async throws -> (OwampSocket, AcceptSession) {
        let socket = try OwampSocket(local: localKey.socketAddress(port: 0))
        do {
            return (
                socket,
                try await self.request(
                    serverSends: serverSends,
                    localKey: localKey,
                    serverKey: serverKey,
                    localPort: socket.port,
                    sid: sid,
                    slots: slots,
                    start: start,
                    reader: &reader,
                    outbound: outbound
                )
            )
        } catch {
            socket.release()
            throw error
        }
    }

    private mutating func request(
        serverSends: Bool,
        localKey: IPKey,
        serverKey: IPKey,
        localPort: UInt16,
        sid: [UInt8],
        slots: [ScheduleSlot],
        start: Int64,
        reader: inout ControlReader,
        outbound: NIOAsyncChannelOutboundWriter<ByteBuffer>
    ) async throws -> AcceptSession {
        let ipv6 = self.configuration.server.protocol == .inet6
        // Both addresses named, as owping names them: owampd takes zeros for 0.0.0.0, not for the connection's.
        let here = localKey.bytes
        let there = serverKey.bytes
        let request = SessionRequest(
            command: .requestSession,
            ipVersion: ipv6 ? 6 : 4,
            confSender: serverSends,
            confReceiver: !serverSends,
            slotCount: UInt32(slots.count),
            packetCount: UInt32(self.configuration.count),
            senderPort: serverSends ? 0 : localPort,
            receiverPort: serverSends ? localPort : 0,
            senderAddress: serverSends ? there : here,
            receiverAddress: serverSends ? here : there,
            sid: sid,
            paddingLength: UInt32(self.configuration.padding),
            startTime: StampTimestampFormat.ntp.encode(start, taiOffset: 0),
            timeout: IPPMTime.ntpDuration(nanoseconds: self.configuration.lossTimeout.nanoseconds),
            typeP: UInt32(self.configuration.dscp & 0x3F)
        )
        var bytes = self.exchange.seal(request.encoded())
        bytes += self.exchange.seal(slots.flatMap { $0.encoded() } + [UInt8](repeating: 0, count: 16))
        try await outbound.write(ByteBuffer(bytes: bytes))
        let accept = try self.exchange.accepted(try await reader.read(AcceptSession.size))
        return accept
    }

    /// Reads the server's Stop-Sessions, a part at a time (its length is in its parts).
    private mutating func readStop(reader: inout ControlReader) async throws -> OwampStopSessions {
        var clear = self.exchange.decrypt(try await reader.read(16))
        guard clear[0] == ControlCommand.stopSessions.rawValue else {
            throw EchoError.control(
                peer: self.peer,
                reason: "the OWAMP server sent command \(clear[0]), not Stop-Sessions"
            )
        }
        do {
            // The server's own message has at most the one session it sent; its length is in its parts, read (and
            // decrypted) a block at a time until they tell it, by the same reckoning the server uses.
            while true {
                let length = try OwampStopSessions.length(
                    of: { $0.upperBound <= clear.count ? clear[$0] : nil },
                    maximumSessions: 2,
                    maximumSkips: OwampServerConfiguration.maximumSkips
                )
                guard let length else {
                    clear += self.exchange.decrypt(try await reader.read(16))
                    continue
                }
                if length > clear.count { clear += self.exchange.decrypt(try await reader.read(length - clear.count)) }
                break
            }
            try self.exchange.verify(clear, "Stop-Sessions")
            clear.replaceSubrange((clear.count - 16)..., with: [UInt8](repeating: 0, count: 16))
            return try OwampStopSessions(decoding: clear)
        } catch let error as ControlProtocolError {
            throw EchoError.control(peer: self.peer, reason: "the OWAMP server's \(error)")
        }
    }

    /// Fetches the records of the session `sid` the server received: Fetch-Ack, the request repeated, the skipped
    /// ranges, the records, each part with its HMAC.
    private mutating func fetch(
        sid: [UInt8],
        reader: inout ControlReader,
        outbound: NIOAsyncChannelOutboundWriter<ByteBuffer>
    ) async throws -> [OwampRecord] {
        try await outbound.write(ByteBuffer(bytes: self.exchange.seal(FetchSession(sid: sid).encoded())))
        let ack: FetchAck
        do {
            ack = try FetchAck(decoding: try self.exchange.open(try await reader.read(FetchAck.size), "Fetch-Ack"))
        } catch let error as ControlProtocolError {
            throw EchoError.control(peer: self.peer, reason: "\(error)")
        }
        guard ack.accept == .ok else {
            throw EchoError.control(
                peer: self.peer,
                reason: "the OWAMP server refused Fetch-Session (Accept \(ack.accept))"
            )
        }
        guard ack.recordCount <= UInt32(2 * self.configuration.count + 1024),
            ack.skipCount <= OwampServerConfiguration.maximumSkips
        else {
            throw EchoError.control(
                peer: self.peer,
                reason:
                    "the OWAMP server's Fetch-Ack announces \(ack.recordCount) records and \(ack.skipCount) skipped ranges, more than \(self.configuration.count) packets can have"
            )
        }
        let request = try self.exchange.open(try await reader.read(SessionRequest.size), "fetched request")
        let slots = Int(request.get(UInt32.self, at: 4))
        guard slots <= OwampServerConfiguration.maximumSlots else {
            throw EchoError.control(peer: self.peer, reason: "the fetched request has \(slots) slots")
        }
        _ = try self.exchange.open(try await reader.read(slots * ScheduleSlot.size + 16), "fetched slots")
        let skipBytes = (Int(ack.skipCount) * 8 + 15) / 16 * 16
        _ = try self.exchange.open(try await reader.read(skipBytes + 16), "fetched skipped ranges")
        let recordBytes = (Int(ack.recordCount) * OwampRecord.size + 15) / 16 * 16
        let records = try self.exchange.open(try await reader.read(recordBytes + 16), "fetched records")
        return (0..<Int(ack.recordCount)).map { OwampRecord(decoding: records, at: $0 * OwampRecord.size) }
    }
}
