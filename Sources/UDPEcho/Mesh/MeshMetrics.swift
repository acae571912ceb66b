public import NIOCore

/// A mesh agent's metrics in Prometheus' text exposition format, with HELP and TYPE lines, one series per target
/// (labels `peer`: the name as given, `address`: the address probed), and per source port (`flow`) only when asked
/// (each flow multiplies the series).
///
/// | metric | type | meaning |
/// |---|---|---|
/// | `udpecho_mesh_rtt_seconds` | histogram | round trips of the answered probes, buckets from 50 µs to 10 s |
/// | `udpecho_mesh_probes_sent_total` | counter | probes sent |
/// | `udpecho_mesh_probes_received_total` | counter | probes answered whole, in time |
/// | `udpecho_mesh_probes_lost_total` | counter | probes without a reply within the timeout |
/// | `udpecho_mesh_probes_duplicate_total` | counter | replies to a probe already answered |
/// | `udpecho_mesh_probes_corrupt_total` | counter | replies from the peer that are not a probe it was sent |
/// | `udpecho_mesh_probes_skipped_total` | counter | probes not sent: a rate cap was reached |
/// | `udpecho_mesh_peer_up` | gauge | 1 when a reply came within the last three intervals |
/// | `udpecho_mesh_peers` | gauge | targets probed (addresses of the peers) |
/// | `udpecho_mesh_flow_probes_sent_total`, `..._received_total`, `..._lost_total` | counter | per source port, with `--per-flow-metrics` |
///
/// Loss over five minutes, per pair: `rate(udpecho_mesh_probes_lost_total[5m]) /
/// rate(udpecho_mesh_probes_sent_total[5m])`.
public enum MeshMetrics {
    /// The exposition text of `snapshot`.
    public static func render(_ snapshot: MeshSnapshot) -> String {
        var buffer = ByteBufferAllocator().buffer(capacity: 0)
        Self.render(snapshot, into: &buffer)
        return String(buffer: buffer)
    }

    /// Writes the exposition text of `snapshot` at the end of `buffer`.
    public static func render(_ snapshot: MeshSnapshot, into buffer: inout ByteBuffer) {
        var writer = Writer(snapshot)
        while writer.write(into: &buffer, budget: .max) {}
    }

    /// Writes the exposition text a piece at a time, so that a large one (2.6 KB a target: 26 MB for 10,000) need
    /// not be held whole: the metrics endpoint sends each piece as the connection takes it.
    public struct Writer {
        private let snapshot: MeshSnapshot
        private let labels: [String]
        private let bounds = MeshProber.bucketBounds.map(MeshMetrics.number) + ["+Inf"]
        private var family = 0
        private var target = 0
        // Key paths are immutable; Swift does not yet mark them Sendable.
        nonisolated(unsafe) private static let counters: [(String, String, KeyPath<MeshTargetStatistics, UInt64>)] = [
            ("sent", "Mesh probes sent, by peer.", \.sent),
            ("received", "Mesh probes answered whole within the timeout, by peer.", \.received),
            ("lost", "Mesh probes without a reply within the timeout, by peer.", \.lost),
            ("duplicate", "Replies to a mesh probe that was answered already, by peer.", \.duplicate),
            (
                "corrupt", "Replies from a peer that are not a probe it was sent (damaged, or not an echo), by peer.",
                \.corrupt
            ),
            (
                "skipped",
                "Mesh probes not sent because a rate cap (--max-rate, --max-bytes-rate) was reached, by peer.",
                \.skipped
            ),
        ]
        private static let flowNames = ["sent", "received", "lost"]

        /// A writer of `snapshot`.
        public init(_ snapshot: MeshSnapshot) {
            self.snapshot = snapshot
            self.labels = snapshot.targets.map { statistics in
                MeshMetrics.labels(of: statistics.target).map { "\($0.0)=\"\(MeshMetrics.escape($0.1))\"" }
                    .joined(separator: ",")
            }
        }

        /// Families: the peers gauge, the histogram, the counters, the up gauge, then the flows' counters.
        private var families: Int { 3 + Self.counters.count + (self.snapshot.perFlow ? Self.flowNames.count : 0) }

        /// Appends the next lines, about `budget` bytes (whole lines); returns false once everything is written.
        public mutating func write(into buffer: inout ByteBuffer, budget: Int) -> Bool {
            let start = buffer.writerIndex
            while self.family < self.families {
                if buffer.writerIndex - start >= budget { return true }
                if self.target == 0 { self.header(into: &buffer) }
                if self.family == 0 {
                    buffer.writeString("udpecho_mesh_peers \(self.snapshot.targets.filter { !$0.removed }.count)\n")
                    self.family += 1
                    continue
                }
                guard self.target < self.snapshot.targets.count else {
                    self.family += 1
                    self.target = 0
                    continue
                }
                self.lines(into: &buffer, self.snapshot.targets[self.target], self.labels[self.target])
                self.target += 1
                if self.target == self.snapshot.targets.count {
                    self.family += 1
                    self.target = 0
                }
            }
            return false
        }

        private func header(into buffer: inout ByteBuffer) {
            let (name, type, help): (String, String, String)
            switch self.family {
            case 0:
                (name, type, help) = (
                    "udpecho_mesh_peers", "gauge",
                    "Targets probed: the addresses of the peers (a name may have several)."
                )
            case 1:
                (name, type, help) = (
                    "udpecho_mesh_rtt_seconds", "histogram", "Round-trip time of the mesh probes answered, by peer."
                )
            case let family where family < 2 + Self.counters.count:
                let counter = Self.counters[family - 2]
                (name, type, help) = ("udpecho_mesh_probes_\(counter.0)_total", "counter", counter.1)
            case 2 + Self.counters.count:
                (name, type, help) = (
                    "udpecho_mesh_peer_up", "gauge",
                    "1 when a probe to the peer was answered within the last three intervals."
                )
            default:
                let flow = Self.flowNames[self.family - 3 - Self.counters.count]
                (name, type, help) = (
                    "udpecho_mesh_flow_probes_\(flow)_total", "counter", "Mesh probes \(flow), by peer and source port."
                )
            }
            buffer.writeString("# HELP \(name) \(help)\n# TYPE \(name) \(type)\n")
        }

        private func lines(into buffer: inout ByteBuffer, _ statistics: MeshTargetStatistics, _ label: String) {
            switch self.family {
            case 1:
                var cumulative: UInt64 = 0
                for (bucket, bound) in self.bounds.enumerated() {
                    cumulative += statistics.histogram.classicCount(bucket)
                    buffer.writeString("udpecho_mesh_rtt_seconds_bucket{\(label),le=\"\(bound)\"} \(cumulative)\n")
                }
                buffer.writeString("udpecho_mesh_rtt_seconds_sum{\(label)} \(MeshMetrics.number(statistics.rttSum))\n")
                buffer.writeString("udpecho_mesh_rtt_seconds_count{\(label)} \(cumulative)\n")
            case let family where family < 2 + Self.counters.count:
                let counter = Self.counters[family - 2]
                buffer.writeString(
                    "udpecho_mesh_probes_\(counter.0)_total{\(label)} \(statistics[keyPath: counter.2])\n"
                )
            case 2 + Self.counters.count:
                buffer.writeString("udpecho_mesh_peer_up{\(label)} \(statistics.up ? 1 : 0)\n")
            default:
                let offset = self.family - 3 - Self.counters.count
                let name = Self.flowNames[offset]
                for (flow, port) in statistics.flowPorts.enumerated() {
                    let value = statistics.flowCounts[flow * 3 + offset]
                    buffer.writeString("udpecho_mesh_flow_probes_\(name)_total{\(label),flow=\"\(port)\"} \(value)\n")
                }
            }
        }
    }

    /// A target's labels: `peer`, `address`, then the peer's own from the peers file, by name.
    static func labels(of target: MeshTarget) -> [(String, String)] {
        [("peer", target.peer.description), ("address", target.address.hostPortDescription)]
            + target.peer.labels.sorted { $0.key < $1.key }.map { ($0.key, $0.value) }
    }

    /// The families of `snapshot` for Prometheus' protobuf format: the round trips as native histograms (with the
    /// classic buckets beside them), one family at a time as the scraper reads them. With `aggregateBy`, one series
    /// per group of peers that share those labels' values instead of one per peer: the groups' counters are the sums
    /// of their peers', their histograms the merge, and `udpecho_mesh_peers_up` counts the peers up.
    public struct ProtobufWriter {
        private let snapshot: MeshSnapshot
        private let aggregateBy: [String]?
        private var family = 0

        /// A writer of `snapshot`, per peer or per group of peers.
        public init(_ snapshot: MeshSnapshot, aggregateBy: [String]? = nil) {
            self.snapshot = snapshot
            self.aggregateBy = aggregateBy
        }

        /// Appends the next family; returns false once every one is written.
        public mutating func write(into buffer: inout ByteBuffer) -> Bool {
            let families = MeshMetrics.families(self.snapshot, aggregateBy: self.aggregateBy, only: self.family)
            for family in families { ProtobufExposition.write(family, into: &buffer) }
            self.family += 1
            return self.family < MeshMetrics.familyCount(self.snapshot, aggregateBy: self.aggregateBy)
        }
    }

    static func familyCount(_ snapshot: MeshSnapshot, aggregateBy: [String]?) -> Int {
        aggregateBy != nil ? 9 : 9 + (snapshot.perFlow ? 3 : 0)
    }

    /// The families of `snapshot` (or only family number `only`): per peer, or per group with `aggregateBy`.
    public static func families(
        _ snapshot: MeshSnapshot,
        aggregateBy: [String]? = nil,
        only: Int? = nil
    ) -> [ProtobufExposition.Family] {
        typealias Family = ProtobufExposition.Family
        typealias Metric = ProtobufExposition.Metric
        // Rows: a peer's, or a group's (its peers' counts added up).
        struct Row {
            var labels: [(String, String)]
            var statistics: MeshTargetStatistics
            var peers = 1
            var up = 0
        }
        var rows: [Row] = []
        if let names = aggregateBy {
            var index: [[String]: Int] = [:]
            for statistics in snapshot.targets where !statistics.removed {
                let values = names.map { statistics.target.peer.labels[$0] ?? "" }
                if let at = index[values] {
                    rows[at].statistics.sent += statistics.sent
                    rows[at].statistics.received += statistics.received
                    rows[at].statistics.lost += statistics.lost
                    rows[at].statistics.duplicate += statistics.duplicate
                    rows[at].statistics.corrupt += statistics.corrupt
                    rows[at].statistics.skipped += statistics.skipped
                    rows[at].statistics.histogram.merge(statistics.histogram)
                    rows[at].peers += 1
                    rows[at].up += statistics.up ? 1 : 0
                } else {
                    index[values] = rows.count
                    rows.append(
                        Row(labels: Array(zip(names, values)), statistics: statistics, up: statistics.up ? 1 : 0)
                    )
                }
            }
        } else {
            rows = snapshot.targets.map { Row(labels: Self.labels(of: $0.target), statistics: $0, up: $0.up ? 1 : 0) }
        }
        let counters: [(String, String, KeyPath<MeshTargetStatistics, UInt64>)] = [
            ("sent", "Mesh probes sent.", \.sent),
            ("received", "Mesh probes answered whole within the timeout.", \.received),
            ("lost", "Mesh probes without a reply within the timeout.", \.lost),
            ("duplicate", "Replies to a mesh probe that was answered already.", \.duplicate),
            ("corrupt", "Replies from a peer that are not a probe it was sent.", \.corrupt),
            ("skipped", "Mesh probes not sent because a rate cap was reached.", \.skipped),
        ]
        var families: [Family] = []
        func wanted(_ number: Int) -> Bool { only == nil || only == number }
        if wanted(0) {
            families.append(
                Family(
                    name: "udpecho_mesh_peers",
                    help: "Targets probed: the addresses of the peers (a name may have several).",
                    kind: .gauge,
                    metrics: [Metric(labels: [], value: Double(snapshot.targets.filter { !$0.removed }.count))]
                )
            )
        }
        if wanted(1) {
            var family = Family(
                name: "udpecho_mesh_rtt_seconds",
                help: "Round-trip time of the mesh probes answered.",
                kind: .histogram
            )
            for row in rows {
                var metric = Metric(labels: row.labels)
                metric.histogram = row.statistics.histogram
                family.metrics.append(metric)
            }
            families.append(family)
        }
        for (offset, counter) in counters.enumerated() where wanted(2 + offset) {
            families.append(
                Family(
                    name: "udpecho_mesh_probes_\(counter.0)_total",
                    help: counter.1,
                    kind: .counter,
                    metrics: rows.map { Metric(labels: $0.labels, value: Double($0.statistics[keyPath: counter.2])) }
                )
            )
        }
        if wanted(8) {
            families.append(
                aggregateBy == nil
                    ? Family(
                        name: "udpecho_mesh_peer_up",
                        help: "1 when a probe to the peer was answered within the last three intervals.",
                        kind: .gauge,
                        metrics: rows.map { Metric(labels: $0.labels, value: Double($0.up)) }
                    )
                    : Family(
                        name: "udpecho_mesh_peers_up",
                        help: "Peers of the group answered within the last three intervals.",
                        kind: .gauge,
                        metrics: rows.map { Metric(labels: $0.labels, value: Double($0.up)) }
                    )
            )
        }
        if aggregateBy == nil && snapshot.perFlow {
            for (offset, name) in ["sent", "received", "lost"].enumerated() where wanted(9 + offset) {
                var family = Family(
                    name: "udpecho_mesh_flow_probes_\(name)_total",
                    help: "Mesh probes \(name), by peer and source port.",
                    kind: .counter
                )
                for row in rows {
                    for (flow, port) in row.statistics.flowPorts.enumerated() {
                        family.metrics.append(
                            Metric(
                                labels: row.labels + [("flow", String(port))],
                                value: Double(row.statistics.flowCounts[flow * 3 + offset])
                            )
                        )
                    }
                }
                families.append(family)
            }
        }
        return families
    }

    /// A label value escaped as the exposition format wants: backslash, double quote and newline.
    static func escape(_ value: String) -> String { value.escaping(["\\": "\\\\", "\"": "\\\"", "\n": "\\n"]) }

    /// A number as Prometheus reads it: `5e-05`, `0.25`, `1`.
    static func number(_ value: Double) -> String {
        if value == value.rounded() && abs(value) < 1e15 { return String(Int64(value)) }
        return "\(value)"
    }
}
