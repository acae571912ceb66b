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
                "peer=\"\(MeshMetrics.escape(statistics.target.peer.description))\","
                    + "address=\"\(MeshMetrics.escape(statistics.target.address.hostPortDescription))\""
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
                    cumulative += bucket < statistics.buckets.count ? statistics.buckets[bucket] : 0
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

    /// A label value escaped as the exposition format wants: backslash, double quote and newline.
    static func escape(_ value: String) -> String { value.escaping(["\\": "\\\\", "\"": "\\\"", "\n": "\\n"]) }

    /// A number as Prometheus reads it: `5e-05`, `0.25`, `1`.
    static func number(_ value: Double) -> String {
        if value == value.rounded() && abs(value) < 1e15 { return String(Int64(value)) }
        return "\(value)"
    }
}
