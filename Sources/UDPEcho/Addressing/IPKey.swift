import NIOCore

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

    /// From an address's bytes: 4 (IPv4) or 16 (IPv6); nil for any other length.
    init?(bytes: [UInt8]) {
        var value: (UInt64, UInt64) = (0, 0)
        switch bytes.count {
        case 4:
            value.1 = Self.mappedPrefix | bytes.reduce(0) { $0 << 8 | UInt64($1) }
        case 16:
            value.0 = bytes[0..<8].reduce(0) { $0 << 8 | UInt64($1) }
            value.1 = bytes[8..<16].reduce(0) { $0 << 8 | UInt64($1) }
        default:
            return nil
        }
        self.init(high: value.0, low: value.1)
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

extension IPKey {
    var isLoopback: Bool {
        self.isIPv4 ? self.ipv4 >> 24 == 127 : (self.high == 0 && self.low == 1)
    }
    var isUnspecified: Bool {
        self.isIPv4 ? self.ipv4 >> 24 == 0 : (self.high == 0 && self.low == 0)
    }
    var isMulticast: Bool {
        self.isIPv4 ? self.ipv4 >> 28 == 0xE : self.high >> 56 == 0xff
    }
    var ipv4Broadcast: Bool { self.isIPv4 && self.ipv4 == 0xFFFF_FFFF }
}

extension IPKey {
    /// A hash of the address (and a port) keyed with this process's random seed (Swift's `Hasher`), for the guards'
    /// fixed tables: a sender who does not know the seed cannot choose sources that crowd into one set of a table.
    func keyedHash(port: UInt16 = 0) -> Int {
        var hasher = Hasher()
        hasher.combine(self.high)
        hasher.combine(self.low)
        hasher.combine(port)
        return hasher.finalize()
    }
}

extension IPKey {
    /// The address as it is on the wire: 4 bytes for IPv4 (mapped or not), 16 for IPv6.
    var bytes: [UInt8] {
        self.isIPv4
            ? withUnsafeBytes(of: self.ipv4.bigEndian) { Array($0) }
            : withUnsafeBytes(of: (self.high.bigEndian, self.low.bigEndian)) { Array($0) }
    }
}

/// An address and port as compared on the receive path (no formatting): IPv4 mapped into IPv6.
struct EndpointKey: Hashable {
    var address: IPKey
    var port: UInt16

    init(address: IPKey, port: UInt16) {
        self.address = address
        self.port = port
    }

    init?(_ raw: UnsafePointer<sockaddr>) {
        guard let address = IPKey(raw) else { return nil }
        self.address = address
        self.port =
            Int32(raw.pointee.sa_family) == AF_INET
            ? raw.withMemoryRebound(to: sockaddr_in.self, capacity: 1) { UInt16(bigEndian: $0.pointee.sin_port) }
            : raw.withMemoryRebound(to: sockaddr_in6.self, capacity: 1) { UInt16(bigEndian: $0.pointee.sin6_port) }
    }
}

extension IPKey {
    /// The address with `port`, as a socket address of its own family (IPv4 for a mapped address).
    func socketAddress(port: Int) -> SocketAddress {
        let buffer = ByteBuffer(bytes: self.bytes)
        return try! SocketAddress(packedIPAddress: buffer, port: port)
    }
}
