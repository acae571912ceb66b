import Foundation
import NIOCore
import TestSupport
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// The package's root, where `.build/` and, beside the package, `../shared` are.
let packageRoot: URL = {
    var url = URL(fileURLWithPath: udpecho).deletingLastPathComponent()
    while url.path != "/" && url.lastPathComponent != ".build" { url.deleteLastPathComponent() }
    return url.deletingLastPathComponent()
}()

/// The Python of the virtual environment `.ci/run` makes, with scapy 2.8.0 (its STAMP layers are an independent
/// implementation of the packets).
let scapyPython = packageRoot.appendingPathComponent(".build/peers-venv/bin/python").path

/// Nokia's twampy (TWAMP-Light sender and responder), kept beside the project in `../shared/peers`.
let twampyPath = packageRoot.appendingPathComponent("../shared/peers/twampy").standardized.path
let twampyAvailable = FileManager.default.fileExists(atPath: twampyPath + "/twampy/__main__.py")

/// A STAMP Session-Sender made of scapy's layers (and `struct` for the timestamps): `stamp.py PORT MODE [KEY]`.
/// Prints one JSON object with what the reflector's answers said. Modes: `fields` (one unauthenticated packet),
/// `ptp` (the same, reading PTP timestamps), `stateful` (two sessions with gaps in their numbers), `short` (a
/// 22-byte TWAMP-Light packet), `tlvs` (Class of Service, Location, Timestamp Information, an unknown and a truncated
/// TLV), `auth KEY` (an authenticated packet), `silent` (packets that must get no answer: too short, a wrong
/// key, a reflected packet).
let pythonStampSender = """
    import hmac, hashlib, json, socket, struct, sys, time
    from scapy.contrib.stamp import (STAMPSessionSenderTestUnauthenticated as Sender,
        STAMPSessionReflectorTestUnauthenticated as Reflector, STAMPTestTLV as TLV)
    port, mode = int(sys.argv[1]), sys.argv[2]
    key = sys.argv[3].encode() if len(sys.argv) > 3 else b""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.IPPROTO_IP, socket.IP_TTL, 61)
    s.setsockopt(socket.IPPROTO_IP, socket.IP_TOS, 0x28)          # DSCP 10 on the way out
    s.setsockopt(socket.IPPROTO_IP, socket.IP_RECVTOS, 1)
    s.settimeout(2)
    NTP = 2208988800
    def ntp(raw): return (raw >> 32) - NTP + (raw & 0xFFFFFFFF) / 2**32
    def ptp(raw, tai=37): return (raw >> 32) - tai + (raw & 0xFFFFFFFF) / 1e9
    def exchange(payload):
        t1 = time.time()
        s.sendto(payload, ("127.0.0.1", port))
        data, ancillary, _, _ = s.recvmsg(65536, 64)
        t4 = time.time()
        tos = [v[0] for l, k, v in ancillary if l == socket.IPPROTO_IP and k == socket.IP_TOS]
        return data, t1, t4, (tos[0] if tos else None)
    def base(data, t1, t4, conv):
        r = Reflector(data[:44])
        t3, t2 = struct.unpack("!Q", data[4:12])[0], struct.unpack("!Q", data[16:24])[0]
        return {"length": len(data), "seq": r.seq, "seq_sender": r.seq_sender, "ssid": r.ssid,
                "ttl": r.ttl_sender, "z": r.err_estimate.Z, "mbz": data[38:40] + data[41:44] == bytes(5),
                "t2_in_window": t1 - 0.001 <= conv(t2) <= t4 + 0.001, "t3_after_t2": t3 >= t2,
                "sender_timestamp_copied": data[28:36] == sent[4:12], "sender_estimate_copied": data[36:38] == sent[12:14]}
    out = {}
    if mode in ("fields", "ptp"):
        sent = bytes(Sender(seq=7, ts=time.time() + NTP, ssid=42))
        data, t1, t4, _ = exchange(sent)
        out = base(data, t1, t4, ntp if mode == "fields" else ptp)
    elif mode == "stateful":
        seqs = []
        for ssid, seq in [(1, 5), (1, 9), (2, 100), (1, 10), (2, 101)]:
            data, *_ = exchange(bytes(Sender(seq=seq, ts=time.time() + NTP, ssid=ssid)))
            r = Reflector(data[:44])
            seqs.append([r.ssid, r.seq, r.seq_sender])
        out = {"replies": seqs}
    elif mode == "short":
        sent = bytes(Sender(seq=3, ts=time.time() + NTP))[:14] + bytes(8)
        data, t1, t4, _ = exchange(sent)
        out = base(data, t1, t4, ntp)
    elif mode == "tlvs":
        s.setsockopt(socket.IPPROTO_IP, socket.IP_TOS, 10 << 2 | 3)   # DSCP 10, ECN CE on the way out
        # Class of Service as RFC 8972 lays it out: DSCP1 (6 bits) DSCP2 (6) ECN (2) RP (2), reserved (16).
        tlvs = [TLV(type=4, len=4, value=struct.pack("!HH", 46 << 10, 0)),
                TLV(type=2, len=48, value=bytes(4) + bytes([0, 7, 0, 16]) + bytes(16) + bytes([0, 4, 0, 16]) + bytes(16)
                    + bytes([0, 77, 0, 0])),
                TLV(type=3, len=4, value=bytes([1, 2, 0, 0])),
                TLV(type=200, len=2, value=b"ab")]
        sent = bytes(Sender(seq=1, ts=time.time() + NTP, ssid=7, tlv_objects=tlvs)) + bytes([0, 1, 0, 20, 9, 9, 9, 9])
        data, t1, t4, tos = exchange(sent)
        r = Reflector(data)
        found = [(t.flags.value if hasattr(t.flags, "value") else int(t.flags), t.type, t.value) for t in r.tlv_objects]
        cos, location, tsinfo, unknown = found[0], found[1], found[2], found[3]
        lv = location[2]
        out = {"length": len(data), "request_length": len(sent), "reply_tos": tos,
               "cos": list(cos[2]), "cos_flags": cos[0],
               "location_ports": list(struct.unpack("!HH", lv[:4])), "location_source": socket.inet_ntoa(lv[8:12]),
               "location_destination": socket.inet_ntoa(lv[28:32]), "location_flags": location[0],
               "location_subtlvs": [lv[4:8].hex(), lv[12:24].hex(), lv[24:28].hex(), lv[32:44].hex(), lv[44:48].hex()],
               "tsinfo": list(tsinfo[2]), "unknown_flags": unknown[0], "unknown_value": unknown[2].decode(),
               "truncated_flags": data[len(sent) - 8], "tail": list(data[len(sent) - 8:])}
    elif mode == "auth":
        sent = struct.pack("!I12xQHH68x", 11, int(time.time() + NTP) << 32, 0x0001, 9)
        sent += hmac.new(key, sent, hashlib.sha256).digest()[:16]
        data, t1, t4, _ = exchange(sent)
        seq, t3, ssid, t2, seq_sender = struct.unpack("!I12xQ2xH4xQ8xI", data[:52])
        out = {"length": len(data), "seq": seq, "ssid": ssid, "seq_sender": seq_sender, "ttl": data[80],
               "hmac_valid": hmac.new(key, data[:96], hashlib.sha256).digest()[:16] == data[96:112],
               "sender_timestamp_copied": data[64:72] == sent[16:24], "t2_in_window": t1 - 0.001 <= ntp(t2) <= t4 + 0.001}
    elif mode == "silent":
        s.settimeout(0.3)
        wrong = struct.pack("!I12xQHH68x", 12, int(time.time() + NTP) << 32, 0x0001, 9)
        wrong += hmac.new(b"not the key", wrong, hashlib.sha256).digest()[:16]
        # A reply of this reflector's come back: its T3 (scapy takes seconds since 1900) in the sender-timestamp field.
        now = time.time() + NTP
        reflected = bytes(Reflector(seq=1, ts=now, ts_rx=now, seq_sender=1, ts_sender=now))
        answered = {}
        for name, payload in [("too-short", b"12345"), ("wrong-key", wrong), ("reflected", reflected)]:
            if name == "wrong-key" and not key: continue
            if name != "wrong-key" and key: continue
            s.sendto(payload, ("127.0.0.1", port))
            try:
                s.recv(65536)
                answered[name] = True
            except socket.timeout:
                answered[name] = False
        out = answered
    print(json.dumps(out), flush=True)
    """

/// HMAC TLVs against an authenticated reflector: `hmac-tlvs.py PORT KEY MODE`. `placement`: one HMAC TLV after
/// Extra Padding (verified and signed again), one followed by another TLV, and two of them (RFC 8972 §4.8: out of
/// place, flagged I); `flood`: 20 test packets of 65,507 bytes, each a valid base packet with 3,269 HMAC TLVs, then
/// an honest packet whose wait for its reply is timed. Prints JSON.
let pythonHMACTLVs = """
    import hmac, hashlib, json, os, socket, struct, sys, time
    port, key, mode = int(sys.argv[1]), sys.argv[2].encode(), sys.argv[3]
    NTP = 2208988800
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    s.settimeout(5)
    def mac(data): return hmac.new(key, data, hashlib.sha256).digest()[:16]
    def base(seq):
        b = struct.pack("!I12xQHH68x", seq, int(time.time() + NTP) << 32, 0x0001, 9)
        return b + mac(b)
    def tlv(kind, value, flags=0): return struct.pack("!BBH", flags, kind, len(value)) + value
    def reflect(packet):
        s.sendto(packet, ("127.0.0.1", port))
        return s.recv(70000)
    def tlvs_of(data):
        out, offset = [], 112
        while offset + 4 <= len(data):
            flags, kind, length = struct.unpack("!BBH", data[offset:offset + 4])
            out.append((offset, flags, kind, length))
            offset += 4 + length
        return out
    if mode == "placement":
        b = base(1)
        padding = tlv(1, bytes(8))
        # Extra Padding, then one HMAC TLV over our sequence number and the TLVs before it: verified, signed again.
        good = b + padding + tlv(8, mac(b[:4] + padding)) + tlv(1, bytes(4))
        reply = reflect(good)
        found = tlvs_of(reply)
        hmac_at = found[1][0]
        out = {"good_flags": [f for _, f, _, _ in found],
               "good_signed": reply[hmac_at + 4:hmac_at + 20] == mac(reply[:4] + reply[112:hmac_at])}
        # An HMAC TLV followed by a Class of Service TLV: out of place (RFC 8972 §4.8), flagged I though its HMAC is right.
        b = base(2)
        misplaced = b + tlv(8, mac(b[:4])) + tlv(4, bytes(4))
        out["misplaced_flags"] = [f for _, f, _, _ in tlvs_of(reflect(misplaced))]
        # Two HMAC TLVs, both right for where they are: the second is one too many.
        b = base(3)
        first = tlv(8, mac(b[:4]))
        out["two_flags"] = [f for _, f, _, _ in tlvs_of(reflect(b + first + tlv(8, mac(b[:4] + first))))]
        print(json.dumps(out), flush=True)
    elif mode == "flood":
        # The attack: one valid base packet (as if captured) with 3,269 HMAC TLVs filling 65,507 bytes, replayed 20
        # times with different trailing bytes; then an honest probe, whose wait is timed.
        b = base(4)
        count = (65507 - len(b)) // 20
        t0 = time.monotonic()
        for i in range(20):
            s.sendto(b + b"".join(tlv(8, os.urandom(16)) for _ in range(count)), ("127.0.0.1", port))
        sent = time.monotonic()
        s.sendto(base(5), ("127.0.0.1", port))
        big = 0
        while True:
            data = s.recv(70000)
            if len(data) == 112: break
            big += 1
        waited = time.monotonic() - sent
        print(json.dumps({"big_replies_before": big, "honest_wait_ms": waited * 1000}), flush=True)
    """

/// Runs the scapy sender against a reflector on `port`; returns its JSON.
func stampExchange(_ port: Int, _ mode: String, key: String? = nil) async throws -> [String: Any] {
    let result = try await Spawned.run(
        scapyPython,
        ["-c", pythonStampSender, "\(port)", mode] + (key.map { [$0] } ?? []),
        timeout: 30
    )
    let line = try #require(result.lines.last, "scapy sender (\(mode)): \(result.error)")
    return try #require(try JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any], "\(line)")
}

/// `udpecho server --protocol stamp` against independent senders: scapy's STAMP layers, byte for byte, and Nokia's
/// twampy (the TWAMP-Light sender used to validate routers).
// One test at a time: the whole suite runs in parallel on two cores, and these python peers would add to the
// peak load that makes other suites' timing checks miss.
@Suite(.serialized) struct StampReflectorTests {
    init() throws {
        try #require(
            FileManager.default.isExecutableFile(atPath: scapyPython),
            "scapy's virtual environment is missing: run .ci/run (it makes .build/peers-venv)"
        )
    }

    func reflector(_ arguments: [String] = []) async throws -> (Spawned, Int) {
        try await startServer(["--protocol", "stamp", "--address", "127.0.0.1:0", "-q"] + arguments)
    }

    /// Unauthenticated, stateless, NTP: every field of the reflected packet, read by scapy.
    @Test(arguments: ["ntp", "ptp"])
    func reflectsEveryFieldOfATestPacket(format: String) async throws {
        let (server, port) = try await self.reflector(["--stamp-timestamp", format])
        #expect(server.outputLines.first?.contains("STAMP reflector (unauthenticated, stateless") == true)
        let reply = try await stampExchange(port, format == "ntp" ? "fields" : "ptp")
        #expect(reply["length"] as? Int == 44)
        #expect(reply["seq"] as? Int == 7 && reply["seq_sender"] as? Int == 7)  // stateless: copied
        #expect(reply["ssid"] as? Int == 42)
        #expect(reply["ttl"] as? Int == 61)  // as the test packet arrived: loopback does not decrement it
        #expect(reply["z"] as? Int == (format == "ntp" ? 0 : 1))
        #expect(reply["mbz"] as? Bool == true)
        #expect(reply["t2_in_window"] as? Bool == true, "\(reply)")
        #expect(reply["t3_after_t2"] as? Bool == true)
        #expect(reply["sender_timestamp_copied"] as? Bool == true && reply["sender_estimate_copied"] as? Bool == true)
        server.signal(SIGINT)
        #expect(await server.waitForExit() == 0)
    }

    /// Stateful: the reflector's own counter per session (address, port, SSID), whatever the sender's numbers.
    @Test func statefulCountsEachSessionOnItsOwn() async throws {
        let (server, port) = try await self.reflector(["--stamp-stateful"])
        let replies = try #require(try await stampExchange(port, "stateful")["replies"] as? [[Int]])
        #expect(replies == [[1, 0, 5], [1, 1, 9], [2, 0, 100], [1, 2, 10], [2, 1, 101]])
        server.signal(SIGINT)
        #expect(await server.waitForExit() == 0)
    }

    /// A TWAMP-Light sender's 22-byte packet is answered with the 44-byte base packet (read as zero-padded).
    @Test func answersShortTWAMPLightPacketsWithTheBasePacket() async throws {
        let (server, port) = try await self.reflector()
        let reply = try await stampExchange(port, "short")
        #expect(reply["length"] as? Int == 44)
        #expect(reply["seq_sender"] as? Int == 3 && reply["ssid"] as? Int == 0)
        #expect(reply["sender_timestamp_copied"] as? Bool == true)
        server.signal(SIGINT)
        #expect(await server.waitForExit() == 0)
    }

    /// RFC 8972 TLVs, reflected in place at the same length: Class of Service (what arrived, and the reply sent
    /// with what was asked), Location (the ports and addresses seen, its sub-TLVs as RFC 8972 §4.2.1 answers them),
    /// Timestamp Information, an unknown type (U) and a TLV whose length runs past the packet (M).
    @Test func reflectsTLVsInPlace() async throws {
        let (server, port) = try await self.reflector(["--reflect-tos"])
        #expect(server.outputLines.first?.contains("DSCP as the Class of Service TLV asks") == true)
        let reply = try await stampExchange(port, "tlvs")
        #expect(reply["length"] as? Int == reply["request_length"] as? Int)
        // DSCP1 as asked (46), DSCP2 and ECN as received (DSCP 10, CE), RP 0: 46 << 10 | 10 << 4 | 3 << 2.
        #expect(reply["cos"] as? [Int] == [0xB8, 0xAC, 0, 0], "\(reply)")
        // The reply carries DSCP1, and the ECN that arrived, but CE as ECT(0).
        #expect(reply["reply_tos"] as? Int == 46 << 2 | 2, "\(reply)")
        let ports = try #require(reply["location_ports"] as? [Int])
        #expect(ports[0] == port && ports[1] > 0)
        #expect(reply["location_source"] as? String == "127.0.0.1")
        #expect(reply["location_destination"] as? String == "127.0.0.1")
        // RFC 8972 §4.2.1: the generic Source IP (7) and Destination IP (4) sub-TLVs come back as Source IPv4 (8)
        // and Destination IPv4 (5), the address then 12 zero bytes; a sub-TLV of an unknown type (77) flagged U.
        #expect(
            reply["location_subtlvs"] as? [String]
                == [
                    "00080010", String(repeating: "00", count: 12), "00050010", String(repeating: "00", count: 12),
                    "804d0000",
                ],
            "\(reply)"
        )
        #expect(reply["location_flags"] as? Int == 0, "\(reply)")
        #expect(reply["tsinfo"] as? [Int] == [1, 2, 8, 2] || reply["tsinfo"] as? [Int] == [1, 2, 1, 2])
        #expect(reply["unknown_flags"] as? Int == 0x80 && reply["unknown_value"] as? String == "ab")
        #expect(reply["truncated_flags"] as? Int == 0x40, "\(reply)")
        #expect(reply["tail"] as? [Int] == [0x40, 1, 0, 20, 9, 9, 9, 9])
        server.signal(SIGINT)
        #expect(await server.waitForExit() == 0)
    }

    /// By default the reflector does not let a sender choose its reply's DSCP (a forged source could have EF or CS7
    /// sent to a victim): the Class of Service TLV says so (RP 1) and still reports what arrived (DSCP2, ECN); the
    /// reply leaves with the system's marking.
    @Test func aClassOfServiceRequestIsDeclinedByDefault() async throws {
        let (server, port) = try await self.reflector()
        let reply = try await stampExchange(port, "tlvs")
        // DSCP1 as asked (46), DSCP2 and ECN as received (DSCP 10, CE), RP 1: 46 << 10 | 10 << 4 | 3 << 2 | 1.
        #expect(reply["cos"] as? [Int] == [0xB8, 0xAD, 0, 0], "\(reply)")
        #expect(reply["reply_tos"] as? Int == 0, "\(reply)")
        server.signal(SIGINT)
        #expect(await server.waitForExit() == 0)
    }

    /// Authenticated mode: the reply is signed with the shared key; a test packet with a wrong HMAC gets no reply
    /// and is counted as auth.
    @Test func authenticatedModeSignsAndRefusesAWrongKey() async throws {
        let keyFile = FileManager.default.temporaryDirectory.appendingPathComponent("udpecho-stamp-key-\(getpid())")
        try Data("correct horse battery staple\n".utf8).write(to: keyFile)
        defer { try? FileManager.default.removeItem(at: keyFile) }
        let (server, port) = try await self.reflector(["--stamp-key-file", keyFile.path, "--stamp-stateful"])
        #expect(server.outputLines.first?.contains("authenticated, stateful") == true)
        let reply = try await stampExchange(port, "auth", key: "correct horse battery staple")
        #expect(reply["length"] as? Int == 112)
        #expect(reply["hmac_valid"] as? Bool == true)
        #expect(reply["seq"] as? Int == 0 && reply["seq_sender"] as? Int == 11 && reply["ssid"] as? Int == 9)
        #expect(reply["ttl"] as? Int == 61)
        #expect(reply["sender_timestamp_copied"] as? Bool == true && reply["t2_in_window"] as? Bool == true)
        let silent = try await stampExchange(port, "silent", key: "correct horse battery staple")
        #expect(silent["wrong-key"] as? Bool == false)
        server.signal(SIGINT)
        #expect(await server.waitForExit() == 0)
        #expect(try summaryCounts(server)["auth"] == 1, "\(server.outputLines)")
    }

    /// RFC 8972 §4.8 places one HMAC TLV, after every TLV but Extra Padding: that one is verified and signed again
    /// over the reply; an HMAC TLV out of place, or a second one, is flagged I (failed) without being computed.
    @Test func oneHMACTLVIsVerifiedAndOthersAreFlagged() async throws {
        let key = try stampKeyFile("k3y")
        defer { try? FileManager.default.removeItem(at: key) }
        let (server, port) = try await self.reflector(["--stamp-key-file", key.path])
        let run = try await Spawned.run(python, ["python3", "-c", pythonHMACTLVs, "\(port)", "k3y", "placement"])
        let line = try #require(run.lines.last, "\(run.error)")
        let result = try #require(try JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any])
        #expect(result["good_flags"] as? [Int] == [0, 0, 0] && result["good_signed"] as? Bool == true, "\(result)")
        #expect(result["misplaced_flags"] as? [Int] == [0x20, 0], "\(result)")
        #expect(result["two_flags"] as? [Int] == [0x20, 0x20], "\(result)")
        server.signal(SIGINT)
        #expect(await server.waitForExit() == 0)
    }

    /// The amplification of the second attack review: a valid authenticated test packet (one captured packet is
    /// enough, the base HMAC covers bytes 0-95 only) filled with 3,269 HMAC TLVs, replayed 20 times with other
    /// trailing bytes. Each HMAC TLV was verified and signed over everything before it, a cost that grew with the
    /// square of their number (177 ms of CPU per packet; an honest probe behind 20 of them waited 3 s). Now the
    /// work is linear: the honest probe waits under 100 ms.
    @Test func hmacTLVsCannotMakeAPacketExpensive() async throws {
        let key = try stampKeyFile("k3y")
        defer { try? FileManager.default.removeItem(at: key) }
        let (server, port) = try await self.reflector(["--stamp-key-file", key.path])
        let failure = try await firstPassingAttempt {
            let run = try await Spawned.run(python, ["python3", "-c", pythonHMACTLVs, "\(port)", "k3y", "flood"])
            let line = try #require(run.lines.last, "\(run.error)")
            let result = try #require(try JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any])
            let waited = try #require(result["honest_wait_ms"] as? Double, "\(result)")
            return waited < 100 ? nil : "the honest probe waited \(waited) ms behind 20 packets of HMAC TLVs"
        }
        #expect(failure == nil, "\(failure ?? "")")
        server.signal(SIGINT)
        #expect(await server.waitForExit() == 0)
        #expect(try summaryCounts(server)["dropped"] == 0, "\(server.outputLines)")
    }

    /// TWAMP-Light senders may fill their padding with random bytes (as RFC 4656 advises for OWAMP's): whatever the
    /// padding reads where a reflected packet has its fields, such a test packet is answered, at its length.
    @Test func answersTestPacketsWithRandomPadding() async throws {
        let (server, port) = try await self.reflector()
        let client = try TestSocket()
        let target = try SocketAddress(ipAddress: "127.0.0.1", port: port)
        for sequence in 0..<200 {
            var packet: [UInt8] = [0, 0, UInt8(sequence >> 8), UInt8(sequence & 0xFF)]
            packet += (0..<10).map { _ in 0 } + (0..<100).map { _ in UInt8.random(in: 0...255) }
            client.send(packet, to: target)
            let reply = await client.receive()
            #expect(reply?.bytes.count == 114 && reply?.bytes[24..<28] == packet[0..<4], "packet \(sequence)")
        }
        server.signal(SIGINT)
        #expect(await server.waitForExit() == 0)
        #expect(try summaryCounts(server)["echoed"] == 200)
    }

    /// What is not a test packet gets no reply and is counted: too short (malformed), and a reflected packet coming
    /// back as a test packet (a loop between two reflectors).
    @Test func dropsWhatIsNotATestPacket() async throws {
        let (server, port) = try await self.reflector()
        let silent = try await stampExchange(port, "silent")
        #expect(silent["too-short"] as? Bool == false && silent["reflected"] as? Bool == false, "\(silent)")
        server.signal(SIGINT)
        #expect(await server.waitForExit() == 0)
        let counts = try summaryCounts(server)
        #expect(counts["malformed"] == 1 && counts["loop"] == 1, "\(counts)")
    }

    /// Nokia's twampy sender (TWAMP-Light, as routers are validated with) against our reflector: on one host its
    /// outbound and inbound delays are not negative, and add up to about its round trip.
    @Test(.enabled(if: twampyAvailable, "twampy is in ../shared/peers, which a clone of this project alone lacks"))
    func twampySenderMeasuresOurReflector() async throws {
        let (server, port) = try await self.reflector()
        let run = try await Spawned.run(
            "/usr/bin/env",
            [
                "PYTHONPATH=\(twampyPath)", "python3", "-m", "twampy", "sender", "127.0.0.1:\(port)", "-c", "10", "-i",
                "100", "--padding", "30",
            ],
            timeout: 30
        )
        func averageMicroseconds(_ direction: String) throws -> Double {
            let line = try #require(run.lines.first { $0.contains("\(direction):") }, "\(run.lines) \(run.error)")
            let values = line.matches(of: /([\d.]+)(us|ms)/).map { Double($0.1)! * ($0.2 == "ms" ? 1000 : 1) }
            try #require(values.count >= 3, "\(line)")
            return values[2]  // min, max, avg, jitter
        }
        let outbound = try averageMicroseconds("Outbound")
        let inbound = try averageMicroseconds("Inbound")
        let roundTrip = try averageMicroseconds("Roundtrip")
        #expect(outbound >= 0 && inbound >= 0 && roundTrip > 0)
        #expect(
            abs(outbound + inbound - roundTrip) <= 0.25 * roundTrip + 50,
            "\(outbound) + \(inbound) vs \(roundTrip)"
        )
        #expect(run.lines.contains { $0.contains("Roundtrip:") && $0.hasSuffix("0.0%") }, "\(run.lines)")
        server.signal(SIGINT)
        #expect(await server.waitForExit() == 0)
        #expect(try summaryCounts(server)["echoed"] == 10)
    }
}
