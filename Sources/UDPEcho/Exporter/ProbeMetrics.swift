/// A probe's report in Prometheus' text format, in blackbox_exporter's conventions: `probe_success`,
/// `probe_duration_seconds` and `probe_ip_protocol`, then udpecho's own families, gauges of this one probe (each
/// scrape runs a probe of its own, so nothing here is a counter).
///
/// | metric | meaning |
/// |---|---|
/// | `probe_success` | 1 when something came back (each direction, OWAMP) and the loss is within `fail_if_loss_above` |
/// | `probe_duration_seconds` | the scrape's probe, from the request to the answer |
/// | `probe_ip_protocol` | 4 or 6 |
/// | `udpecho_probe_info{protocol, module, address}` | 1: what was probed |
/// | `udpecho_probe_packets_sent`, `_received`, `_lost`, `_duplicate` | this probe's packets (OWAMP: both ways) |
/// | `udpecho_probe_packets_corrupt`, `_reordered`, `_late`, `_refused` | echo, STAMP, TWAMP (refused: ICMP port unreachable) |
/// | `udpecho_probe_loss_ratio` | packets without an answer (lost, refused) over packets sent |
/// | `udpecho_probe_direction_packets_sent{direction}`, `_lost{direction}` | OWAMP, and STAMP's stateful reflectors (`forward`, `backward`, `unknown`) |
/// | `udpecho_probe_rtt_seconds{quantile}` | summary of the round trips: 0, 0.5, 0.9, 0.99, 1 |
/// | `udpecho_probe_rtt_stddev_seconds` | their standard deviation |
/// | `udpecho_probe_jitter_seconds` | RFC 3550's interarrival jitter (OWAMP, per direction: p95 less median, owping's) |
/// | `udpecho_probe_ipdv_seconds{quantile}` | the differences of consecutive round trips (RFC 3393), 0.5 and 0.99 |
/// | `udpecho_probe_reflector_time_seconds{quantile}` | STAMP, TWAMP: how long the reflector held the packets |
/// | `udpecho_probe_one_way_delay_seconds{direction, quantile}` | STAMP, TWAMP, OWAMP: forward and backward delay |
/// | `udpecho_probe_clock_synchronized` | 1 when the far end says its clock is synchronized (both ends, OWAMP) |
/// | `udpecho_probe_clock_error_seconds` | OWAMP: the error bound of the delays |
/// | `udpecho_probe_hops{direction}` | hops the packets crossed, where the far end tells the TTL they arrived with |
/// | `udpecho_probe_dscp{direction}` | the DSCP the packets arrived with, where told |
/// | `udpecho_probe_ecn_ce_packets{direction}` | packets marked CE (congestion) on the way |
public enum ProbeMetrics {
    /// The exposition text of `report`, probed at `target` with the module named `module`.
    public static func render(_ report: ProbeReport, module: String) -> String {
        var writer = Writer()
        if let failure = report.failure { writer.comment("probe failed: \(failure)") }
        for note in report.notes { writer.comment(note) }
        writer.gauge("probe_success", "Whether the probe succeeded.", [([], report.success ? 1 : 0)])
        writer.gauge("probe_duration_seconds", "How long the probe took, in seconds.", [([], report.duration.seconds)])
        if let address = report.address {
            let version: Double = if case .v6 = address { 6 } else { 4 }
            writer.gauge("probe_ip_protocol", "The IP version the probe used.", [([], version)])
            writer.gauge(
                "udpecho_probe_info",
                "What was probed: the protocol, the module and the address.",
                [
                    (
                        [
                            ("protocol", report.module.probeProtocol.rawValue), ("module", module),
                            ("address", address.hostPortDescription),
                        ], 1
                    )
                ]
            )
        }
        if let result = report.roundTrip { Self.roundTrip(result, into: &writer) }
        if let result = report.oneWay { Self.oneWay(result, into: &writer) }
        return writer.text
    }

    private static let quantiles: [(String, Double)] = [("0", 0), ("0.5", 50), ("0.9", 90), ("0.99", 99), ("1", 100)]

    private static func roundTrip(_ result: EchoBenchmark.Result, into writer: inout Writer) {
        let counts = result.counts
        writer.gauge("udpecho_probe_packets_sent", "Packets this probe sent.", [([], Double(counts.sent))])
        writer.gauge(
            "udpecho_probe_packets_received",
            "Packets answered whole within the timeout.",
            [([], Double(counts.received))]
        )
        writer.gauge(
            "udpecho_probe_packets_lost",
            "Packets without an answer within the timeout.",
            [([], Double(counts.lost))]
        )
        writer.gauge("udpecho_probe_packets_duplicate", "Extra copies of answers.", [([], Double(counts.duplicate))])
        writer.gauge(
            "udpecho_probe_packets_corrupt",
            "Answers that were not the packet sent (damaged, or from something else).",
            [([], Double(counts.corrupt))]
        )
        writer.gauge(
            "udpecho_probe_packets_reordered",
            "Answers that came after a later packet's.",
            [([], Double(counts.reordered))]
        )
        writer.gauge(
            "udpecho_probe_packets_late",
            "Answers that came after their timeout.",
            [([], Double(counts.late))]
        )
        writer.gauge(
            "udpecho_probe_packets_refused",
            "Packets answered with ICMP port unreachable: nothing listens there.",
            [([], Double(counts.refused))]
        )
        writer.gauge(
            "udpecho_probe_loss_ratio",
            "Packets sent without an answer (lost, refused, not sent) over packets sent.",
            [([], counts.lossPercent / 100)]
        )
        if let stamp = result.stamp, let split = stamp.lossByDirection(sent: counts.sent, lost: counts.lost) {
            writer.gauge(
                "udpecho_probe_direction_packets_lost",
                "Packets lost, by direction, as a stateful reflector's counter tells.",
                [
                    ([("direction", "forward")], Double(split.forward)),
                    ([("direction", "backward")], Double(split.backward)),
                    ([("direction", "unknown")], Double(split.unknown)),
                ]
            )
        }
        let times = result.times
        if times.count > 0 {
            writer.summary(
                "udpecho_probe_rtt_seconds",
                "Round trips of the packets answered, in seconds.",
                labels: [],
                quantiles: Self.quantiles.map { ($0.0, Double(times.percentile($0.1)) / 1e9) },
                sum: times.mean * Double(times.count) / 1e9,
                count: times.count
            )
            writer.gauge(
                "udpecho_probe_rtt_stddev_seconds",
                "The standard deviation of the round trips, in seconds.",
                [([], times.deviation / 1e9)]
            )
            writer.gauge(
                "udpecho_probe_jitter_seconds",
                "RFC 3550's interarrival jitter of the round trips, in seconds.",
                [([], result.jitter.rfc3550 / 1e9)]
            )
        }
        let ipdv = result.jitter.ipdv
        if ipdv.count > 0 {
            writer.summary(
                "udpecho_probe_ipdv_seconds",
                "Differences of consecutive round trips (IPDV, RFC 3393), in seconds.",
                labels: [],
                quantiles: [("0.5", Double(ipdv.percentile(50)) / 1e9), ("0.99", Double(ipdv.percentile(99)) / 1e9)],
                sum: ipdv.mean * Double(ipdv.count) / 1e9,
                count: ipdv.count
            )
        }
        if let stamp = result.stamp {
            let held = stamp.reflectorTime
            if held.count > 0 {
                writer.summary(
                    "udpecho_probe_reflector_time_seconds",
                    "How long the reflector held the packets (T3 - T2), in seconds.",
                    labels: [],
                    quantiles: [
                        ("0.5", Double(held.percentile(50)) / 1e9), ("0.99", Double(held.percentile(99)) / 1e9),
                    ],
                    sum: held.mean * Double(held.count) / 1e9,
                    count: held.count
                )
            }
            var delays: [(String, SignedTimes)] = []
            if stamp.forwardDelay.count > 0 { delays.append(("forward", stamp.forwardDelay)) }
            if stamp.backwardDelay.count > 0 { delays.append(("backward", stamp.backwardDelay)) }
            for (index, (direction, delay)) in delays.enumerated() {
                writer.summary(
                    "udpecho_probe_one_way_delay_seconds",
                    index == 0
                        ? "One-way delay by direction, in seconds (meaningful between synchronized clocks)." : nil,
                    labels: [("direction", direction)],
                    quantiles: Self.quantiles.map { ($0.0, Double(delay.percentile($0.1)) / 1e9) },
                    sum: delay.mean * Double(delay.count) / 1e9,
                    count: delay.count
                )
            }
            if let estimate = stamp.reflectorErrorEstimate {
                writer.gauge(
                    "udpecho_probe_clock_synchronized",
                    "1 when the far end says its clock is synchronized to UTC.",
                    [([], estimate.synchronized ? 1 : 0)]
                )
            }
            var hops: [([(String, String)], Double)] = []
            if let ttl = stamp.ttlAtReflector.max(by: { $0.value < $1.value })?.key {
                hops.append(([("direction", "forward")], Double(ArrivalMarks.estimatedHops(fromTTL: Int(ttl)))))
            }
            if let marking = result.marking, let back = marking.hopsBack.first {
                hops.append(([("direction", "backward")], Double(back)))
            }
            writer.gauge("udpecho_probe_hops", "Hops the packets crossed, by direction.", hops)
            var dscp: [([(String, String)], Double)] = []
            if let there = MarkingStatistics.commonDSCP(stamp.tosAtReflector) {
                dscp.append(([("direction", "forward")], Double(there)))
            }
            if let here = MarkingStatistics.commonDSCP(stamp.tosHere) {
                dscp.append(([("direction", "backward")], Double(here)))
            }
            writer.gauge("udpecho_probe_dscp", "The DSCP the packets arrived with, by direction.", dscp)
        } else if let marking = result.marking {
            var hops: [([(String, String)], Double)] = []
            if let there = marking.hopsThere.first { hops.append(([("direction", "forward")], Double(there))) }
            if let back = marking.hopsBack.first { hops.append(([("direction", "backward")], Double(back))) }
            writer.gauge("udpecho_probe_hops", "Hops the packets crossed, by direction.", hops)
            var dscp: [([(String, String)], Double)] = []
            if let there = MarkingStatistics.commonDSCP(marking.classThere) {
                dscp.append(([("direction", "forward")], Double(there)))
            }
            if let here = MarkingStatistics.commonDSCP(marking.classHere) {
                dscp.append(([("direction", "backward")], Double(here)))
            }
            writer.gauge("udpecho_probe_dscp", "The DSCP the packets arrived with, by direction.", dscp)
        }
        if let marking = result.marking, marking.reportedThere > 0 || marking.reportedHere > 0 {
            writer.gauge(
                "udpecho_probe_ecn_ce_packets",
                "Packets marked CE (congestion experienced), by the direction it happened in.",
                [
                    ([("direction", "forward")], Double(marking.ceThere)),
                    ([("direction", "backward")], Double(marking.ceBack)),
                ]
            )
        }
    }

    private static func oneWay(_ result: OwampResults, into writer: inout Writer) {
        let directions = [("forward", result.toServer), ("backward", result.fromServer)].compactMap { name, value in
            value.map { (name, $0) }
        }
        let sent = directions.reduce(0) { $0 + $1.1.sent }
        let lost = directions.reduce(0) { $0 + $1.1.lost }
        writer.gauge("udpecho_probe_packets_sent", "Packets this probe sent (OWAMP: both ways).", [([], Double(sent))])
        writer.gauge(
            "udpecho_probe_packets_received",
            "Packets that arrived within the loss timeout (OWAMP: both ways).",
            [([], Double(directions.reduce(0) { $0 + $1.1.received }))]
        )
        writer.gauge("udpecho_probe_packets_lost", "Packets lost (OWAMP: both ways).", [([], Double(lost))])
        writer.gauge(
            "udpecho_probe_packets_duplicate",
            "Extra copies of packets (OWAMP: both ways).",
            [([], Double(directions.reduce(0) { $0 + $1.1.duplicates }))]
        )
        writer.gauge(
            "udpecho_probe_loss_ratio",
            "Packets lost over packets sent.",
            [([], sent == 0 ? 0 : Double(lost) / Double(sent))]
        )
        writer.gauge(
            "udpecho_probe_direction_packets_sent",
            "Packets sent, by direction (forward: to the server).",
            directions.map { ([("direction", $0.0)], Double($0.1.sent)) }
        )
        writer.gauge(
            "udpecho_probe_direction_packets_lost",
            "Packets lost, by direction (forward: to the server).",
            directions.map { ([("direction", $0.0)], Double($0.1.lost)) }
        )
        for (index, (name, direction)) in directions.enumerated() where !direction.delays.isEmpty {
            let sum = direction.delays.reduce(0.0) { $0 + Double($1) }
            writer.summary(
                "udpecho_probe_one_way_delay_seconds",
                index == 0 ? "One-way delay by direction, in seconds (meaningful between synchronized clocks)." : nil,
                labels: [("direction", name)],
                quantiles: Self.quantiles.map { ($0.0, Double(direction.delay(atPercentile: $0.1)) / 1e9) },
                sum: sum / 1e9,
                count: direction.delays.count
            )
        }
        writer.gauge(
            "udpecho_probe_jitter_seconds",
            "owping's jitter by direction: the 95th percentile of the delay less its median, in seconds.",
            directions.filter { !$0.1.delays.isEmpty }.map { ([("direction", $0.0)], Double($0.1.jitter) / 1e9) }
        )
        writer.gauge(
            "udpecho_probe_clock_synchronized",
            "1 when both ends' clocks are synchronized to UTC.",
            [([], directions.allSatisfy { $0.1.synchronized } ? 1 : 0)]
        )
        writer.gauge(
            "udpecho_probe_clock_error_seconds",
            "The error bound of the one-way delays, in seconds.",
            [([], directions.map(\.1.maximumError).max() ?? 0)]
        )
        writer.gauge(
            "udpecho_probe_hops",
            "Hops the packets crossed, by direction.",
            directions.compactMap { name, direction in
                direction.hops.map { ([("direction", name)], Double($0.lowerBound)) }
            }
        )
    }

    /// Writes families of the text format.
    struct Writer {
        var text = ""

        mutating func comment(_ line: String) {
            // A comment is one line: whatever a reason holds, it cannot start a sample of its own.
            self.text += "# udpecho: \(line.escaping(["\n": " ", "\r": " "]))\n"
        }

        mutating func gauge(_ name: String, _ help: String, _ samples: [([(String, String)], Double)]) {
            guard !samples.isEmpty else { return }
            self.text += "# HELP \(name) \(help)\n# TYPE \(name) gauge\n"
            for (labels, value) in samples { self.sample(name, labels, value) }
        }

        mutating func summary(
            _ name: String,
            _ help: String?,
            labels: [(String, String)],
            quantiles: [(String, Double)],
            sum: Double,
            count: Int
        ) {
            if let help { self.text += "# HELP \(name) \(help)\n# TYPE \(name) summary\n" }
            for (quantile, value) in quantiles { self.sample(name, labels + [("quantile", quantile)], value) }
            self.sample(name + "_sum", labels, sum)
            self.sample(name + "_count", labels, Double(count))
        }

        mutating func sample(_ name: String, _ labels: [(String, String)], _ value: Double) {
            self.text += name
            if !labels.isEmpty {
                self.text += "{" + labels.map { "\($0.0)=\"\(MeshMetrics.escape($0.1))\"" }.joined(separator: ",") + "}"
            }
            self.text += " \(MeshMetrics.number(value))\n"
        }
    }
}
