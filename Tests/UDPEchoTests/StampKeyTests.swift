import Crypto
import Testing

@testable import UDPEcho

/// The reflector's HMAC-SHA-256 (RFC 2104 on SHA-256, its keyed states prepared once) against swift-crypto's
/// `HMAC<SHA256>`, for keys shorter than, as long as and longer than SHA-256's block, and messages of any length.
@Suite struct StampKeyTests {
    @Test(arguments: [1, 16, 63, 64, 65, 200])
    func matchesSwiftCryptosHMAC(keyLength: Int) throws {
        let keyBytes = (0..<keyLength).map { UInt8(truncatingIfNeeded: $0 &* 7 &+ 3) }
        let key = try StampKey(bytes: keyBytes)
        for length in [0, 1, 55, 56, 64, 96, 119, 1000] {
            let message = (0..<length).map { UInt8(truncatingIfNeeded: $0 &* 13 &+ keyLength) }
            let expected = Array(
                HMAC<SHA256>.authenticationCode(for: message, using: SymmetricKey(data: keyBytes))
            ).prefix(16)
            var ours = [UInt8](repeating: 0, count: 16)
            message.withUnsafeBytes { bytes in ours.withUnsafeMutableBytes { key.sign(bytes, into: $0.baseAddress!) } }
            #expect(ours[...] == expected, "key \(keyLength) bytes, message \(length) bytes")
            // verify: the right code passes, one flipped bit fails.
            var damaged = ours
            damaged[Int(length % 16)] ^= 0x01
            message.withUnsafeBytes { bytes in
                #expect(ours.withUnsafeBytes { key.verify(bytes, mac: $0.baseAddress!) })
                #expect(!damaged.withUnsafeBytes { key.verify(bytes, mac: $0.baseAddress!) })
            }
        }
    }

    @Test func anEmptyKeyIsRefused() {
        #expect(throws: EchoError.self) { try StampKey(bytes: []) }
    }
}
