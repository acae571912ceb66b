import Crypto
import _CryptoExtras

/// The protection of one OWAMP or TWAMP test session's packets in authenticated and encrypted modes (RFC 4656 §4.1,
/// RFC 5357 §4), with the keys perfSONAR derives from the control connection's: the test AES key is the control AES
/// key encrypted (AES-ECB) under the session's SID, the test HMAC key the control HMAC key encrypted (AES-CBC, IV zero)
/// under the SID.
///
/// A sender's packet has its sequence number in the first block and its timestamp in the second, then a 16-byte
/// HMAC-SHA1 at byte 32; a reflected packet has six blocks of fields and its HMAC at byte 96. Authenticated mode
/// encrypts (AES-ECB) and authenticates only the first block, the sequence number: the timestamps, written at the last
/// moment, go in the clear. Encrypted mode encrypts and authenticates every block before the HMAC (AES-CBC, IV
/// zero). Padding is neither.
struct TestSessionCipher: Sendable {
    let encrypted: Bool
    private let key: SymmetricKey
    /// HMAC-SHA1 keyed with the session's HMAC key, nothing hashed yet.
    private let mac: HMAC<Insecure.SHA1>

    /// Where a sender's packet has its HMAC, and how long its fixed part is.
    static let senderHMAC = 32
    static let senderSize = 48
    /// Where a reflected packet has its HMAC, and how long its fixed part is.
    static let reflectedHMAC = 96
    static let reflectedSize = 112

    /// The keys of the session `sid` in `mode` (authenticated or encrypted), from the control connection's.
    init(encrypted: Bool, sid: [UInt8], control: ControlCipher.SessionKeys) {
        self.encrypted = encrypted
        let sidKey = SymmetricKey(data: sid.padded(to: 16))
        var aes = control.aes
        try! AES.permute(&aes, key: sidKey)
        self.key = SymmetricKey(data: aes)
        var chain = [UInt8](repeating: 0, count: 16)
        var hmac: [UInt8] = []
        for offset in stride(from: 0, to: control.hmac.count, by: 16) {
            var block = (0..<16).map { control.hmac[offset + $0] ^ chain[$0] }
            try! AES.permute(&block, key: sidKey)
            hmac += block
            chain = block
        }
        self.mac = HMAC<Insecure.SHA1>(key: SymmetricKey(data: hmac))
    }

    /// Signs and encrypts a sender's packet in place (its fields written in the clear).
    func sealSender(_ packet: UnsafeMutableRawBufferPointer) {
        self.seal(packet, blocks: self.encrypted ? 2 : 1, hmacAt: Self.senderHMAC)
    }

    /// Decrypts a sender's packet in place and checks its HMAC.
    func openSender(_ packet: UnsafeMutableRawBufferPointer) -> Bool {
        self.open(packet, blocks: self.encrypted ? 2 : 1, hmacAt: Self.senderHMAC)
    }

    /// Signs and encrypts a reflected packet in place.
    func sealReflected(_ packet: UnsafeMutableRawBufferPointer) {
        self.seal(packet, blocks: self.encrypted ? 6 : 1, hmacAt: Self.reflectedHMAC)
    }

    /// Decrypts a reflected packet in place and checks its HMAC.
    func openReflected(_ packet: UnsafeMutableRawBufferPointer) -> Bool {
        self.open(packet, blocks: self.encrypted ? 6 : 1, hmacAt: Self.reflectedHMAC)
    }

    /// The HMAC of the first `blocks` blocks: a copy of the keyed state made once (no key set up per packet).
    private func digest(_ packet: UnsafeMutableRawBufferPointer, blocks: Int) -> HMAC<Insecure.SHA1>.MAC {
        var mac = self.mac
        mac.update(data: UnsafeRawBufferPointer(rebasing: packet[0..<(blocks * 16)]))
        return mac.finalize()
    }

    /// Signs, then encrypts in place (CBC, IV zero: block by block, each XORed with the ciphertext before it).
    private func seal(_ packet: UnsafeMutableRawBufferPointer, blocks: Int, hmacAt: Int) {
        precondition(packet.count >= hmacAt + 16)
        self.digest(packet, blocks: blocks).withUnsafeBytes { bytes in
            for index in 0..<16 { packet[hmacAt + index] = bytes[index] }
        }
        for block in 0..<blocks {
            let start = block * 16
            if block > 0 { for index in 0..<16 { packet[start + index] ^= packet[start - 16 + index] } }
            var bytes = UnsafeMutableRawBufferPointer(rebasing: packet[start..<(start + 16)])
            try! AES.permute(&bytes, key: self.key)
        }
    }

    /// Decrypts in place, last block first (so that the ciphertext before each is still there to XOR), then checks
    /// the HMAC.
    private func open(_ packet: UnsafeMutableRawBufferPointer, blocks: Int, hmacAt: Int) -> Bool {
        guard packet.count >= hmacAt + 16 else { return false }
        for block in (0..<blocks).reversed() {
            let start = block * 16
            var bytes = UnsafeMutableRawBufferPointer(rebasing: packet[start..<(start + 16)])
            try! AES.inversePermute(&bytes, key: self.key)
            if block > 0 { for index in 0..<16 { packet[start + index] ^= packet[start - 16 + index] } }
        }
        return self.digest(packet, blocks: blocks).withUnsafeBytes { bytes in
            var difference: UInt8 = 0
            for index in 0..<16 { difference |= bytes[index] ^ packet[hmacAt + index] }
            return difference == 0
        }
    }
}
