public import NIOCore

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// Which targets a load tool may be pointed at without saying so explicitly: loopback and this host's own addresses.
/// A load generator aimed at someone else's host by a typo is a flood; `--allow-remote` says it is meant.
public enum TargetPolicy {
    /// Whether `address` is a loopback address (127.0.0.0/8, ::1, or 127/8 mapped into IPv6).
    public static func isLoopback(_ address: SocketAddress) -> Bool {
        switch address.unmappingIPv4 {
        case .v4(let v4):
            return UInt32(bigEndian: v4.address.sin_addr.s_addr) >> 24 == 127
        case .v6(let v6):
            return withUnsafeBytes(of: v6.address.sin6_addr) { bytes in
                bytes.prefix(15).allSatisfy { $0 == 0 } && bytes[15] == 1
            }
        case .unixDomainSocket:
            return false
        }
    }

    /// Whether `address` is loopback or one of the addresses of this host's interfaces.
    public static func isLocal(_ address: SocketAddress) -> Bool {
        if Self.isLoopback(address) { return true }
        let key = address.unmappingIPv4.withRawAddress { raw, _ in IPKey(raw) }
        return key.map { InterfaceAddresses.current().isLocal($0) } ?? false
    }

    /// Throws ``EchoError/remoteTarget(_:)`` unless `address` is local or `allowRemote` is set.
    public static func check(_ address: SocketAddress, allowRemote: Bool) throws(EchoError) {
        if !allowRemote && !Self.isLocal(address) { throw .remoteTarget(address) }
    }
}
