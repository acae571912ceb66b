public import NIOCore
import NIOPosix

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

extension SocketAddress {
    /// The address as Go's `net.UDPAddr.String()` prints it, which the article's output uses:
    /// `127.0.0.1:54321`, `[::1]:54321`, `[fe80::1%eth0]:54321`.
    ///
    /// An IPv4 client seen through a dual-stack IPv6 socket (`::ffff:127.0.0.1`) is printed as plain IPv4, since that
    /// is the address the client has.
    public var hostPortDescription: String {
        switch self {
        case .v4(let address):
            return "\(Self.ipv4String(address.address.sin_addr)):\(UInt16(bigEndian: address.address.sin_port))"
        case .v6(let address):
            let raw = address.address
            let port = UInt16(bigEndian: raw.sin6_port)
            if let v4 = Self.mappedIPv4(raw.sin6_addr) {
                return "\(Self.ipv4String(v4)):\(port)"
            }
            var text = self.ipAddress ?? "?"
            if raw.sin6_scope_id != 0 {
                var name = [CChar](repeating: 0, count: Int(IF_NAMESIZE) + 1)
                if if_indextoname(raw.sin6_scope_id, &name) != nil {
                    text += "%" + String(decoding: name.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
                } else {
                    text += "%\(raw.sin6_scope_id)"
                }
            }
            return "[\(text)]:\(port)"
        case .unixDomainSocket:
            return self.pathname ?? "unix"
        }
    }

    /// The largest UDP payload that fits one datagram to this address: 65507 bytes over IPv4 (including IPv4
    /// mapped into IPv6), 65527 over IPv6.
    public var maximumDatagramPayload: Int {
        switch self {
        case .v6(let address) where Self.mappedIPv4(address.address.sin6_addr) == nil:
            return DatagramLimits.ipv6MaximumPayload
        default:
            return DatagramLimits.ipv4MaximumPayload
        }
    }

    /// The same address with IPv4 mapped into IPv6 unwrapped to plain IPv4 (other addresses are returned as they are).
    public var unmappingIPv4: SocketAddress {
        guard case .v6(let address) = self, let v4 = Self.mappedIPv4(address.address.sin6_addr) else { return self }
        var plain = sockaddr_in()
        plain.sin_family = sa_family_t(AF_INET)
        plain.sin_port = address.address.sin6_port
        plain.sin_addr = v4
        return SocketAddress(plain)
    }

    /// Whether this is a wildcard address (`0.0.0.0` or `::`).
    var isUnspecified: Bool {
        switch self {
        case .v4(let address): return address.address.sin_addr.s_addr == 0
        case .v6(let address):
            return withUnsafeBytes(of: address.address.sin6_addr) { $0.allSatisfy { $0 == 0 } }
        case .unixDomainSocket: return false
        }
    }

    private static func mappedIPv4(_ address: in6_addr) -> in_addr? {
        withUnsafeBytes(of: address) { bytes -> in_addr? in
            guard bytes[0..<10].allSatisfy({ $0 == 0 }), bytes[10] == 0xff, bytes[11] == 0xff else { return nil }
            var v4 = in_addr()
            withUnsafeMutableBytes(of: &v4) { $0.copyMemory(from: UnsafeRawBufferPointer(rebasing: bytes[12..<16])) }
            return v4
        }
    }

    private static func ipv4String(_ address: in_addr) -> String {
        withUnsafeBytes(of: address) { "\($0[0]).\($0[1]).\($0[2]).\($0[3])" }
    }

    /// Makes a `SocketAddress` from a raw `sockaddr`, as the kernel reports peers.
    init?(raw: UnsafePointer<sockaddr>, length: socklen_t) {
        switch Int32(raw.pointee.sa_family) {
        case AF_INET where length >= MemoryLayout<sockaddr_in>.size:
            self = raw.withMemoryRebound(to: sockaddr_in.self, capacity: 1) { SocketAddress($0.pointee) }
        case AF_INET6 where length >= MemoryLayout<sockaddr_in6>.size:
            self = raw.withMemoryRebound(to: sockaddr_in6.self, capacity: 1) { SocketAddress($0.pointee) }
        default:
            return nil
        }
    }

    /// Calls `body` with this address as a raw `sockaddr`.
    func withRawAddress<Result>(_ body: (UnsafePointer<sockaddr>, socklen_t) throws -> Result) rethrows -> Result {
        switch self {
        case .v4(let address):
            var raw = address.address
            return try withUnsafePointer(to: &raw) {
                try $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                    try body($0, socklen_t(MemoryLayout<sockaddr_in>.size))
                }
            }
        case .v6(let address):
            var raw = address.address
            return try withUnsafePointer(to: &raw) {
                try $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                    try body($0, socklen_t(MemoryLayout<sockaddr_in6>.size))
                }
            }
        case .unixDomainSocket(let address):
            var raw = address.address
            return try withUnsafePointer(to: &raw) {
                try $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                    try body($0, socklen_t(MemoryLayout<sockaddr_un>.size))
                }
            }
        }
    }
}

/// Sizes that bound a UDP datagram.
public enum DatagramLimits {
    /// 65535 − 20 (IPv4 header) − 8 (UDP header).
    public static let ipv4MaximumPayload = 65507
    /// 65535 − 8 (UDP header); the IPv6 header is not counted in its payload length.
    public static let ipv6MaximumPayload = 65527
}

/// Turns host names into addresses with the system resolver (`getaddrinfo(3)`: /etc/hosts, DNS, ...).
public enum NameResolver {
    /// Resolves `address` into socket addresses, in the order the system prefers them.
    ///
    /// - Parameters:
    ///   - address: The host and port. A `nil` host means every local address and needs `passive`.
    ///   - passive: Whether the addresses are for binding a server (`AI_PASSIVE`).
    /// - Throws: ``EchoError/nameNotResolved(host:reason:)`` with the resolver's reason.
    /// - Note: This blocks while the resolver works; call it off any event loop.
    public static func resolve(_ address: HostAndPort, passive: Bool = false) throws(EchoError) -> [SocketAddress] {
        var hints = addrinfo()
        hints.ai_socktype = Int32(SOCK_DGRAM.rawValue)
        hints.ai_protocol = Int32(IPPROTO_UDP)
        hints.ai_flags = AI_NUMERICSERV | (passive ? AI_PASSIVE : 0)
        var result: UnsafeMutablePointer<addrinfo>?
        let status = getaddrinfo(address.host ?? (passive ? nil : "localhost"), String(address.port), &hints, &result)
        guard status == 0, let first = result else {
            let reason: String
            if status == EAI_SYSTEM {
                reason = String(cString: strerror(errno))
            } else {
                reason = String(cString: gai_strerror(status))
            }
            throw .nameNotResolved(host: address.host ?? "", reason: reason)
        }
        defer { freeaddrinfo(first) }
        var addresses: [SocketAddress] = []
        var entry: UnsafeMutablePointer<addrinfo>? = first
        while let current = entry {
            if let raw = current.pointee.ai_addr,
                let socketAddress = SocketAddress(raw: raw, length: current.pointee.ai_addrlen),
                !addresses.contains(socketAddress)
            {
                addresses.append(socketAddress)
            }
            entry = current.pointee.ai_next
        }
        guard !addresses.isEmpty else {
            throw .nameNotResolved(host: address.host ?? "", reason: "no IPv4 or IPv6 address")
        }
        return addresses
    }

    /// Resolves `address` on SwiftNIO's thread pool (the resolver blocks) and returns its first address, IPv4
    /// preferred as Go's `net.ResolveUDPAddr` does.
    public static func resolvePreferringIPv4(_ address: HostAndPort) async throws -> SocketAddress {
        let addresses = try await NIOThreadPool.singleton.runIfActive { try Self.resolve(address) }
        return addresses.first { if case .v4 = $0 { true } else { false } } ?? addresses[0]
    }
}

extension SocketAddress {
    /// The address a socket is bound to (getsockname), or nil when the call fails (`errno` says why).
    static func local(of fd: Int32) -> SocketAddress? {
        var storage = sockaddr_storage()
        var length = socklen_t(MemoryLayout<sockaddr_storage>.size)
        return withUnsafeMutablePointer(to: &storage) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { address in
                getsockname(fd, address, &length) == 0 ? SocketAddress(raw: address, length: length) : nil
            }
        }
    }
}
