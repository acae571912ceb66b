#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// How `ping --stamp` builds its test packets (a STAMP Session-Sender, RFC 8762 §4.2, RFC 8972).
public struct StampSenderConfiguration: Sendable {
    /// The shared key of authenticated mode; nil for unauthenticated mode.
    public var key: StampKey?
    /// The Session-Sender Identifier of this run (RFC 8972 §3).
    public var ssid: UInt16
    /// Ask the reflector, with a Location TLV, for the addresses and ports it saw (NAT on the way shows).
    public var location: Bool
    /// Ask the reflector, with a Class of Service TLV, to send its replies with this DSCP, and to say which DSCP and
    /// ECN the test packets arrived with.
    public var classOfService: UInt8?
    /// T1's format.
    public var timestampFormat: StampTimestampFormat

    /// A sender's settings; the defaults send unauthenticated packets with NTP timestamps and no TLVs.
    public init(
        key: StampKey? = nil,
        ssid: UInt16 = UInt16.random(in: 1...UInt16.max),
        location: Bool = false,
        classOfService: UInt8? = nil,
        timestampFormat: StampTimestampFormat = .ntp
    ) {
        self.key = key
        self.ssid = ssid
        self.location = location
        self.classOfService = classOfService
        self.timestampFormat = timestampFormat
    }

    /// TWAMP test packets of a session TWAMP-Control negotiated (RFC 5357 §4.1.2), set by ``TwampPinger``, instead
    /// of STAMP's: no SSID or TLVs, and in the keyed modes the session's AES and HMAC-SHA1 instead of STAMP's
    /// HMAC-SHA-256. A reflected TWAMP packet has a STAMP packet's fields in the same places.
    var twamp: TwampTestFormat?

    var layout: StampLayout {
        if let twamp { return twamp.cipher == nil ? .unauthenticated : .authenticated }
        return self.key == nil ? .unauthenticated : .authenticated
    }

    /// The TLVs after the base packet, as the sender sends them (the reflector fills them in).
    func tlvTemplate(ipv6: Bool) -> [UInt8] {
        var bytes: [UInt8] = []
        guard self.twamp == nil else { return bytes }
        if self.location {
            // Ports, then the generic Source IP and Destination IP sub-TLVs (RFC 8972 §4.2.1): 16 zero bytes each,
            // which the reflector answers with the addresses it saw, of whichever family.
            let size = UInt8(StampLocationSubTLV.addressLength)
            bytes += [0, StampTLVType.location.rawValue, 0, 4 + 2 * (4 + size)] + [0, 0, 0, 0]
            bytes += [0, StampLocationSubTLV.sourceIP, 0, size] + [UInt8](repeating: 0, count: Int(size))
            bytes += [0, StampLocationSubTLV.destinationIP, 0, size] + [UInt8](repeating: 0, count: Int(size))
        }
        if let dscp = self.classOfService {
            bytes += [0, StampTLVType.classOfService.rawValue, 0, 4, (dscp & 0x3F) << 2, 0, 0, 0]
        }
        return bytes
    }

    /// The size of a test packet without padding: the base packet and the TLVs (the same for either family: a
    /// Location TLV's address sub-TLVs are 16 bytes for IPv4 too; `ipv6` is kept for TLVs that may differ).
    public func minimumSize(ipv6: Bool) -> Int {
        if let twamp { return twamp.senderSize }
        return self.layout.size + self.tlvTemplate(ipv6: ipv6).count
    }
}

/// What a reflected packet said, decoded.
public struct StampReply: Sendable, Equatable {
    /// Which probe: its sequence number (this run's), the reply's size.
    public var sequence: UInt64
    /// The reply's size in bytes.
    public var bytes: Int
    /// The round trip (as ``ProbeEvent/reply(sequence:bytes:roundTrip:lateness:outOfOrder:marks:)``), and how late the
    /// probe left, in nanoseconds.
    public var roundTrip: Int64
    /// How late the probe left against its schedule, in nanoseconds.
    public var lateness: Int64
    /// Whether a probe sent later was answered first.
    public var outOfOrder: Bool
    /// The reflector's own sequence number: the sender's copied (stateless) or its counter (stateful).
    public var reflectorSequence: UInt32
    /// T3 - T2: how long the reflector held the packet, by its clock (nanoseconds).
    public var reflectorTime: Int64
    /// T2 - T1 and T4 - T3: forward and backward delay (nanoseconds). They compare two clocks, so they mean
    /// something only when both are synchronized; their difference shows the offset between the clocks.
    public var forwardDelay: Int64
    /// T4 - T3: the backward delay (nanoseconds).
    public var backwardDelay: Int64
    /// The TTL or hop limit the test packet arrived at the reflector with.
    public var ttlAtReflector: UInt8
    /// The reflector's error estimate: whether its clock is synchronized, and its timestamps' format.
    public var reflectorErrorEstimate: StampErrorEstimate
    /// From a Class of Service TLV: the TOS byte (DSCP << 2 | ECN) the test packet arrived at the reflector with.
    public var tosAtReflector: UInt8?
    /// The TOS byte the reply arrived here with, where the socket reported it.
    public var tosHere: UInt8?
    /// From a Class of Service TLV: whether the reflector sent the reply with the DSCP asked of it (RP 0), or
    /// declined (RP 1: its policy, such as udpecho's without `--reflect-tos`).
    public var dscpHonoured: Bool?
    /// The TTL or hop limit the reply arrived here with, where the socket reported it.
    public var ttlHere: Int?
    /// From a Location TLV: the source address and port the reflector saw.
    public var sourceSeenByReflector: String?
    /// Whether the answer was our own test packet unchanged: an echo server, not a reflector (no reflector fields).
    public var plainEcho: Bool
}

/// Decoding reflected packets for a sender.
enum StampReplyDecoder {
    /// The fields of a reflected packet, or why it is not one of ours.
    struct Fields {
        var senderSequence: UInt32
        var senderTimestamp: UInt64  // as sent, in host order of the wire's big-endian value
        var reflectorSequence: UInt32
        var transmitTimestamp: UInt64
        var receiveTimestamp: UInt64
        var errorEstimate: StampErrorEstimate
        var ttl: UInt8
        var plainEcho: Bool
    }

    /// Reads a reply of `configuration`'s mode. A reply shorter than the base packet is read as zero-padded (a
    /// TWAMP-Light responder's is 38 bytes and more), down to 36 bytes, the end of the sender's timestamp copy.
    static func decode(
        _ reply: UnsafeRawBufferPointer,
        _ configuration: StampSenderConfiguration
    ) -> Result<
        Fields, StampReplyError
    > {
        let layout = configuration.layout
        let base = UnsafeRawPointer(reply.baseAddress!)
        if let cipher = configuration.twamp?.cipher {
            guard reply.count >= layout.size else { return .failure(.tooShort(reply.count, layout.size)) }
            // Decrypted where it lies: the receive buffer is the engine's, and each reply is decoded once.
            guard cipher.openReflected(UnsafeMutableRawBufferPointer(mutating: reply)) else { return .failure(.hmac) }
        } else if configuration.twamp == nil, let key = configuration.key {
            guard reply.count >= layout.size else { return .failure(.tooShort(reply.count, layout.size)) }
            guard key.verify(UnsafeRawBufferPointer(rebasing: reply[0..<layout.hmac!]), mac: base + layout.hmac!) else {
                return .failure(.hmac)
            }
        } else if reply.count < layout.senderTimestamp + 8 {
            return .failure(.tooShort(reply.count, layout.senderTimestamp + 8))
        }
        // Our own test packet, unchanged: where a reflector writes T2 and copies our T1 there are only zeros.
        let zeros =
            base.loadUnaligned(fromByteOffset: layout.receiveTimestamp, as: UInt64.self) == 0
            && base.loadUnaligned(fromByteOffset: layout.senderTimestamp, as: UInt64.self) == 0
            && base.loadUnaligned(fromByteOffset: layout.senderSequence, as: UInt32.self) == 0
        if zeros {
            return .success(
                Fields(
                    senderSequence: base.loadBigEndian(UInt32.self, at: layout.sequence),
                    senderTimestamp: base.loadBigEndian(UInt64.self, at: layout.timestamp),
                    reflectorSequence: 0,
                    transmitTimestamp: 0,
                    receiveTimestamp: 0,
                    errorEstimate: StampErrorEstimate(raw: base.loadBigEndian(UInt16.self, at: layout.errorEstimate)),
                    ttl: 0,
                    plainEcho: true
                )
            )
        }
        let ttl: UInt8 = reply.count > layout.senderTTL ? reply[layout.senderTTL] : 0
        return .success(
            Fields(
                senderSequence: base.loadBigEndian(UInt32.self, at: layout.senderSequence),
                senderTimestamp: base.loadBigEndian(UInt64.self, at: layout.senderTimestamp),
                reflectorSequence: base.loadBigEndian(UInt32.self, at: layout.sequence),
                transmitTimestamp: base.loadBigEndian(UInt64.self, at: layout.timestamp),
                receiveTimestamp: base.loadBigEndian(UInt64.self, at: layout.receiveTimestamp),
                errorEstimate: StampErrorEstimate(raw: base.loadBigEndian(UInt16.self, at: layout.errorEstimate)),
                ttl: ttl,
                plainEcho: false
            )
        )
    }

    /// The TLVs of a reply: the TOS byte the reflector saw and whether it sent the reply with the DSCP asked for (Class
    /// of Service: RP 0), and the source it saw (Location).
    static func tlvs(
        _ reply: UnsafeRawBufferPointer,
        from start: Int
    ) -> (tos: UInt8?, dscpHonoured: Bool?, source: String?) {
        var tos: UInt8?
        var honoured: Bool?
        var source: String?
        var offset = start
        while reply.count - offset >= 4 {
            let type = reply[offset + 1]
            let length = Int(reply[offset + 2]) << 8 | Int(reply[offset + 3])
            let value = offset + 4
            guard value + length <= reply.count else { break }
            if type == StampTLVType.classOfService.rawValue && length == 4 {
                // DSCP1 (6 bits) | DSCP2 (6 bits) | ECN (2 bits) | RP (2 bits): DSCP2 and ECN as they arrived there.
                let word = UInt16(reply[value]) << 8 | UInt16(reply[value + 1])
                tos = UInt8((word >> 4) & 0x3F) << 2 | UInt8((word >> 2) & 3)
                honoured = word & 3 == 0
            } else if type == StampTLVType.location.rawValue && length >= 4 {
                let port = Int(reply[value + 2]) << 8 | Int(reply[value + 3])
                var sub = value + 4
                while value + length - sub >= 4 {
                    let kind = reply[sub + 1]
                    let size = Int(reply[sub + 2]) << 8 | Int(reply[sub + 3])
                    guard sub + 4 + size <= value + length else { break }
                    let bytes = Array(reply[(sub + 4)..<(sub + 4 + size)])
                    if kind == StampLocationSubTLV.sourceIPv4 && size == StampLocationSubTLV.addressLength {
                        source = Self.format(Array(bytes.prefix(4)), port: port)
                    } else if kind == StampLocationSubTLV.sourceIPv6 && size == StampLocationSubTLV.addressLength {
                        source = Self.format(bytes, port: port)
                    }
                    sub += 4 + size
                }
            }
            offset = value + length
        }
        return (tos, honoured, source)
    }

    private static func format(_ address: [UInt8], port: Int) -> String {
        if address.count == 4 { return "\(address.map(String.init).joined(separator: ".")):\(port)" }
        // An IPv4 address in IPv4-mapped IPv6 form.
        if address.prefix(12).elementsEqual([0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff]) {
            return "\(address[12...].map(String.init).joined(separator: ".")):\(port)"
        }
        var text = [CChar](repeating: 0, count: Int(INET6_ADDRSTRLEN))
        var raw = in6_addr()
        withUnsafeMutableBytes(of: &raw) { $0.copyBytes(from: address) }
        inet_ntop(AF_INET6, &raw, &text, socklen_t(text.count))
        return "[\(String(decoding: text.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self))]:\(port)"
    }
}

/// Why a reply could not be read as a reflected packet of ours.
enum StampReplyError: Error, CustomStringConvertible {
    case tooShort(Int, Int)
    case hmac

    var description: String {
        switch self {
        case .tooShort(let size, let minimum): "\(size) bytes, shorter than a reflected packet (\(minimum))"
        case .hmac: "its HMAC does not verify with our key"
        }
    }
}

/// Writes a sender's test packets into the probe engine's transmit slots.
struct StampProbeWriter {
    let configuration: StampSenderConfiguration
    let layout: StampLayout
    /// The TLVs after the base packet, with an Extra Padding TLV up to the probe's size.
    let template: [UInt8]
    let size: Int
    private let clock: HostClock
    private let errorEstimate: UInt16

    /// Throws unless `size` is the base packet and TLVs, or at least 4 bytes more (an Extra Padding TLV).
    init(_ configuration: StampSenderConfiguration, size: Int, ipv6: Bool) throws(EchoError) {
        let layout = configuration.layout
        var template = configuration.tlvTemplate(ipv6: ipv6)
        let minimum = layout.size + template.count
        let padding = size - minimum
        if let twamp = configuration.twamp {
            guard size >= twamp.senderSize else {
                throw .invalidConfiguration(
                    "a TWAMP test packet is at least \(twamp.senderSize) bytes in this mode, not \(size)"
                )
            }
        } else if !(padding == 0 || padding >= 4) {
            throw .invalidConfiguration(
                "a STAMP test packet of \(size) bytes cannot be made: the base packet and TLVs take \(minimum), "
                    + "and padding needs at least 4 more (an Extra Padding TLV); give \(minimum) or \(minimum + 4)+"
            )
        }
        if configuration.twamp == nil && padding >= 4 {
            let length = padding - 4
            template += [0, StampTLVType.extraPadding.rawValue, UInt8(length >> 8), UInt8(length & 0xFF)]
            template += [UInt8](repeating: 0, count: length)
        }
        self.configuration = configuration
        self.layout = layout
        self.template = template
        self.size = size
        self.clock = HostClock.current()
        self.errorEstimate = self.clock.errorEstimate(configuration.timestampFormat).raw
    }

    var taiOffset: Int { self.clock.taiOffset }

    /// Writes test packet `sequence` sent at `realtime` (T1); returns T1 as written.
    func write(into payload: UnsafeMutableRawPointer, sequence: UInt64, realtime: Int64) -> UInt64 {
        if let twamp = self.configuration.twamp {
            // Sequence number, timestamp and error estimate (after 12 bytes of MBZ in the keyed modes), zero padding.
            let timestamp = StampTimestampFormat.ntp.encode(realtime, taiOffset: self.clock.taiOffset)
            let at = twamp.cipher == nil ? 4 : 16
            payload.initializeMemory(as: UInt8.self, repeating: 0, count: self.size)
            payload.storeBigEndian(UInt32(truncatingIfNeeded: sequence), at: 0)
            payload.storeBigEndian(timestamp, at: at)
            payload.storeBigEndian(self.errorEstimate & 0xBFFF, at: at + 8)
            twamp.cipher?.sealSender(UnsafeMutableRawBufferPointer(start: payload, count: self.size))
            return timestamp
        }
        let layout = self.layout
        payload.initializeMemory(as: UInt8.self, repeating: 0, count: layout.size)
        let timestamp = self.configuration.timestampFormat.encode(realtime, taiOffset: self.clock.taiOffset)
        payload.storeBigEndian(UInt32(truncatingIfNeeded: sequence), at: layout.sequence)
        payload.storeBigEndian(timestamp, at: layout.timestamp)
        payload.storeBigEndian(self.errorEstimate, at: layout.errorEstimate)
        payload.storeBigEndian(self.configuration.ssid, at: layout.ssid)
        self.template.withUnsafeBytes { (payload + layout.size).copyMemory(from: $0.baseAddress!, byteCount: $0.count) }
        if let key = self.configuration.key {
            key.sign(UnsafeRawBufferPointer(start: payload, count: layout.hmac!), into: payload + layout.hmac!)
        }
        return timestamp
    }
}
