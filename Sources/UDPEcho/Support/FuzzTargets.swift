import CUDPEcho
import NIOCore

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// Entry points for coverage-guided fuzzing: one per parser that reads input an attacker or a careless operator
/// chooses. Each takes arbitrary bytes, runs the parser as the program runs it, and stops the process (a
/// precondition) where a result breaks what the rest of the program relies on; a crash in the parser itself stops it
/// too. libFuzzer drives them in `udpecho-fuzz` (`scripts/fuzz.sh TARGET SECONDS`); the tests run every seed and
/// every input a run ever crashed on through them.
///
/// Not API: a System Programming Interface for the fuzzer and the tests (`@_spi(Fuzzing) import UDPEcho`).
@_spi(Fuzzing)
public enum FuzzTarget: String, CaseIterable, Sendable {
    /// A test packet at the STAMP reflector: unauthenticated or authenticated, stateless or stateful, with or
    /// without honouring Class of Service (the first byte chooses), then the bytes as the packet.
    case stampReflector = "stamp-reflector"
    /// A reply at the STAMP sender: the base fields, then the TLVs (the first byte chooses the mode).
    case stampSender = "stamp-sender"
    /// The request bytes a client sends to the metrics endpoint (`--metrics`): the HTTP decoder and the handler.
    case metricsRequest = "metrics-request"
    /// A mesh peers file (`--peers-file`), whole.
    case peersFile = "peers-file"
    /// Text given to the options that take a `HOST:PORT`, a duration, a prefix, an ECN or DSCP name.
    case arguments
    /// A reply that claims to carry a marking report (`ping --marking`).
    case markingReport = "marking-report"
    /// Control messages as `recvmmsg` leaves them, read by the C shim: a received datagram's (PKTINFO, TTL, TOS,
    /// timestamps, GRO) and an error queue's (IP_RECVERR).
    case controlMessages = "control-messages"
    /// Bytes from a TWAMP control client at the server, from the Set-Up-Response on: unauthenticated, or (the first
    /// byte chooses) authenticated and encrypted with the client's side sealing each message, so that the bytes reach
    /// the request parser behind the cipher.
    case twampControlServer = "twamp-control-server"
    /// A TWAMP server's answers at the client: Server Greeting, Server-Start, Accept-Session, Start-Ack.
    case twampControlClient = "twamp-control-client"
    /// A TWAMP test packet at the reflector, from the sender of a running session in one of the three modes.
    case twampReflector = "twamp-reflector"
    /// A key file in perfSONAR's pfstore format (`--key-file`).
    case keyFile = "key-file"
    /// OWAMP-Control as a server reads it: a client's messages after the greeting (in the keyed modes, sealed).
    case owampControlServer = "owamp-control-server"
    /// OWAMP's messages decoded and encoded back: Stop-Sessions, Fetch-Session, Fetch-Ack, slots, records.
    case owampMessages = "owamp-messages"
    /// An OWAMP test packet as a receiver decodes it, in each mode.
    case owampTestPacket = "owamp-test-packet"
    /// An exporter configuration file (YAML), whole.
    case exporterConfiguration = "exporter-config"
    /// A scrape's URI and headers at the exporter's `/probe`, admitted or refused.
    case exporterRequest = "exporter-request"
    /// A frame at the XDP program (`--xdp`), run by the kernel (BPF_PROG_TEST_RUN; needs root or CAP_BPF): an echo
    /// server on IPv4 or IPv6, a STAMP reflector, or an echo server without guards (the first byte chooses).
    case xdpProgram = "xdp-program"

    /// Runs the target once over `data`.
    public func run(_ data: UnsafeRawBufferPointer) {
        switch self {
        case .stampReflector: FuzzHarness.stampReflector(data)
        case .stampSender: FuzzHarness.stampSender(data)
        case .metricsRequest: FuzzHarness.metricsRequest(data)
        case .peersFile: FuzzHarness.peersFile(data)
        case .arguments: FuzzHarness.arguments(data)
        case .markingReport: FuzzHarness.markingReport(data)
        case .controlMessages: FuzzHarness.controlMessages(data)
        case .twampControlServer: FuzzHarness.twampControlServer(data)
        case .twampControlClient: FuzzHarness.twampControlClient(data)
        case .twampReflector: FuzzHarness.twampReflector(data)
        case .keyFile: FuzzHarness.keyFile(data)
        case .owampControlServer: FuzzHarness.owampControlServer(data)
        case .owampMessages: FuzzHarness.owampMessages(data)
        case .owampTestPacket: FuzzHarness.owampTestPacket(data)
        case .exporterConfiguration: FuzzHarness.exporterConfiguration(data)
        case .exporterRequest: FuzzHarness.exporterRequest(data)
        case .xdpProgram: FuzzHarness.xdpProgram(data)
        }
    }
}

enum FuzzHarness {
    /// A fixed key: the fuzzer cannot forge an HMAC, so with it the authenticated paths stop at verification, as
    /// they must; the unauthenticated modes reach everything after it.
    private static let key = try! StampKey(bytes: Array("udpecho fuzzing key".utf8))

    static func stampReflector(_ data: UnsafeRawBufferPointer) {
        guard let mode = data.first else { return }
        let packet = UnsafeRawBufferPointer(rebasing: data.dropFirst())
        let configuration = StampReflectorConfiguration(
            key: mode & 1 != 0 ? Self.key : nil,
            stateful: mode & 2 != 0,
            timestampFormat: mode & 4 != 0 ? .ptp : .ntp,
            sessionTableSize: 4,
            honourClassOfService: mode & 8 != 0
        )
        let ipv6 = mode & 16 != 0
        let local = try! SocketAddress(ipAddress: ipv6 ? "::1" : "127.0.0.1", port: 862)
        let peer = try! SocketAddress(ipAddress: ipv6 ? "::1" : "127.0.0.1", port: 40000 + Int(mode))
        var reflector = StampReflector(configuration, localAddress: local)
        // The slot is as large as the receive buffer is; the request at its start.
        let capacity = max(packet.count, 64) + Int(mode >> 5) * 8
        let slot = UnsafeMutableRawBufferPointer.allocate(byteCount: capacity, alignment: 16)
        defer { slot.deallocate() }
        slot.copyMemory(from: packet)
        var info = cudpecho_datagram_info(
            timestamp: 1_700_000_000_000_000_000,
            ttl: 64,
            tos: 0xB9,
            family: 0,
            destination: (0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0)
        )
        if mode & 32 != 0 {
            info.ttl = -1
            info.tos = -1
        }
        let now: Int64 = 1_700_000_000_000_000_100
        // Twice: a stateful reflector's second answer reads the session the first one made.
        for _ in 0..<2 {
            let outcome = peer.withSockAddr { raw, _ in
                reflector.reflect(
                    slot.baseAddress!,
                    length: packet.count,
                    capacity: capacity,
                    peer: raw,
                    info: info,
                    transmitTime: now,
                    now: now
                )
            }
            if case .reply(let length, _) = outcome {
                // A reply is never longer than the slot, nor than the longer of the request and the base packet.
                precondition(length <= capacity, "reply of \(length) bytes in a slot of \(capacity)")
                precondition(length <= max(packet.count, StampLayout.authenticated.size), "reply grew: \(length)")
            }
            slot.copyMemory(from: packet)
        }
    }

    static func stampSender(_ data: UnsafeRawBufferPointer) {
        guard let mode = data.first else { return }
        let reply = UnsafeRawBufferPointer(rebasing: data.dropFirst())
        let configuration = StampSenderConfiguration(
            key: mode & 1 != 0 ? Self.key : nil,
            ssid: 7,
            location: mode & 2 != 0,
            classOfService: mode & 4 != 0 ? 46 : nil
        )
        // The receive path hands the decoder a buffer with a base address even when the datagram is empty.
        let copy = UnsafeMutableRawBufferPointer.allocate(byteCount: max(reply.count, 1), alignment: 16)
        defer { copy.deallocate() }
        copy.copyMemory(from: reply)
        let bytes = UnsafeRawBufferPointer(rebasing: UnsafeRawBufferPointer(copy)[0..<reply.count])
        if case .success = StampReplyDecoder.decode(bytes, configuration) {
            let tlvs = StampReplyDecoder.tlvs(bytes, from: min(configuration.layout.size, bytes.count))
            if let source = tlvs.source { precondition(source.utf8.count < 64, "source \(source)") }
        }
    }

    static func metricsRequest(_ data: UnsafeRawBufferPointer) {
        MetricsEndpoint.fuzz(request: data)
    }

    static func peersFile(_ data: UnsafeRawBufferPointer) {
        switch MeshPeerList.parse(bytes: Array(data), defaultPort: 1337) {
        case .success(let peers):
            precondition(peers.count <= data.count, "\(peers.count) peers from \(data.count) bytes")
            for peer in peers { precondition((0...65535).contains(peer.endpoint.port), "port \(peer.endpoint.port)") }
        case .failure(let error):
            // The message quotes at most ten bad lines, each cut short: it stays a screenful whatever the file.
            precondition(error.description.utf8.count < 4096, "a \(error.description.utf8.count)-byte error")
        }
    }

    static func arguments(_ data: UnsafeRawBufferPointer) {
        let text = String(decoding: data, as: UTF8.self)
        if let address = try? HostAndPort(parsing: text) {
            // What the options print is read back as the same pair.
            let again = try? HostAndPort(parsing: address.description)
            precondition(again == address, "\(text) read as \(address), written as \(address.description)")
        }
        if let duration = try? Duration(parsing: text) {
            precondition(duration >= .zero, "\(text) is a negative duration")
        }
        _ = try? IPPrefix(parsing: text)
        _ = ECN(name: text)
        _ = MeshPeerList.peer(text, defaultPort: 1337)
    }

    static func markingReport(_ data: UnsafeRawBufferPointer) {
        // The server's side: a datagram that may carry the request gets the report filled in, and nothing else of it
        // changes.
        let copy = UnsafeMutableRawBufferPointer.allocate(byteCount: max(data.count, 1), alignment: 16)
        defer { copy.deallocate() }
        copy.copyMemory(from: data)
        if MarkingReport.fill(copy.baseAddress!, length: data.count, tos: 0xB8, ttl: 63) {
            let report = MarkingReport.offset + MarkingReport.request.count
            for index in 0..<data.count where !(report..<report + 4).contains(index) {
                precondition(copy[index] == data[index], "byte \(index) of a filled report changed")
            }
        }
        // The client's side.
        let reply = UnsafeRawBufferPointer(rebasing: UnsafeRawBufferPointer(copy)[0..<data.count])
        guard let fields = MarkingReport.read(reply) else { return }
        if let ttl = fields.ttl { precondition((0...255).contains(ttl), "ttl \(ttl)") }
    }

    static func controlMessages(_ data: UnsafeRawBufferPointer) {
        // recvmmsg's control buffer is aligned for cmsghdr; the fuzzer's bytes are copied into one that is.
        let buffer = UnsafeMutableRawBufferPointer.allocate(
            byteCount: max(data.count, 1),
            alignment: MemoryLayout<cmsghdr>.alignment
        )
        defer { buffer.deallocate() }
        buffer.copyMemory(from: data)
        var info = cudpecho_datagram_info()
        var segment: UInt16 = 0
        let family = cudpecho_parse_control(buffer.baseAddress, data.count, &info, &segment)
        precondition(family == 0 || family == AF_INET || family == AF_INET6, "family \(family)")
        precondition(info.tos >= -1 && info.tos <= 255, "tos \(info.tos)")
        var error = cudpecho_error_info()
        _ = cudpecho_parse_error_control(buffer.baseAddress, data.count, 0, &error)
        _ = cudpecho_parse_error_control(buffer.baseAddress, data.count, 1, &error)
    }
}
