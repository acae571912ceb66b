import NIOCore
import Testing

@testable import UDPEcho

@Suite struct MetricsFormatTests {
    @Test func nativeBucketsFollowPrometheusBoundaries() {
        // Schema 3: bucket k is (2^((k-1)/8), 2^(k/8)]; a value on a boundary belongs to the bucket it bounds.
        #expect(LatencyHistogram.nativeIndex(1) == 0)
        #expect(LatencyHistogram.nativeIndex(1.0000001) == 1)
        #expect(LatencyHistogram.nativeIndex(0.5) == -8)
        #expect(LatencyHistogram.nativeIndex(2) == 8)
        #expect(LatencyHistogram.nativeIndex(0.0001) == -106)  // 2^(-106/8) = 1.0265e-4 >= 1e-4 > 2^(-107/8) = 9.41e-5
        for index in Int32(-120)...Int32(40) {
            let upper = LatencyHistogram.nativeUpperBound(index)
            #expect(LatencyHistogram.nativeIndex(upper) == index, "\(index)")
            #expect(LatencyHistogram.nativeIndex(upper * 1.000001) == index + 1, "\(index)")
        }
        var histogram = LatencyHistogram()
        for seconds in [1.0, 1.0, 1.05, 1.05, 1.05, 1.6] { histogram.record(seconds: seconds) }
        // Buckets 0 (2), 1 (3), 6 (1): spans [0, 2] and [+4, 1]; deltas 2, +1, -2.
        let (spans, deltas) = histogram.nativeSpans()
        #expect(spans.map(\.offset) == [0, 4] && spans.map(\.length) == [2, 1])
        #expect(deltas == [2, 1, -2])
        #expect(histogram.count == 6 && histogram.classic[13] == 2 && histogram.classic[14] == 4)
        var other = LatencyHistogram()
        other.record(seconds: 0.001)
        histogram.merge(other)
        #expect(histogram.count == 7 && histogram.native[LatencyHistogram.nativeIndex(0.001)] == 1)
        // The median by Prometheus' interpolation lies in the bucket of 1.05.
        let median = try! #require(histogram.nativeQuantile(0.5))
        #expect(median > LatencyHistogram.nativeUpperBound(0) && median <= LatencyHistogram.nativeUpperBound(1))
    }

    /// Counts are kept in 32 bits and widen past them: a bucket with more than 4 billion observations (weeks of a fast
    /// interval) counts on exactly, in both kinds of bucket, in the spans and in the quantiles.
    @Test func countsPastThirtyTwoBitsAreKeptWhole() {
        var histogram = LatencyHistogram()
        histogram.record(seconds: 0.0003)
        histogram.record(seconds: 0.002)
        histogram.record(seconds: 0.002)
        for _ in 0..<40 { histogram.merge(histogram) }  // each count doubled 40 times: 2^40 and 2^41
        let slow = LatencyHistogram.nativeIndex(0.002)
        #expect(histogram.count == 3 << 40)
        #expect(histogram.classicCount(3) == 1 << 40 && histogram.classicCount(5) == 1 << 41)
        #expect(histogram.classic.reduce(0, +) == 3 << 40)
        #expect(histogram.native == [LatencyHistogram.nativeIndex(0.0003): 1 << 40, slow: 1 << 41])
        #expect(histogram.nativeSpans().deltas == [1 << 40, 1 << 40])
        // Across the carry: 2^32 - 1 in a bucket (1 + 2 + ... + 2^31), then one more.
        var edge = LatencyHistogram()
        var power = LatencyHistogram()
        power.record(seconds: 0.002)
        for _ in 0..<32 {
            edge.merge(power)
            power.merge(power)
        }
        #expect(edge.classicCount(5) == UInt64(UInt32.max) && edge.native[slow] == UInt64(UInt32.max))
        edge.record(seconds: 0.002)
        #expect(edge.classicCount(5) == 1 << 32 && edge.native[slow] == 1 << 32 && edge.count == 1 << 32)
        let median = try! #require(histogram.nativeQuantile(0.5))
        #expect(
            median > LatencyHistogram.nativeUpperBound(slow - 1) && median <= LatencyHistogram.nativeUpperBound(slow)
        )
        // A bucket below the first grows the array at its front; the counts past 32 bits stay with their buckets.
        histogram.record(seconds: 0.00001)
        #expect(histogram.native[slow] == 1 << 41 && histogram.native[LatencyHistogram.nativeIndex(0.00001)] == 1)
        #expect(histogram.classicCount(0) == 1 && histogram.classicCount(5) == 1 << 41)
    }

    @Test func theTextFormatIsReadBackIntoFamilies() {
        let text = """
            # HELP udpecho_a_total Things.
            # TYPE udpecho_a_total counter
            udpecho_a_total{kind="x \\"quoted\\"\\n"} 3
            udpecho_a_total{kind="y"} 4
            # HELP udpecho_h_seconds A histogram.
            # TYPE udpecho_h_seconds histogram
            udpecho_h_seconds_bucket{le="0.1"} 1
            udpecho_h_seconds_bucket{le="+Inf"} 2
            udpecho_h_seconds_sum 0.35
            udpecho_h_seconds_count 2
            # TYPE udpecho_s summary
            udpecho_s{quantile="0.5"} 7
            udpecho_s_sum 14
            udpecho_s_count 2
            udpecho_untyped 1.5

            """
        let families = ProtobufExposition.families(fromText: text)
        #expect(families.map(\.name) == ["udpecho_a_total", "udpecho_h_seconds", "udpecho_s", "udpecho_untyped"])
        #expect(families[0].kind == .counter && families[0].metrics.count == 2 && families[0].help == "Things.")
        #expect(families[0].metrics[0].labels.first?.1 == "x \"quoted\"\n" && families[0].metrics[1].value == 4)
        let histogram = families[1].metrics[0]
        #expect(families[1].kind == .histogram && histogram.count == 2 && histogram.sum == 0.35)
        #expect(histogram.classicBuckets.map(\.cumulative) == [1, 2])
        #expect(families[2].kind == .summary && families[2].metrics[0].quantiles.first?.value == 7)
        #expect(families[3].kind == .untyped && families[3].metrics[0].value == 1.5)
        // Written out: a length-delimited message per family, each length as long as what follows it.
        var buffer = ByteBufferAllocator().buffer(capacity: 0)
        for family in families { ProtobufExposition.write(family, into: &buffer) }
        var messages = 0
        while buffer.readableBytes > 0 {
            var length = 0
            var shift = 0
            while let byte = buffer.readInteger(as: UInt8.self) {
                length |= Int(byte & 0x7F) << shift
                shift += 7
                if byte < 0x80 { break }
            }
            #expect(buffer.readableBytes >= length)
            buffer.moveReaderIndex(forwardBy: length)
            messages += 1
        }
        #expect(messages == 4)
    }

    @Test func acceptHeadersChooseTheFormat() {
        #expect(
            ProtobufExposition.accepts(
                "application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;encoding=delimited;q=0.7,text/plain;version=0.0.4;q=0.3,*/*;q=0.1"
            )
        )
        #expect(!ProtobufExposition.accepts("text/plain;version=0.0.4;q=1,*/*;q=0.1"))
        #expect(!ProtobufExposition.accepts(nil))
        #expect(
            !ProtobufExposition.accepts("application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;q=0")
        )
    }

    @Test func peersCarryLabelsAndGroupsAddUp() throws {
        let peers = try MeshPeerList.parse(
            "192.0.2.1:7 zone=eu rack=r1\n192.0.2.2:7\tzone=eu  rack=r2 # c\n192.0.2.3:7 zone=us\n",
            defaultPort: 1
        ).get()
        #expect(peers.map(\.labels) == [["zone": "eu", "rack": "r1"], ["zone": "eu", "rack": "r2"], ["zone": "us"]])
        for (line, words) in [
            ("192.0.2.1:7 zone", "is not a label"), ("192.0.2.1:7 peer=x", "the agent's or Prometheus' own"),
            ("192.0.2.1:7 __x=1", "not a label name"), ("192.0.2.1:7 1a=1", "not a label name"),
            ("192.0.2.1:7 a=\"x\"", "without quotes"), ("192.0.2.1:7 a=1 a=2", "given twice"),
            ("192.0.2.1:7 a=1 b=1 c=1 d=1 e=1 f=1 g=1 h=1 i=1", "at most 8"),
        ] {
            guard case .failure(let error) = MeshPeerList.parse(line, defaultPort: 1) else {
                Issue.record("taken: \(line)")
                continue
            }
            #expect(error.lines.first?.reason.contains(words) == true, "\(line): \(error)")
        }
        var snapshot = MeshSnapshot()
        for (index, peer) in peers.enumerated() {
            var statistics = MeshTargetStatistics(
                target: MeshTarget(peer: peer, address: try SocketAddress(ipAddress: "192.0.2.\(index + 1)", port: 7))
            )
            statistics.sent = 10
            statistics.lost = UInt64(index)
            statistics.up = index != 1
            statistics.histogram.record(seconds: 0.001 * Double(index + 1))
            snapshot.targets.append(statistics)
        }
        let families = MeshMetrics.families(snapshot, aggregateBy: ["zone"])
        let sent = try #require(families.first { $0.name == "udpecho_mesh_probes_sent_total" })
        #expect(sent.metrics.map { $0.labels.map(\.1) } == [["eu"], ["us"]])
        #expect(sent.metrics.map(\.value) == [20, 10])
        let lost = try #require(families.first { $0.name == "udpecho_mesh_probes_lost_total" })
        #expect(lost.metrics.map(\.value) == [1, 2])
        let rtt = try #require(families.first { $0.name == "udpecho_mesh_rtt_seconds" })
        #expect(rtt.metrics.map { $0.histogram?.count } == [2, 1])
        let up = try #require(families.first { $0.name == "udpecho_mesh_peers_up" })
        #expect(up.metrics.map(\.value) == [1, 1])
        // Per peer, the labels of the file follow the agent's own.
        let text = MeshMetrics.render(snapshot)
        #expect(
            text.contains(
                "udpecho_mesh_probes_sent_total{peer=\"192.0.2.1:7\",address=\"192.0.2.1:7\",rack=\"r1\",zone=\"eu\"} 10"
            )
        )
    }
}
