import CUDPEcho
import NIOCore

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// How an echo server answers as a STAMP Session-Reflector (RFC 8762, RFC 8972).
public struct StampReflectorConfiguration: Sendable {
    /// The shared key of authenticated mode; nil for unauthenticated mode. In authenticated mode, packets whose HMAC
    /// does not verify are dropped and counted (``DropReason/auth``), never reflected.
    public var key: StampKey?
    /// Stateful: the reflector's own sequence number per session (sender address, port and SSID), so that the
    /// sender can tell forward from backward loss; stateless copies the sender's.
    public var stateful: Bool
    /// The reflector's timestamp format: NTP (default) or PTPv2 truncated.
    public var timestampFormat: StampTimestampFormat
    /// Sessions remembered per serving thread in stateful mode (fixed memory).
    public var sessionTableSize: Int
    /// Whether a sender's Class of Service TLV may choose the DSCP its reply leaves with (DSCP1, RFC 8972 §5.2).
    /// Off by default: anyone can forge a test packet's source, and a reflector that honoured DSCP1 would send
    /// EF or CS7 traffic where a forger asks. When off, the TLV's RP field is 1 (not honoured); what the test
    /// packet arrived with (DSCP2, ECN) is reported either way.
    public var honourClassOfService: Bool

    /// The default STAMP port (RFC 8762 §4.1).
    public static let defaultPort = 862

    /// A reflector's settings; the defaults reflect unauthenticated packets, stateless, with NTP timestamps.
    public init(
        key: StampKey? = nil,
        stateful: Bool = false,
        timestampFormat: StampTimestampFormat = .ntp,
        sessionTableSize: Int = 16384,
        honourClassOfService: Bool = false
    ) {
        self.honourClassOfService = honourClassOfService
        self.key = key
        self.stateful = stateful
        self.timestampFormat = timestampFormat
        self.sessionTableSize = sessionTableSize
    }
}

/// One serving thread's STAMP reflector: turns each test packet in its receive slot into the reflected packet, in
/// place, so that the batched echo path sends it as it sends echoes.
///
/// Every base field the reflector writes is its own or copied from the test packet (the rest is zero); TLVs are
/// reflected in place. The reply is as long as the test packet (symmetric size, RFC 6038), except that a test packet
/// shorter than the base packet (a TWAMP-Light sender's, down to its 14-byte header) is answered with the 44-byte base
/// packet, read as if padded with zeros (RFC 8762 §4.6). So a reply is never longer than 44 bytes or its request.
struct StampReflector {
    enum Outcome {
        /// Send the reply of this length, with this TOS byte if a Class of Service TLV asked for one.
        case reply(length: Int, tos: UInt8?)
        case drop(DropReason)
    }

    private let configuration: StampReflectorConfiguration
    private let layout: StampLayout
    private var sessions: StampSessions?
    private var clock: HostClock
    private var errorEstimate: UInt16
    private var nextClockRead: Int64 = 0
    private let localPort: UInt16
    /// The socket's own address (4 or 16 bytes; empty for a wildcard socket, where PKTINFO says, per datagram).
    private let localAddressBytes: [UInt8]

    init(_ configuration: StampReflectorConfiguration, localAddress: SocketAddress) {
        self.configuration = configuration
        self.layout = configuration.key == nil ? .unauthenticated : .authenticated
        self.sessions = configuration.stateful ? StampSessions(capacity: configuration.sessionTableSize) : nil
        self.clock = HostClock.current()
        self.errorEstimate = self.clock.errorEstimate(configuration.timestampFormat).raw
        self.localPort = UInt16(localAddress.port ?? 0)
        self.localAddressBytes =
            localAddress.isUnspecified
            ? []
            : localAddress.unmappingIPv4.withRawAddress { raw, _ in
                guard let key = IPKey(raw) else { return [] }
                return key.bytes
            }
    }

    /// How close to this reflector's clock a timestamp in a test packet's sender-timestamp field marks the packet as
    /// a reply of ours come back: a minute either way (round trips, and the reflector's own clock steps).
    static let loopWindow: Int64 = 60_000_000_000

    /// Whether a test packet's copy of the sender's timestamp (`echoed`, zero in a test packet) is one this reflector
    /// wrote as T3 within ``loopWindow``: a reply of ours come back.
    static func isOwnReply(
        _ echoed: UInt64,
        format: StampTimestampFormat,
        transmitTime: Int64,
        taiOffset: Int
    ) -> Bool {
        guard echoed != 0 else { return false }
        let age = transmitTime - format.decode(echoed, taiOffset: taiOffset)
        return age > -Self.loopWindow && age < Self.loopWindow
    }

    /// Sessions in the stateful table now.
    var sessionCount: Int { self.sessions?.count ?? 0 }

    /// Reads the clock's synchronization again, at most once a second; called once per batch.
    mutating func refreshClock(now: Int64) {
        guard now >= self.nextClockRead else { return }
        self.clock = HostClock.current()
        self.errorEstimate = self.clock.errorEstimate(self.configuration.timestampFormat).raw
        self.nextClockRead = now + 1_000_000_000
    }

    /// Builds the reflected packet of the test packet in `packet[0..<length]`, in place.
    ///
    /// - Parameters:
    ///   - capacity: The slot's size (the reply never goes past it).
    ///   - peer: The test packet's source.
    ///   - info: What the kernel said about it (receive timestamp, TTL, TOS, destination).
    ///   - transmitTime: T3, CLOCK_REALTIME ns: when the batch's replies are sent.
    mutating func reflect(
        _ packet: UnsafeMutableRawPointer,
        length: Int,
        capacity: Int,
        peer: UnsafePointer<sockaddr>,
        info: cudpecho_datagram_info,
        transmitTime: Int64,
        now: Int64
    ) -> Outcome {
        let layout = self.layout
        if let key = self.configuration.key {
            guard length >= layout.size else { return .drop(.malformed) }
            let signed = UnsafeRawBufferPointer(start: packet, count: layout.hmac!)
            guard key.verify(signed, mac: UnsafeRawPointer(packet + layout.hmac!)) else { return .drop(.auth) }
        } else {
            guard length >= StampLayout.shortestTestPacket else { return .drop(.malformed) }
        }
        let replyLength = max(length, layout.size)
        guard replyLength <= capacity else { return .drop(.malformed) }
        if length < layout.size {
            (packet + length).initializeMemory(as: UInt8.self, repeating: 0, count: layout.size - length)
        }

        let source = UnsafeRawPointer(packet)
        // A reflected packet coming back as a test packet: another reflector answered one of our replies (a loop
        // between two reflectors, started by a test packet with a forged source). Where a reflected packet copies the
        // sender's timestamp, it then carries the T3 this reflector wrote a round trip ago. A test packet has zeros
        // there (MBZ), or a TWAMP-Light sender's padding, which falls within a minute of this clock by chance once in
        // 3.6e7 packets; so a sender's random padding is answered, and a loop ends at its second pass through here.
        if Self.isOwnReply(
            source.loadBigEndian(UInt64.self, at: layout.senderTimestamp),
            format: self.configuration.timestampFormat,
            transmitTime: transmitTime,
            taiOffset: self.clock.taiOffset
        ) {
            return .drop(.loop)
        }
        let senderSequence = source.loadBigEndian(UInt32.self, at: layout.sequence)
        let senderTimestamp = source.loadUnaligned(fromByteOffset: layout.timestamp, as: UInt64.self)
        let senderErrorEstimate = source.loadUnaligned(fromByteOffset: layout.errorEstimate, as: UInt16.self)
        let ssid = source.loadBigEndian(UInt16.self, at: layout.ssid)
        let port = UInt16(bigEndian: peer.withMemoryRebound(to: sockaddr_in.self, capacity: 1) { $0.pointee.sin_port })

        var sequence = senderSequence
        if self.sessions != nil, let address = IPKey(peer) {
            sequence = self.sessions!.next(address, port: port, ssid: ssid, now: now)
        }
        var tlvs = StampTLVs.Reflection()
        if replyLength > layout.size {
            let context = Self.context(
                peer: peer,
                port: port,
                info: info,
                local: (self.localAddressBytes, self.localPort),
                clock: self.clock
            )
            tlvs = StampTLVs.reflect(
                packet,
                from: layout.size,
                to: replyLength,
                context: context,
                key: self.configuration.key,
                honourDSCP: self.configuration.honourClassOfService
            )
        }

        let format = self.configuration.timestampFormat
        let receiveTime = info.timestamp != 0 ? info.timestamp : transmitTime
        packet.initializeMemory(as: UInt8.self, repeating: 0, count: layout.size)
        packet.storeBigEndian(sequence, at: layout.sequence)
        packet.storeBigEndian(format.encode(transmitTime, taiOffset: self.clock.taiOffset), at: layout.timestamp)
        packet.storeBigEndian(self.errorEstimate, at: layout.errorEstimate)
        packet.storeBigEndian(ssid, at: layout.ssid)
        packet.storeBigEndian(format.encode(receiveTime, taiOffset: self.clock.taiOffset), at: layout.receiveTimestamp)
        packet.storeBigEndian(senderSequence, at: layout.senderSequence)
        // The sender's timestamp and error estimate are copied as they came (byte order kept).
        packet.storeBytes(of: senderTimestamp, toByteOffset: layout.senderTimestamp, as: UInt64.self)
        packet.storeBytes(of: senderErrorEstimate, toByteOffset: layout.senderErrorEstimate, as: UInt16.self)
        packet.storeBytes(of: UInt8(clamping: max(0, Int(info.ttl))), toByteOffset: layout.senderTTL, as: UInt8.self)
        if let key = self.configuration.key {
            key.sign(UnsafeRawBufferPointer(start: packet, count: layout.hmac!), into: packet + layout.hmac!)
            if let tlv = tlvs.hmacTLV { StampTLVs.sign(packet, from: layout.size, tlv: tlv, key: key) }
        }
        return .reply(length: replyLength, tos: tlvs.requestedTOS)
    }

    private static func context(
        peer: UnsafePointer<sockaddr>,
        port: UInt16,
        info: cudpecho_datagram_info,
        local: (address: [UInt8], port: UInt16),
        clock: HostClock
    ) -> StampPacketContext {
        let source = IPKey(peer)?.bytes ?? []
        var destination = local.address
        var info = info
        withUnsafeBytes(of: &info.destination) { bytes in
            if info.family == AF_INET6 {
                let mapped = bytes.prefix(12).elementsEqual([0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff])
                destination = mapped ? Array(bytes[12..<16]) : Array(bytes.prefix(16))
            } else if info.family == AF_INET {
                destination = Array(bytes.prefix(4))
            }
        }
        return StampPacketContext(
            sourceAddress: source,
            sourcePort: port,
            destinationAddress: destination,
            destinationPort: local.port,
            receivedTOS: info.tos >= 0 ? UInt8(truncatingIfNeeded: info.tos) : nil,
            synchronized: clock.synchronized
        )
    }
}
