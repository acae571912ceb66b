/// The server's defences against being used to attack others, all on by default.
///
/// An echo service on a public address is a classic tool for attackers: a spoofed datagram "from" another echo or
/// chargen service starts an endless loop between the two (CVE-1999-0103), and any UDP service can reflect a flood at
/// a victim whose address is forged as the source. Each guard drops what it catches, and each drop is counted under
/// its own ``DropReason``.
public struct GuardConfiguration: Sendable {
    /// Source ports below this are dropped: well-known services (echo 7, daytime 13, chargen 19, DNS 53, STAMP
    /// 862...) never send from them as clients, so such a datagram is a spoofed loop or a reflection. 0 turns this
    /// off.
    public var minimumSourcePort: Int
    /// More source ports to drop: by default 1337, where udpecho servers listen unless told otherwise (a loop with
    /// another copy of this server), and 2049, NFS, as inetd's echo does.
    public var deniedSourcePorts: Set<Int>
    /// Drop datagrams whose source port is the server's own port: another echo service on the same port, which is
    /// what a fleet of udpecho servers is, would echo the reply back forever.
    public var denyOwnPort: Bool
    /// Drop sources that cannot be a client: multicast, broadcast and unspecified addresses, the server's own
    /// endpoint, and loopback or local addresses that arrived from outside (on an interface other than loopback).
    public var addressChecks: Bool
    /// If not empty, only sources in these prefixes are answered.
    public var allow: [IPPrefix]
    /// Sources in these prefixes are never answered.
    public var deny: [IPPrefix]
    /// Datagrams larger than this are dropped whole (never truncated); nil echoes every size.
    public var maximumSize: Int?
    /// The echo-loop detector: the same datagram (the same bytes) from the same address and port more than this
    /// many times in a row, each within a second of the one before, is a loop with another echo service, and the
    /// next copies are dropped. nil turns it off. Clients that send the same bytes again and again from one socket
    /// (rather than a sequence number, as every measurement tool does) look exactly like such a loop.
    public var loopLimit: Int?
    /// The per-source token bucket; nil turns it off.
    public var rateLimit: RateLimit?
    /// Replies per second over all sources (the global budget, shared out over the serving threads, each with a
    /// burst of at least one reply); nil for none.
    public var globalRate: Double?
    /// Whether loopback sources are rate-limited and count against the global budget too. They are not by default:
    /// they cannot be spoofed from outside, and local load tests must not be throttled.
    public var limitLoopback: Bool

    /// The default source ports to drop besides those below ``minimumSourcePort``: 1337 and 2049.
    public static let defaultDeniedSourcePorts: Set<Int> = [1337, 2049]

    /// The guards; the defaults are on and generous (see each property).
    public init(
        minimumSourcePort: Int = 1024,
        deniedSourcePorts: Set<Int> = GuardConfiguration.defaultDeniedSourcePorts,
        denyOwnPort: Bool = true,
        addressChecks: Bool = true,
        allow: [IPPrefix] = [],
        deny: [IPPrefix] = [],
        maximumSize: Int? = nil,
        loopLimit: Int? = 4,
        rateLimit: RateLimit? = RateLimit(),
        globalRate: Double? = 1_000_000,
        limitLoopback: Bool = false
    ) {
        self.minimumSourcePort = minimumSourcePort
        self.deniedSourcePorts = deniedSourcePorts
        self.denyOwnPort = denyOwnPort
        self.addressChecks = addressChecks
        self.allow = allow
        self.deny = deny
        self.maximumSize = maximumSize
        self.loopLimit = loopLimit
        self.rateLimit = rateLimit
        self.globalRate = globalRate
        self.limitLoopback = limitLoopback
    }

    /// No guard at all: every datagram is echoed.
    public static let none = GuardConfiguration(
        minimumSourcePort: 0,
        deniedSourcePorts: [],
        denyOwnPort: false,
        addressChecks: false,
        loopLimit: nil,
        rateLimit: nil,
        globalRate: nil
    )

    /// Whether any guard is on.
    var isActive: Bool {
        self.minimumSourcePort > 0 || !self.deniedSourcePorts.isEmpty || self.denyOwnPort || self.addressChecks
            || !self.allow.isEmpty || !self.deny.isEmpty || self.maximumSize != nil || self.loopLimit != nil
            || self.rateLimit != nil || self.globalRate != nil
    }
}
