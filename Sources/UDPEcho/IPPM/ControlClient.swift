import CUDPEcho
import NIOCore
import NIOPosix

/// The Control-Client's side of OWAMP-Control and TWAMP-Control: connecting, set-up in each mode, and reading,
/// opening and sealing the messages.
enum ControlClient {
    /// Connects to a control server, within `timeout`.
    static func connect(
        _ server: SocketAddress,
        timeout: Duration,
        name: String
    ) async throws -> NIOAsyncChannel<ByteBuffer, ByteBuffer> {
        let peer = server.hostPortDescription
        do {
            return try await ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton)
                .connectTimeout(.nanoseconds(timeout.nanoseconds))
                .channelOption(.socketOption(.tcp_nodelay), value: 1)
                .connect(to: server) { channel in
                    channel.eventLoop.makeCompletedFuture {
                        try NIOAsyncChannel<ByteBuffer, ByteBuffer>(wrappingChannelSynchronously: channel)
                    }
                }
        } catch let error as IOError {
            throw EchoError.socket(operation: "\(name)-Control connect to", address: peer, errno: error.errnoCode)
        } catch let error as ChannelError {
            throw EchoError.control(peer: peer, reason: "cannot connect to \(name)-Control: \(error)")
        }
    }
}

extension ServerGreeting {
    /// The greeting, if the server is willing to talk and its key derivation is bounded.
    func checked(_ peer: String, name: String) throws(EchoError) -> ServerGreeting {
        guard !self.modes.intersection([.unauthenticated, .authenticated, .encrypted]).isEmpty else {
            throw .control(
                peer: peer,
                reason: "the \(name) server refuses the connection (its greeting offers no mode: it may be at its "
                    + "connection limit, or not serve this address)"
            )
        }
        return self
    }
}

/// Reads whole control messages from the connection.
struct ControlReader {
    var iterator: NIOAsyncChannelInboundStream<ByteBuffer>.AsyncIterator
    let peer: String
    let name: String
    private var buffered: [UInt8] = []

    init(iterator: NIOAsyncChannelInboundStream<ByteBuffer>.AsyncIterator, peer: String, name: String) {
        self.iterator = iterator
        self.peer = peer
        self.name = name
    }

    mutating func read(_ count: Int) async throws -> [UInt8] {
        while self.buffered.count < count {
            guard var next = try await self.iterator.next() else {
                throw EchoError.control(
                    peer: self.peer,
                    reason: "the \(self.name) server closed the control connection (or it timed out) after "
                        + "\(self.buffered.count) bytes of a \(count)-byte message"
                )
            }
            self.buffered += next.readBytes(length: next.readableBytes) ?? []
        }
        defer { self.buffered.removeFirst(count) }
        return Array(self.buffered.prefix(count))
    }
}

/// The client's half of the control messages: choosing the mode, the keys, and sealing and opening messages.
struct ClientExchange {
    let server: SocketAddress
    let wantedMode: IPPMModes?
    let keyID: String?
    let secret: [UInt8]?
    let peer: String
    /// "OWAMP" or "TWAMP", for errors.
    let name: String
    private(set) var mode = IPPMModes.unauthenticated
    private(set) var keys: ControlCipher.SessionKeys?
    private var clientIV: [UInt8] = []
    private var cipher: ControlCipher?

    init(server: SocketAddress, mode: IPPMModes?, keyID: String?, secret: [UInt8]?, peer: String, name: String) {
        self.server = server
        self.wantedMode = mode
        self.keyID = keyID
        self.secret = secret
        self.peer = peer
        self.name = name
    }

    /// Reads the Server Greeting, answers it and reads the Server-Start.
    mutating func setUp(
        reader: inout ControlReader,
        outbound: NIOAsyncChannelOutboundWriter<ByteBuffer>
    ) async throws {
        let greeting = try ServerGreeting(decoding: try await reader.read(ServerGreeting.size))
            .checked(self.peer, name: self.name)
        try await outbound.write(ByteBuffer(bytes: try self.setUp(greeting)))
        try self.started(try await reader.read(ServerStart.size))
    }

    /// The Set-Up-Response to a greeting.
    mutating func setUp(_ greeting: ServerGreeting) throws(EchoError) -> [UInt8] {
        let haveKey = self.secret != nil && self.keyID != nil
        let wanted: [IPPMModes] =
            if let mode = self.wantedMode { [mode] } else if haveKey {
                [.encrypted, .authenticated, .unauthenticated]
            } else { [.unauthenticated] }
        guard let mode = wanted.first(where: { greeting.modes.contains($0) }) else {
            throw .control(
                peer: self.peer,
                reason:
                    "the \(self.name) server offers \(greeting.modes) mode, not \(wanted.map(\.description).joined(separator: " or "))"
                    + (haveKey || self.wantedMode != nil ? "" : " (give a key for the others)")
            )
        }
        self.mode = mode
        guard mode.usesKey else { return SetUpResponse(mode: mode).encoded() }
        guard let secret = self.secret, let keyID = self.keyID else {
            throw .control(peer: self.peer, reason: "\(mode) mode needs a key identity and secret")
        }
        guard ControlToken.countRange.contains(greeting.count) else {
            throw .control(
                peer: self.peer,
                reason: "the server asks for \(greeting.count) rounds of PBKDF2, outside \(ControlToken.countRange): "
                    + "refused (a huge count would keep this client hashing for hours)"
            )
        }
        let keys = ControlCipher.SessionKeys.random()
        let key = ControlToken.derivedKey(secret: secret, salt: greeting.salt, count: greeting.count)
        let token = ControlToken.seal(challenge: greeting.challenge, keys: keys, under: key)
        self.keys = keys
        self.clientIV = randomBytes(16)
        return SetUpResponse(mode: mode, keyID: Array(keyID.utf8), token: token, clientIV: self.clientIV).encoded()
    }

    /// Reads the Server-Start.
    mutating func started(_ bytes: [UInt8]) throws(EchoError) {
        let start: ServerStart
        do { start = try ServerStart(decoding: bytes) } catch { throw .control(peer: self.peer, reason: "\(error)") }
        guard start.accept == .ok else {
            let hint = self.mode.usesKey ? " (a wrong key identity or secret is refused so)" : ""
            throw .control(
                peer: self.peer,
                reason: "the \(self.name) server refused the connection (Accept \(start.accept))\(hint)"
            )
        }
        guard let keys = self.keys else { return }
        var cipher = ControlCipher(keys: keys, sendIV: self.clientIV, receiveIV: start.serverIV)
        var last = Array(bytes[32..<48])
        cipher.decrypt(&last)
        cipher.addReceived(last[...])
        self.cipher = cipher
    }

    /// Seals a message whose last 16 bytes are its HMAC (in the keyed modes).
    mutating func seal(_ message: [UInt8]) -> [UInt8] {
        self.cipher?.seal(message) ?? message
    }

    /// Opens a message from the server whose last 16 bytes are its HMAC.
    mutating func open(_ message: [UInt8], _ name: String) throws(EchoError) -> [UInt8] {
        let bytes = self.decrypt(message)
        try self.verify(bytes, name)
        return bytes
    }

    /// Decrypts whole blocks from the server (in the keyed modes), continuing its stream; the HMAC is checked once
    /// the message is whole (``verify(_:_:)``).
    mutating func decrypt(_ message: [UInt8]) -> [UInt8] {
        guard var cipher = self.cipher else { return message }
        var bytes = message
        cipher.decrypt(&bytes)
        self.cipher = cipher
        return bytes
    }

    /// Checks the HMAC in the last 16 bytes of a decrypted message (or part of one, since the last HMAC).
    mutating func verify(_ clear: [UInt8], _ name: String) throws(EchoError) {
        guard var cipher = self.cipher else { return }
        let verified = cipher.verify(clear)
        self.cipher = cipher
        guard verified else { throw .control(peer: self.peer, reason: "the \(name)'s HMAC does not verify") }
    }

    mutating func accepted(_ bytes: [UInt8]) throws(EchoError) -> AcceptSession {
        let accept: AcceptSession
        do {
            accept = try AcceptSession(decoding: try self.open(bytes, "Accept-Session"))
        } catch let error as EchoError {
            throw error
        } catch {
            throw .control(peer: self.peer, reason: "\(error)")
        }
        guard accept.accept == .ok else {
            throw .control(
                peer: self.peer,
                reason: "the \(self.name) server refused the test session (Accept \(accept.accept))"
            )
        }
        guard accept.port != 0 else {
            throw .control(peer: self.peer, reason: "the \(self.name) server accepted the session on port 0")
        }
        return accept
    }

    mutating func acknowledged(_ bytes: [UInt8]) throws(EchoError) {
        let ack: StartAck
        do {
            ack = try StartAck(decoding: try self.open(bytes, "Start-Ack"))
        } catch let error as EchoError {
            throw error
        } catch {
            throw .control(peer: self.peer, reason: "\(error)")
        }
        guard ack.accept == .ok else {
            throw .control(
                peer: self.peer,
                reason: "the \(self.name) server refused Start-Sessions (Accept \(ack.accept))"
            )
        }
    }
}
