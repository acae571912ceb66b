#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// An address prefix in CIDR notation: `192.0.2.0/24`, `2001:db8::/32`, or a single address.
public struct IPPrefix: Sendable, Hashable, CustomStringConvertible {
    let network: IPKey
    /// Prefix length over the 128-bit mapped form (an IPv4 /24 is 96 + 24).
    let bits: Int
    /// The prefix as written (`192.0.2.0/24`).
    public let description: String

    /// Parses `ADDRESS/LENGTH` or a single `ADDRESS`.
    public init(parsing text: String) throws(EchoError) {
        let parts = text.split(separator: "/", maxSplits: 1).map(String.init)
        guard let addressText = parts.first, !addressText.isEmpty else {
            throw .invalidConfiguration("'\(text)' is not an address prefix; write it as 192.0.2.0/24 or 2001:db8::/32")
        }
        var key: IPKey
        var maximum: Int
        var v4 = in_addr()
        var v6 = in6_addr()
        if inet_pton(AF_INET, addressText, &v4) == 1 {
            key = IPKey(high: 0, low: IPKey.mappedPrefix | UInt64(UInt32(bigEndian: v4.s_addr)))
            maximum = 32
        } else if inet_pton(AF_INET6, addressText, &v6) == 1 {
            let words = withUnsafeBytes(of: v6) {
                (
                    UInt64(bigEndian: $0.loadUnaligned(as: UInt64.self)),
                    UInt64(bigEndian: $0.loadUnaligned(fromByteOffset: 8, as: UInt64.self))
                )
            }
            key = IPKey(high: words.0, low: words.1)
            maximum = 128
        } else {
            throw .invalidConfiguration("'\(addressText)' in '\(text)' is not an IPv4 or IPv6 address")
        }
        var length = maximum
        if parts.count == 2 {
            guard let parsed = Int(parts[1]), (0...maximum).contains(parsed) else {
                throw .invalidConfiguration("'\(text)': the prefix length must be a number from 0 to \(maximum)")
            }
            length = parsed
        }
        let bits = maximum == 32 ? 96 + length : length
        self.network = key.masked(bits)
        self.bits = bits
        self.description = text
    }

    func contains(_ key: IPKey) -> Bool {
        key.masked(self.bits) == self.network
    }
}
