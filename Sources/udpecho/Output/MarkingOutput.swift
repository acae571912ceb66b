import UDPEcho

extension ArrivalMarks {
    /// The end of a reply line: ` ttl=63`, the marking here when `showClass`, and what the far end reported.
    func lineSuffix(showClass: Bool) -> String {
        var text = ""
        if let ttl = self.ttlHere { text += " ttl=\(ttl)" }
        if showClass || self.classThere != nil, let here = self.classHere {
            text += " dscp=\(here.dscp) ecn=\(here.ecn)"
        }
        var there: [String] = []
        if let ttl = self.ttlThere { there.append("ttl=\(ttl)") }
        if let arrived = self.classThere { there.append("dscp=\(arrived.dscp) ecn=\(arrived.ecn)") }
        if !there.isEmpty { text += " (at the server: \(there.joined(separator: " ")))" }
        return text
    }
}

extension MarkingVerdict {
    /// `bleached on the way back`, for `direction` "on the way back".
    func phrase(_ direction: String, sent: UInt8) -> String? {
        switch self {
        case .kept: nil
        case .bleached: "bleached on \(direction) (DSCP \(sent) became 0)"
        case .remarked(let to): "remarked on \(direction) (DSCP \(sent) became \(to))"
        case .mixed: "changed on some packets on \(direction)"
        case .unknown: nil
        }
    }

    var name: String {
        switch self {
        case .kept: "kept"
        case .bleached: "bleached"
        case .remarked: "remarked"
        case .mixed: "mixed"
        case .unknown: "unknown"
        }
    }
}

extension MarkingStatistics {
    /// ping's summary lines about markings and hops; `far` names the far end ("the server", "the reflector").
    func summaryLines(far: String) -> [String] {
        let sent = self.sentClass
        var lines = ["marking: sent \(sent)" + (self.sentTTL.map { ", ttl \($0)" } ?? "")]
        func spread(_ counts: [UInt8: Int]) -> String {
            counts.sorted { $0.key < $1.key }.map { "\(TrafficClass(byte: $0.key)) on \($0.value)" }
                .joined(separator: ", ")
        }
        func hops(_ values: [Int], exact: Bool) -> String {
            guard !values.isEmpty else { return "" }
            let list = values.map(String.init).joined(separator: " or ")
            let noun = values == [1] ? "hop" : "hops"
            return exact ? "; \(list) \(noun)" : "; about \(list) \(noun) (from the TTL that arrived)"
        }
        if self.reportedThere > 0 {
            lines.append(
                "marking: at \(far): \(spread(self.classThere)) of \(self.reportedThere); CE on \(self.ceThere)"
                    + hops(self.hopsThere, exact: true)
            )
        }
        if self.reportedHere > 0 {
            let ce =
                self.classSentBack.isEmpty
                ? "CE on \(self.ceHereUnattributed)" : "CE added on the way back on \(self.ceBack)"
            lines.append(
                "marking: back here: \(spread(self.classHere)) of \(self.reportedHere); \(ce)"
                    + hops(self.hopsBack, exact: false)
            )
        }
        lines.append("marking: " + self.verdict(far: far))
        return lines
    }

    /// One sentence: what happened to the DSCP, direction by direction where the far end said what arrived.
    func verdict(far: String) -> String {
        let sent = self.sentClass.dscp
        var said = ["DSCP \(sent) sent"]
        if let there = Self.commonDSCP(self.classThere) { said.append("\(there) at \(far)") }
        if let back = Self.commonDSCP(self.classSentBack), back != Self.commonDSCP(self.classThere) {
            said.append("sent back as \(back)")
        }
        if let here = Self.commonDSCP(self.classHere) { said.append("\(here) back here") }
        let head = said.joined(separator: ", ")
        if self.reportedHere == 0 { return head + ": nothing came back to tell" }
        guard self.forward != .unknown else {
            let change = self.roundTrip == .kept ? "kept on the round trip" : "changed on the path"
            return head + ": \(change); \(far) did not say what arrived there, so the direction is not known "
                + "(run it with --reflect-tos, or ping a STAMP reflector with --stamp)"
        }
        let there = self.forward.phrase("the way there", sent: sent)
        guard self.backward != .unknown else {
            return head + ": " + (there ?? "kept on the way there") + "; on the way back not known: \(far) did not "
                + "send its replies with the DSCP asked of it, so what it sent is not known"
        }
        let backSent = Self.commonDSCP(self.classSentBack) ?? sent
        let back = self.backward.phrase("the way back", sent: backSent)
        let changes = [there, back].compactMap { $0 }
        return head + ": " + (changes.isEmpty ? "kept both ways" : changes.joined(separator: "; "))
    }
}

/// The marking part of ping's JSON summary.
struct MarkingSummary: Encodable {
    var sent_dscp, sent_ecn: Int
    var sent_ttl: Int?
    var reported_there, reported_here: Int
    var dscp_there, dscp_here, ttl_there, ttl_here: [String: Int]
    var ce_there, ce_back, ce_here_unattributed: Int
    var hops_there, hops_back_estimated: [Int]
    var forward, backward, round_trip: String

    init(_ marking: MarkingStatistics) {
        self.sent_dscp = Int(marking.sentClass.dscp)
        self.sent_ecn = Int(marking.sentClass.ecn.rawValue)
        self.sent_ttl = marking.sentTTL
        self.reported_there = marking.reportedThere
        self.reported_here = marking.reportedHere
        func dscps(_ counts: [UInt8: Int]) -> [String: Int] {
            Dictionary(counts.map { ("\($0.key >> 2)", $0.value) }, uniquingKeysWith: +)
        }
        self.dscp_there = dscps(marking.classThere)
        self.dscp_here = dscps(marking.classHere)
        self.ttl_there = Dictionary(uniqueKeysWithValues: marking.ttlThere.map { ("\($0.key)", $0.value) })
        self.ttl_here = Dictionary(uniqueKeysWithValues: marking.ttlHere.map { ("\($0.key)", $0.value) })
        self.ce_there = marking.ceThere
        self.ce_back = marking.ceBack
        self.ce_here_unattributed = marking.ceHereUnattributed
        self.hops_there = marking.hopsThere
        self.hops_back_estimated = marking.hopsBack
        self.forward = marking.forward.name
        self.backward = marking.backward.name
        self.round_trip = marking.roundTrip.name
    }
}
