/// The messages of OWAMP-Control (RFC 4656 §3) and TWAMP-Control (RFC 5357 §3), in the clear: what each side sends
/// over the TCP control connection before, during and after test sessions.
///
/// Every message is a whole number of 16-byte AES blocks. In authenticated and encrypted modes everything after the
/// Server-Start's IV is encrypted with AES-CBC and each message from the client's Request onwards ends in an
/// HMAC-SHA1 (``ControlCipher`` does both); here the HMAC field is left as zeros. Decoding checks the length and the
/// fields that have a fixed value; what a field means for policy (a start time, a count) is the caller's to judge.

/// A control mode (RFC 4656 §3.1, RFC 5357 §3.1): the bits of a Server Greeting's Modes field, or the one bit of a
/// Set-Up-Response.
public struct IPPMModes: OptionSet, Sendable, Hashable, CustomStringConvertible {
    public let rawValue: UInt32
    public init(rawValue: UInt32) { self.rawValue = rawValue }

    /// Neither the control messages nor the test packets are protected.
    public static let unauthenticated = IPPMModes(rawValue: 1)
    /// Control messages encrypted and authenticated; test packets' first block encrypted and authenticated.
    public static let authenticated = IPPMModes(rawValue: 2)
    /// Control messages and test packets encrypted and authenticated.
    public static let encrypted = IPPMModes(rawValue: 4)

    /// The modes in which a shared secret keys the connection.
    public var usesKey: Bool { !self.isDisjoint(with: [.authenticated, .encrypted]) }

    public var description: String {
        var names: [String] = []
        if self.contains(.unauthenticated) { names.append("unauthenticated") }
        if self.contains(.authenticated) { names.append("authenticated") }
        if self.contains(.encrypted) { names.append("encrypted") }
        let unknown = self.rawValue & ~7
        if unknown != 0 { names.append("0x\(String(unknown, radix: 16))") }
        return names.isEmpty ? "none" : names.joined(separator: ", ")
    }
}

/// The Accept field of Server-Start, Accept-Session, Start-Ack and Stop-Sessions (RFC 4656 §3.3).
public enum IPPMAccept: UInt8, Sendable, Hashable, CustomStringConvertible {
    case ok = 0
    case failure = 1
    case internalError = 2
    case notSupported = 3
    case permanentLimitation = 4
    case temporaryLimitation = 5

    public var description: String {
        switch self {
        case .ok: "0, OK"
        case .failure: "1, failure, reason unspecified"
        case .internalError: "2, internal error"
        case .notSupported: "3, some aspect of the request is not supported"
        case .permanentLimitation: "4, cannot be done: a permanent resource limitation"
        case .temporaryLimitation: "5, cannot be done now: a temporary resource limitation"
        }
    }
}

/// Why a control message could not be read.
public struct ControlProtocolError: Error, Sendable, Equatable, CustomStringConvertible {
    public let message: String
    public init(_ message: String) { self.message = message }
    public var description: String { self.message }
}

/// The size of an AES block, the unit of every control message.
let ippmBlock = 16

/// Server Greeting (64 bytes): the modes the server offers, a challenge and the key-derivation salt and count.
public struct ServerGreeting: Sendable, Equatable {
    public var modes: IPPMModes
    public var challenge: [UInt8]
    public var salt: [UInt8]
    public var count: UInt32

    public static let size = 64

    public init(modes: IPPMModes, challenge: [UInt8], salt: [UInt8], count: UInt32) {
        self.modes = modes
        self.challenge = challenge
        self.salt = salt
        self.count = count
    }

    public func encoded() -> [UInt8] {
        var bytes = [UInt8](repeating: 0, count: Self.size)
        bytes.put(self.modes.rawValue, at: 12)
        bytes.replaceSubrange(16..<32, with: self.challenge.padded(to: 16))
        bytes.replaceSubrange(32..<48, with: self.salt.padded(to: 16))
        bytes.put(self.count, at: 48)
        return bytes
    }

    public init(decoding bytes: some Collection<UInt8>) throws(ControlProtocolError) {
        let bytes = Array(bytes)
        guard bytes.count == Self.size else {
            throw ControlProtocolError("a Server Greeting is 64 bytes, not \(bytes.count)")
        }
        self.modes = IPPMModes(rawValue: bytes.get(UInt32.self, at: 12))
        self.challenge = Array(bytes[16..<32])
        self.salt = Array(bytes[32..<48])
        self.count = bytes.get(UInt32.self, at: 48)
    }
}

/// Set-Up-Response (164 bytes): the mode the client chose and, in the keyed modes, its key identity, the token
/// (the challenge and the session keys, encrypted with the shared secret) and the IV of its direction.
public struct SetUpResponse: Sendable, Equatable {
    public var mode: IPPMModes
    /// The key identity, at most 80 bytes of UTF-8 (zero-padded on the wire).
    public var keyID: [UInt8]
    public var token: [UInt8]
    public var clientIV: [UInt8]

    public static let size = 164

    public init(mode: IPPMModes, keyID: [UInt8] = [], token: [UInt8] = [], clientIV: [UInt8] = []) {
        self.mode = mode
        self.keyID = keyID
        self.token = token
        self.clientIV = clientIV
    }

    public func encoded() -> [UInt8] {
        var bytes = [UInt8](repeating: 0, count: Self.size)
        bytes.put(self.mode.rawValue, at: 0)
        bytes.replaceSubrange(4..<84, with: self.keyID.padded(to: 80))
        bytes.replaceSubrange(84..<148, with: self.token.padded(to: 64))
        bytes.replaceSubrange(148..<164, with: self.clientIV.padded(to: 16))
        return bytes
    }

    public init(decoding bytes: some Collection<UInt8>) throws(ControlProtocolError) {
        let bytes = Array(bytes)
        guard bytes.count == Self.size else {
            throw ControlProtocolError("a Set-Up-Response is 164 bytes, not \(bytes.count)")
        }
        self.mode = IPPMModes(rawValue: bytes.get(UInt32.self, at: 0))
        var keyID = Array(bytes[4..<84])
        while keyID.last == 0 { keyID.removeLast() }
        self.keyID = keyID
        self.token = Array(bytes[84..<148])
        self.clientIV = Array(bytes[148..<164])
    }
}

/// Server-Start (48 bytes): whether the server accepts the connection, the IV of its direction, and its uptime (the
/// last block, encrypted in the keyed modes).
public struct ServerStart: Sendable, Equatable {
    public var accept: IPPMAccept
    public var serverIV: [UInt8]
    /// When the server started, as an NTP timestamp.
    public var startTime: UInt64

    public static let size = 48

    public init(accept: IPPMAccept, serverIV: [UInt8] = [], startTime: UInt64 = 0) {
        self.accept = accept
        self.serverIV = serverIV
        self.startTime = startTime
    }

    public func encoded() -> [UInt8] {
        var bytes = [UInt8](repeating: 0, count: Self.size)
        bytes[15] = self.accept.rawValue
        bytes.replaceSubrange(16..<32, with: self.serverIV.padded(to: 16))
        bytes.put(self.startTime, at: 32)
        return bytes
    }

    public init(decoding bytes: some Collection<UInt8>) throws(ControlProtocolError) {
        let bytes = Array(bytes)
        guard bytes.count == Self.size else {
            throw ControlProtocolError("a Server-Start is 48 bytes, not \(bytes.count)")
        }
        guard let accept = IPPMAccept(rawValue: bytes[15]) else {
            throw ControlProtocolError("Server-Start has an unknown Accept value \(bytes[15])")
        }
        self.accept = accept
        self.serverIV = Array(bytes[16..<32])
        self.startTime = bytes.get(UInt64.self, at: 32)
    }
}

/// The commands a control client sends once the connection is set up (the first byte of its messages).
public enum ControlCommand: UInt8, Sendable {
    /// OWAMP's Request-Session.
    case requestSession = 1
    case startSessions = 2
    case stopSessions = 3
    /// OWAMP's Fetch-Session.
    case fetchSession = 4
    /// TWAMP's Request-TW-Session.
    case requestTWSession = 5
}

/// Request-Session (OWAMP, command 1) and Request-TW-Session (TWAMP, command 5): the 112-byte request for a test
/// session, its HMAC in the last 16 bytes. OWAMP's request is followed by its schedule slots and a second HMAC.
public struct SessionRequest: Sendable, Equatable {
    public var command: ControlCommand
    /// 4 or 6.
    public var ipVersion: UInt8
    /// OWAMP: whether the server is asked to send, or to receive, the test packets (exactly one of the two).
    public var confSender: Bool
    public var confReceiver: Bool
    /// OWAMP: the schedule's slots and how many packets the sender sends.
    public var slotCount: UInt32
    public var packetCount: UInt32
    public var senderPort: UInt16
    public var receiverPort: UInt16
    /// 4 or 16 bytes (zeros: the address the control connection comes from).
    public var senderAddress: [UInt8]
    public var receiverAddress: [UInt8]
    /// OWAMP: the session identifier when the client receives; zeros otherwise.
    public var sid: [UInt8]
    /// How many bytes of padding follow the test packet's fields.
    public var paddingLength: UInt32
    /// When the sender will start, as an NTP timestamp.
    public var startTime: UInt64
    /// TWAMP: how long (NTP short-format seconds, 32.32) the reflector keeps a session going after Stop-Sessions;
    /// OWAMP: the loss timeout.
    public var timeout: UInt64
    /// The Type-P descriptor: for TWAMP, the DSCP of the test packets (RFC 5357 §3.5).
    public var typeP: UInt32

    public static let size = 112

    public init(
        command: ControlCommand = .requestTWSession,
        ipVersion: UInt8,
        confSender: Bool = false,
        confReceiver: Bool = false,
        slotCount: UInt32 = 0,
        packetCount: UInt32 = 0,
        senderPort: UInt16,
        receiverPort: UInt16,
        senderAddress: [UInt8],
        receiverAddress: [UInt8],
        sid: [UInt8] = [UInt8](repeating: 0, count: 16),
        paddingLength: UInt32,
        startTime: UInt64,
        timeout: UInt64,
        typeP: UInt32 = 0
    ) {
        self.command = command
        self.ipVersion = ipVersion
        self.confSender = confSender
        self.confReceiver = confReceiver
        self.slotCount = slotCount
        self.packetCount = packetCount
        self.senderPort = senderPort
        self.receiverPort = receiverPort
        self.senderAddress = senderAddress
        self.receiverAddress = receiverAddress
        self.sid = sid
        self.paddingLength = paddingLength
        self.startTime = startTime
        self.timeout = timeout
        self.typeP = typeP
    }

    public func encoded() -> [UInt8] {
        var bytes = [UInt8](repeating: 0, count: Self.size)
        bytes[0] = self.command.rawValue
        bytes[1] = self.ipVersion & 0x0F
        bytes[2] = self.confSender ? 1 : 0
        bytes[3] = self.confReceiver ? 1 : 0
        bytes.put(self.slotCount, at: 4)
        bytes.put(self.packetCount, at: 8)
        bytes.put(self.senderPort, at: 12)
        bytes.put(self.receiverPort, at: 14)
        bytes.replaceSubrange(16..<32, with: self.senderAddress.padded(to: 16))
        bytes.replaceSubrange(32..<48, with: self.receiverAddress.padded(to: 16))
        bytes.replaceSubrange(48..<64, with: self.sid.padded(to: 16))
        bytes.put(self.paddingLength, at: 64)
        bytes.put(self.startTime, at: 68)
        bytes.put(self.timeout, at: 76)
        bytes.put(self.typeP, at: 84)
        return bytes
    }

    public init(decoding bytes: some Collection<UInt8>) throws(ControlProtocolError) {
        let bytes = Array(bytes)
        guard bytes.count == Self.size else {
            throw ControlProtocolError("a session request is 112 bytes, not \(bytes.count)")
        }
        guard let command = ControlCommand(rawValue: bytes[0]),
            command == .requestSession || command == .requestTWSession
        else { throw ControlProtocolError("command \(bytes[0]) is not a session request") }
        self.command = command
        self.ipVersion = bytes[1] & 0x0F
        guard self.ipVersion == 4 || self.ipVersion == 6 else {
            throw ControlProtocolError("the request's IP version is \(self.ipVersion), not 4 or 6")
        }
        self.confSender = bytes[2] != 0
        self.confReceiver = bytes[3] != 0
        self.slotCount = bytes.get(UInt32.self, at: 4)
        self.packetCount = bytes.get(UInt32.self, at: 8)
        self.senderPort = bytes.get(UInt16.self, at: 12)
        self.receiverPort = bytes.get(UInt16.self, at: 14)
        let length = self.ipVersion == 4 ? 4 : 16
        self.senderAddress = Array(bytes[16..<(16 + length)])
        self.receiverAddress = Array(bytes[32..<(32 + length)])
        self.sid = Array(bytes[48..<64])
        self.paddingLength = bytes.get(UInt32.self, at: 64)
        self.startTime = bytes.get(UInt64.self, at: 68)
        self.timeout = bytes.get(UInt64.self, at: 76)
        self.typeP = bytes.get(UInt32.self, at: 84)
        if command == .requestTWSession {
            guard !self.confSender, !self.confReceiver, self.slotCount == 0, self.packetCount == 0 else {
                throw ControlProtocolError("a Request-TW-Session has Conf-Sender, Conf-Receiver, slots or packets set")
            }
        } else {
            guard self.confSender != self.confReceiver else {
                throw ControlProtocolError("an OWAMP request must ask the server to be either sender or receiver")
            }
        }
    }
}

/// Accept-Session (48 bytes): the answer to a session request, the port the server's end uses and the session
/// identifier (SID).
public struct AcceptSession: Sendable, Equatable {
    public var accept: IPPMAccept
    public var port: UInt16
    public var sid: [UInt8]

    public static let size = 48

    public init(accept: IPPMAccept, port: UInt16 = 0, sid: [UInt8] = [UInt8](repeating: 0, count: 16)) {
        self.accept = accept
        self.port = port
        self.sid = sid
    }

    public func encoded() -> [UInt8] {
        var bytes = [UInt8](repeating: 0, count: Self.size)
        bytes[0] = self.accept.rawValue
        bytes.put(self.port, at: 2)
        bytes.replaceSubrange(4..<20, with: self.sid.padded(to: 16))
        return bytes
    }

    public init(decoding bytes: some Collection<UInt8>) throws(ControlProtocolError) {
        let bytes = Array(bytes)
        guard bytes.count == Self.size else {
            throw ControlProtocolError("an Accept-Session is 48 bytes, not \(bytes.count)")
        }
        guard let accept = IPPMAccept(rawValue: bytes[0]) else {
            throw ControlProtocolError("Accept-Session has an unknown Accept value \(bytes[0])")
        }
        self.accept = accept
        self.port = bytes.get(UInt16.self, at: 2)
        self.sid = Array(bytes[4..<20])
    }
}

/// Start-Sessions (32 bytes, command 2).
public struct StartSessions: Sendable, Equatable {
    public static let size = 32
    public init() {}

    public func encoded() -> [UInt8] {
        var bytes = [UInt8](repeating: 0, count: Self.size)
        bytes[0] = ControlCommand.startSessions.rawValue
        return bytes
    }

    public init(decoding bytes: some Collection<UInt8>) throws(ControlProtocolError) {
        let bytes = Array(bytes)
        guard bytes.count == Self.size, bytes[0] == ControlCommand.startSessions.rawValue else {
            throw ControlProtocolError("not a Start-Sessions message")
        }
    }
}

/// Start-Ack (32 bytes): the server's answer to Start-Sessions.
public struct StartAck: Sendable, Equatable {
    public var accept: IPPMAccept
    public static let size = 32
    public init(accept: IPPMAccept) { self.accept = accept }

    public func encoded() -> [UInt8] {
        var bytes = [UInt8](repeating: 0, count: Self.size)
        bytes[0] = self.accept.rawValue
        return bytes
    }

    public init(decoding bytes: some Collection<UInt8>) throws(ControlProtocolError) {
        let bytes = Array(bytes)
        guard bytes.count == Self.size else {
            throw ControlProtocolError("a Start-Ack is 32 bytes, not \(bytes.count)")
        }
        guard let accept = IPPMAccept(rawValue: bytes[0]) else {
            throw ControlProtocolError("Start-Ack has an unknown Accept value \(bytes[0])")
        }
        self.accept = accept
    }
}

/// TWAMP's Stop-Sessions (32 bytes, command 3): the client ends every session of the connection (RFC 5357 §3.8).
/// OWAMP's Stop-Sessions carries the sessions' skip ranges after this first part.
public struct StopSessions: Sendable, Equatable {
    public var accept: IPPMAccept
    public var sessionCount: UInt32
    public static let size = 32

    public init(accept: IPPMAccept = .ok, sessionCount: UInt32) {
        self.accept = accept
        self.sessionCount = sessionCount
    }

    public func encoded() -> [UInt8] {
        var bytes = [UInt8](repeating: 0, count: Self.size)
        bytes[0] = ControlCommand.stopSessions.rawValue
        bytes[1] = self.accept.rawValue
        bytes.put(self.sessionCount, at: 4)
        return bytes
    }

    public init(decoding bytes: some Collection<UInt8>) throws(ControlProtocolError) {
        let bytes = Array(bytes)
        guard bytes.count == Self.size, bytes[0] == ControlCommand.stopSessions.rawValue else {
            throw ControlProtocolError("not a Stop-Sessions message")
        }
        guard let accept = IPPMAccept(rawValue: bytes[1]) else {
            throw ControlProtocolError("Stop-Sessions has an unknown Accept value \(bytes[1])")
        }
        self.accept = accept
        self.sessionCount = bytes.get(UInt32.self, at: 4)
    }
}

extension Array where Element == UInt8 {
    /// The bytes, cut or zero-padded to `count`.
    func padded(to count: Int) -> [UInt8] {
        self.count >= count ? Array(self.prefix(count)) : self + [UInt8](repeating: 0, count: count - self.count)
    }

    mutating func put<T: FixedWidthInteger>(_ value: T, at offset: Int) {
        Swift.withUnsafeBytes(of: value.bigEndian) { self.replaceSubrange(offset..<(offset + $0.count), with: $0) }
    }

    func get<T: FixedWidthInteger>(_ type: T.Type, at offset: Int) -> T {
        var value: T = 0
        for index in 0..<MemoryLayout<T>.size { value = value << 8 | T(self[offset + index]) }
        return value
    }
}
