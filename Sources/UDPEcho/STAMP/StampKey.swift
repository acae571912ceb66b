import Crypto

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// The shared key of authenticated STAMP (RFC 8762 §4.4): HMAC-SHA-256 over a packet's first 96 bytes (and over the
/// TLVs in an HMAC TLV), truncated to 16 bytes.
///
/// HMAC (RFC 2104) is computed here from SHA-256 with its two keyed states prepared once: a reflector signs and
/// checks every packet, and the generic `HMAC<SHA256>` spent more time setting itself up than hashing (a profile of
/// the authenticated reflector showed Swift's generic-metadata lookups above SHA-256's own blocks). The tests check
/// the result against swift-crypto's `HMAC<SHA256>` and Python's `hmac`.
public struct StampKey: Sendable {
    /// SHA-256 after the key XOR ipad block, and after the key XOR opad block.
    private let inner: SHA256
    private let outer: SHA256

    /// The HMAC's length in a packet.
    static let macLength = 16

    /// A key of these bytes (at least one).
    public init(bytes: [UInt8]) throws(EchoError) {
        guard !bytes.isEmpty else { throw .invalidConfiguration("the STAMP key is empty") }
        // A key longer than SHA-256's 64-byte block is hashed first; a shorter one is padded with zeros.
        var block = bytes.count > 64 ? Array(SHA256.hash(data: bytes)) : bytes
        block += [UInt8](repeating: 0, count: 64 - block.count)
        var inner = SHA256()
        var outer = SHA256()
        block.map { $0 ^ 0x36 }.withUnsafeBytes { inner.update(bufferPointer: $0) }
        block.map { $0 ^ 0x5C }.withUnsafeBytes { outer.update(bufferPointer: $0) }
        self.inner = inner
        self.outer = outer
    }

    /// The HMAC-SHA-256 of `bytes` followed by `more` (hashed where they lie, never copied), its first 16 bytes
    /// passed to `body`.
    private func code<Result>(
        _ bytes: UnsafeRawBufferPointer,
        _ more: UnsafeRawBufferPointer,
        _ body: (UnsafeRawBufferPointer) -> Result
    ) -> Result {
        var inner = self.inner
        inner.update(bufferPointer: bytes)
        if !more.isEmpty { inner.update(bufferPointer: more) }
        var outer = self.outer
        inner.finalize().withUnsafeBytes { outer.update(bufferPointer: $0) }
        return outer.finalize().withUnsafeBytes { body(UnsafeRawBufferPointer(rebasing: $0.prefix(Self.macLength))) }
    }

    /// The most a key file may hold.
    static let maximumFileSize = 1 << 20

    /// The key in a file: its bytes, without a trailing newline. The file must be a regular file of at most 1 MiB
    /// (a FIFO would hold the start for ever).
    public init(contentsOfFile path: String) throws(EchoError) {
        var bytes: [UInt8]
        do {
            bytes = try OperatorFile.read(path, limit: Self.maximumFileSize)
        } catch {
            throw .invalidConfiguration("the STAMP key file \(error)")
        }
        while bytes.last == 0x0A || bytes.last == 0x0D { bytes.removeLast() }
        guard !bytes.isEmpty else {
            throw .invalidConfiguration("the STAMP key file '\(path)' is empty; put the shared key in it")
        }
        try self.init(bytes: bytes)
    }

    /// Writes the truncated HMAC of `bytes` followed by `more` at `destination`.
    func sign(
        _ bytes: UnsafeRawBufferPointer,
        _ more: UnsafeRawBufferPointer = UnsafeRawBufferPointer(start: nil, count: 0),
        into destination: UnsafeMutableRawPointer
    ) {
        self.code(bytes, more) { destination.copyMemory(from: $0.baseAddress!, byteCount: Self.macLength) }
    }

    /// Whether the 16 bytes at `mac` are the truncated HMAC of `bytes` followed by `more` (compared in constant
    /// time).
    func verify(
        _ bytes: UnsafeRawBufferPointer,
        _ more: UnsafeRawBufferPointer = UnsafeRawBufferPointer(start: nil, count: 0),
        mac: UnsafeRawPointer
    ) -> Bool {
        self.code(bytes, more) { expected in
            var difference: UInt8 = 0
            for index in 0..<Self.macLength {
                difference |= expected[index] ^ mac.load(fromByteOffset: index, as: UInt8.self)
            }
            return difference == 0
        }
    }
}
