import Foundation
import TestSupport
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// Two test hosts joined by a veth pair, set up as an XDP path needs: the client's end has an XDP program of its own
/// (XDP_PASS: without one, a veth end drops the frames the other end sends back with XDP_TX) and sends full UDP
/// checksums (`ethtool -K tx off`: a veth otherwise leaves them partial, and a frame sent back by XDP then fails the
/// client's check). `../shared/bench/README.md` has the same recipe. The client's program is multi-buffer aware
/// (`xdp.frags`: a veth refuses a program that is not where the other end's MTU is past a page), for jumbo frames.
struct XDPNetwork: NamespaceHosts {
    static var available: Bool {
        TestNetwork.available && FileManager.default.isExecutableFile(atPath: "/usr/sbin/ethtool")
            && FileManager.default.isExecutableFile(atPath: clang)
    }
    /// The Swift toolchain's clang, whose BPF target builds the client end's program (as the package's build does).
    static let clang = "/opt/swift/usr/bin/clang"

    let network: TestNetwork
    var namespaces: [String] { self.network.namespaces }

    /// - Parameter mtu: If given, both ends' MTU (9000: jumbo frames, past a page).
    init(mtu: Int? = nil) async throws {
        self.network = try await TestNetwork()
        let object = try await Self.passProgram()
        do {
            var commands: [[String]] = []
            if let mtu {
                commands.append(["-n", self.network.server, "link", "set", self.network.serverLink, "mtu", "\(mtu)"])
                commands.append(["-n", self.network.client, "link", "set", self.network.clientLink, "mtu", "\(mtu)"])
            }
            commands += [
                [
                    "-n", self.network.client, "link", "set", "dev", self.network.clientLink, "xdp", "obj", object,
                    "sec", "xdp.frags",
                ],
                ["netns", "exec", self.network.client, "ethtool", "-K", self.network.clientLink, "tx", "off"],
            ]
            for command in commands {
                let result = try await Spawned.run(TestNetwork.ip, command)
                guard result.status == 0 else {
                    throw SetupError(description: "ip \(command.joined(separator: " ")) failed: \(result.error)")
                }
            }
        } catch {
            await self.network.remove()
            throw error
        }
    }

    /// An XDP_PASS program, built once per run.
    static func passProgram() async throws -> String {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("udpecho-xdp-\(getpid())")
        let object = directory.appendingPathComponent("xdp-pass.o").path
        if FileManager.default.fileExists(atPath: object) { return object }
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        let source = directory.appendingPathComponent("xdp-pass.c")
        try """
        #include <linux/bpf.h>
        __attribute__((section("xdp.frags"), used)) int pass(struct xdp_md *ctx) { return XDP_PASS; }
        __attribute__((section("license"), used)) char _license[] = "GPL";
        """.write(to: source, atomically: true, encoding: .utf8)
        let result = try await Spawned.run(
            clang,
            ["-O2", "-target", "bpf", "-I/usr/include/x86_64-linux-gnu", "-c", source.path, "-o", object + ".tmp"]
        )
        guard result.status == 0 else { throw SetupError(description: "clang -target bpf failed: \(result.error)") }
        try FileManager.default.moveItem(atPath: object + ".tmp", toPath: object)
        return object
    }

    /// Starts `udpecho server --xdp` on the server's end with `arguments`; waits for its XDP line.
    func startServer(_ arguments: [String], xdp: Bool = true) async throws -> Spawned {
        let link = xdp ? ["--xdp", self.network.serverLink] : []
        let server = try Spawned(
            TestNetwork.ip,
            ["netns", "exec", self.network.server, udpecho, "server", "--address", ":7000", "-q"] + link + arguments
        )
        let ready = xdp ? "xdp: answering" : "running as"
        // Loading runs the kernel's verifier over the program (about 0.3 s on an idle machine; a loaded one, with
        // the rest of the tests beside it, once took more than 10 s).
        let started = ContinuousClock.now
        guard await server.waitForLine(timeout: 60, { $0.hasPrefix(ready) }) != nil else {
            throw StartError(
                output: "after \(ContinuousClock.now - started): " + server.errorText
                    + server.outputLines.joined(separator: "\n")
            )
        }
        return server
    }

    /// Runs the client script in the client's host; returns its JSON output.
    func client(_ script: String, _ arguments: [String], python: String = "python3") async throws -> [String: Any] {
        // On one CPU: XDP runs on the CPU that sent the frame over the veth, and the guards' tables are per CPU (a
        // real NIC keeps a flow on one receive queue, so on one CPU, by its hash).
        let result = try await self.network.run(
            in: self.network.client,
            ["taskset", "-c", "0", python, "-c", script] + arguments
        )
        guard result.status == 0, let line = result.lines.last,
            let object = try JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any]
        else {
            throw SetupError(description: "the client failed (\(result.status)): \(result.error) \(result.lines)")
        }
        return object
    }

    /// Runs the client's `sizes` or `jumbo` mode against the server's port 7000, IPv4 and IPv6; returns each family's
    /// results (`ok`, and the sizes `lost` or `corrupt`).
    func echoSizes(_ mode: String) async throws -> (v4: [String: Any], v6: [String: Any]) {
        let result = try await self.client(
            pythonXDPClient,
            [mode, self.network.serverAddress, self.network.serverAddress6, "7000"]
        )
        return (try #require(result["v4"] as? [String: Any]), try #require(result["v6"] as? [String: Any]))
    }

    /// Whether an XDP program is attached to the server's end now.
    func serverHasProgram() async throws -> Bool {
        let result = try await Spawned.run(
            TestNetwork.ip,
            ["-n", self.network.server, "link", "show", "dev", self.network.serverLink]
        )
        return result.lines.contains { $0.contains("prog/xdp") }
    }
}

/// Stops a server with SIGINT and returns its summary's counters (`name=value`, reasons in parentheses included).
func stopAndCount(_ server: Spawned) async throws -> [String: Int] {
    server.signal(SIGINT)
    #expect(await server.waitForExit() == 0)
    let summary = try #require(server.outputLines.last { $0.hasPrefix("summary:") }, "\(server.outputLines)")
    var counts: [String: Int] = [:]
    for token in summary.split(separator: " ") {
        let parts = token.trimmingCharacters(in: CharacterSet(charactersIn: "()")).split(separator: "=")
        if parts.count == 2, let value = Int(parts[1]) { counts[String(parts[0])] = value }
    }
    return counts
}

/// The XDP client: `sizes SERVER4 SERVER6 PORT` sends every size from 0 to the largest unfragmented one, then a few
/// that fragment, over IPv4 and IPv6, each a different pattern, and checks every echo byte for byte. `options SERVER
/// PORT COUNT` sends datagrams with IPv4 options (NOPs), `plain SERVER PORT COUNT` without. `guards`, `tables` and
/// `budget SERVER PORT` send what each guard catches, from the client's extra addresses where a guard looks at them.
let pythonXDPClient = """
    import json, socket, sys
    mode = sys.argv[1]
    def pattern(size, seed):
        return bytes((seed * 7 + i * 13 + (i >> 8)) & 0xff for i in range(size))
    def exchange(s, address, payload):
        s.sendto(payload, address)
        try:
            data = s.recv(70000)
        except socket.timeout:
            return "lost"
        return "ok" if data == payload else "corrupt"
    def sock(address="0.0.0.0", source_port=0):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind((address, source_port))
        s.settimeout(0.3)
        return s
    def answered(s, target, payloads):
        # Sends them all, then counts the replies until 0.3 s passes without one.
        for p in payloads: s.sendto(p, target)
        n = 0
        try:
            while True:
                s.recv(70000)
                n += 1
        except socket.timeout:
            return n
    out = {}
    if mode in ("sizes", "jumbo"):
        # sizes: every size up to the largest unfragmented datagram at a 1500-byte MTU, then a few that fragment.
        # jumbo, over a 9000-byte MTU: sizes whose frame fits a veth's first XDP buffer (3520 bytes), larger ones up
        # to the largest unfragmented datagram, and one that fragments.
        s4, s6, port = sys.argv[2], sys.argv[3], int(sys.argv[4])
        if mode == "sizes":
            plans = [(socket.AF_INET, s4, list(range(0, 1473)) + [1473, 4000, 65507]),
                     (socket.AF_INET6, s6, list(range(0, 1453)) + [1453, 9000, 65527])]
        else:
            jumbo = [0, 1000, 1472, 3000, 3400, 3600, 5000]
            plans = [(socket.AF_INET, s4, jumbo + [8972, 8973]), (socket.AF_INET6, s6, jumbo + [8952, 8953])]
        for family, server, sizes in plans:
            s = socket.socket(family, socket.SOCK_DGRAM)
            s.settimeout(2)
            results = {"ok": 0, "lost": [], "corrupt": []}
            for size in sizes:
                r = exchange(s, (server, port), pattern(size, size))
                if r == "ok": results["ok"] += 1
                else: results[r].append(size)
            out["v4" if family == socket.AF_INET else "v6"] = results
    elif mode in ("options", "plain"):
        server, port, count = sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        if mode == "options":
            s.setsockopt(socket.IPPROTO_IP, socket.IP_OPTIONS, bytes([1, 1, 1, 0]))
        s.settimeout(2)
        out["answered"] = sum(exchange(s, (server, port), pattern(100, i)) == "ok" for i in range(count))
    elif mode == "guards":
        target = (sys.argv[2], int(sys.argv[3]))
        out["oversize"] = answered(sock(), target, [pattern(200, 1)])
        out["source-port"] = answered(sock(source_port=1000), target, [pattern(50, 2)])
        out["denied"] = answered(sock("192.0.2.3"), target, [pattern(50, 3)])
        loop = sock()
        out["loop"] = sum(answered(loop, target, [pattern(50, 4)]) for _ in range(6))
        out["rate-limited"] = answered(sock("192.0.2.4"), target, [pattern(50, 100 + i) for i in range(20)])
    elif mode == "tables":
        # One datagram from each of five sources in turn, then the first again; then one from outside the allow list.
        target = (sys.argv[2], int(sys.argv[3]))
        sources = ["192.0.2.3", "192.0.2.4", "192.0.2.5", "192.0.2.6", "192.0.2.7", "192.0.2.3"]
        out["answers"] = [answered(sock(a), target, [pattern(50, 200 + i)]) for i, a in enumerate(sources)]
        out["outside"] = answered(sock("192.0.2.9"), target, [pattern(50, 300)])
    elif mode == "budget":
        out["answered"] = answered(sock(), (sys.argv[2], int(sys.argv[3])), [pattern(50, i) for i in range(20)])
    print(json.dumps(out), flush=True)
    """

/// Forged and damaged datagrams, made with scapy and sent from the client's host: `forged SERVER SERVER6 PORT` sends
/// a multicast source, the server's own address and port, a loopback source, and a datagram whose UDP checksum is
/// wrong, none of which may be answered; six identical datagrams without a checksum (IPv4's 0), of which the loop
/// detector lets four through; a UDP length shorter than the IP length (passed up); and an IPv6 datagram behind a
/// Destination Options header (passed up, answered by the sockets).
let scapyForged = """
    import json, socket, sys
    from scapy.all import IP, IPv6, IPv6ExtHdrDestOpt, UDP, Raw, send, conf
    conf.verb = 0
    server, server6, port = sys.argv[2], sys.argv[3], int(sys.argv[4])
    def listener(port, family=socket.AF_INET):
        s = socket.socket(family, socket.SOCK_DGRAM)
        s.bind(("::" if family == socket.AF_INET6 else "0.0.0.0", port))
        s.settimeout(0.5)
        return s
    def replies(s):
        n = 0
        try:
            while True:
                s.recv(70000)
                n += 1
        except socket.timeout:
            return n
    r = listener(40001)
    for src, sport, check in [("224.0.0.9", 40001, None), (server, port, None), ("127.0.0.1", 40001, None),
                              ("192.0.2.2", 40001, 0x1234)]:
        udp = UDP(sport=sport, dport=port) if check is None else UDP(sport=sport, dport=port, chksum=check)
        send(IP(src=src, dst=server) / udp / Raw(b"forged" * 5))
    # A header whose checksum fails: the stack drops it, so XDP must not answer it.
    send(IP(src="192.0.2.2", dst=server, chksum=0x1234) / UDP(sport=40001, dport=port) / Raw(b"bad header"))
    out = {"answered": replies(r)}
    # A TOS and a TTL that the reply changes (to 0 and 64): its header's checksum follows, or the client drops it.
    t = listener(40005)
    send(IP(src="192.0.2.2", dst=server, tos=41, ttl=17) / UDP(sport=40005, dport=port) / Raw(b"tos"))
    out["retossed"] = replies(t)
    # IPv4 without a checksum (0): six identical datagrams in a row; the loop detector fingerprints their bytes.
    z = listener(40002)
    for _ in range(6):
        send(IP(src="192.0.2.2", dst=server) / UDP(sport=40002, dport=port, chksum=0) / Raw(b"same" * 8))
    out["unchecksummed"] = replies(z)
    send(IP(src="192.0.2.2", dst=server) / UDP(sport=40003, dport=port, len=20) / Raw(b"x" * 30))
    e = listener(40004, socket.AF_INET6)
    send(IPv6(src="2001:db8::2", dst=server6) / IPv6ExtHdrDestOpt() / UDP(sport=40004, dport=port) / Raw(b"ext" * 10))
    out["extension"] = replies(e)
    print(json.dumps(out), flush=True)
    """

/// A STAMP Session-Sender of scapy's layers for the XDP reflector: `stamp SERVER PORT FORMAT` sends base test packets
/// (checked field by field), then a packet with a TLV and a TWAMP-Light short one (answered: the first in XDP, the
/// second by the sockets) and a reflected packet of the reflector's own (a loop: dropped).
let scapyStampXDP = """
    import json, socket, struct, sys, time
    from scapy.contrib.stamp import (STAMPSessionSenderTestUnauthenticated as Sender,
        STAMPSessionReflectorTestUnauthenticated as Reflector, STAMPTestTLV as TLV)
    server, port, fmt = sys.argv[2], int(sys.argv[3]), sys.argv[4]
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.IPPROTO_IP, socket.IP_TTL, 61)
    s.settimeout(1)
    NTP = 2208988800
    def conv(raw):
        if fmt == "ptp": return (raw >> 32) - 37 + (raw & 0xFFFFFFFF) / 1e9
        return (raw >> 32) - NTP + (raw & 0xFFFFFFFF) / 2**32
    checks, gaps = [], []
    for seq in range(1, 11):
        sent = bytes(Sender(seq=seq, ts=time.time() + NTP, ssid=42))
        t1 = time.time()
        s.sendto(sent, (server, port))
        data = s.recv(65536)
        t4 = time.time()
        r = Reflector(data)
        t3, t2 = struct.unpack("!Q", data[4:12])[0], struct.unpack("!Q", data[16:24])[0]
        gaps.append(conv(t3) - conv(t2))
        checks.append(len(data) == 44 and r.seq == seq and r.seq_sender == seq and r.ssid == 42 and r.ttl_sender == 61
            and data[28:36] == sent[4:12] and data[36:38] == sent[12:14] and data[38:40] + data[41:44] == bytes(5)
            and t1 - 0.002 <= conv(t2) <= t4 + 0.002 and t3 >= t2 and r.err_estimate.Z == (1 if fmt == "ptp" else 0))
    tlv = bytes(Sender(seq=20, ts=time.time() + NTP, ssid=7, tlv_objects=[TLV(type=200, len=4, value=b"abcd")]))
    s.sendto(tlv, (server, port))
    tlv_answered = len(s.recv(65536)) == len(tlv)
    short = bytes(Sender(seq=21, ts=time.time() + NTP))[:14]
    s.sendto(short, (server, port))
    short_answered = len(s.recv(65536)) == 44
    now = time.time()
    looped = bytearray(bytes(Reflector(seq=1, ts=now + NTP, ts_rx=now + NTP, seq_sender=1, ts_sender=now + NTP)))
    if fmt == "ptp":   # the reflector's T3 in its own format (TAI: 37 s ahead of UTC, as conv reads it)
        looped[28:36] = struct.pack("!II", int(now) + 37, int((now % 1) * 1e9))
    s.sendto(bytes(looped), (server, port))
    try:
        s.recv(65536)
        loop_answered = True
    except socket.timeout:
        loop_answered = False
    print(json.dumps({"fields": checks, "max_gap_us": max(gaps) * 1e6, "tlv": tlv_answered, "short": short_answered,
                      "loop": loop_answered}), flush=True)
    """

/// Tagged frames from scapy: `vlan IFACE SERVER CLIENT PORT` sends five with one 802.1Q tag and five with two
/// (802.1ad outside), and counts the replies that carry the same tags and the same payload.
let scapyVLAN = """
    import json, sys
    from scapy.all import Ether, Dot1Q, Dot1AD, IP, UDP, Raw, srp1, getmacbyip, conf
    conf.verb = 0
    iface, server, client, port = sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5])
    mac = getmacbyip(server)
    out = {"single": 0, "double": 0}
    for i in range(5):
        for kind in ("single", "double"):
            payload = bytes([i, 1 if kind == "single" else 2]) * 20
            tags = Dot1Q(vlan=10) if kind == "single" else Dot1AD(vlan=20) / Dot1Q(vlan=30)
            frame = Ether(dst=mac) / tags / IP(src=client, dst=server) / UDP(sport=40000 + i, dport=port) / Raw(payload)
            reply = srp1(frame, iface=iface, timeout=2)
            if reply is None or Raw not in reply or bytes(reply[Raw]) != payload:
                continue
            if kind == "single" and Dot1Q in reply and reply[Dot1Q].vlan == 10:
                out[kind] += 1
            if kind == "double" and Dot1AD in reply and reply[Dot1AD].vlan == 20 and reply[Dot1Q].vlan == 30:
                out[kind] += 1
    print(json.dumps(out), flush=True)
    """

/// STAMP TLVs from scapy: `tlvs SERVER PORT` sends a test packet with Extra Padding of an odd length (so that what
/// follows sits at odd offsets, for the checksum), Timestamp Information, Class of Service, an HMAC TLV (no key
/// here), an unknown type and a TLV cut short, with DSCP 10 and ECT(1); then one with a Location TLV. Prints the
/// first reply's TLV bytes (hex) and whether the second was answered.
let scapyStampTLVs = """
    import json, socket, struct, sys, time
    from scapy.contrib.stamp import STAMPSessionSenderTestUnauthenticated as Sender, STAMPTestTLV as TLV
    server, port = sys.argv[2], int(sys.argv[3])
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.IPPROTO_IP, socket.IP_TOS, 10 << 2 | 1)
    s.settimeout(1)
    NTP = 2208988800
    tlvs = [TLV(type=1, len=5, value=b"ABCDE"), TLV(type=3, len=4, value=bytes(4)),
            TLV(type=4, len=4, value=struct.pack("!HH", 46 << 10, 0)), TLV(type=8, len=16, value=bytes(16)),
            TLV(type=200, len=3, value=b"xyz")]
    sent = bytes(Sender(seq=5, ts=time.time() + NTP, ssid=9, tlv_objects=tlvs)) + bytes([0, 7, 0, 40, 1, 2])
    s.sendto(sent, (server, port))
    reply = s.recv(65536)
    # Location (RFC 8972 §4.2) after an Extra Padding of an odd length (the checksum's odd offsets): the generic
    # Source IP and Destination IP sub-TLVs and one of an unknown type; then one whose sub-TLV runs past it (M); then
    # a packet with two Location TLVs (the sockets answer that one). The client's port (a new socket each run) is
    # masked out for the comparison.
    def located(seq, tlvs, *ports_at):
        packet = bytes(Sender(seq=seq, ts=time.time() + NTP, tlv_objects=tlvs))
        s.sendto(packet, (server, port))
        reply = bytearray(s.recv(65536))
        assert len(reply) == len(packet), (len(reply), len(packet))
        for at in ports_at:
            reply[at:at + 2] = b"PP"
        return bytes(reply[44:]).hex()
    subtlvs = bytes([0, 7, 0, 16]) + bytes(16) + bytes([0, 4, 0, 16]) + bytes(16) + bytes([0, 77, 0, 1, 9])
    location = TLV(type=2, len=4 + len(subtlvs), value=bytes(4) + subtlvs)
    out = {"length": len(reply), "sent": len(sent), "tlvs": reply[44:].hex()}
    out["location"] = located(6, [TLV(type=1, len=3, value=b"odd"), location], 44 + 7 + 4 + 2)
    out["location_cut"] = located(7, [TLV(type=2, len=8, value=bytes(4) + bytes([0, 8, 0, 16]))], 44 + 4 + 2)
    out["location_twice"] = located(8, [location, location], 44 + 4 + 2, 44 + 4 + len(location.value) + 4 + 2)
    print(json.dumps(out),          flush=True)
    """

/// Udpecho's XDP path over a veth pair between two test hosts (the server's end answers in XDP, natively).
@Suite(.serialized, .enabled(if: XDPNetwork.available, "needs root, ip, ethtool and the toolchain's clang"))
struct XDPTests {
    /// Every size from 0 to the largest that fits one frame, IPv4 and IPv6, comes back byte for byte, answered in
    /// XDP; larger ones arrive as fragments, which go up to the socket path, and come back too.
    @Test func everySizeIsEchoedByteForByte() async throws {
        try await withHosts(try await XDPNetwork()) { hosts in
            let server = try await hosts.startServer([])
            #expect(server.outputLines.contains { $0.contains("(native: in the driver)") })
            #expect(try await hosts.serverHasProgram())
            let (v4, v6) = try await hosts.echoSizes("sizes")
            #expect(v4["ok"] as? Int == 1473 + 3, "\(v4)")
            #expect(v6["ok"] as? Int == 1453 + 3, "\(v6)")
            let counts = try await stopAndCount(server)
            // 1473 + 1453 unfragmented datagrams answered in XDP; the 6 larger ones by the sockets.
            #expect(counts["xdp-echoed"] == 1473 + 1453, "\(counts)")
            #expect(counts["fragment"] == 6, "\(counts)")
            #expect(counts["echoed"] == 1473 + 1453 + 6, "\(counts)")
            #expect(counts["dropped"] == 0, "\(counts)")
        }
    }

    /// On a jumbo MTU (9000, past a page) the program attaches natively (it is multi-buffer aware): a datagram whose
    /// frame fits the first buffer (a veth's is 3520 bytes) is answered in XDP; one that goes past it is passed up,
    /// counted as `other`, and answered by the sockets, as is one that fragments. Every one byte for byte.
    @Test func jumboFramesAttachNativelyAndWhatPassesTheFirstBufferGoesUp() async throws {
        try await withHosts(try await XDPNetwork(mtu: 9000)) { hosts in
            let server = try await hosts.startServer([])
            #expect(server.outputLines.contains { $0.contains("(native: in the driver)") }, "\(server.outputLines)")
            // Nine sizes a family, each echoed byte for byte (a lost or corrupt one is listed instead).
            let (v4, v6) = try await hosts.echoSizes("jumbo")
            #expect(v4["ok"] as? Int == 9, "\(v4)")
            #expect(v6["ok"] as? Int == 9, "\(v6)")
            let counts = try await stopAndCount(server)
            // 0, 1000, 1472, 3000 and 3400 bytes in XDP, each family; 3600, 5000 and the largest go past the first
            // buffer; the largest plus one fragments.
            #expect(counts["xdp-echoed"] == 10, "\(counts)")
            #expect(counts["other"] == 6, "\(counts)")
            #expect(counts["fragment"] == 2, "\(counts)")
            #expect(counts["echoed"] == 18 && counts["dropped"] == 0, "\(counts)")
        }
    }

    /// Datagrams with IPv4 options go up to the sockets, counted, and are answered there.
    @Test func optionsArePassedUpAndAnswered() async throws {
        try await withHosts(try await XDPNetwork()) { hosts in
            let server = try await hosts.startServer([])
            let result = try await hosts.client(pythonXDPClient, ["options", hosts.network.serverAddress, "7000", "5"])
            #expect(result["answered"] as? Int == 5)
            let counts = try await stopAndCount(server)
            #expect(counts["options"] == 5 && counts["xdp-echoed"] == 0 && counts["echoed"] == 5, "\(counts)")
        }
    }

    /// TLVs are reflected in XDP exactly as the sockets reflect them: the same packet to the reflector with and
    /// without XDP gets the same TLV bytes back (and the kernel accepted both replies' checksums), Location TLVs (RFC
    /// 8972 §4.2.1 sub-TLVs, at odd offsets, and a malformed one) included; a packet with two Location TLVs, and a
    /// Class of Service TLV that --reflect-tos honours, go up to the sockets.
    @Test(.enabled(if: FileManager.default.isExecutableFile(atPath: scapyPython), "needs .build/peers-venv"))
    func stampTLVsAsTheSocketsReflectThem() async throws {
        try await withHosts(try await XDPNetwork()) { hosts in
            var replies: [Bool: [String: Any]] = [:]
            var counts: [Bool: [String: Int]] = [:]
            for xdp in [true, false] {
                let server = try await hosts.startServer(["--protocol", "stamp"], xdp: xdp)
                replies[xdp] = try await hosts.client(
                    scapyStampTLVs,
                    ["tlvs", hosts.network.serverAddress, "7000"],
                    python: scapyPython
                )
                counts[xdp] = try await stopAndCount(server)
            }
            let withXDP = try #require(replies[true])
            let withSockets = try #require(replies[false])
            #expect(withXDP["length"] as? Int == withXDP["sent"] as? Int, "\(withXDP)")
            let tlvs = try #require(withXDP["tlvs"] as? String)
            #expect(tlvs == withSockets["tlvs"] as? String, "XDP \(tlvs), sockets \(withSockets["tlvs"] ?? "")")
            // The Class of Service TLV: DSCP1 46 kept, DSCP2 10 and ECN 1 as it arrived, RP 1; the HMAC and unknown
            // TLVs flagged U (0x80), the cut one M (0x40).
            #expect(tlvs.contains("800800"), "\(tlvs)")
            #expect(tlvs.contains("0004" + "0004" + String(format: "%04x", 46 << 10 | 10 << 4 | 1 << 2 | 1)), "\(tlvs)")
            for key in ["location", "location_cut", "location_twice"] {
                #expect(withXDP[key] as? String == withSockets[key] as? String, "\(key): \(withXDP), \(withSockets)")
            }
            // Ports (the client's masked), then Source IPv4 (8) and Destination IPv4 (5) with the addresses, the
            // unknown one flagged U; the cut one flagged M.
            func hex(_ address: String) -> String {
                address.split(separator: ".").map { String(format: "%02x", Int($0)!) }.joined()
            }
            let zeros = String(repeating: "00", count: 12)
            let location = try #require(withXDP["location"] as? String)
            #expect(
                location.hasSuffix(
                    "1b58" + "5050" + "00080010" + hex(hosts.network.clientAddress) + zeros + "00050010"
                        + hex(hosts.network.serverAddress) + zeros + "804d000109"
                ),
                "\(location)"
            )
            #expect(withXDP["location_cut"] as? String == "40020008" + "1b58" + "5050" + "00080010", "\(withXDP)")
            let xdpCounts = try #require(counts[true])
            #expect(
                xdpCounts["xdp-echoed"] == 3 && xdpCounts["stamp"] == 1 && xdpCounts["echoed"] == 4,
                "\(xdpCounts)"
            )
            // With --reflect-tos the Class of Service TLV's DSCP is honoured: the sockets answer that packet (and the
            // one with two Location TLVs); XDP the two others.
            let honouring = try await hosts.startServer(["--protocol", "stamp", "--reflect-tos"])
            let honoured = try await hosts.client(
                scapyStampTLVs,
                ["tlvs", hosts.network.serverAddress, "7000"],
                python: scapyPython
            )
            #expect(honoured["length"] as? Int == honoured["sent"] as? Int, "\(honoured)")
            let honouringCounts = try await stopAndCount(honouring)
            #expect(honouringCounts["xdp-echoed"] == 2 && honouringCounts["stamp"] == 2, "\(honouringCounts)")
        }
    }

    /// Frames with an 802.1Q tag (and with two, QinQ) are answered in XDP with their tags kept: scapy sends them on
    /// the client's end and reads the replies off the wire (the server's stack has no VLAN: only XDP can answer).
    @Test(.enabled(if: FileManager.default.isExecutableFile(atPath: scapyPython), "needs .build/peers-venv"))
    func vlanTagsArePassedThrough() async throws {
        try await withHosts(try await XDPNetwork()) { hosts in
            let server = try await hosts.startServer([])
            let network = hosts.network
            let result = try await hosts.client(
                scapyVLAN,
                ["vlan", network.clientLink, network.serverAddress, network.clientAddress, "7000"],
                python: scapyPython
            )
            #expect(result["single"] as? Int == 5 && result["double"] as? Int == 5, "\(result)")
            let counts = try await stopAndCount(server)
            #expect(counts["xdp-echoed"] == 10, "\(counts)")
        }
    }

    /// Rates and bursts past what the program's 64-bit token buckets hold are clamped, not a crash (a burst of 1e8
    /// once stopped the server converting it).
    @Test func extremeRatesAreClamped() async throws {
        try await withHosts(try await XDPNetwork()) { hosts in
            let server = try await hosts.startServer([
                "--rate-limit", "1e12", "--rate-burst", "1e15", "--global-rate", "1e18",
            ])
            let result = try await hosts.client(pythonXDPClient, ["plain", hosts.network.serverAddress, "7000", "5"])
            #expect(result["answered"] as? Int == 5)
            let counts = try await stopAndCount(server)
            #expect(counts["xdp-echoed"] == 5, "\(counts)")
        }
    }

    /// The program goes away with the process, even when it is killed (the BPF link's last descriptor closes).
    @Test func theProgramIsGoneAfterSIGKILL() async throws {
        try await withHosts(try await XDPNetwork()) { hosts in
            let server = try await hosts.startServer([])
            #expect(try await hosts.serverHasProgram())
            // `ip netns exec` runs udpecho in its own process: kill that one, not ip.
            let pids = Spawned.runBlocking(TestNetwork.ip, ["netns", "pids", hosts.network.server]).output
                .split(separator: "\n").compactMap { Int32($0) }
            #expect(!pids.isEmpty)
            for pid in pids { kill(pid, SIGKILL) }
            _ = await server.waitForExit()
            var attached = true
            for _ in 0..<50 where attached {
                attached = try await hosts.serverHasProgram()
                if attached { try await Task.sleep(for: .milliseconds(100)) }
            }
            #expect(!attached, "the XDP program outlived its process")
        }
    }

    /// What the kernel, the interface or the arguments refuse gets a clear error and exit status 1 (64 for usage).
    @Test func refusalsAreExplained() async throws {
        try await withHosts(try await XDPNetwork()) { hosts in
            let network = hosts.network
            func run(_ arguments: [String], prefix: [String] = []) async throws -> (Int32, String) {
                let result = try await network.run(
                    in: network.server,
                    prefix + [udpecho, "server", "--address", ":7000"] + arguments
                )
                return (result.status, result.error)
            }
            let missing = try await run(["--xdp", "nosuch0"])
            #expect(missing.0 == 1 && missing.1.contains("XDP on nosuch0: there is no such interface"), "\(missing)")
            let twamp = try await run(["--xdp", network.serverLink, "--protocol", "twamp"])
            #expect(twamp.0 == 64 && twamp.1.contains("--xdp answers echo and STAMP"), "\(twamp)")
            // Without privileges: nobody's user, no capabilities.
            let unprivileged = try await run(
                ["--xdp", network.serverLink],
                prefix: ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=-all"]
            )
            #expect(
                unprivileged.0 == 1 && unprivileged.1.contains("needs CAP_BPF and CAP_NET_ADMIN"),
                "\(unprivileged)"
            )
            // Another program on the interface already.
            let object = try await XDPNetwork.passProgram()
            let attach = try await Spawned.run(
                TestNetwork.ip,
                [
                    "-n", network.server, "link", "set", "dev", network.serverLink, "xdp", "obj", object, "sec",
                    "xdp.frags",
                ]
            )
            #expect(attach.status == 0, "\(attach.error)")
            let busy = try await run(["--xdp", network.serverLink])
            #expect(busy.0 == 1 && busy.1.contains("another XDP program is attached to it"), "\(busy)")
        }
    }

    /// Each guard drops in XDP what the socket path drops, under the same counter: the same client against the same
    /// server, once with XDP and once without.
    @Test func guardsDropWhatTheSocketPathDrops() async throws {
        try await withHosts(try await XDPNetwork()) { hosts in
            let network = hosts.network
            for address in ["192.0.2.3", "192.0.2.4"] {
                let result = try await Spawned.run(
                    TestNetwork.ip,
                    ["-n", network.client, "addr", "add", "\(address)/24", "dev", network.clientLink]
                )
                #expect(result.status == 0, "\(result.error)")
            }
            let guards = ["--max-size", "100", "--deny", "192.0.2.3/32", "--rate-limit", "5", "--rate-burst", "5"]
            var answers: [Bool: [String: Int]] = [:]
            var counts: [Bool: [String: Int]] = [:]
            for xdp in [true, false] {
                let server = try await hosts.startServer(guards, xdp: xdp)
                let result = try await hosts.client(pythonXDPClient, ["guards", network.serverAddress, "7000"])
                answers[xdp] = result.compactMapValues { $0 as? Int }
                counts[xdp] = try await stopAndCount(server)
            }
            let expected = ["oversize": 0, "source-port": 0, "denied": 0, "loop": 4]
            for (xdp, answered) in answers {
                for (guardName, count) in expected { #expect(answered[guardName] == count, "xdp \(xdp): \(answered)") }
                #expect((5...6).contains(answered["rate-limited"] ?? -1), "xdp \(xdp): \(answered)")
            }
            let withXDP = try #require(counts[true])
            let withSockets = try #require(counts[false])
            for reason in ["oversize", "source-port", "denied", "loop"] {
                #expect(
                    withXDP[reason] != nil && withXDP[reason] == withSockets[reason],
                    "\(reason): \(withXDP) \(withSockets)"
                )
            }
            #expect(withXDP["rate-limited"] == 20 - (answers[true]?["rate-limited"] ?? 0), "\(withXDP)")
            #expect(withSockets["rate-limited"] == 20 - (answers[false]?["rate-limited"] ?? 0), "\(withSockets)")
            // Everything the XDP run answered or dropped was judged in XDP.
            #expect(
                withXDP["xdp-dropped"] == withXDP["dropped"] && withXDP["xdp-echoed"] == withXDP["echoed"],
                "\(withXDP)"
            )
        }
    }

    /// The allow list, and the rate limiter's table when it is full: in XDP as on the sockets. A table of 4 (one set),
    /// one reply in 10 s per source: five sources in turn fill it, the fifth takes over the bucket of the first
    /// (emptied, not a fresh one: refused), the first back takes over the second's (refused); a source outside the
    /// allow list is refused before the table.
    @Test func theAllowListAndAFullRateTableAsOnTheSockets() async throws {
        try await withHosts(try await XDPNetwork()) { hosts in
            let network = hosts.network
            for address in ["192.0.2.3", "192.0.2.4", "192.0.2.5", "192.0.2.6", "192.0.2.7", "192.0.2.9"] {
                let result = try await Spawned.run(
                    TestNetwork.ip,
                    ["-n", network.client, "addr", "add", "\(address)/24", "dev", network.clientLink]
                )
                #expect(result.status == 0, "\(result.error)")
            }
            let guards = ["--allow", "192.0.2.0/29", "--rate-limit", "0.1", "--rate-burst", "1", "--rate-table", "4"]
            for xdp in [true, false] {
                let server = try await hosts.startServer(guards, xdp: xdp)
                let result = try await hosts.client(pythonXDPClient, ["tables", network.serverAddress, "7000"])
                #expect(result["answers"] as? [Int] == [1, 1, 1, 1, 0, 0], "xdp \(xdp): \(result)")
                #expect(result["outside"] as? Int == 0, "xdp \(xdp): \(result)")
                let counts = try await stopAndCount(server)
                #expect(counts["rate-limited"] == 2 && counts["denied"] == 1, "xdp \(xdp): \(counts)")
                if xdp { #expect(counts["xdp-dropped"] == 3 && counts["xdp-echoed"] == 4, "\(counts)") }
            }
        }
    }

    /// Forged sources (multicast, the server's own endpoint, loopback) are dropped in XDP under their reasons; a
    /// datagram with a wrong UDP checksum and one with a wrong IPv4 header checksum (the stack drops both), one whose
    /// UDP length disagrees with the IP length and an IPv6 one behind an extension header are passed up; a reply
    /// whose TOS and TTL change carries a header checksum the client accepts; the global budget drops past its rate.
    @Test(.enabled(if: FileManager.default.isExecutableFile(atPath: scapyPython), "needs .build/peers-venv"))
    func forgedSourcesAndTheBudget() async throws {
        try await withHosts(try await XDPNetwork()) { hosts in
            let network = hosts.network
            let server = try await hosts.startServer([])
            let forged = try await hosts.client(
                scapyForged,
                ["forged", network.serverAddress, network.serverAddress6, "7000"],
                python: scapyPython
            )
            #expect(forged["answered"] as? Int == 0)
            #expect(forged["retossed"] as? Int == 1, "\(forged)")
            #expect(forged["unchecksummed"] as? Int == 4, "\(forged)")
            #expect(forged["extension"] as? Int == 1, "\(forged)")
            let counts = try await stopAndCount(server)
            #expect(counts["source-address"] == 2 && counts["own-endpoint"] == 1, "\(counts)")
            #expect(counts["checksum"] == 2 && counts["loop"] == 2 && counts["xdp-echoed"] == 5, "\(counts)")
            #expect(counts["other"] == 1 && counts["options"] == 1, "\(counts)")
            // One reply a second over all sources: each CPU's share of it, a burst of one.
            let limited = try await hosts.startServer(["--rate-limit", "0", "--global-rate", "2"])
            let budget = try await hosts.client(pythonXDPClient, ["budget", network.serverAddress, "7000"])
            let answered = try #require(budget["answered"] as? Int)
            #expect((1...2).contains(answered), "\(budget)")
            let limitedCounts = try await stopAndCount(limited)
            #expect(limitedCounts["over-budget"] == 20 - answered, "\(limitedCounts)")
        }
    }

    /// The STAMP reflector in XDP: scapy reads its replies field by field (NTP and PTP timestamps); a packet with a
    /// TLV is answered in XDP too, a short TWAMP-Light one by the sockets; a reply of its own coming back is dropped
    /// as a loop.
    @Test(
        .enabled(if: FileManager.default.isExecutableFile(atPath: scapyPython), "needs .build/peers-venv"),
        arguments: ["ntp", "ptp"]
    )
    func stampRepliesFieldByField(format: String) async throws {
        try await withHosts(try await XDPNetwork()) { hosts in
            let server = try await hosts.startServer(["--protocol", "stamp", "--stamp-timestamp", format])
            #expect(server.outputLines.contains { $0.contains("answering STAMP test packets") })
            let result = try await hosts.client(
                scapyStampXDP,
                ["stamp", hosts.network.serverAddress, "7000", format],
                python: scapyPython
            )
            #expect(result["fields"] as? [Bool] == [Bool](repeating: true, count: 10), "\(result)")
            #expect(result["tlv"] as? Bool == true && result["short"] as? Bool == true, "\(result)")
            #expect(result["loop"] as? Bool == false, "\(result)")
            let counts = try await stopAndCount(server)
            // The base packets and the one with a TLV in XDP. The short one XDP answers by growing the frame where
            // the driver left room after it; a veth leaves none after a small datagram (its buffer is the sender's
            // socket buffer, cut to size), so it goes up and the sockets answer it (the client checked the reply).
            let short = counts["stamp"] ?? 0
            #expect(short <= 1 && counts["xdp-echoed"] == 12 - short && counts["loop"] == 1, "\(counts)")
            #expect(counts["echoed"] == 12, "\(counts)")
        }
    }

    /// On a driver without native XDP (a bridge) `--xdp-mode auto` attaches generically and says so, and
    /// `--xdp-mode native` is refused with what to do.
    @Test func autoFallsBackToGenericWhereTheDriverHasNoNativeXDP() async throws {
        try await withHosts(try await XDPNetwork()) { hosts in
            let network = hosts.network
            let bridge = "uebr0"
            for command in [["link", "add", bridge, "type", "bridge"], ["link", "set", bridge, "up"]] {
                let result = try await Spawned.run(TestNetwork.ip, ["-n", network.server] + command)
                #expect(result.status == 0, "\(result.error)")
            }
            let auto = try Spawned(
                TestNetwork.ip,
                ["netns", "exec", network.server, udpecho, "server", "--address", ":7001", "-q", "--xdp", bridge]
            )
            let line = await auto.waitForLine(timeout: 60) { $0.hasPrefix("xdp: answering") }
            #expect(line?.contains("(generic: generic XDP, after the driver") == true, "\(auto.outputLines)")
            let counts = try await stopAndCount(auto)
            #expect(counts["xdp-echoed"] == 0, "\(counts)")
            let native = try await network.run(
                in: network.server,
                [udpecho, "server", "--address", ":7001", "--xdp", bridge, "--xdp-mode", "native"]
            )
            #expect(native.status == 1 && native.error.contains("its driver has no native XDP"), "\(native.error)")
        }
    }

    /// A server on the wildcard address answers in XDP for an address added to the host while it runs (the program's
    /// copy of this host's addresses is refreshed every second): before, the sockets answer it. With a few addresses
    /// the program compares them in place; with more than its 8 slots it looks them up in its map: both are tested.
    @Test func anAddressAddedWhileItRunsIsAnsweredInXDP() async throws {
        try await withHosts(try await XDPNetwork()) { hosts in
            let network = hosts.network
            let server = try await hosts.startServer([])
            let prefix = network.serverAddress.split(separator: ".").dropLast().joined(separator: ".")
            func add(_ last: Int) async throws -> String {
                let address = "\(prefix).\(last)"
                let added = try await Spawned.run(
                    TestNetwork.ip,
                    ["-n", network.server, "addr", "add", "\(address)/32", "dev", network.serverLink]
                )
                #expect(added.status == 0, "\(added.error)")
                let route = try await Spawned.run(
                    TestNetwork.ip,
                    ["-n", network.client, "route", "add", "\(address)/32", "dev", network.clientLink]
                )
                #expect(route.status == 0, "\(route.error)")
                return address
            }
            // One more address: the host has about six (its two on the veth, a link-local one, loopback's two).
            let first = try await add(77)
            try await Task.sleep(for: .seconds(3))  // three refreshes' time
            let inPlace = try await hosts.client(pythonXDPClient, ["plain", first, "7000", "10"])
            #expect(inPlace["answered"] as? Int == 10, "\(inPlace)")
            // Nine more: past the slots.
            var last = first
            for number in 78...86 { last = try await add(number) }
            try await Task.sleep(for: .seconds(3))
            let inTheMap = try await hosts.client(pythonXDPClient, ["plain", last, "7000", "10"])
            #expect(inTheMap["answered"] as? Int == 10, "\(inTheMap)")
            let counts = try await stopAndCount(server)
            #expect(counts["xdp-echoed"] == 20 && counts["echoed"] == 20, "\(counts)")
        }
    }

    /// Generic mode, asked for, is what the server says it has; the metrics count what XDP answered as the server's.
    @Test func genericModeIsSaidAndCounted() async throws {
        try await withHosts(try await XDPNetwork()) { hosts in
            let server = try await hosts.startServer(["--xdp-mode", "generic", "--metrics", "127.0.0.1:9107"])
            #expect(server.outputLines.contains { $0.contains("(generic: generic XDP, after the driver") })
            let result = try await hosts.client(pythonXDPClient, ["plain", hosts.network.serverAddress, "7000", "20"])
            #expect(result["answered"] as? Int == 20)
            let scrape = try await hosts.network.run(
                in: hosts.network.server,
                [
                    "python3", "-c",
                    "import urllib.request; print(urllib.request.urlopen('http://127.0.0.1:9107/metrics').read().decode())",
                ]
            )
            let metrics = scrape.lines
            #expect(metrics.contains("udpecho_xdp_answered_total 20"), "\(metrics)")
            #expect(metrics.contains("udpecho_datagrams_total{direction=\"echoed\"} 20"), "\(metrics)")
            #expect(
                metrics.contains(
                    "udpecho_xdp_attached{interface=\"\(hosts.network.serverLink)\",mode=\"generic\"} 1.0"
                ),
                "\(metrics)"
            )
            let counts = try await stopAndCount(server)
            #expect(counts["xdp-echoed"] == 20, "\(counts)")
        }
    }
}
