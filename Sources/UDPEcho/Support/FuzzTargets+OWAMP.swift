import CUDPEcho
import NIOCore
import Synchronization

/// The OWAMP targets of ``FuzzTarget``.
extension FuzzHarness {
    private static let owampKeys = IPPMKeyFile(secrets: ["fuzz": Array("udpecho fuzzing key".utf8)])

    /// Room the server promised and gave back, to check that a connection returns all of it.
    private final class Room: Sendable {
        let reserved = Mutex(0)
    }

    /// A server connection's context with small limits, fixed clocks, and sessions whose threads end as soon as they
    /// start (no thread is made).
    private static func owampContext(
        keyed: Bool,
        room: Room,
        results: OwampResultStore
    ) -> OwampControlConnection.Context {
        let configuration = OwampServerConfiguration(
            controlAddress: HostAndPort(host: "127.0.0.1", port: 861),
            modes: keyed ? [.authenticated, .encrypted] : .unauthenticated,
            keys: keyed ? Self.owampKeys : nil,
            maximumSessionsPerConnection: 4,
            maximumPackets: 64,
            keyDerivationCount: 1024
        )
        let peer = IPKey(high: 0, low: IPKey.mappedPrefix | 0x7F00_0001)
        return OwampControlConnection.Context(
            configuration: configuration,
            results: results,
            peer: peer,
            local: peer,
            reserve: {
                room.reserved.withLock { $0 += 1 }
                return true
            },
            release: { count in room.reserved.withLock { $0 -= count } },
            count: { _ in },
            run: { endpoint in
                endpoint.socket.threadEnded()
                return 0
            },
            realtime: { 1_700_000_000_000_000_000 }
        )
    }

    /// Cuts cleartext OWAMP client messages out of `bytes` as a client would send them, each part that ends in an
    /// HMAC sealed with `exchange`: a request's 112 bytes and then its slots, Stop-Sessions whole, the others whole.
    private static func sealOwamp(_ bytes: [UInt8], with exchange: inout ClientExchange) -> [UInt8] {
        var rest = bytes[...]
        var sealed: [UInt8] = []
        func part(_ size: Int) {
            var message = Array(rest.prefix(size))
            rest = rest.dropFirst(message.count)
            message += [UInt8](repeating: 0, count: size - message.count)
            sealed += exchange.seal(message)
        }
        while let command = rest.first {
            switch command {
            case 1:
                let slots =
                    rest.count >= 8 ? Int(Array(rest.prefix(8)).get(UInt32.self, at: 4) % 8) : 1
                part(SessionRequest.size)
                part(max(1, slots) * ScheduleSlot.size + 16)
            case 3:
                let message = Array(rest)
                let length =
                    (try? OwampStopSessions.length(
                        of: { range in
                            range.upperBound <= message.count ? message[range] : nil
                        },
                        maximumSessions: 4,
                        maximumSkips: 8
                    )) ?? nil
                part(min(length ?? 32, 4096))
            case 4: part(FetchSession.size)
            default: part(StartSessions.size)
            }
        }
        return sealed
    }

    static func owampControlServer(_ data: UnsafeRawBufferPointer) {
        guard let mode = data.first else { return }
        var bytes = Array(data.dropFirst())
        let room = Room()
        let results = OwampResultStore(capacity: 4)
        var connection = OwampControlConnection(
            context: Self.owampContext(keyed: mode & 1 != 0, room: room, results: results)
        )
        let greeting = try! ServerGreeting(decoding: connection.greetingBytes())
        var actions: [ControlAction] = []
        var sealer: ClientExchange?
        if mode & 1 != 0 {
            var exchange = ClientExchange(
                server: try! SocketAddress(ipAddress: "127.0.0.1", port: 861),
                mode: mode & 2 != 0 ? .encrypted : .authenticated,
                keyID: "fuzz",
                secret: Array("udpecho fuzzing key".utf8),
                peer: "fuzz",
                name: "OWAMP"
            )
            actions += connection.receive(try! exchange.setUp(greeting))
            guard case .send(let start)? = actions.first, (try? exchange.started(start)) != nil else {
                preconditionFailure("a keyed connection with the right key was not set up: \(actions)")
            }
            bytes = Self.sealOwamp(bytes, with: &exchange)
            sealer = exchange
        }
        // In pieces whose sizes the bytes choose, as TCP may cut them.
        var offset = 0
        while offset < bytes.count && connection.phase != .closed {
            let piece = min(bytes.count - offset, 1 + Int(bytes[offset] % 97))
            actions += connection.receive(bytes[offset..<(offset + piece)])
            offset += piece
            precondition(connection.sessionCount <= 4, "past the session limit")
        }
        // The sessions the input stopped, fetched (the fuzzer cannot guess their SIDs): Fetch-Ack, the request and
        // its slots, the skipped ranges and the records, each part whole blocks.
        for sid in results.sids where connection.phase == .requests {
            let fetch = FetchSession(sid: sid).encoded()
            let answer = connection.receive(sealer?.seal(fetch) ?? fetch)
            guard case .send(let reply)? = answer.first else { preconditionFailure("no answer to a fetch: \(answer)") }
            precondition(reply.count % 16 == 0 && reply.count >= FetchAck.size + SessionRequest.size + 64)
            actions += answer
        }
        for action in actions {
            if case .send(let message) = action {
                precondition(message.count % 16 == 0 || message.count == ServerGreeting.size, "\(message.count)")
                // The longest answer: a fetch of 64 records with its request, its most slots and skipped ranges.
                let longest =
                    FetchAck.size + SessionRequest.size + OwampServerConfiguration.maximumSlots * ScheduleSlot.size + 16
                    + 8 * OwampServerConfiguration.maximumSkips + 16 + 64 * OwampRecord.size + 16
                precondition(message.count <= longest, "an answer of \(message.count) bytes")
            }
        }
        connection.close()
        precondition(room.reserved.withLock { $0 } == 0, "a closed connection kept room for sessions")
    }

    /// Arbitrary bytes through every OWAMP message decoder; what decodes encodes back to the same bytes (less what
    /// the format does not keep), and a direction's statistics over decoded records hold together.
    static func owampMessages(_ data: UnsafeRawBufferPointer) {
        let bytes = Array(data)
        if let length = try? OwampStopSessions.length(
            of: { $0.upperBound <= bytes.count ? bytes[$0] : nil },
            maximumSessions: 16,
            maximumSkips: 64
        ) {
            precondition(length >= 32 && length % 16 == 0, "a Stop-Sessions of \(length) bytes")
            if length <= bytes.count, let stop = try? OwampStopSessions(decoding: Array(bytes.prefix(length))) {
                let again = stop.encoded()
                precondition(again.count == length, "Stop-Sessions re-encoded to \(again.count) of \(length) bytes")
                precondition((try? OwampStopSessions(decoding: again)) == stop, "Stop-Sessions did not round-trip")
            }
        }
        if bytes.count >= FetchSession.size, let fetch = try? FetchSession(decoding: Array(bytes.prefix(48))) {
            precondition(fetch.begin <= fetch.end)
            precondition((try? FetchSession(decoding: fetch.encoded())) == fetch, "Fetch-Session did not round-trip")
        }
        if bytes.count >= FetchAck.size, let ack = try? FetchAck(decoding: Array(bytes.prefix(32))) {
            precondition((try? FetchAck(decoding: ack.encoded())) == ack, "Fetch-Ack did not round-trip")
        }
        if bytes.count >= 16, let slot = try? ScheduleSlot(decoding: bytes.prefix(16)) {
            precondition((try? ScheduleSlot(decoding: slot.encoded()[...])) == slot, "a slot did not round-trip")
        }
        let count = bytes.count / OwampRecord.size
        let records = (0..<count).map { OwampRecord(decoding: bytes, at: $0 * OwampRecord.size) }
        let packed = OwampRecord.packed(records)
        precondition(packed.count % 16 == 0 && packed.count >= count * OwampRecord.size)
        precondition((0..<count).allSatisfy { OwampRecord(decoding: packed, at: $0 * OwampRecord.size) == records[$0] })
        let next = UInt32(truncatingIfNeeded: bytes.first.map(Int.init) ?? 0)
        let result = OwampDirectionResult(
            sid: [UInt8](repeating: 0, count: 16),
            records: records,
            nextSequence: next,
            skips: []
        )
        precondition(result.received + result.lost <= Int(next), "more packets counted than sent")
        precondition(result.delays.count == result.received && result.delays == result.delays.sorted())
    }

    /// A test packet as a receiver decodes it: the first byte chooses the mode and padding, the rest is the packet.
    static func owampTestPacket(_ data: UnsafeRawBufferPointer) {
        guard let mode = data.first else { return }
        let keys = ControlCipher.SessionKeys(aes: Array(0..<16), hmac: Array(0..<32))
        let plan = OwampSessionPlan(
            sid: [UInt8](repeating: 1, count: 16),
            slots: [ScheduleSlot(kind: .fixed, parameter: 1 << 32)],
            count: 16,
            start: 0,
            padding: Int(mode >> 2),
            timeout: 1_000_000_000,
            cipher: mode & 1 == 0
                ? nil
                : TestSessionCipher(encrypted: mode & 2 != 0, sid: [UInt8](repeating: 1, count: 16), control: keys)
        )
        var packet = Array(data.dropFirst())
        let record = packet.withUnsafeMutableBytes {
            OwampReceiver.record(
                of: $0,
                plan: plan,
                receiveTime: 1_700_000_000_000_000_000,
                receiveError: StampErrorEstimate(raw: 0x0101),
                ttl: 64
            )
        }
        if let record {
            precondition(
                packet.count == plan.packetSize && record.sequence < plan.count,
                "a packet outside the session"
            )
            precondition(!record.isLost, "a received packet recorded as lost")
        }
    }
}
