#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// An IP address as 128 bits, IPv4 mapped into IPv6 (`::ffff:a.b.c.d`), so that both families compare alike.
struct IPKey: Hashable {
    var high: UInt64
    var low: UInt64

    static let mappedPrefix: UInt64 = 0x0000_ffff_0000_0000

    init(high: UInt64, low: UInt64) {
        self.high = high
        self.low = low
    }

    /// From a raw `sockaddr` (IPv4 or IPv6); nil for other families.
    init?(_ raw: UnsafePointer<sockaddr>) {
        switch Int32(raw.pointee.sa_family) {
        case AF_INET:
            let v4 = raw.withMemoryRebound(to: sockaddr_in.self, capacity: 1) {
                UInt32(bigEndian: $0.pointee.sin_addr.s_addr)
            }
            self.init(high: 0, low: Self.mappedPrefix | UInt64(v4))
        case AF_INET6:
            let words = raw.withMemoryRebound(to: sockaddr_in6.self, capacity: 1) { pointer in
                withUnsafeBytes(of: pointer.pointee.sin6_addr) {
                    (
                        UInt64(bigEndian: $0.loadUnaligned(as: UInt64.self)),
                        UInt64(bigEndian: $0.loadUnaligned(fromByteOffset: 8, as: UInt64.self))
                    )
                }
            }
            self.init(high: words.0, low: words.1)
        default:
            return nil
        }
    }

    var isIPv4: Bool { self.high == 0 && self.low >> 32 == 0x0000_ffff }
    var ipv4: UInt32 { UInt32(truncatingIfNeeded: self.low) }

    /// The first `bits` bits, the rest zero.
    func masked(_ bits: Int) -> IPKey {
        switch bits {
        case ...0: return IPKey(high: 0, low: 0)
        case 1..<64: return IPKey(high: self.high & ~(UInt64.max >> bits), low: 0)
        case 64: return IPKey(high: self.high, low: 0)
        case 65..<128: return IPKey(high: self.high, low: self.low & ~(UInt64.max >> (bits - 64)))
        default: return self
        }
    }
}

/// An address prefix in CIDR notation: `192.0.2.0/24`, `2001:db8::/32`, or a single address.
public struct IPPrefix: Sendable, Hashable, CustomStringConvertible {
    let network: IPKey
    /// Prefix length over the 128-bit mapped form (an IPv4 /24 is 96 + 24).
    let bits: Int
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
