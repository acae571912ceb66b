/// The ECN codepoint of a packet (RFC 3168): the low two bits of the IPv4 TOS or IPv6 traffic class byte.
public enum ECN: UInt8, Sendable, CaseIterable, CustomStringConvertible {
    /// Not ECN-capable transport.
    case notECT = 0
    /// ECN-capable transport, codepoint 1 (L4S uses it, RFC 9331).
    case ect1 = 1
    /// ECN-capable transport, codepoint 0.
    case ect0 = 2
    /// Congestion experienced: a router on the way marked the packet instead of dropping it.
    case ce = 3

    /// The name used in options and output: `not-ect`, `ect0`, `ect1`, `ce`.
    public var description: String {
        switch self {
        case .notECT: "not-ect"
        case .ect1: "ect1"
        case .ect0: "ect0"
        case .ce: "ce"
        }
    }

    /// The codepoint a reflector sends back for one that arrived: the same, but congestion experienced on the way
    /// there goes back as ECT(0). CE is a router's word about the path it crossed; a reply that carried it would
    /// report congestion on the way back that was not there, and hide any that was.
    public var reflected: ECN { self == .ce ? .ect0 : self }

    /// The codepoint named `text` (`not-ect`, `ect0`, `ect1`, `ce`; case does not matter), or nil.
    public init?(name text: String) {
        guard let match = Self.allCases.first(where: { $0.description == text.lowercased() }) else { return nil }
        self = match
    }
}

/// A TOS or traffic class byte: a DSCP (its upper six bits) and an ECN codepoint (its lower two).
public struct TrafficClass: Sendable, Hashable, CustomStringConvertible {
    /// The whole byte.
    public var byte: UInt8

    /// The byte as it is on the wire.
    public init(byte: UInt8) { self.byte = byte }

    /// A byte of this DSCP (0...63) and ECN codepoint.
    public init(dscp: UInt8, ecn: ECN = .notECT) {
        precondition(dscp < 64, "a DSCP goes from 0 to 63")
        self.byte = dscp << 2 | ecn.rawValue
    }

    /// The Differentiated Services codepoint, 0...63.
    public var dscp: UInt8 { self.byte >> 2 }
    /// The ECN codepoint.
    public var ecn: ECN { ECN(rawValue: self.byte & 3)! }

    /// `dscp 46 ect0`.
    public var description: String { "dscp \(self.dscp) \(self.ecn)" }
}

/// How probes are marked when they leave: traffic class, TTL (hop limit) and the Don't Fragment bit. Unset fields
/// leave the system's defaults (traffic class 0, TTL 64 on Linux, fragmentation as the kernel decides).
public struct PathMarking: Sendable, Equatable {
    /// The TOS or traffic class byte to send with; nil leaves it 0.
    public var trafficClass: TrafficClass?
    /// The TTL or hop limit to send with, 1...255; nil leaves the system's.
    public var ttl: Int?
    /// Set DF (IPv4) or forbid fragmentation (IPv6): a probe larger than the path allows is then lost or refused,
    /// never fragmented.
    public var dontFragment: Bool

    /// A marking; the defaults change nothing.
    public init(trafficClass: TrafficClass? = nil, ttl: Int? = nil, dontFragment: Bool = false) {
        self.trafficClass = trafficClass
        self.ttl = ttl
        self.dontFragment = dontFragment
    }

    /// Whether anything differs from the system's defaults.
    public var isSet: Bool { self.trafficClass != nil || self.ttl != nil || self.dontFragment }

    /// Throws ``EchoError/invalidConfiguration(_:)`` for a TTL outside 1...255.
    public func validate() throws(EchoError) {
        if let ttl = self.ttl, !(1...255).contains(ttl) {
            throw .invalidConfiguration("the TTL \(ttl) is out of range: it goes from 1 to 255")
        }
    }
}

/// What a reply's packets carried: the traffic class and TTL a reply arrived with here, and, when the far end said
/// so (a udpecho server with `--reflect-tos`, or a STAMP reflector's Class of Service TLV and TTL field), those the
/// probe arrived with there.
public struct ArrivalMarks: Sendable, Equatable {
    /// The reply's TTL or hop limit here; nil if the kernel did not report it.
    public var ttlHere: Int?
    /// The reply's traffic class here; nil if not reported.
    public var classHere: TrafficClass?
    /// The probe's TTL or hop limit at the server; nil if the server did not report it.
    public var ttlThere: Int?
    /// The probe's traffic class at the server; nil if the server did not report it.
    public var classThere: TrafficClass?
    /// The traffic class the far end sent the reply with, where it is known: what it received (a udpecho server
    /// with `--reflect-tos`) or what was asked of it (a STAMP reflector with a Class of Service TLV).
    public var classSentBack: TrafficClass?

    /// Marks; every field unknown by default.
    public init(
        ttlHere: Int? = nil,
        classHere: TrafficClass? = nil,
        ttlThere: Int? = nil,
        classThere: TrafficClass? = nil,
        classSentBack: TrafficClass? = nil
    ) {
        self.ttlHere = ttlHere
        self.classHere = classHere
        self.ttlThere = ttlThere
        self.classThere = classThere
        self.classSentBack = classSentBack
    }

    /// The hops a packet that arrived with `ttl` took from a sender that used the usual initial TTL: the smallest of
    /// 32, 64, 128 and 255 that is not below it, minus it. An estimate: the sender's initial TTL is not known.
    public static func estimatedHops(fromTTL ttl: Int) -> Int {
        let initial = [32, 64, 128, 255].first { $0 >= ttl } ?? 255
        return initial - ttl
    }
}
