import ArgumentParser
import FoundationEssentials
import NIOCore
import UDPEcho

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// Nanoseconds as milliseconds with three decimals and a sign: -142000 → "-0.142".
func signedMilliseconds(_ nanoseconds: Int64) -> String {
    nanoseconds < 0 ? "-" + milliseconds(-nanoseconds) : milliseconds(nanoseconds)
}

/// Nanoseconds as milliseconds with three decimals: 142000 → "0.142".
func milliseconds(_ nanoseconds: Int64) -> String {
    let microseconds = (max(0, nanoseconds) + 500) / 1000
    let fraction = String(microseconds % 1000)
    return "\(microseconds / 1000).\(String(repeating: "0", count: 3 - fraction.count))\(fraction)"
}

extension ProbeEvent {
    func pingLine(peer: String, timeout: Duration, showClass: Bool = false) -> String {
        switch self {
        case .reply(let sequence, let bytes, let roundTrip, _, let outOfOrder, let marks):
            return "\(bytes) bytes from \(peer): seq=\(sequence) time=\(milliseconds(roundTrip)) ms"
                + (marks?.lineSuffix(showClass: showClass) ?? "") + (outOfOrder ? " (out of order)" : "")
        case .stampReply(let reply):
            var line =
                "\(reply.bytes) bytes from \(peer): seq=\(reply.sequence) time=\(milliseconds(reply.roundTrip)) ms"
            if reply.plainEcho {
                line += " (echoed unchanged: not a STAMP reflector)"
            } else {
                line +=
                    " reflector=\(milliseconds(reply.reflectorTime)) ms forward=\(signedMilliseconds(reply.forwardDelay)) ms"
                line += " backward=\(signedMilliseconds(reply.backwardDelay)) ms ttl=\(reply.ttlAtReflector)"
                if let tos = reply.tosAtReflector {
                    line += " dscp-there=\(tos >> 2) ecn-there=\(TrafficClass(byte: tos).ecn)"
                }
                if let tos = reply.tosHere { line += " dscp-here=\(tos >> 2) ecn-here=\(TrafficClass(byte: tos).ecn)" }
                if let ttl = reply.ttlHere { line += " ttl-here=\(ttl)" }
            }
            return line + (reply.outOfOrder ? " (out of order)" : "")
        case .duplicate(let sequence, let bytes):
            return "\(bytes) bytes from \(peer): seq=\(sequence) (DUP!)"
        case .lost(let sequence):
            return "no reply from \(peer): seq=\(sequence) within \(timeout.shortDescription)"
        case .late(let sequence, let bytes, let roundTrip):
            let time = roundTrip >= 0 ? " time=\(milliseconds(roundTrip)) ms" : ""
            return "\(bytes) bytes from \(peer): seq=\(sequence)\(time) (late: already counted as lost)"
        case .corrupt(let sequence, let bytes, let reason):
            let which = sequence.map { ": seq=\($0)" } ?? ""
            return "corrupt reply: \(bytes) bytes from \(peer)\(which): \(reason)"
        case .impossible(let sequence, let bytes, let reason):
            return "impossible reply: \(bytes) bytes from \(peer): seq=\(sequence): \(reason); left out of every figure"
        case .refused(let sequence):
            let which = sequence.map { " seq=\($0):" } ?? ""
            return "refused:\(which) \(peer) answered ICMP port unreachable (nothing listens there)"
        case .sendError(let code):
            return "send failed: \(String(cString: strerror(code)))"
        }
    }
}

extension EchoBenchmark.Result {
    /// ping's summary lines.
    func pingSummary(marked: Bool = false, far: String = "the server") -> [String] {
        let counts = self.counts
        let loss = counts.lossPercent
        var lines = [
            "\(counts.sent) transmitted, \(counts.received) received, \(Self.percent(loss)) loss, "
                + "\(counts.duplicate) duplicates, \(counts.reordered) reordered, \(counts.corrupt) corrupt"
                + (counts.late > 0 ? ", \(counts.late) late" : "")
                + (counts.impossible > 0 ? ", \(counts.impossible) impossible" : "")
                + (counts.refused > 0 ? ", \(counts.refused) refused" : "")
                + (counts.sendErrors > 0
                    ? ", \(counts.sendErrors) not sent (\(String(cString: strerror(self.lastSendError))))" : "")
                + ", time \(Int(self.elapsed.seconds * 1000))ms"
        ]
        let times = self.times
        if times.count > 0 {
            let mean = Int64(times.mean)
            let deviation = Int64(times.deviation)
            lines.append(
                "rtt min/avg/max/mdev = \(milliseconds(times.minimum))/\(milliseconds(mean))/"
                    + "\(milliseconds(times.maximum))/\(milliseconds(deviation)) ms"
            )
            lines.append(
                "rtt p50/p90/p99 = \(milliseconds(times.percentile(50)))/\(milliseconds(times.percentile(90)))/"
                    + "\(milliseconds(times.percentile(99))) ms"
            )
            lines.append(self.jitterLine)
            lines.append(
                "send lateness p50/p99 = \(milliseconds(self.lateness.percentile(50)))/"
                    + "\(milliseconds(self.lateness.percentile(99))) ms (how late probes left against the schedule)"
            )
        }
        if let stamp = self.stamp { lines += stamp.summaryLines(sent: counts.sent, lost: counts.lost) }
        if let marking = self.marking, marked || marking.reportedThere > 0 {
            lines += marking.summaryLines(far: far)
        }
        return lines
    }

    static func percent(_ value: Double) -> String {
        value == value.rounded() ? "\(Int(value))%" : "\(Double(Int((value * 10).rounded())) / 10)%"
    }
}

/// The JSON lines of `udpecho ping --json`.
enum PingJSON {
    struct Event: Encodable {
        var type: String
        var seq: UInt64?
        var bytes: Int?
        var rtt_ms: Double?
        var late_ms: Double?
        var out_of_order: Bool?
        var reason: String?
        var stamp: StampEvent?
        var ttl, hops_back_estimated, dscp, ecn: Int?
        var at_server: ServerMarks?
    }

    /// What a udpecho server with --reflect-tos said the probe arrived with.
    struct ServerMarks: Encodable {
        var ttl, dscp, ecn: Int?
    }

    /// A STAMP reply's fields in a `reply` event.
    struct StampEvent: Encodable {
        var reflector_ms, forward_ms, backward_ms: Double?
        var ttl, reflector_seq: Int?
        var reflector_synchronized: Bool?
        var dscp_at_reflector, ecn_at_reflector, dscp_here, ecn_here: Int?
        var source_seen_by_reflector: String?
        var plain_echo: Bool
    }

    struct Summary: Encodable {
        var type = "summary"
        var target: String
        var transmitted, received, lost, duplicates, reordered, corrupt, late, impossible, refused, not_sent: Int
        var not_sent_error: String?
        var loss_percent: Double
        var timestamps: String
        var timestamp_fallbacks: Int
        var stamp: StampSummary?
        var rtt_ms: [String: Double]?
        var send_lateness_ms: [String: Double]?
        var ipdv_ms: [String: Double]?
        var jitter_rfc3550_ms: Double?
        var marking: MarkingSummary?
        var flows: [FlowSummary]?
        var flows_apart: [Int]?
    }

    static func line(for event: ProbeEvent) -> String {
        let value: Event
        switch event {
        case .reply(let sequence, let bytes, let roundTrip, let lateness, let outOfOrder, let marks):
            value = Event(
                type: "reply",
                seq: sequence,
                bytes: bytes,
                rtt_ms: Double(roundTrip) / 1e6,
                late_ms: Double(lateness) / 1e6,
                out_of_order: outOfOrder,
                ttl: marks?.ttlHere,
                hops_back_estimated: marks?.ttlHere.map(ArrivalMarks.estimatedHops(fromTTL:)),
                dscp: marks?.classHere.map { Int($0.dscp) },
                ecn: marks?.classHere.map { Int($0.ecn.rawValue) },
                at_server: marks.flatMap { marks in
                    marks.classThere == nil && marks.ttlThere == nil
                        ? nil
                        : ServerMarks(
                            ttl: marks.ttlThere,
                            dscp: marks.classThere.map { Int($0.dscp) },
                            ecn: marks.classThere.map { Int($0.ecn.rawValue) }
                        )
                }
            )
        case .stampReply(let reply):
            value = Event(
                type: "reply",
                seq: reply.sequence,
                bytes: reply.bytes,
                rtt_ms: Double(reply.roundTrip) / 1e6,
                late_ms: Double(reply.lateness) / 1e6,
                out_of_order: reply.outOfOrder,
                stamp: reply.plainEcho
                    ? StampEvent(plain_echo: true)
                    : StampEvent(
                        reflector_ms: Double(reply.reflectorTime) / 1e6,
                        forward_ms: Double(reply.forwardDelay) / 1e6,
                        backward_ms: Double(reply.backwardDelay) / 1e6,
                        ttl: Int(reply.ttlAtReflector),
                        reflector_seq: Int(reply.reflectorSequence),
                        reflector_synchronized: reply.reflectorErrorEstimate.synchronized,
                        dscp_at_reflector: reply.tosAtReflector.map { Int($0 >> 2) },
                        ecn_at_reflector: reply.tosAtReflector.map { Int($0 & 3) },
                        dscp_here: reply.tosHere.map { Int($0 >> 2) },
                        ecn_here: reply.tosHere.map { Int($0 & 3) },
                        source_seen_by_reflector: reply.sourceSeenByReflector,
                        plain_echo: false
                    )
            )
        case .duplicate(let sequence, let bytes):
            value = Event(type: "duplicate", seq: sequence, bytes: bytes)
        case .lost(let sequence):
            value = Event(type: "lost", seq: sequence)
        case .late(let sequence, let bytes, let roundTrip):
            value = Event(
                type: "late",
                seq: sequence,
                bytes: bytes,
                rtt_ms: roundTrip >= 0 ? Double(roundTrip) / 1e6 : nil
            )
        case .corrupt(let sequence, let bytes, let reason):
            value = Event(type: "corrupt", seq: sequence, bytes: bytes, reason: reason)
        case .impossible(let sequence, let bytes, let reason):
            value = Event(type: "impossible", seq: sequence, bytes: bytes, reason: reason)
        case .refused(let sequence):
            value = Event(type: "refused", seq: sequence)
        case .sendError(let code):
            value = Event(type: "send-error", reason: String(cString: strerror(code)))
        }
        return jsonLine(value)
    }

    static func summary(_ result: EchoBenchmark.Result, target: String) -> String {
        let counts = result.counts
        let times = result.times
        let rtt: [String: Double]? =
            times.count == 0
            ? nil
            : [
                "min": Double(times.minimum) / 1e6, "avg": times.mean / 1e6, "max": Double(times.maximum) / 1e6,
                "mdev": times.deviation / 1e6, "p50": Double(times.percentile(50)) / 1e6,
                "p90": Double(times.percentile(90)) / 1e6, "p99": Double(times.percentile(99)) / 1e6,
            ]
        return jsonLine(
            Summary(
                target: target,
                transmitted: counts.sent,
                received: counts.received,
                lost: counts.lost,
                duplicates: counts.duplicate,
                reordered: counts.reordered,
                corrupt: counts.corrupt,
                late: counts.late,
                impossible: counts.impossible,
                refused: counts.refused,
                not_sent: counts.sendErrors,
                not_sent_error: counts.sendErrors > 0 ? String(cString: strerror(result.lastSendError)) : nil,
                loss_percent: counts.lossPercent,
                timestamps: result.timestamps.rawValue,
                timestamp_fallbacks: result.timestampFallbacks,
                stamp: result.stamp.map { StampSummary($0, sent: counts.sent, lost: counts.lost) },
                rtt_ms: rtt,
                send_lateness_ms: times.count == 0 ? nil : result.lateness.milliseconds([50, 99]),
                ipdv_ms: result.jitter.ipdv.count == 0 ? nil : result.jitter.ipdvMilliseconds,
                jitter_rfc3550_ms: result.jitter.ipdv.count == 0 ? nil : result.jitter.rfc3550 / 1e6,
                marking: result.marking.map(MarkingSummary.init),
                flows: result.flows.map { flows in
                    let apart = FlowComparison.outliers(flows)
                    return flows.map { flow in FlowSummary(flow, apart: apart.first { $0.port == flow.port }) }
                },
                flows_apart: result.flows.map { FlowComparison.outliers($0).map(\.port) }
            )
        )
    }
}

/// `value` as one line of JSON, keys sorted.
func jsonLine(_ value: some Encodable) -> String {
    let encoder = JSONEncoder()
    encoder.outputFormatting = [.sortedKeys]
    return String(decoding: (try? encoder.encode(value)) ?? Data("{}".utf8), as: UTF8.self)
}

/// The STAMP part of ping's JSON summary.
struct StampSummary: Encodable {
    var replies_from_reflector: Int
    var plain_echoes: Int
    var reflector_ms: [String: Double]?
    var forward_ms: [String: Double]?
    var backward_ms: [String: Double]?
    var implied_clock_offset_ms: Double?
    var reflector_synchronized: Bool?
    var reflector_timestamp_format: String?
    var ttl_at_reflector: [String: Int]
    var dscp_at_reflector: [String: Int]
    var dscp_here: [String: Int]
    var lost_forward: Int?
    var lost_backward: Int?
    var lost_direction_unknown: Int?
    var reflector_counter_restarts: Int?
    var dscp_declined: Int
    var source_seen_by_reflector: String?

    init(_ stamp: StampStatistics, sent: Int, lost: Int) {
        let count = stamp.reflectorTime.count
        self.replies_from_reflector = count
        self.plain_echoes = stamp.plainEchoes
        func signed(_ times: SignedTimes) -> [String: Double] {
            var values: [String: Double] = ["mean": times.mean / 1e6]
            for (name, percentile) in [("p50", 50.0), ("p90", 90), ("p99", 99), ("p99.9", 99.9)] {
                values[name] = Double(times.percentile(percentile)) / 1e6
            }
            return values
        }
        if count > 0 {
            self.reflector_ms = stamp.reflectorTime.milliseconds([50, 90, 99, 99.9])
            self.forward_ms = signed(stamp.forwardDelay)
            self.backward_ms = signed(stamp.backwardDelay)
            self.implied_clock_offset_ms = stamp.impliedClockOffset / 1e6
        }
        self.reflector_synchronized = stamp.reflectorErrorEstimate?.synchronized
        self.reflector_timestamp_format = stamp.reflectorErrorEstimate?.format.rawValue
        self.ttl_at_reflector = Dictionary(uniqueKeysWithValues: stamp.ttlAtReflector.map { ("\($0)", $1) })
        self.dscp_at_reflector = Dictionary(stamp.tosAtReflector.map { ("\($0 >> 2)", $1) }, uniquingKeysWith: +)
        self.dscp_here = Dictionary(stamp.tosHere.map { ("\($0 >> 2)", $1) }, uniquingKeysWith: +)
        let loss = stamp.lossByDirection(sent: sent, lost: lost)
        self.lost_forward = loss?.forward
        self.lost_backward = loss?.backward
        self.lost_direction_unknown = loss?.unknown
        self.reflector_counter_restarts = stamp.reflectorCounts ? stamp.counterRestarts : nil
        self.dscp_declined = stamp.dscpDeclined
        self.source_seen_by_reflector = stamp.sourceSeenByReflector
    }
}

extension StampStatistics {
    /// ping's summary lines for a STAMP run.
    func summaryLines(sent: Int, lost: Int) -> [String] {
        guard self.reflectorTime.count > 0 else {
            return self.plainEchoes > 0
                ? [
                    "stamp: every reply was our test packet unchanged: an echo server, not a STAMP reflector; round trips only"
                ]
                : []
        }
        var lines = [
            "stamp: reflector time p50/p99 = \(milliseconds(self.reflectorTime.percentile(50)))/"
                + "\(milliseconds(self.reflectorTime.percentile(99))) ms (left out of the round trips above)"
        ]
        let synchronized = self.reflectorErrorEstimate?.synchronized == true ? "synchronized" : "not synchronized"
        lines.append(
            "stamp: forward p50/p99 = \(signedMilliseconds(self.forwardDelay.percentile(50)))/"
                + "\(signedMilliseconds(self.forwardDelay.percentile(99))) ms, backward p50/p99 = "
                + "\(signedMilliseconds(self.backwardDelay.percentile(50)))/"
                + "\(signedMilliseconds(self.backwardDelay.percentile(99))) ms"
        )
        lines.append(
            "stamp: one-way delays compare two clocks and hold only if both are synchronized (the reflector's says "
                + "\(synchronized)); they imply the reflector's clock is \(signedMilliseconds(Int64(self.impliedClockOffset))) ms "
                + "ahead of ours"
        )
        let ttls = self.ttlAtReflector.keys.sorted().filter { $0 > 0 }
        var reflector =
            ttls.isEmpty
            ? "stamp: ttl at the reflector not reported (a TWAMP-Light responder leaves it out)"
            : "stamp: ttl at the reflector "
                + ttls.map { "\($0) (about \(ArrivalMarks.estimatedHops(fromTTL: Int($0))) hops out)" }.joined(
                    separator: ", "
                )
        if !self.tosAtReflector.isEmpty {
            reflector +=
                "; dscp/ecn at the reflector "
                + self.tosAtReflector.keys.sorted().map { "\($0 >> 2)/\($0 & 3)" }.joined(separator: ", ")
        }
        if !self.tosHere.isEmpty {
            reflector +=
                ", back here " + self.tosHere.keys.sorted().map { "\($0 >> 2)/\($0 & 3)" }.joined(separator: ", ")
        }
        lines.append(reflector)
        if self.dscpDeclined > 0 {
            lines.append(
                "stamp: the reflector declined the DSCP asked of it in \(self.dscpDeclined) replies (RP=1: they left with "
                    + "its own marking; a udpecho reflector honours the request only with --reflect-tos)"
            )
        }
        if let loss = self.lossByDirection(sent: sent, lost: lost) {
            var line = "stamp: lost on the way there \(loss.forward), on the way back \(loss.backward)"
            if loss.unknown > 0 {
                line +=
                    self.counterRestarts > 0
                    ? ", which way unknown \(loss.unknown) (after the last reply, or where the counter restarted)"
                    : ", after the last reply \(loss.unknown) (which way, no later reply tells)"
            }
            lines.append(line + " (the reflector counts what it receives)")
            if self.counterRestarts > 0 {
                lines.append(
                    "stamp: the reflector's counter went back or stood still \(self.counterRestarts) time\(self.counterRestarts == 1 ? "" : "s") "
                        + "(its session restarted: evicted from its table, or the reflector restarted); losses are split "
                        + "only within the runs between"
                )
            }
        } else if lost > 0 {
            lines.append(
                "stamp: which way the \(lost) lost went is unknown: the reflector copies our sequence numbers (stateless), "
                    + "or every loss was on the way back"
            )
        }
        if let source = self.sourceSeenByReflector { lines.append("stamp: the reflector saw us as \(source)") }
        return lines
    }
}
