import NIOCore
import Testing

@testable import UDPEcho

/// The mesh agent's parts that need no network: peer lists and the metrics' names and format.
@Suite struct MeshTests {
    @Test func peerListsReadEveryFormAndSayWhichLineIsBad() throws {
        let text = """
            # the rack
            192.0.2.1:1337
            192.0.2.2            # the default port
              [2001:db8::1]:7000
            [2001:db8::2]
            node-3.example:1337

            192.0.2.1:1337       # twice: counted once
            """
        let peers = try MeshPeerList.parse(text, defaultPort: 1337).get()
        #expect(
            peers.map(\.description) == [
                "192.0.2.1:1337", "192.0.2.2:1337", "[2001:db8::1]:7000", "[2001:db8::2]:1337", "node-3.example:1337",
            ]
        )
        let bad = "192.0.2.1:1337\n192.0.2.2:99999\n2001:db8::1\nhost:port\n"
        guard case .failure(let error) = MeshPeerList.parse(bad, defaultPort: 1337) else {
            Issue.record("a list with bad lines was taken")
            return
        }
        #expect(error.lines.map(\.line) == [2, 3, 4], "\(error)")
        #expect(error.lines[0].reason.contains("out of range"))
        #expect(error.lines[1].reason.contains("needs brackets"), "\(error.lines[1])")
        #expect(error.description.hasPrefix("line 2 ('192.0.2.2:99999'): "))
        // A file written with CRLF line ends ("\r\n" is one Character: a split on "\n" alone found one line).
        let crlf = MeshPeerList.parse(bytes: Array("192.0.2.1:7\r\n192.0.2.2:7\r\n\r\n# c\r\n".utf8), defaultPort: 1)
        #expect(try crlf.get().map(\.description) == ["192.0.2.1:7", "192.0.2.2:7"])
        guard case .failure(let crlfError) = MeshPeerList.parse("192.0.2.1:7\r\nbad:port\r\n", defaultPort: 1) else {
            Issue.record("a bad CRLF line was taken")
            return
        }
        #expect(crlfError.lines.map(\.line) == [2], "\(crlfError)")
    }

    /// Round trips are timed on CLOCK_MONOTONIC; the kernel's arrival time (CLOCK_REALTIME) is carried over by the
    /// offset read when the reply is drained. A realtime step between the arrival and the read shows as an arrival
    /// before the send or after the read: the read time is taken instead of a negative or inflated round trip.
    @Test func roundTripsSurviveAClockStep() {
        #expect(MeshProber.roundTrip(sent: 1_000_000, arrival: 1_300_000, drained: 3_000_000) == 300_000)
        // Stepped back 1 s between arrival and read: the carried-over arrival lands after the read.
        #expect(MeshProber.roundTrip(sent: 1_000_000, arrival: 1_001_300_000, drained: 3_000_000) == 2_000_000)
        // Stepped forward 1 s: it lands before the send.
        #expect(MeshProber.roundTrip(sent: 1_000_000_000, arrival: 300_000, drained: 1_002_000_000) == 2_000_000)
    }

    @Test func aListTooLongIsRefusedWhole() {
        let text = (0..<(MeshPeerList.maximumPeers + 1)).map { "10.\($0 >> 16 & 255).\($0 >> 8 & 255).\($0 & 255):1" }
            .joined(separator: "\n")
        guard case .failure(let error) = MeshPeerList.parse(text, defaultPort: 1) else {
            Issue.record("taken")
            return
        }
        #expect(error.description.contains("at most \(MeshPeerList.maximumPeers)"))
    }

    /// Written a piece at a time (as the endpoint sends it), the text is the same as written at once, and no piece
    /// is much larger than asked.
    @Test func piecesMakeTheSameText() throws {
        var snapshot = MeshSnapshot()
        snapshot.perFlow = true
        snapshot.flows = 2
        for index in 0..<300 {
            let address = try SocketAddress(ipAddress: "192.0.2.\(index % 250 + 1)", port: 1000 + index)
            var statistics = MeshTargetStatistics(
                target: MeshTarget(peer: MeshPeer(HostAndPort(host: "h\(index)", port: 1)), address: address)
            )
            statistics.sent = UInt64(index)
            for _ in 0..<(index % 3) {
                for bound in MeshProber.bucketBounds { statistics.histogram.record(seconds: bound) }
                statistics.histogram.record(seconds: 20)
            }
            statistics.flowPorts = [40000, 40001]
            statistics.flowCounts = [1, 2, 3, 4, 5, 6]
            snapshot.targets.append(statistics)
        }
        let whole = MeshMetrics.render(snapshot)
        var writer = MeshMetrics.Writer(snapshot)
        var text = ""
        var more = true
        while more {
            var buffer = ByteBufferAllocator().buffer(capacity: 0)
            more = writer.write(into: &buffer, budget: 1000)
            #expect(buffer.readableBytes < 1000 + 3000)
            text += String(buffer: buffer)
        }
        #expect(text == whole)
        #expect(
            whole.contains(
                "udpecho_mesh_flow_probes_lost_total{peer=\"h7:1\",address=\"192.0.2.8:1007\",flow=\"40001\"} 6"
            )
        )
    }

    /// The names follow Prometheus' guide (a unit suffix, _total on counters, one HELP and TYPE each), label values
    /// are escaped, and a histogram's buckets are cumulative and end at +Inf with its count.
    @Test func metricsAreWellFormed() throws {
        let address = try SocketAddress(ipAddress: "192.0.2.7", port: 1337)
        var statistics = MeshTargetStatistics(
            target: MeshTarget(peer: MeshPeer(HostAndPort(host: "we\"ird\\name", port: 1337)), address: address)
        )
        statistics.sent = 10
        statistics.received = 8
        statistics.lost = 2
        statistics.up = true
        for _ in 0..<5 { statistics.histogram.record(seconds: 0.0009) }  // <= 1 ms
        for _ in 0..<3 { statistics.histogram.record(seconds: 0.0025) }  // <= 5 ms (and 2.5 ms)
        var snapshot = MeshSnapshot()
        snapshot.targets = [statistics]
        let text = MeshMetrics.render(snapshot)
        let lines = text.split(separator: "\n").map(String.init)
        let label = #"peer="we\"ird\\name:1337",address="192.0.2.7:1337""#
        #expect(lines.contains("udpecho_mesh_rtt_seconds_bucket{\(label),le=\"0.0005\"} 0"))
        #expect(lines.contains("udpecho_mesh_rtt_seconds_bucket{\(label),le=\"0.001\"} 5"))
        #expect(lines.contains("udpecho_mesh_rtt_seconds_bucket{\(label),le=\"0.0025\"} 8"))
        #expect(lines.contains("udpecho_mesh_rtt_seconds_bucket{\(label),le=\"0.005\"} 8"))
        #expect(lines.contains("udpecho_mesh_rtt_seconds_bucket{\(label),le=\"+Inf\"} 8"))
        #expect(lines.contains("udpecho_mesh_rtt_seconds_count{\(label)} 8"))
        #expect(lines.contains("udpecho_mesh_probes_lost_total{\(label)} 2"))
        #expect(lines.contains("udpecho_mesh_peer_up{\(label)} 1"))
        let helps = lines.filter { $0.hasPrefix("# HELP ") }.map { $0.split(separator: " ")[2] }
        let types = lines.filter { $0.hasPrefix("# TYPE ") }.map { $0.split(separator: " ")[2] }
        #expect(helps == types && Set(helps).count == helps.count)
        for name in types {
            let type = lines.first { $0.hasPrefix("# TYPE \(name) ") }!.split(separator: " ")[3]
            if type == "counter" { #expect(name.hasSuffix("_total")) }
            #expect(name.hasPrefix("udpecho_mesh_"))
        }
    }
}
