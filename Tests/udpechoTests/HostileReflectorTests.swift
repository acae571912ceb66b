import Foundation
import TestSupport
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// A STAMP reflector of a few lines of Python that lies in one way (`hostile.py MODE`, prints its port):
/// `restart-loss` keeps a counter per session, restarts it at our probe 10 (its session evicted), never counts
/// probes 5 and 15 (lost on the way there) and does not answer probe 7 (lost on the way back); `counter-zero` answers
/// every probe with counter 0; `impossible` says it held every odd probe since 1900 (T2 of 0); `zeros-after-corrupt`
/// answers probe 0 with a reply whose copy of T1 is wrong, then 44 zero bytes.
let pythonHostileReflector = """
    import socket, struct, sys, time
    mode = sys.argv[1]
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    print(s.getsockname()[1], flush=True)
    NTP = 2208988800
    def ntp(t): return (int(t) + NTP) << 32 | int((t % 1) * 2**32)
    counters = {}
    while True:
        data, peer = s.recvfrom(65535)
        t2 = time.time()
        seq, = struct.unpack("!I", data[:4])
        sender_ts, sender_err = data[4:12], data[12:14]
        counter = counters.get(peer, 0)
        if mode.startswith("restart") and seq == 10:
            counter = 0
        if mode == "restart-loss" and seq in (5, 15):
            continue                                   # lost on the way there: never counted
        mine = 0 if mode == "counter-zero" else counter
        counters[peer] = counter + 1
        if mode == "restart-loss" and seq == 7:
            continue                                   # counted, its reply lost on the way back
        t3 = time.time()
        if mode == "impossible" and seq % 2 == 1:
            t2 = 0.0 - NTP                             # T2 at the NTP era's start: held for 126 years
        reply = struct.pack("!IQHxxQI", mine, ntp(t3), 0x8001, ntp(t2), seq) + sender_ts + sender_err + bytes(2) \\
            + bytes([64]) + bytes(3)
        if mode == "zeros-after-corrupt" and seq == 0:
            damaged = reply[:24] + reply[24:28] + bytes(8) + reply[36:]
            s.sendto(damaged, peer)                    # its copy of T1 is wrong: corrupt
            s.sendto(bytes(44), peer)                  # all zeros: not a duplicate of anything
            continue
        s.sendto(reply, peer)
    """

/// `udpecho ping --stamp` against reflectors that lie: what they claim never turns into losses, delays or duplicates
/// that did not happen (the second attack review).
@Suite struct HostileReflectorTests {
    func ping(_ mode: String) async throws -> (summary: [String: Any], events: [[String: Any]], lines: [String]) {
        let (reflector, port) = try await startPythonPeer(pythonHostileReflector, [mode])
        defer { reflector.signal(SIGKILL) }
        let json = try await Spawned.run(
            udpecho,
            ["ping", "--stamp", "127.0.0.1:\(port)", "-c", "20", "-i", "10ms", "-W", "1s", "--json"]
        )
        let text = try await Spawned.run(
            udpecho,
            ["ping", "--stamp", "127.0.0.1:\(port)", "-c", "20", "-i", "10ms", "-W", "1s", "-q"]
        )
        let objects = try jsonObjects(json.lines)
        let summary = try #require(objects.last, "\(json.lines) \(json.error)")
        return (summary, objects.filter { $0["type"] != nil }, text.lines)
    }

    /// A stateful reflector whose counter restarts mid-run (its session evicted by forged sessions, or the reflector
    /// restarted): the losses are split run by run, the restart is named, and no direction gets more than was lost.
    /// (Comparing the highest numbers of both counters made it 11 lost on the way there, of 3 lost in all.)
    @Test func aCounterThatRestartsIsFollowed() async throws {
        let (summary, _, lines) = try await self.ping("restart-loss")
        #expect(summary["received"] as? Int == 17 && summary["lost"] as? Int == 3, "\(summary)")
        let stamp = try #require(summary["stamp"] as? [String: Any])
        #expect(stamp["lost_forward"] as? Int == 2, "\(stamp)")
        #expect(stamp["lost_backward"] as? Int == 1, "\(stamp)")
        #expect(stamp["lost_direction_unknown"] as? Int == 0, "\(stamp)")
        #expect(stamp["reflector_counter_restarts"] as? Int == 1, "\(stamp)")
        #expect(
            lines.contains("stamp: lost on the way there 2, on the way back 1 (the reflector counts what it receives)"),
            "\(lines)"
        )
        #expect(
            lines.contains { $0.hasPrefix("stamp: the reflector's counter went back or stood still 1 time") },
            "\(lines)"
        )
    }

    /// A reflector that answers counter 0 to everything claims nothing is lost on the way there.
    @Test func aCounterStuckAtZeroClaimsNoLoss() async throws {
        let (summary, _, lines) = try await self.ping("counter-zero")
        #expect(summary["received"] as? Int == 20 && summary["lost"] as? Int == 0, "\(summary)")
        let stamp = try #require(summary["stamp"] as? [String: Any])
        #expect(stamp["lost_forward"] as? Int == 0 && stamp["lost_backward"] as? Int == 0, "\(stamp)")
        #expect(!lines.contains { $0.contains("lost on the way there") && !$0.contains("there 0,") }, "\(lines)")
    }

    /// A reply that says the reflector held the probe longer than the whole round trip is counted as impossible,
    /// named per probe, and left out of every figure: no forward delay of -4e12 ms, no round trip of 0.
    @Test func impossibleTimesAreCountedApartAndLeftOut() async throws {
        let (summary, events, lines) = try await self.ping("impossible")
        #expect(summary["received"] as? Int == 10 && summary["impossible"] as? Int == 10, "\(summary)")
        #expect(summary["lost"] as? Int == 0 && summary["loss_percent"] as? Double == 0, "\(summary)")
        let impossible = events.filter { $0["type"] as? String == "impossible" }
        #expect(impossible.count == 10 && impossible.allSatisfy { ($0["seq"] as? Int ?? 0) % 2 == 1 }, "\(impossible)")
        let stamp = try #require(summary["stamp"] as? [String: Any])
        #expect(stamp["replies_from_reflector"] as? Int == 10, "\(stamp)")
        let forward = try #require(stamp["forward_ms"] as? [String: Double])
        let reflector = try #require(stamp["reflector_ms"] as? [String: Double])
        // On one host and loopback every figure is well under a second.
        #expect(forward.values.allSatisfy { $0 > -1000 && $0 < 1000 }, "\(forward)")
        #expect(reflector.values.allSatisfy { $0 >= 0 && $0 < 1000 }, "\(reflector)")
        let rtt = try #require(summary["rtt_ms"] as? [String: Double])
        #expect(rtt["min"].map { $0 > 0 } == true, "\(rtt)")
        #expect(
            lines.contains { $0.hasPrefix("20 transmitted, 10 received, 0% loss") && $0.contains("10 impossible") },
            "\(lines)"
        )
    }

    /// An all-zero packet after a corrupt reply to probe 0 is not a duplicate of probe 0: its copy of T1 is checked
    /// as every reply's is.
    @Test func anAllZeroReplyIsNotADuplicate() async throws {
        let (summary, _, _) = try await self.ping("zeros-after-corrupt")
        #expect(summary["duplicates"] as? Int == 0, "\(summary)")
        #expect(summary["corrupt"] as? Int == 2 && summary["received"] as? Int == 19, "\(summary)")
    }
}
