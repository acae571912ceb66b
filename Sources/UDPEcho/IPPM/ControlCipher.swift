import Crypto
import _CryptoExtras

/// The protection of an OWAMP or TWAMP control connection in authenticated and encrypted modes (RFC 4656 §3.1 and
/// §3.4, RFC 5357 §3.1), as perfSONAR's owampd and twampd implement it.
///
/// The client picks a random AES session key and a 32-byte HMAC key, and sends them to the server in the
/// Set-Up-Response's token: the server's challenge and the two keys, encrypted with AES-CBC (IV zero) under a key
/// derived from the shared secret with PBKDF2-HMAC-SHA1 (the greeting's salt and count). From the Server-Start's last
/// block on, each direction is one AES-CBC stream, chained from the IV its sender chose (the client's in the
/// Set-Up-Response, the server's in the Server-Start). Each message's HMAC-SHA1 (truncated to 16 bytes) covers the
/// cleartext blocks before it, back to the previous HMAC in that direction (so the Server-Start's last block is
/// covered by the server's next HMAC).
struct ControlCipher: Sendable {
    private let key: SymmetricKey
    private let hmacKey: SymmetricKey
    private var sendChain: [UInt8]
    private var receiveChain: [UInt8]
    private var sendMAC: HMAC<Insecure.SHA1>
    private var receiveMAC: HMAC<Insecure.SHA1>

    /// The keys a client chooses for a connection: the AES session key (16 bytes) and the HMAC key (32 bytes).
    struct SessionKeys: Sendable, Equatable {
        var aes: [UInt8]
        var hmac: [UInt8]

        static func random() -> SessionKeys {
            SessionKeys(aes: randomBytes(16), hmac: randomBytes(32))
        }
    }

    let keys: SessionKeys

    /// A side's cipher, once both IVs are known.
    init(keys: SessionKeys, sendIV: [UInt8], receiveIV: [UInt8]) {
        self.keys = keys
        self.key = SymmetricKey(data: keys.aes)
        self.hmacKey = SymmetricKey(data: keys.hmac)
        self.sendChain = sendIV
        self.receiveChain = receiveIV
        self.sendMAC = HMAC<Insecure.SHA1>(key: self.hmacKey)
        self.receiveMAC = HMAC<Insecure.SHA1>(key: self.hmacKey)
    }

    /// Encrypts whole blocks in place, continuing this direction's CBC chain.
    mutating func encrypt(_ bytes: inout [UInt8], from start: Int = 0) {
        precondition((bytes.count - start) % ippmBlock == 0)
        var offset = start
        while offset < bytes.count {
            var block = [UInt8](repeating: 0, count: ippmBlock)
            for index in 0..<ippmBlock { block[index] = bytes[offset + index] ^ self.sendChain[index] }
            try! AES.permute(&block, key: self.key)
            bytes.replaceSubrange(offset..<(offset + ippmBlock), with: block)
            self.sendChain = block
            offset += ippmBlock
        }
    }

    /// Decrypts whole blocks in place, continuing the other direction's CBC chain.
    mutating func decrypt(_ bytes: inout [UInt8]) {
        precondition(bytes.count % ippmBlock == 0)
        var offset = 0
        while offset < bytes.count {
            let cipherBlock = Array(bytes[offset..<(offset + ippmBlock)])
            var block = cipherBlock
            try! AES.inversePermute(&block, key: self.key)
            for index in 0..<ippmBlock { bytes[offset + index] = block[index] ^ self.receiveChain[index] }
            self.receiveChain = cipherBlock
            offset += ippmBlock
        }
    }

    /// A message whose last 16 bytes are its HMAC, ready to send: the HMAC of what came before (and of anything added
    /// since the last one sent) put in, then every block encrypted.
    mutating func seal(_ message: [UInt8]) -> [UInt8] {
        var bytes = message
        self.addSent(bytes[0..<(bytes.count - 16)])
        bytes.replaceSubrange((bytes.count - 16)..., with: self.sentDigest())
        self.encrypt(&bytes)
        return bytes
    }

    /// Whether the cleartext message `bytes`, whose last 16 bytes are its HMAC, verifies (what came before it
    /// counted in).
    mutating func verify(_ bytes: [UInt8]) -> Bool {
        self.addReceived(bytes[0..<(bytes.count - 16)])
        return self.checkReceived(bytes[(bytes.count - 16)...])
    }

    /// Adds cleartext blocks to what the next HMAC sent covers.
    mutating func addSent(_ bytes: ArraySlice<UInt8>) { self.sendMAC.update(data: bytes) }

    /// The HMAC of what was added since the last one sent (16 bytes); the next covers what is added after.
    mutating func sentDigest() -> [UInt8] {
        let digest = Array(self.sendMAC.finalize()).prefix(16)
        self.sendMAC = HMAC<Insecure.SHA1>(key: self.hmacKey)
        return Array(digest)
    }

    /// Adds received cleartext blocks to what the next HMAC received must cover.
    mutating func addReceived(_ bytes: ArraySlice<UInt8>) { self.receiveMAC.update(data: bytes) }

    /// Whether `digest` is the HMAC of what was received since the last one (compared in constant time).
    mutating func checkReceived(_ digest: ArraySlice<UInt8>) -> Bool {
        let expected = Array(self.receiveMAC.finalize()).prefix(16)
        self.receiveMAC = HMAC<Insecure.SHA1>(key: self.hmacKey)
        guard digest.count == 16 else { return false }
        var difference: UInt8 = 0
        for (left, right) in zip(expected, digest) { difference |= left ^ right }
        return difference == 0
    }
}

/// The Set-Up-Response's token (RFC 4656 §3.1): AES-CBC (IV zero) of the challenge, the AES session key and the HMAC
/// key, under the key PBKDF2-HMAC-SHA1 derives from the shared secret.
enum ControlToken {
    /// The smallest and largest PBKDF2 counts accepted from a peer. RFC 4656 asks for at least 1024; a greeting
    /// with a count of four billion would have a client hash for hours, so a client refuses more than 2^20 (about a
    /// second here).
    static let countRange: ClosedRange<UInt32> = 1024...(1 << 20)

    /// The key of the token: PBKDF2-HMAC-SHA1 of the secret, 16 bytes.
    static func derivedKey(secret: [UInt8], salt: [UInt8], count: UInt32) -> SymmetricKey {
        try! KDF.Insecure.PBKDF2.deriveKey(
            from: secret,
            salt: salt,
            using: .insecureSHA1,
            outputByteCount: 16,
            unsafeUncheckedRounds: Int(count)
        )
    }

    static func seal(challenge: [UInt8], keys: ControlCipher.SessionKeys, under key: SymmetricKey) -> [UInt8] {
        var chain = [UInt8](repeating: 0, count: ippmBlock)
        var token: [UInt8] = []
        let clear = challenge.padded(to: 16) + keys.aes + keys.hmac
        for offset in stride(from: 0, to: clear.count, by: ippmBlock) {
            var block = (0..<ippmBlock).map { clear[offset + $0] ^ chain[$0] }
            try! AES.permute(&block, key: key)
            token += block
            chain = block
        }
        return token
    }

    /// The challenge and keys in a token (whatever the key; the caller compares the challenge).
    static func open(_ token: [UInt8], under key: SymmetricKey) -> (challenge: [UInt8], keys: ControlCipher.SessionKeys)
    {
        var chain = [UInt8](repeating: 0, count: ippmBlock)
        var clear: [UInt8] = []
        for offset in stride(from: 0, to: 64, by: ippmBlock) {
            let cipherBlock = Array(token.padded(to: 64)[offset..<(offset + ippmBlock)])
            var block = cipherBlock
            try! AES.inversePermute(&block, key: key)
            clear += (0..<ippmBlock).map { block[$0] ^ chain[$0] }
            chain = cipherBlock
        }
        return (
            Array(clear[0..<16]), ControlCipher.SessionKeys(aes: Array(clear[16..<32]), hmac: Array(clear[32..<64]))
        )
    }
}

/// `count` bytes from the system's random source.
func randomBytes(_ count: Int) -> [UInt8] {
    var generator = SystemRandomNumberGenerator()
    return (0..<count).map { _ in UInt8.random(in: 0...255, using: &generator) }
}

/// A session identifier as RFC 4656 §3.5 suggests: the receiver's IPv4 address (or the last 4 bytes of its IPv6
/// address), the time as an NTP timestamp, and 4 random bytes.
func sessionIdentifier(address: IPKey, now: Int64) -> [UInt8] {
    var sid = Array(address.bytes.suffix(4))
    sid += withUnsafeBytes(of: StampTimestampFormat.ntp.encode(now, taiOffset: 0).bigEndian) { Array($0) }
    return sid + randomBytes(4)
}
