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
        statistics.buckets = Array(repeating: 0, count: MeshProber.bucketBounds.count + 1)
        statistics.buckets[4] = 5  // <= 1 ms
        statistics.buckets[6] = 3  // <= 5 ms
        statistics.rttSum = 0.012
        var snapshot = MeshSnapshot()
        snapshot.targets = [statistics]
        let text = MeshMetrics.render(snapshot)
        let lines = text.split(separator: "\n").map(String.init)
        let label = #"peer="we\"ird\\name:1337",address="192.0.2.7:1337""#
        #expect(lines.contains("udpecho_mesh_rtt_seconds_bucket{\(label),le=\"0.0005\"} 0"))
        #expect(lines.contains("udpecho_mesh_rtt_seconds_bucket{\(label),le=\"0.001\"} 5"))
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
