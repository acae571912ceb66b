import Crypto

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// The shared key of authenticated STAMP (RFC 8762 §4.4): HMAC-SHA-256 over a packet's first 96 bytes (and over the
/// TLVs in an HMAC TLV), truncated to 16 bytes.
public struct StampKey: Sendable {
    private let key: SymmetricKey

    /// The HMAC's length in a packet.
    static let macLength = 16

    /// A key of these bytes (at least one).
    public init(bytes: [UInt8]) throws(EchoError) {
        guard !bytes.isEmpty else { throw .invalidConfiguration("the STAMP key is empty") }
        self.key = SymmetricKey(data: bytes)
    }

    /// The key in a file: its bytes, without a trailing newline.
    public init(contentsOfFile path: String) throws(EchoError) {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { throw .socket(operation: "reading the STAMP key file", address: path, errno: errno) }
        defer { close(fd) }
        var bytes: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 4096)
        while bytes.count <= 1 << 20 {
            let count = chunk.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
            if count < 0 && errno == EINTR { continue }
            guard count >= 0 else {
                throw .socket(operation: "reading the STAMP key file", address: path, errno: errno)
            }
            if count == 0 { break }
            bytes += chunk[0..<count]
        }
        while bytes.last == 0x0A || bytes.last == 0x0D { bytes.removeLast() }
        guard !bytes.isEmpty else {
            throw .invalidConfiguration("the STAMP key file '\(path)' is empty; put the shared key in it")
        }
        try self.init(bytes: bytes)
    }

    /// Writes the truncated HMAC of `bytes` at `destination`.
    func sign(_ bytes: UnsafeRawBufferPointer, into destination: UnsafeMutableRawPointer) {
        let code = HMAC<SHA256>.authenticationCode(for: bytes, using: self.key)
        code.withUnsafeBytes { destination.copyMemory(from: $0.baseAddress!, byteCount: Self.macLength) }
    }

    /// Whether the 16 bytes at `mac` are the truncated HMAC of `bytes` (compared in constant time).
    func verify(_ bytes: UnsafeRawBufferPointer, mac: UnsafeRawPointer) -> Bool {
        let code = HMAC<SHA256>.authenticationCode(for: bytes, using: self.key)
        return code.withUnsafeBytes { expected in
            var difference: UInt8 = 0
            for index in 0..<Self.macLength {
                difference |= expected[index] ^ mac.load(fromByteOffset: index, as: UInt8.self)
            }
            return difference == 0
        }
    }
}
