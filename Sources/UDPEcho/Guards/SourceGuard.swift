import NIOCore

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// The server's defences against being used to attack others, all on by default.
///
/// An echo service on a public address is a classic tool for attackers: a spoofed datagram "from" another echo or
/// chargen service starts an endless loop between the two (CVE-1999-0103), and any UDP service can reflect a flood at
/// a victim whose address is forged as the source. Each guard drops what it catches, and each drop is counted under
/// its own ``DropReason``.
public struct GuardConfiguration: Sendable {
    /// Source ports below this are dropped: well-known services (echo 7, daytime 13, chargen 19, DNS 53...) never
    /// send from them as clients, so such a datagram is a spoofed loop or a reflection. 0 turns this off.
    public var minimumSourcePort: Int
    /// More source ports to drop (by default 2049, NFS, as inetd's echo does).
    public var deniedSourcePorts: Set<Int>
    /// Drop sources that cannot be a client: multicast, broadcast and unspecified addresses, the server's own
    /// endpoint, and loopback addresses arriving on a non-loopback destination (spoofed).
    public var addressChecks: Bool
    /// If not empty, only sources in these prefixes are answered.
    public var allow: [IPPrefix]
    /// Sources in these prefixes are never answered.
    public var deny: [IPPrefix]
    /// Datagrams larger than this are dropped whole (never truncated); nil echoes every size.
    public var maximumSize: Int?
    /// The per-source token bucket; nil turns it off.
    public var rateLimit: RateLimit?
    /// Replies per second over all sources (the global budget, shared out over the serving threads); nil for none.
    public var globalRate: Double?
    /// Whether loopback sources are rate-limited too. They are not by default: they cannot be spoofed from outside,
    /// and local load tests must not be throttled.
    public var limitLoopback: Bool

    /// The guards; the defaults are on and generous (see each property).
    public init(
        minimumSourcePort: Int = 1024,
        deniedSourcePorts: Set<Int> = [2049],
        addressChecks: Bool = true,
        allow: [IPPrefix] = [],
        deny: [IPPrefix] = [],
        maximumSize: Int? = nil,
        rateLimit: RateLimit? = RateLimit(),
        globalRate: Double? = 1_000_000,
        limitLoopback: Bool = false
    ) {
        self.minimumSourcePort = minimumSourcePort
        self.deniedSourcePorts = deniedSourcePorts
        self.addressChecks = addressChecks
        self.allow = allow
        self.deny = deny
        self.maximumSize = maximumSize
        self.rateLimit = rateLimit
        self.globalRate = globalRate
        self.limitLoopback = limitLoopback
    }

    /// No guard at all: every datagram is echoed.
    public static let none = GuardConfiguration(
        minimumSourcePort: 0,
        deniedSourcePorts: [],
        addressChecks: false,
        rateLimit: nil,
        globalRate: nil
    )
}

/// A token bucket per source prefix, in the spirit of DNS Response Rate Limiting: a source (an IPv4 /32 or an IPv6
/// /64 by default, since one IPv6 host owns a whole /64) gets `perSecond` replies a second, with bursts up to
/// `burst`. The table of sources has a fixed size: when it is full, the source seen longest ago is forgotten, so a
/// flood from millions of spoofed sources cannot exhaust memory (the global budget bounds that flood instead).
public struct RateLimit: Sendable, Equatable {
    /// Replies per second per source.
    public var perSecond: Double
    /// Replies a source may get at once after being quiet.
    public var burst: Double
    /// Bits of an IPv4 address that make one source.
    public var ipv4PrefixLength: Int
    /// Bits of an IPv6 address that make one source.
    public var ipv6PrefixLength: Int
    /// Sources remembered per serving thread.
    public var tableSize: Int

    /// A rate limit; the default is generous: 10000 replies a second per source, bursts of 20000.
    public init(
        perSecond: Double = 10_000,
        burst: Double = 20_000,
        ipv4PrefixLength: Int = 32,
        ipv6PrefixLength: Int = 64,
        tableSize: Int = 16384
    ) {
        self.perSecond = perSecond
        self.burst = burst
        self.ipv4PrefixLength = ipv4PrefixLength
        self.ipv6PrefixLength = ipv6PrefixLength
        self.tableSize = tableSize
    }
}

/// One serving thread's guards and their state.
struct SourceGuard {
    private let configuration: GuardConfiguration
    private let localPort: Int
    private let localAddresses: [IPKey]
    private let broadcastAddresses: [IPKey]
    /// One bit per source port: dropped (below the minimum, or denied).
    private let blockedPorts: [UInt64]
    /// Whether the socket's own address is loopback; nil for a wildcard socket (the kernel then says, per datagram).
    private let boundToLoopback: Bool?
    private(set) var table: RateTable?
    private var global: TokenBucket?
    private let active: Bool

    init(_ configuration: GuardConfiguration, localAddress: SocketAddress, threads: Int) {
        self.configuration = configuration
        self.localPort = localAddress.port ?? 0
        let interfaces = InterfaceAddresses.current()
        self.localAddresses = Array(interfaces.addresses)
        self.broadcastAddresses = Array(interfaces.broadcasts)
        var blocked = [UInt64](repeating: 0, count: 1024)
        for port in 0..<65536
        where port < configuration.minimumSourcePort || configuration.deniedSourcePorts.contains(port) {
            blocked[port >> 6] |= 1 << UInt64(port & 63)
        }
        self.blockedPorts = blocked
        self.boundToLoopback = localAddress.isUnspecified ? nil : TargetPolicy.isLoopback(localAddress)
        if let limit = configuration.rateLimit {
            self.table = RateTable(limit)
        }
        if let rate = configuration.globalRate {
            let share = rate / Double(threads)
            self.global = TokenBucket(tokens: share, last: 0)
        }
        self.active =
            configuration.minimumSourcePort > 0 || !configuration.deniedSourcePorts.isEmpty
            || configuration.addressChecks
            || !configuration.allow.isEmpty || !configuration.deny.isEmpty || configuration.maximumSize != nil
            || configuration.rateLimit != nil || configuration.globalRate != nil
    }

    /// Whether any guard is on (if none is, the server skips the checks).
    var isActive: Bool { self.active }

    /// Why the datagram must not be echoed, or nil to echo it.
    mutating func check(
        peer: UnsafePointer<sockaddr>,
        size: Int,
        arrivedOnLoopback: Int32,
        now: Int64,
        threads: Int
    ) -> DropReason? {
        if let maximum = self.configuration.maximumSize, size > maximum { return .oversize }
        let port = Int(
            UInt16(bigEndian: peer.withMemoryRebound(to: sockaddr_in.self, capacity: 1) { $0.pointee.sin_port })
        )
        if self.blockedPorts[port >> 6] & (1 << UInt64(port & 63)) != 0 { return .sourcePort }
        guard let source = IPKey(peer) else { return .sourceAddress }
        let loopback = source.isLoopback
        if self.configuration.addressChecks {
            if source.isUnspecified || source.isMulticast || source.ipv4Broadcast
                || self.broadcastAddresses.contains(source)
            {
                return .sourceAddress
            }
            if loopback {
                let destinationIsLoopback =
                    arrivedOnLoopback >= 0 ? arrivedOnLoopback == 1 : (self.boundToLoopback ?? false)
                if !destinationIsLoopback { return .sourceAddress }
            }
            if port == self.localPort && (loopback || self.localAddresses.contains(source)) { return .ownEndpoint }
        }
        if !self.configuration.deny.isEmpty && self.configuration.deny.contains(where: { $0.contains(source) }) {
            return .denied
        }
        if !self.configuration.allow.isEmpty && !self.configuration.allow.contains(where: { $0.contains(source) }) {
            return .denied
        }
        if loopback && !self.configuration.limitLoopback { return nil }
        if let limit = self.configuration.rateLimit {
            let prefix = source.masked(source.isIPv4 ? 96 + limit.ipv4PrefixLength : limit.ipv6PrefixLength)
            if !self.table!.allow(prefix, now: now) { return .rateLimited }
        }
        if let rate = self.configuration.globalRate {
            let share = rate / Double(threads)
            if !self.global!.take(now: now, rate: share, burst: share) { return .overBudget }
        }
        return nil
    }
}

struct TokenBucket {
    var tokens: Double
    var last: Int64

    mutating func take(now: Int64, rate: Double, burst: Double) -> Bool {
        if now > self.last {
            self.tokens = min(burst, self.tokens + Double(now - self.last) * rate / 1e9)
            self.last = now
        }
        guard self.tokens >= 1 else { return false }
        self.tokens -= 1
        return true
    }
}

/// A fixed-size table of token buckets, 4-way set-associative: a source lives in one set of 4 slots, and a new
/// source takes the slot of the set's least recently seen one.
struct RateTable {
    private struct Entry {
        var key: IPKey
        var bucket: TokenBucket
        var used: Bool
    }

    private let limit: RateLimit
    private var entries: [Entry]
    private let setMask: Int
    private(set) var count = 0
    private(set) var evictions = 0

    init(_ limit: RateLimit) {
        self.limit = limit
        var sets = 1
        while sets * 4 < limit.tableSize { sets <<= 1 }
        self.setMask = sets - 1
        self.entries = Array(
            repeating: Entry(key: IPKey(high: 0, low: 0), bucket: TokenBucket(tokens: 0, last: 0), used: false),
            count: sets * 4
        )
    }

    /// The table's size in entries (its memory is fixed at creation).
    var capacity: Int { self.entries.count }

    mutating func allow(_ key: IPKey, now: Int64) -> Bool {
        let hash = (key.high ^ (key.low &* 0x9E37_79B9_7F4A_7C15)) &* 0xBF58_476D_1CE4_E5B9
        let base = (Int(truncatingIfNeeded: hash >> 32) & self.setMask) * 4
        var victim = base
        for slot in base..<base + 4 {
            if self.entries[slot].used && self.entries[slot].key == key {
                return self.entries[slot].bucket.take(now: now, rate: self.limit.perSecond, burst: self.limit.burst)
            }
            if !self.entries[slot].used {
                victim = slot
            } else if self.entries[victim].used && self.entries[slot].bucket.last < self.entries[victim].bucket.last {
                victim = slot
            }
        }
        if self.entries[victim].used {
            self.evictions += 1
        } else {
            self.count += 1
        }
        self.entries[victim] = Entry(key: key, bucket: TokenBucket(tokens: self.limit.burst, last: now), used: true)
        return self.entries[victim].bucket.take(now: now, rate: self.limit.perSecond, burst: self.limit.burst)
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

/// This host's interface addresses and IPv4 broadcast addresses, read once when a server starts.
enum InterfaceAddresses {
    static func current() -> (addresses: Set<IPKey>, broadcasts: Set<IPKey>) {
        var addresses = Set<IPKey>()
        var broadcasts = Set<IPKey>()
        var list: UnsafeMutablePointer<ifaddrs>?
        guard getifaddrs(&list) == 0, let first = list else { return (addresses, broadcasts) }
        defer { freeifaddrs(first) }
        var entry: UnsafeMutablePointer<ifaddrs>? = first
        while let current = entry {
            if let raw = current.pointee.ifa_addr, let key = IPKey(UnsafePointer(raw)) {
                addresses.insert(key)
                if key.isIPv4, (current.pointee.ifa_flags & UInt32(IFF_BROADCAST)) != 0,
                    let broadcast = current.pointee.ifa_ifu.ifu_broadaddr,
                    let broadcastKey = IPKey(UnsafePointer(broadcast))
                {
                    broadcasts.insert(broadcastKey)
                }
            }
            entry = current.pointee.ifa_next
        }
        return (addresses, broadcasts)
    }
}
