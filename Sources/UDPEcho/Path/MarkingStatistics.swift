/// What happened to a marking in one direction of the path, over a run.
public enum MarkingVerdict: Sendable, Equatable {
    /// Every packet that told arrived with the DSCP it left with.
    case kept
    /// It arrived with DSCP 0 (best effort) on every packet: the marking was cleared on the way.
    case bleached
    /// It arrived with this other DSCP on every packet.
    case remarked(to: UInt8)
    /// Packets arrived with different DSCPs: some kept it, some did not (a path that varies, or a policer).
    case mixed
    /// Nothing said what arrived (no packet reported it).
    case unknown
}

/// The markings and hop counts of a run's replies, by direction (``ArrivalMarks`` of each reply).
public struct MarkingStatistics: Sendable {
    /// What the probes left with: their traffic class and TTL.
    public var sentClass: TrafficClass
    /// The TTL (hop limit) the probes left with, if it was set.
    public var sentTTL: Int?
    /// Replies that said what the probe arrived with at the far end (a udpecho server with `--reflect-tos`, a STAMP
    /// reflector), and, of them, by traffic class byte and by TTL.
    public private(set) var reportedThere = 0
    /// Of those, how many arrived there with each traffic class byte.
    public private(set) var classThere: [UInt8: Int] = [:]
    /// Of those, how many arrived there with each TTL.
    public private(set) var ttlThere: [Int: Int] = [:]
    /// Replies whose traffic class and TTL here the kernel reported, by value.
    public private(set) var reportedHere = 0
    /// Of those, how many arrived here with each traffic class byte.
    public private(set) var classHere: [UInt8: Int] = [:]
    /// Of those, how many arrived here with each TTL.
    public private(set) var ttlHere: [Int: Int] = [:]
    /// Probes that arrived at the far end marked CE: congestion experienced on the way there.
    public private(set) var ceThere = 0
    /// Replies marked CE here that the far end had not sent as CE: congestion on the way back.
    public private(set) var ceBack = 0
    /// Replies marked CE here with nothing to say whether the far end sent them so.
    public private(set) var ceHereUnattributed = 0
    /// The traffic class the far end sent replies back with, where known, by byte.
    public private(set) var classSentBack: [UInt8: Int] = [:]

    /// Statistics for probes sent with `sentClass` and `sentTTL`.
    public init(sentClass: TrafficClass, sentTTL: Int?) {
        self.sentClass = sentClass
        self.sentTTL = sentTTL
    }

    mutating func record(_ marks: ArrivalMarks) {
        if let there = marks.classThere {
            self.reportedThere += 1
            self.classThere[there.byte, default: 0] += 1
            if there.ecn == .ce { self.ceThere += 1 }
        }
        if let ttl = marks.ttlThere { self.ttlThere[ttl, default: 0] += 1 }
        if let back = marks.classSentBack { self.classSentBack[back.byte, default: 0] += 1 }
        if let here = marks.classHere {
            self.reportedHere += 1
            self.classHere[here.byte, default: 0] += 1
            if here.ecn == .ce {
                if let back = marks.classSentBack {
                    if back.ecn != .ce { self.ceBack += 1 }
                } else {
                    self.ceHereUnattributed += 1
                }
            }
        }
        if let ttl = marks.ttlHere { self.ttlHere[ttl, default: 0] += 1 }
    }

    /// What happened to the DSCP on the way there: the DSCP that arrived at the far end against the one sent.
    public var forward: MarkingVerdict {
        Self.verdict(sent: [self.sentClass.dscp: 1], arrived: self.classThere)
    }

    /// What happened to the DSCP on the way back: the DSCP that arrived here against the one the far end sent the
    /// replies with. Unknown unless the far end says what it sent (`--reflect-tos`, a STAMP Class of Service TLV).
    public var backward: MarkingVerdict {
        guard !self.classSentBack.isEmpty else { return .unknown }
        return Self.verdict(sent: Self.dscps(self.classSentBack), arrived: self.classHere)
    }

    /// What came back against what was sent, both directions together.
    public var roundTrip: MarkingVerdict {
        Self.verdict(sent: [self.sentClass.dscp: 1], arrived: self.classHere)
    }

    /// The hops on the way there, exact where both the TTL sent and the TTL that arrived are known: each distinct
    /// count.
    public var hopsThere: [Int] {
        guard let sent = self.sentTTL else { return [] }
        return self.ttlThere.keys.map { sent - $0 }.sorted()
    }

    /// The hops on the way back, estimated from the TTL that arrived (``ArrivalMarks/estimatedHops(fromTTL:)``).
    public var hopsBack: [Int] {
        Set(self.ttlHere.keys.map(ArrivalMarks.estimatedHops(fromTTL:))).sorted()
    }

    /// The most frequent DSCP in `counts` (of traffic class bytes).
    public static func commonDSCP(_ counts: [UInt8: Int]) -> UInt8? {
        Self.dscps(counts).max { $0.value < $1.value || ($0.value == $1.value && $0.key > $1.key) }?.key
    }

    static func dscps(_ counts: [UInt8: Int]) -> [UInt8: Int] {
        counts.reduce(into: [:]) { $0[$1.key >> 2, default: 0] += $1.value }
    }

    private static func verdict(sent: [UInt8: Int], arrived: [UInt8: Int]) -> MarkingVerdict {
        let arrivedDSCPs = Self.dscps(arrived)
        guard !arrivedDSCPs.isEmpty else { return .unknown }
        guard sent.count == 1, arrivedDSCPs.count == 1, let left = sent.keys.first,
            let came = arrivedDSCPs.keys.first
        else {
            return sent.count == 1 && Set(arrivedDSCPs.keys) == Set(sent.keys) ? .kept : .mixed
        }
        if came == left { return .kept }
        return came == 0 ? .bleached : .remarked(to: came)
    }
}
