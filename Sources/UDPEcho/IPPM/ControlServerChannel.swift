/// The server's side of an OWAMP or TWAMP control connection below its commands (RFC 4656 §3.1, RFC 5357 §3.1): the
/// Server Greeting, the Set-Up-Response that chooses a mode and proves the key, and from then on the bytes the client
/// sends, decrypted in whole blocks, and each message's HMAC. `OwampControlConnection` and `TwampControlConnection`
/// each hold one and add their commands.
struct ControlServerChannel {
    /// What the Set-Up-Response led to.
    enum SetUp {
        /// The Server-Start to send; the connection takes requests.
        case accepted([UInt8])
        /// The Server-Start that refuses, to send before closing; why (for the log), and whether it was the mode
        /// (else the key).
        case refused([UInt8], reason: String, mode: Bool)
    }

    let modes: IPPMModes
    let keys: IPPMKeyFile?
    private let greeting: ServerGreeting
    private(set) var cipher: ControlCipher?
    /// The keys the client chose, in the keyed modes: the test sessions' keys derive from them.
    private(set) var sessionKeys: ControlCipher.SessionKeys?
    private(set) var mode = IPPMModes.unauthenticated
    /// Bytes received and not yet used: `raw` still encrypted (whole blocks are decrypted into `clear` as they come).
    private(set) var raw: [UInt8] = []
    private(set) var clear: [UInt8] = []

    init(modes: IPPMModes, keys: IPPMKeyFile?, keyDerivationCount: UInt32) {
        self.modes = modes
        self.keys = keys
        self.greeting = ServerGreeting(
            modes: modes,
            challenge: randomBytes(16),
            salt: randomBytes(16),
            count: keyDerivationCount
        )
    }

    /// The Server Greeting that opens the connection.
    func greetingBytes() -> [UInt8] { self.greeting.encoded() }

    /// Bytes buffered and not yet a whole message.
    var buffered: Int { self.raw.count + self.clear.count }

    mutating func append(_ bytes: some Collection<UInt8>) { self.raw.append(contentsOf: bytes) }

    /// The Set-Up-Response, once all of it is here.
    mutating func takeSetUpResponse() -> SetUpResponse? {
        guard self.raw.count >= SetUpResponse.size else { return nil }
        let message = Array(self.raw.prefix(SetUpResponse.size))
        self.raw.removeFirst(SetUpResponse.size)
        return try! SetUpResponse(decoding: message)
    }

    /// Answers the Set-Up-Response: the mode must be one offered and, in the keyed modes, the token must open with
    /// a known identity's secret.
    mutating func setUp(_ response: SetUpResponse, startTime: UInt64) -> SetUp {
        let chosen = response.mode
        guard chosen.rawValue.nonzeroBitCount == 1, self.modes.contains(chosen) else {
            return .refused(
                ServerStart(accept: .notSupported).encoded(),
                reason: "the client chose mode \(chosen), not one offered (\(self.modes))",
                mode: true
            )
        }
        self.mode = chosen
        guard chosen.usesKey else {
            return .accepted(ServerStart(accept: .ok, startTime: startTime).encoded())
        }
        // An unknown identity costs the same key derivation as a known one, and gets the same refusal as a wrong
        // secret: the server is no oracle for which identities it knows.
        let known = self.keys?.secret(for: response.keyID)
        let secret = known ?? randomBytes(16)
        let key = ControlToken.derivedKey(secret: secret, salt: self.greeting.salt, count: self.greeting.count)
        let (challenge, keys) = ControlToken.open(response.token, under: key)
        var difference: UInt8 = 0
        for (left, right) in zip(challenge, self.greeting.challenge) { difference |= left ^ right }
        guard known != nil, difference == 0 else {
            return .refused(
                ServerStart(accept: .failure).encoded(),
                reason: "the key identity or its secret does not match",
                mode: false
            )
        }
        let serverIV = randomBytes(16)
        var cipher = ControlCipher(keys: keys, sendIV: serverIV, receiveIV: response.clientIV)
        var start = ServerStart(accept: .ok, serverIV: serverIV, startTime: startTime).encoded()
        cipher.addSent(start[32..<48])
        cipher.encrypt(&start, from: 32)
        self.cipher = cipher
        self.sessionKeys = keys
        return .accepted(start)
    }

    /// The first cleartext byte (the command of the next message), decrypting what whole blocks have come.
    mutating func peek() -> UInt8? {
        self.decryptAvailable()
        return self.clear.first
    }

    /// The cleartext bytes at `offset..<offset + count` of what is buffered, if they are all here.
    mutating func peek(_ range: Range<Int>) -> ArraySlice<UInt8>? {
        self.decryptAvailable()
        guard self.clear.count >= range.upperBound else { return nil }
        return self.clear[range]
    }

    /// The next `size` cleartext bytes, if they are all here.
    mutating func take(_ size: Int) -> [UInt8]? {
        self.decryptAvailable()
        guard self.clear.count >= size else { return nil }
        let message = Array(self.clear.prefix(size))
        self.clear.removeFirst(size)
        return message
    }

    /// Whether a message (or the part of one) whose last 16 bytes are its HMAC verifies, in the keyed modes; true in
    /// unauthenticated mode.
    mutating func verify(_ message: [UInt8]) -> Bool {
        guard self.cipher != nil else { return true }
        return self.cipher!.verify(message)
    }

    /// Seals a message whose last 16 bytes are its HMAC.
    mutating func sealed(_ message: [UInt8]) -> [UInt8] {
        self.cipher?.seal(message) ?? message
    }

    /// Decrypts the whole blocks received (in the keyed modes; in unauthenticated mode the bytes are clear).
    private mutating func decryptAvailable() {
        guard var cipher = self.cipher else {
            self.clear += self.raw
            self.raw.removeAll()
            return
        }
        let whole = self.raw.count / ippmBlock * ippmBlock
        guard whole > 0 else { return }
        var blocks = Array(self.raw.prefix(whole))
        self.raw.removeFirst(whole)
        cipher.decrypt(&blocks)
        self.cipher = cipher
        self.clear += blocks
    }
}

/// What a control connection's state machine asks of its channel.
enum ControlAction: Equatable {
    case send([UInt8])
    /// Close the connection, for this reason (for the log).
    case close(String)
}

/// Where a control connection is.
enum ControlPhase: Equatable {
    case setUp
    case requests
    case testing
    case closed
}
