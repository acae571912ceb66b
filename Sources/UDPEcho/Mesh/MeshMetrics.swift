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

    /// Writes the exposition text of `snapshot` at the end of `buffer` (room for it is reserved first, so that the
    /// buffer is not copied as it grows).
    public static func render(_ snapshot: MeshSnapshot, into buffer: inout ByteBuffer) {
        var text = TextSink(buffer: buffer)
        defer { buffer = text.buffer }
        let labels = snapshot.targets.map { statistics in
            "peer=\"\(Self.escape(statistics.target.peer.description))\",address=\"\(Self.escape(statistics.target.address.hostPortDescription))\""
        }
        // Each target has 27 series (31 with flows x 3 more), each its labels and about 60 bytes more.
        let perTarget =
            (labels.first?.utf8.count ?? 40) * 27 + 27 * 64 + (snapshot.perFlow ? snapshot.flows * 3 * 120 : 0)
        text.buffer.reserveCapacity(minimumWritableBytes: snapshot.targets.count * perTarget + 4096)
        text += "# HELP udpecho_mesh_peers Targets probed: the addresses of the peers (a name may have several).\n"
        text += "# TYPE udpecho_mesh_peers gauge\n"
        text += "udpecho_mesh_peers \(snapshot.targets.filter { !$0.removed }.count)\n"

        text += "# HELP udpecho_mesh_rtt_seconds Round-trip time of the mesh probes answered, by peer.\n"
        text += "# TYPE udpecho_mesh_rtt_seconds histogram\n"
        let bounds = MeshProber.bucketBounds.map(Self.number) + ["+Inf"]
        for (statistics, label) in zip(snapshot.targets, labels) {
            var cumulative: UInt64 = 0
            for (bucket, bound) in bounds.enumerated() {
                cumulative += bucket < statistics.buckets.count ? statistics.buckets[bucket] : 0
                text += "udpecho_mesh_rtt_seconds_bucket{\(label),le=\"\(bound)\"} \(cumulative)\n"
            }
            text += "udpecho_mesh_rtt_seconds_sum{\(label)} \(Self.number(statistics.rttSum))\n"
            text += "udpecho_mesh_rtt_seconds_count{\(label)} \(cumulative)\n"
        }
        let counters: [(String, String, KeyPath<MeshTargetStatistics, UInt64>)] = [
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
        for (name, help, keyPath) in counters {
            text += "# HELP udpecho_mesh_probes_\(name)_total \(help)\n"
            text += "# TYPE udpecho_mesh_probes_\(name)_total counter\n"
            for (statistics, label) in zip(snapshot.targets, labels) {
                text += "udpecho_mesh_probes_\(name)_total{\(label)} \(statistics[keyPath: keyPath])\n"
            }
        }
        text += "# HELP udpecho_mesh_peer_up 1 when a probe to the peer was answered within the last three intervals.\n"
        text += "# TYPE udpecho_mesh_peer_up gauge\n"
        for (statistics, label) in zip(snapshot.targets, labels) {
            text += "udpecho_mesh_peer_up{\(label)} \(statistics.up ? 1 : 0)\n"
        }
        if snapshot.perFlow {
            for (offset, name) in ["sent", "received", "lost"].enumerated() {
                text += "# HELP udpecho_mesh_flow_probes_\(name)_total Mesh probes \(name), by peer and source port.\n"
                text += "# TYPE udpecho_mesh_flow_probes_\(name)_total counter\n"
                for (statistics, label) in zip(snapshot.targets, labels) where !statistics.flowPorts.isEmpty {
                    for (flow, port) in statistics.flowPorts.enumerated() {
                        let value = statistics.flowCounts[flow * 3 + offset]
                        text += "udpecho_mesh_flow_probes_\(name)_total{\(label),flow=\"\(port)\"} \(value)\n"
                    }
                }
            }
        }
    }

    /// A label value escaped as the exposition format wants: backslash, double quote and newline.
    static func escape(_ value: String) -> String {
        guard value.contains(where: { $0 == "\\" || $0 == "\"" || $0 == "\n" }) else { return value }
        var escaped = ""
        for character in value {
            switch character {
            case "\\": escaped += "\\\\"
            case "\"": escaped += "\\\""
            case "\n": escaped += "\\n"
            default: escaped.append(character)
            }
        }
        return escaped
    }

    /// A number as Prometheus reads it: `5e-05`, `0.25`, `1`.
    static func number(_ value: Double) -> String {
        if value == value.rounded() && abs(value) < 1e15 { return String(Int64(value)) }
        return "\(value)"
    }
}

/// Appends text to a byte buffer with `+=`, as to a string.
struct TextSink {
    var buffer: ByteBuffer

    static func += (sink: inout TextSink, text: String) {
        sink.buffer.writeString(text)
    }
}
