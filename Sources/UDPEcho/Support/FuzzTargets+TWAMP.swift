import CUDPEcho
import NIOCore

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// The TWAMP targets of ``FuzzTarget``.
extension FuzzHarness {
    private static let twampKeys = IPPMKeyFile(secrets: ["fuzz": Array("udpecho fuzzing key".utf8)])
    /// The smallest PBKDF2 count, so that a keyed run costs little more than an unkeyed one.
    private static let count: UInt32 = 1024

    /// A server connection's context with small limits and fixed clocks.
    private static func serverContext(keyed: Bool, table: TwampSessionTable) -> TwampControlConnection.Context {
        var configuration = TwampServerConfiguration(
            controlAddress: HostAndPort(host: "127.0.0.1", port: 862),
            testPort: 862,
            modes: keyed ? [.authenticated, .encrypted] : .unauthenticated,
            keys: keyed ? Self.twampKeys : nil,
            maximumSessionsPerConnection: 8,
            keyDerivationCount: Self.count
        )
        configuration.startTimeWindow = .seconds(3600)
        let peer = IPKey(high: 0, low: IPKey.mappedPrefix | 0x7F00_0001)
        return TwampControlConnection.Context(
            configuration: configuration,
            table: table,
            peer: peer,
            local: peer,
            testPort: 862,
            reserve: { true },
            release: { _ in },
            count: { _ in },
            realtime: { 1_700_000_000_000_000_000 },
            monotonic: { 1_000_000_000 }
        )
    }

    static func twampControlServer(_ data: UnsafeRawBufferPointer) {
        guard let mode = data.first else { return }
        var bytes = Array(data.dropFirst())
        let table = TwampSessionTable()
        var connection = TwampControlConnection(context: Self.serverContext(keyed: mode & 1 != 0, table: table))
        let greeting = try! ServerGreeting(decoding: connection.greetingBytes())
        var actions: [TwampControlConnection.Action] = []
        if mode & 1 != 0 {
            // A client that knows the key sets the connection up, then seals each message the fuzzer writes.
            var exchange = ClientExchange(
                configuration: TwampClientConfiguration(
                    server: try! SocketAddress(ipAddress: "127.0.0.1", port: 862),
                    mode: mode & 2 != 0 ? .encrypted : .authenticated,
                    keyID: "fuzz",
                    secret: Array("udpecho fuzzing key".utf8)
                ),
                peer: "fuzz"
            )
            actions += connection.receive(try! exchange.setUp(greeting))
            guard case .send(let start)? = actions.first, (try? exchange.started(start)) != nil else {
                preconditionFailure("a keyed connection with the right key was not set up: \(actions)")
            }
            var sealed: [UInt8] = []
            while !bytes.isEmpty {
                let size: Int =
                    switch bytes[0] {
                    case 5: SessionRequest.size
                    default: StartSessions.size
                    }
                var message = Array(bytes.prefix(size))
                bytes.removeFirst(message.count)
                message += [UInt8](repeating: 0, count: size - message.count)
                sealed += exchange.seal(message)
            }
            bytes = sealed
        }
        // In pieces whose sizes the bytes choose, as TCP may cut them.
        var offset = 0
        while offset < bytes.count && connection.phase != .closed {
            let piece = min(bytes.count - offset, 1 + Int(bytes[offset] % 97))
            actions += connection.receive(bytes[offset..<(offset + piece)])
            offset += piece
            precondition(connection.sessionCount <= 8, "past the session limit")
        }
        for action in actions {
            if case .send(let message) = action {
                precondition(message.count % 16 == 0 || message.count == ServerGreeting.size, "\(message.count)")
                precondition(message.count <= SessionRequest.size, "an answer of \(message.count) bytes")
            }
        }
        let running = table.sessionCount
        precondition(running <= 8, "\(running) sessions running")
        connection.close()
        precondition(table.sessionCount == 0, "sessions outlived their connection")
    }

    static func twampControlClient(_ data: UnsafeRawBufferPointer) {
        var bytes = Array(data)
        func take(_ count: Int) -> [UInt8]? {
            guard bytes.count >= count else { return nil }
            defer { bytes.removeFirst(count) }
            return Array(bytes.prefix(count))
        }
        var exchange = ClientExchange(
            configuration: TwampClientConfiguration(
                server: try! SocketAddress(ipAddress: "127.0.0.1", port: 862),
                keyID: "fuzz",
                secret: Array("udpecho fuzzing key".utf8)
            ),
            peer: "fuzz"
        )
        guard let first = take(ServerGreeting.size), var greeting = try? ServerGreeting(decoding: first) else { return }
        // A huge count is refused before any hashing; a small one is kept small so that runs stay quick.
        if ControlToken.countRange.contains(greeting.count) { greeting.count = Self.count }
        guard (try? exchange.setUp(greeting)) != nil else { return }
        guard let start = take(ServerStart.size), (try? exchange.started(start)) != nil else { return }
        _ = exchange.request(senderPort: 40000, padding: 0, timeout: .seconds(2), dscp: 0)
        guard let accept = take(AcceptSession.size) else { return }
        do {
            let session = try exchange.accepted(accept)
            precondition(session.accept == .ok && session.port != 0, "a refusal taken for an acceptance")
        } catch {
            precondition("\(error)".utf8.count < 512, "a long error")
            return
        }
        _ = exchange.seal(StartSessions().encoded())
        if let ack = take(StartAck.size) { _ = try? exchange.acknowledged(ack) }
    }

    static func twampReflector(_ data: UnsafeRawBufferPointer) {
        guard let mode = data.first else { return }
        let packet = UnsafeRawBufferPointer(rebasing: data.dropFirst())
        let sid = [UInt8](repeating: 7, count: 16)
        let keys = ControlCipher.SessionKeys(
            aes: [UInt8](repeating: 1, count: 16),
            hmac: [UInt8](repeating: 2, count: 32)
        )
        let cipher: TestSessionCipher? =
            switch mode % 3 {
            case 0: nil
            case 1: TestSessionCipher(encrypted: false, sid: sid, control: keys)
            default: TestSessionCipher(encrypted: true, sid: sid, control: keys)
            }
        let peer = try! SocketAddress(ipAddress: mode & 4 != 0 ? "::1" : "127.0.0.1", port: 40000)
        let table = TwampSessionTable()
        let sender = peer.withSockAddr { raw, _ in EndpointKey(raw)! }
        let session = TwampTestSession(sid: sid, sender: sender, cipher: cipher, deadline: .max)
        _ = table.start([session], now: 0)
        var reflector = TwampReflector(table: table)
        reflector.beginBatch(now: 1)
        let capacity = max(packet.count, 64) + Int(mode >> 3) * 8
        let slot = UnsafeMutableRawBufferPointer.allocate(byteCount: capacity, alignment: 16)
        defer { slot.deallocate() }
        slot.copyMemory(from: packet)
        let info = cudpecho_datagram_info(
            timestamp: 1_700_000_000_000_000_000,
            ttl: 64,
            tos: 0,
            family: 0,
            destination: (0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0)
        )
        let outcome = peer.withSockAddr { raw, _ in
            reflector.reflect(
                slot.baseAddress!,
                length: packet.count,
                capacity: capacity,
                peer: raw,
                info: info,
                transmitTime: 1_700_000_000_000_000_100,
                now: 2
            )
        }
        if case .reply(let length, _) = outcome {
            precondition(length <= capacity, "reply of \(length) bytes in a slot of \(capacity)")
            precondition(length <= max(packet.count, TestSessionCipher.reflectedSize), "reply grew: \(length)")
            precondition(cipher != nil || length >= TwampReflector.unauthenticatedReply, "short reply \(length)")
        }
    }

    static func keyFile(_ data: UnsafeRawBufferPointer) {
        guard let file = try? IPPMKeyFile(parsing: Array(data)) else { return }
        precondition(file.secrets.count <= data.count, "\(file.secrets.count) keys from \(data.count) bytes")
        for (identity, secret) in file.secrets {
            precondition(identity.utf8.count <= 80 && !identity.isEmpty, "identity \(identity)")
            precondition(!secret.isEmpty && secret.count <= data.count / 2, "secret of \(secret.count) bytes")
        }
    }
}
