import CUDPEcho
import NIOCore

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// The XDP program as the kernel runs it (BPF_PROG_TEST_RUN), each input a frame, judged against a model of what the
/// socket path would accept. The program's memory safety is the verifier's; what this target looks for is a frame
/// answered in XDP that the stack would have dropped, a reply the client's stack would drop, a frame changed and then
/// not answered, and counters that disagree with the action.
extension FuzzHarness {
    /// The servers the frames go to: the first byte of the input picks one.
    private enum XDPServer: Int, CaseIterable {
        case echo4, echo6, stamp4, unguarded4

        var local: SocketAddress {
            switch self {
            case .echo4, .unguarded4: try! SocketAddress(ipAddress: "198.51.100.1", port: 7000)
            case .echo6: try! SocketAddress(ipAddress: "2001:db8::1", port: 7000)
            case .stamp4: try! SocketAddress(ipAddress: "198.51.100.1", port: 862)
            }
        }

        var guards: GuardConfiguration {
            switch self {
            case .unguarded4: .none
            default: GuardConfiguration()
            }
        }
    }

    /// The bytes of a frame in its first buffer under BPF_PROG_TEST_RUN: a page less the headroom (256) and the
    /// shared info (320).
    static let firstXDPBuffer = 3520

    /// One loaded program a server (loading runs the verifier: about half a second), kept for the process.
    nonisolated(unsafe) private static var xdpPaths: [XDPServer: XDPPath] = [:]

    private static func xdpPath(_ server: XDPServer) -> XDPPath {
        if let path = Self.xdpPaths[server] { return path }
        do {
            let path = try XDPPath(
                XDPConfiguration(interface: "lo"),
                local: server.local,
                guards: server.guards,
                stamp: server == .stamp4 ? StampReflectorConfiguration() : nil,
                reflectTOS: false,
                attach: false
            )
            Self.xdpPaths[server] = path
            return path
        } catch {
            preconditionFailure("the xdp-program target loads the program (as root, or with CAP_BPF): \(error)")
        }
    }

    static func xdpProgram(_ data: UnsafeRawBufferPointer) {
        guard let selector = data.first, let server = XDPServer(rawValue: Int(selector) % XDPServer.allCases.count)
        else { return }
        // Bits 2 and 3 of the first byte: make the IPv4 header's and the UDP checksum right, so that mutations
        // reach past the checksum checks (the guards, STAMP's TLVs) instead of stopping there.
        var frame = Array(data.dropFirst())
        XDPFrameModel.fixChecksums(&frame, header: selector & 4 != 0, udp: selector & 8 != 0)
        // The kernel's test run wants at least an Ethernet header; a frame past its first buffer (3520 bytes) it
        // hands the program in several, as a driver does a jumbo frame: up to a 9000-byte MTU's.
        guard frame.count >= 14, frame.count <= 9018 else { return }
        let path = Self.xdpPath(server)
        let before = path.counterTotals()
        let result: (action: UInt32, frame: [UInt8])
        do {
            result = try path.testRun(frame)
        } catch {
            preconditionFailure("a test run failed: \(error)")
        }
        let after = path.counterTotals()
        let changed = (0..<after.count).filter { after[$0] != before[$0] }
        let judged = Set(
            [UDPECHO_XDP_SEEN, UDPECHO_XDP_JUDGED_BYTES, UDPECHO_XDP_ECHOED_BYTES].map { Int($0.rawValue) }
        )
        let outcomes = changed.filter { !judged.contains($0) && !Self.rateBookkeeping.contains($0) }
        // Which counters moved is the fuzzer's view into the program: an edge of the harness's each.
        for outcome in outcomes { Self.feedback(outcome) }
        let xdpTX: UInt32 = 3
        let xdpDrop: UInt32 = 1
        let xdpPass: UInt32 = 2
        switch result.action {
        case xdpTX:
            let answered = Int((server == .stamp4 ? UDPECHO_XDP_REFLECTED : UDPECHO_XDP_ECHOED).rawValue)
            precondition(outcomes == [answered], "answered, but the counters say \(outcomes)")
            guard let request = XDPFrameModel(frame), let reply = XDPFrameModel(result.frame) else {
                preconditionFailure("answered a frame the model cannot read: \(frame) -> \(result.frame)")
            }
            // The program reads the first buffer only: a datagram past it cannot have been checked.
            precondition(
                request.udp + request.length <= Self.firstXDPBuffer,
                "answered a datagram that ends at \(request.udp + request.length), past the first buffer"
            )
            request.checkAnswerable(server: server.local, guarded: server != .unguarded4)
            request.checkReply(reply, stamp: server == .stamp4)
            if server == .stamp4 { Self.compareWithTheSocketReflector(request, reply, local: server.local) }
        case xdpDrop:
            precondition(result.frame == frame, "dropped, but changed the frame")
            precondition(outcomes.count == 1 && Self.drops.contains(outcomes[0]), "dropped, counters \(outcomes)")
            precondition(server != .unguarded4, "the unguarded server dropped a frame (counters \(outcomes))")
        case xdpPass:
            precondition(result.frame == frame, "passed up, but changed the frame")
            precondition(outcomes.count <= 1, "passed up, counters \(outcomes)")
            if let reason = outcomes.first {
                precondition(Self.passes.contains(reason), "passed up, counter \(reason)")
            }
        default:
            preconditionFailure("the program returned \(result.action) (only XDP_TX, XDP_PASS, XDP_DROP)")
        }
    }

    /// The socket path's reflector (the code that answers when XDP does not), given the same test packet, with the
    /// addresses, ports, TTL and TOS it arrived with: it must answer too, with the same error estimate and the same
    /// TLVs byte for byte (Location, Class of Service, Timestamp Information, the U and M flags). The timestamps
    /// differ (two clocks read at two moments), and are not compared.
    private static func compareWithTheSocketReflector(
        _ request: XDPFrameModel,
        _ reply: XDPFrameModel,
        local: SocketAddress
    ) {
        var reflector = StampReflector(StampReflectorConfiguration(), localAddress: local)
        var packet = Array(request.payload)
        let capacity = max(packet.count, 64)
        let slot = UnsafeMutableRawBufferPointer.allocate(byteCount: capacity, alignment: 16)
        defer { slot.deallocate() }
        packet.withUnsafeBytes { slot.copyMemory(from: $0) }
        let source = request.source.map(String.init).joined(separator: ".")
        let peer = try! SocketAddress(ipAddress: source, port: request.sourcePort)
        var destination:
            (
                UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8,
                UInt8
            ) =
                (0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0)
        withUnsafeMutableBytes(of: &destination) { $0.copyBytes(from: request.destination) }
        let info = cudpecho_datagram_info(
            timestamp: 0,
            ttl: Int16(request.ttl),
            tos: Int16(request.tos),
            family: AF_INET,
            destination: destination
        )
        var now = timespec()
        clock_gettime(CLOCK_REALTIME, &now)
        let transmitTime = Int64(now.tv_sec) * 1_000_000_000 + Int64(now.tv_nsec)
        let outcome = peer.withSockAddr { raw, _ in
            reflector.reflect(
                slot.baseAddress!,
                length: packet.count,
                capacity: capacity,
                peer: raw,
                info: info,
                transmitTime: transmitTime,
                now: transmitTime
            )
        }
        guard case .reply(let length, _) = outcome else {
            preconditionFailure("XDP answered a STAMP packet that the socket reflector does not (\(outcome))")
        }
        packet = Array(UnsafeRawBufferPointer(rebasing: slot[0..<length]))
        let answered = Array(reply.payload)
        precondition(packet.count == answered.count, "socket reply of \(packet.count) bytes, XDP's \(answered.count)")
        precondition(
            packet[12..<14] == answered[12..<14],
            "error estimate: sockets \(packet[12..<14]), XDP \(answered[12..<14])"
        )
        precondition(
            packet[44...] == answered[44...],
            "TLVs: sockets \(Array(packet[44...])), XDP \(Array(answered[44...]))"
        )
    }

    /// One branch a counter (the switch is a branch each in the fuzzer's unoptimized build), so that a new outcome of
    /// the program is new coverage to libFuzzer, which cannot see inside the kernel.
    @inline(never)
    private static func feedback(_ counter: Int) {
        switch counter {
        case 0: Self.outcomeSink &+= 1
        case 1: Self.outcomeSink &+= 2
        case 2: Self.outcomeSink &+= 3
        case 3: Self.outcomeSink &+= 5
        case 4: Self.outcomeSink &+= 7
        case 5: Self.outcomeSink &+= 11
        case 6: Self.outcomeSink &+= 13
        case 7: Self.outcomeSink &+= 17
        case 8: Self.outcomeSink &+= 19
        case 9: Self.outcomeSink &+= 23
        case 10: Self.outcomeSink &+= 29
        case 11: Self.outcomeSink &+= 31
        case 12: Self.outcomeSink &+= 37
        case 13: Self.outcomeSink &+= 41
        case 14: Self.outcomeSink &+= 43
        case 15: Self.outcomeSink &+= 47
        case 16: Self.outcomeSink &+= 53
        case 17: Self.outcomeSink &+= 59
        default: Self.outcomeSink &+= 61
        }
    }
    nonisolated(unsafe) private static var outcomeSink = 0

    private static let rateBookkeeping = Set(
        [UDPECHO_XDP_RATE_NEW_SOURCE, UDPECHO_XDP_RATE_EVICTED].map { Int($0.rawValue) }
    )
    private static let drops = Set(
        [
            UDPECHO_XDP_DROP_OVERSIZE, UDPECHO_XDP_DROP_SOURCE_PORT, UDPECHO_XDP_DROP_SOURCE_ADDRESS,
            UDPECHO_XDP_DROP_OWN_ENDPOINT, UDPECHO_XDP_DROP_DENIED, UDPECHO_XDP_DROP_LOOP,
            UDPECHO_XDP_DROP_RATE_LIMITED, UDPECHO_XDP_DROP_OVER_BUDGET,
        ].map { Int($0.rawValue) }
    )
    private static let passes = Set(
        [
            UDPECHO_XDP_PASS_FRAGMENT, UDPECHO_XDP_PASS_OPTIONS, UDPECHO_XDP_PASS_STAMP, UDPECHO_XDP_PASS_CHECKSUM,
            UDPECHO_XDP_PASS_OTHER,
        ].map { Int($0.rawValue) }
    )
}

/// An Ethernet frame read as the stack would read it, for the XDP fuzz target's judgement: nil unless it is an
/// IPv4 (no options, not a fragment, its header checksum right) or IPv6 (no extension header) UDP datagram whose
/// lengths agree, behind at most two VLAN tags.
struct XDPFrameModel {
    let bytes: [UInt8]
    let l3: Int
    let ipv4: Bool
    let udp: Int
    let length: Int

    init?(_ bytes: [UInt8]) {
        self.bytes = bytes
        func word(_ at: Int) -> Int { Int(bytes[at]) << 8 | Int(bytes[at + 1]) }
        guard let (offset, proto) = Self.network(bytes) else { return nil }
        self.l3 = offset
        if proto == 0x0800 {
            guard bytes.count >= offset + 20, bytes[offset] == 0x45, bytes[offset + 9] == 17 else { return nil }
            guard Self.fold(Self.sum(bytes[offset..<offset + 20])) == 0xFFFF else { return nil }
            guard word(offset + 6) & 0x3FFF == 0 else { return nil }  // MF or an offset: a fragment
            let total = word(offset + 2)
            guard total >= 28, bytes.count >= offset + total else { return nil }
            self.ipv4 = true
            self.udp = offset + 20
            self.length = total - 20
        } else if proto == 0x86DD {
            guard bytes.count >= offset + 48, bytes[offset] >> 4 == 6, bytes[offset + 6] == 17 else { return nil }
            let payload = word(offset + 4)
            guard payload >= 8, bytes.count >= offset + 40 + payload else { return nil }
            self.ipv4 = false
            self.udp = offset + 40
            self.length = payload
        } else {
            return nil
        }
        guard word(self.udp + 4) == self.length else { return nil }
    }

    /// Where a frame's network header starts, and its EtherType, past up to two VLAN tags (802.1Q, 802.1ad).
    static func network(_ bytes: [UInt8]) -> (offset: Int, proto: Int)? {
        func word(_ at: Int) -> Int { Int(bytes[at]) << 8 | Int(bytes[at + 1]) }
        guard bytes.count >= 14 else { return nil }
        var offset = 14
        var proto = word(12)
        for _ in 0..<2 where proto == 0x8100 || proto == 0x88A8 {
            guard bytes.count >= offset + 4 else { return nil }
            proto = word(offset + 2)
            offset += 4
        }
        return (offset, proto)
    }

    private func word(_ at: Int) -> Int { Int(self.bytes[at]) << 8 | Int(self.bytes[at + 1]) }

    /// Writes the checksums a frame claims into it: the IPv4 header's (`header`) and the UDP datagram's (`udp`, over
    /// the length its header says, where the frame holds that much), wherever the frame is read far enough to find
    /// them. The fuzz target's way past the checksum checks.
    static func fixChecksums(_ bytes: inout [UInt8], header: Bool, udp: Bool) {
        func word(_ at: Int) -> Int { Int(bytes[at]) << 8 | Int(bytes[at + 1]) }
        func put(_ value: Int, at: Int) {
            bytes[at] = UInt8(value >> 8)
            bytes[at + 1] = UInt8(value & 0xFF)
        }
        guard let (l3, proto) = Self.network(bytes) else { return }
        let udpOffset: Int
        let pseudo: Int
        if proto == 0x0800 {
            guard bytes.count >= l3 + 20 else { return }
            let headerLength = Int(bytes[l3] & 0x0F) * 4
            guard headerLength >= 20, bytes.count >= l3 + headerLength else { return }
            if header {
                put(0, at: l3 + 10)
                put(~Self.fold(Self.sum(bytes[l3..<l3 + headerLength])) & 0xFFFF, at: l3 + 10)
            }
            udpOffset = l3 + headerLength
            pseudo = Self.sum(bytes[l3 + 12..<l3 + 20])
        } else if proto == 0x86DD {
            guard bytes.count >= l3 + 40 else { return }
            udpOffset = l3 + 40
            pseudo = Self.sum(bytes[l3 + 8..<l3 + 40])
        } else {
            return
        }
        guard udp, bytes.count >= udpOffset + 8 else { return }
        let length = word(udpOffset + 4)
        guard length >= 8, bytes.count >= udpOffset + length else { return }
        put(0, at: udpOffset + 6)
        let check = ~Self.fold(pseudo + 17 + length + Self.sum(bytes[udpOffset..<udpOffset + length])) & 0xFFFF
        put(check == 0 ? 0xFFFF : check, at: udpOffset + 6)
    }

    static func sum<C: Collection>(_ bytes: C) -> Int where C.Element == UInt8 {
        var total = 0
        var high = true
        for byte in bytes {
            total += high ? Int(byte) << 8 : Int(byte)
            high.toggle()
        }
        return total
    }

    static func fold(_ value: Int) -> Int {
        var sum = value
        while sum > 0xFFFF { sum = (sum & 0xFFFF) + (sum >> 16) }
        return sum
    }

    var source: ArraySlice<UInt8> {
        self.ipv4 ? self.bytes[self.l3 + 12..<self.l3 + 16] : self.bytes[self.l3 + 8..<self.l3 + 24]
    }
    var destination: ArraySlice<UInt8> {
        self.ipv4 ? self.bytes[self.l3 + 16..<self.l3 + 20] : self.bytes[self.l3 + 24..<self.l3 + 40]
    }
    var sourcePort: Int { self.word(self.udp) }
    var ttl: UInt8 { self.bytes[self.l3 + (self.ipv4 ? 8 : 7)] }
    var tos: UInt8 { self.ipv4 ? self.bytes[self.l3 + 1] : UInt8(truncatingIfNeeded: self.word(self.l3) >> 4) }
    var destinationPort: Int { self.word(self.udp + 2) }
    var payload: ArraySlice<UInt8> { self.bytes[self.udp + 8..<self.udp + self.length] }

    /// Whether the UDP checksum verifies (IPv4's 0: none, accepted; IPv6's 0: refused).
    var checksumVerifies: Bool {
        let check = self.word(self.udp + 6)
        if check == 0 { return self.ipv4 }
        let pseudo = Self.sum(self.source) + Self.sum(self.destination) + 17 + self.length
        return Self.fold(pseudo + Self.sum(self.bytes[self.udp..<self.udp + self.length])) == 0xFFFF
    }

    /// Stops the process unless the socket path would have taken this request: to the server's address and port,
    /// its checksum right, and (for a guarded server) from a source and port its guards answer.
    func checkAnswerable(server: SocketAddress, guarded: Bool) {
        let expected = server.withRawAddress { raw, _ in IPKey(raw) }?.bytes
        precondition(Array(self.destination) == expected, "answered a datagram to \(Array(self.destination))")
        precondition(self.destinationPort == server.port, "answered a datagram to port \(self.destinationPort)")
        precondition(self.checksumVerifies, "answered a datagram whose checksum fails")
        // What the stack refuses as a source: unspecified, multicast, loopback, the limited broadcast; over IPv6,
        // an IPv4-mapped address too.
        let source = IPKey(bytes: Array(self.source))!
        let martian =
            source.isUnspecified || source.isMulticast || source.isLoopback || source.ipv4Broadcast
            || (!self.ipv4 && source.isIPv4)
        precondition(!martian, "answered a source the stack refuses: \(Array(self.source))")
        if guarded { precondition(self.sourcePort >= 1024, "answered source port \(self.sourcePort)") }
    }

    /// Stops the process unless `reply` is this request answered: addresses, ports and MACs swapped, VLAN tags kept,
    /// a fresh TTL, checksums the client's stack accepts, and the payload echoed (or, for STAMP, the sender's
    /// fields copied where RFC 8762 puts them).
    func checkReply(_ reply: XDPFrameModel, stamp: Bool) {
        // A STAMP reply is at least the 44-byte base packet: a short (TWAMP-Light) test packet's frame grows.
        let expected = stamp ? max(self.length, 8 + 44) : self.length
        precondition(reply.length == expected, "a reply of \(reply.length) bytes to \(self.length)")
        precondition(stamp || reply.bytes.count == self.bytes.count, "the frame's size changed")
        precondition(reply.l3 == self.l3 && reply.ipv4 == self.ipv4)
        precondition(Array(reply.bytes[0..<6]) == Array(self.bytes[6..<12]), "destination MAC not swapped")
        precondition(Array(reply.bytes[6..<12]) == Array(self.bytes[0..<6]), "source MAC not swapped")
        precondition(Array(reply.bytes[12..<self.l3]) == Array(self.bytes[12..<self.l3]), "VLAN tags changed")
        precondition(reply.source == self.destination && reply.destination == self.source, "addresses not swapped")
        precondition(reply.sourcePort == self.destinationPort && reply.destinationPort == self.sourcePort)
        precondition(reply.bytes[reply.l3 + (self.ipv4 ? 8 : 7)] == 64, "the reply's TTL is not 64")
        let requestCheck = self.word(self.udp + 6)
        if self.ipv4 && requestCheck == 0 {
            precondition(reply.word(reply.udp + 6) == 0, "a checksum appeared")
        } else {
            precondition(reply.checksumVerifies, "the reply's UDP checksum fails")
        }
        if !stamp {
            precondition(reply.payload == self.payload, "the echo's payload differs")
            return
        }
        let request = Array(self.payload) + [UInt8](repeating: 0, count: max(0, 44 - self.payload.count))
        let answer = Array(reply.payload)
        precondition(self.payload.count >= 14, "a STAMP packet shorter than 14 bytes answered in XDP")
        precondition(answer[0..<4] == request[0..<4], "sequence number")
        precondition(answer[14..<16] == request[14..<16], "SSID")
        precondition(answer[24..<28] == request[0..<4], "Session-Sender sequence number")
        precondition(answer[28..<36] == request[4..<12], "Session-Sender timestamp")
        precondition(answer[36..<38] == request[12..<14], "Session-Sender error estimate")
        precondition(answer[40] == self.bytes[self.l3 + (self.ipv4 ? 8 : 7)], "Session-Sender TTL")
    }
}
