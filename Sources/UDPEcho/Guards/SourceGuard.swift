import NIOCore

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// One serving thread's guards and their state (see ``GuardConfiguration`` for what each guard is for).
///
/// Its tables (the rate limiter's, the loop detector's) are fixed in size and allocated once; a copy would share
/// them. The serving thread keeps its guard in memory of its own and works on it through a pointer, so the struct is
/// never copied on the hot path.
struct SourceGuard {
    private let configuration: GuardConfiguration
    private let threads: Int
    private let localPort: Int
    /// One bit per source port: dropped (below the minimum, denied, or the server's own).
    private let blockedPorts: [UInt64]
    /// Whether the socket's own address is loopback; nil for a wildcard socket.
    private let boundToLoopback: Bool?
    private var interfaces: InterfaceAddresses
    private var ephemeralPorts: ClosedRange<Int>
    private var nextInterfaceRefresh: Int64 = 0
    private(set) var table: RateTable?
    private var loops: LoopDetector?
    private var global: TokenBucket?
    private let globalShare: Double
    /// Whether any guard is on (if none is, the server skips the checks).
    let isActive: Bool

    /// How often the list of local addresses is read again (addresses come and go: DHCP, IPv6 temporary addresses).
    static let interfaceRefreshInterval: Int64 = 10_000_000_000

    init(_ configuration: GuardConfiguration, localAddress: SocketAddress, threads: Int) {
        self.configuration = configuration
        self.threads = threads
        self.localPort = localAddress.port ?? 0
        self.interfaces = InterfaceAddresses.current()
        self.ephemeralPorts = EphemeralPorts.current()
        var blocked = [UInt64](repeating: 0, count: 1024)
        for port in 0..<65536
        where port < configuration.minimumSourcePort || configuration.deniedSourcePorts.contains(port)
            || (configuration.denyOwnPort && port == self.localPort && port != 0)
        {
            blocked[port >> 6] |= 1 << UInt64(port & 63)
        }
        self.blockedPorts = blocked
        self.boundToLoopback = localAddress.isUnspecified ? nil : TargetPolicy.isLoopback(localAddress)
        self.table = configuration.rateLimit.map { RateTable($0) }
        self.loops = configuration.loopLimit.map { LoopDetector(limit: $0) }
        // Each thread's share of the global budget, with room for at least one reply: a share below one token
        // would never answer anything.
        self.globalShare = (configuration.globalRate ?? 0) / Double(threads)
        if configuration.globalRate != nil {
            self.global = TokenBucket(tokens: max(1, self.globalShare), last: 0)
        }
        self.isActive = configuration.isActive
    }

    /// Reads the local addresses (and the ephemeral port range) again if they are due; called once per batch.
    mutating func refreshInterfaces(now: Int64) {
        guard self.configuration.addressChecks, now >= self.nextInterfaceRefresh else { return }
        if self.nextInterfaceRefresh != 0 {
            self.interfaces = InterfaceAddresses.current()
            self.ephemeralPorts = EphemeralPorts.current()
        }
        self.nextInterfaceRefresh = now + Self.interfaceRefreshInterval
    }

    /// Why the datagram must not be echoed, or nil to echo it.
    ///
    /// - Parameters:
    ///   - peer: Its source address.
    ///   - payload: Its bytes.
    ///   - arrivedOnLoopback: Whether it was sent to a loopback address (1), to another address (0), or the socket
    ///     does not know (-1: it is bound to one address).
    ///   - now: CLOCK_MONOTONIC in nanoseconds.
    ///   - loopCheck: Whether the loop detector sees it: every datagram that arrives alone, and the first of a
    ///     coalesced run (see ``LoopDetector``).
    mutating func check(
        peer: UnsafePointer<sockaddr>,
        payload: UnsafeRawBufferPointer,
        arrivedOnLoopback: Int32,
        now: Int64,
        loopCheck: Bool = true
    ) -> DropReason? {
        if let maximum = self.configuration.maximumSize, payload.count > maximum { return .oversize }
        let port = Int(
            UInt16(bigEndian: peer.withMemoryRebound(to: sockaddr_in.self, capacity: 1) { $0.pointee.sin_port })
        )
        guard let source = IPKey(peer) else { return .sourceAddress }
        let loopback = source.isLoopback
        if self.configuration.addressChecks {
            if let reason = self.impossibleSource(source, loopback: loopback, port: port, arrival: arrivedOnLoopback) {
                return reason
            }
        }
        if self.blockedPorts[port >> 6] & (1 << UInt64(port & 63)) != 0 { return .sourcePort }
        if !self.configuration.deny.isEmpty && self.configuration.deny.contains(where: { $0.contains(source) }) {
            return .denied
        }
        if !self.configuration.allow.isEmpty && !self.configuration.allow.contains(where: { $0.contains(source) }) {
            return .denied
        }
        if loopCheck && self.loops != nil && self.loops!.isLoop(source, port: UInt16(port), payload: payload, now: now)
        {
            return .loop
        }
        if loopback && !self.configuration.limitLoopback { return nil }
        if let limit = self.configuration.rateLimit {
            let prefix = source.masked(source.isIPv4 ? 96 + limit.ipv4PrefixLength : limit.ipv6PrefixLength)
            if !self.table!.allow(prefix, now: now) { return .rateLimited }
        }
        if self.global != nil && !self.global!.take(now: now, rate: self.globalShare, burst: max(1, self.globalShare)) {
            return .overBudget
        }
        return nil
    }

    /// Sources that cannot be a client: multicast, broadcast, unspecified; loopback sources sent to a non-loopback
    /// address; the host's own IPv6 addresses on a port that is not a client's; the server's own endpoint.
    private func impossibleSource(_ source: IPKey, loopback: Bool, port: Int, arrival: Int32) -> DropReason? {
        if source.isUnspecified || source.isMulticast || source.ipv4Broadcast
            || self.interfaces.broadcasts.contains(source)
        {
            return .sourceAddress
        }
        if loopback {
            let destinationIsLoopback = arrival >= 0 ? arrival == 1 : (self.boundToLoopback ?? false)
            if !destinationIsLoopback { return .sourceAddress }
        } else if !source.isIPv4 && !self.ephemeralPorts.contains(port) && self.interfaces.isLocal(source) {
            // One of this host's own IPv6 addresses, from a port the kernel does not give clients: a local service,
            // which a datagram forged outside would make us attack. Linux drops such forgeries for IPv4 (martian
            // sources) but not for IPv6, and cannot tell a process whether a datagram to one of its addresses came
            // over loopback: IPV6_PKTINFO names the address's interface either way.
            return .sourceAddress
        }
        if port == self.localPort && (loopback || self.interfaces.isLocal(source)) { return .ownEndpoint }
        return nil
    }
}
