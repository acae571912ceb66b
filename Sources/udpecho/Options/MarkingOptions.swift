import ArgumentParser
import UDPEcho

/// How probes are marked: DSCP/ECN (or the whole TOS byte), TTL and DF; shared by `ping` and `bench`.
struct MarkingOptions: ParsableArguments {
    @Option(
        parsing: .unconditional,
        help: ArgumentHelp(
            "Send with this DSCP, 0 to 63 (46: EF, expedited forwarding; 34: AF41; 0: best effort).",
            valueName: "n"
        )
    )
    var dscp: Int?

    @Option(
        help: ArgumentHelp(
            "Send with this ECN codepoint: not-ect, ect0, ect1 (L4S) or ce.",
            valueName: "codepoint"
        )
    )
    var ecn: String?

    @Option(
        parsing: .unconditional,
        help: ArgumentHelp(
            "Send with this whole TOS (IPv4) or traffic class (IPv6) byte, 0 to 255: DSCP and ECN at once (instead of --dscp and --ecn).",
            valueName: "n"
        )
    )
    var tos: Int?

    @Option(
        parsing: .unconditional,
        help: ArgumentHelp("Send with this TTL (IPv4) or hop limit (IPv6), 1 to 255.", valueName: "n")
    )
    var ttl: Int?

    @Flag(help: "Set Don't Fragment: a probe larger than the path allows is lost or refused, never fragmented.")
    var df = false

    func validate() throws {
        if let dscp, !(0...63).contains(dscp) {
            throw ValidationError("--dscp \(dscp): a DSCP goes from 0 to 63 (it is the TOS byte's upper six bits)")
        }
        if let tos, !(0...255).contains(tos) {
            throw ValidationError("--tos \(tos): the TOS byte goes from 0 to 255")
        }
        if let ecn, ECN(name: ecn) == nil {
            throw ValidationError("--ecn \(ecn): not an ECN codepoint; use not-ect, ect0, ect1 or ce")
        }
        if self.tos != nil && (self.dscp != nil || self.ecn != nil) {
            throw ValidationError("--tos sets DSCP and ECN at once: give it alone, or --dscp and --ecn")
        }
        if let ttl, !(1...255).contains(ttl) {
            throw ValidationError("--ttl \(ttl): a TTL goes from 1 to 255")
        }
    }

    /// The marking asked for.
    var marking: PathMarking {
        var trafficClass: TrafficClass?
        if let tos { trafficClass = TrafficClass(byte: UInt8(tos)) }
        if self.dscp != nil || self.ecn != nil {
            trafficClass = TrafficClass(
                dscp: UInt8(self.dscp ?? 0),
                ecn: self.ecn.flatMap { ECN(name: $0) } ?? .notECT
            )
        }
        return PathMarking(trafficClass: trafficClass, ttl: self.ttl, dontFragment: self.df)
    }
}
