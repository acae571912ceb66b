/// The TLVs of RFC 8972 §4 that follow a STAMP base packet: a flags byte (U: unrecognized, M: malformed, I: failed
/// integrity), a type, a 16-bit length and the value. A reflector returns every TLV it was sent, in place and at the
/// same length, filling in those it knows and flagging the others.
public enum StampTLVType: UInt8, Sendable {
    /// Extra Padding: returned as it came.
    case extraPadding = 1
    /// Location: the ports and addresses the reflector saw (NAT on the way shows).
    case location = 2
    /// Timestamp Information: how each side's clock is synchronized and where it takes its timestamps.
    case timestampInformation = 3
    /// Class of Service: the DSCP and ECN the sender asks the reply to carry (DSCP1/ECN1), and those the test packet
    /// arrived with (DSCP2/ECN2).
    case classOfService = 4
    /// HMAC over the base packet's sequence number and the TLVs before it.
    case hmac = 8
}

enum StampTLVFlag {
    static let unrecognized: UInt8 = 0x80
    static let malformed: UInt8 = 0x40
    static let integrity: UInt8 = 0x20
}

/// Location sub-TLVs (RFC 8972 §4.2).
enum StampLocationSubTLV {
    static let ipv4Source: UInt8 = 1
    static let ipv4Destination: UInt8 = 2
    static let ipv6Source: UInt8 = 3
    static let ipv6Destination: UInt8 = 4
}

/// What a reflector knows about one test packet, to fill the TLVs in.
struct StampPacketContext {
    /// The test packet's source and destination: addresses as 4 or 16 bytes, and ports.
    var sourceAddress: [UInt8]
    var sourcePort: UInt16
    var destinationAddress: [UInt8]
    var destinationPort: UInt16
    /// The TOS or traffic class byte it arrived with (DSCP << 2 | ECN); nil if not reported.
    var receivedTOS: UInt8?
    /// Whether this host's clock is synchronized to an external source.
    var synchronized: Bool
}

enum StampTLVs {
    /// What reflecting a packet's TLVs found.
    struct Reflection {
        /// The TOS byte a Class of Service TLV asked the reply to carry, if one did and the reflector honours it.
        var requestedTOS: UInt8?
        /// Where the packet's one HMAC TLV starts (RFC 8972 §4.8: after every TLV but Extra Padding), to be signed
        /// again once the reply is complete; nil if there is none or it is out of place.
        var hmacTLV: Int?
    }

    /// Reflects the TLVs in `packet[start..<end]` in place. Nothing is ever written past `end`; a TLV whose length
    /// runs past it is flagged malformed and it and what follows are returned as they came.
    ///
    /// The work is linear in the packet's length: at most one HMAC TLV is verified (the first), over the bytes where
    /// they lie. RFC 8972 §4.8 places one HMAC TLV after every TLV but Extra Padding and says an HMAC TLV anywhere
    /// else is a failed verification: a second HMAC TLV, or the first when another TLV (not Extra Padding) follows
    /// it, is flagged I without being computed. (Verifying each HMAC TLV over everything before it made a packet of
    /// 3,270 of them cost 177 ms.)
    ///
    /// - Parameter honourDSCP: Whether a Class of Service TLV may choose the reply's DSCP (DSCP1). When it may not,
    ///   the TLV's RP field says so (1, RFC 8972 §5.2) and the reply keeps the socket's marking; DSCP2 and ECN, what
    ///   the test packet arrived with, are filled in either way.
    static func reflect(
        _ packet: UnsafeMutableRawPointer,
        from start: Int,
        to end: Int,
        context: StampPacketContext,
        key: StampKey?,
        honourDSCP: Bool
    ) -> Reflection {
        var reflection = Reflection()
        var hmacSeen: Int?
        var offset = start
        while end - offset >= 4 {
            let type = packet.load(fromByteOffset: offset + 1, as: UInt8.self)
            let length = Int(UnsafeRawPointer(packet).loadBigEndian(UInt16.self, at: offset + 2))
            let value = offset + 4
            guard value + length <= end else {
                Self.flag(packet, offset, StampTLVFlag.malformed)
                return reflection
            }
            let tlvType = StampTLVType(rawValue: type)
            // A TLV other than Extra Padding after the HMAC TLV puts the HMAC TLV out of place.
            if let seen = hmacSeen, tlvType != .extraPadding, reflection.hmacTLV == seen {
                Self.flag(packet, seen, StampTLVFlag.integrity)
                reflection.hmacTLV = nil
            }
            switch tlvType {
            case .extraPadding:
                break
            case .location:
                if !Self.fillLocation(packet, value: value, length: length, context: context) {
                    Self.flag(packet, offset, StampTLVFlag.malformed)
                }
            case .timestampInformation:
                if length == 4 {
                    // Ours: NTP-synchronized (1) or the local clock (8); software timestamps in the kernel (2).
                    packet.storeBytes(of: context.synchronized ? 1 : 8, toByteOffset: value + 2, as: UInt8.self)
                    packet.storeBytes(of: 2, toByteOffset: value + 3, as: UInt8.self)
                } else {
                    Self.flag(packet, offset, StampTLVFlag.malformed)
                }
            case .classOfService:
                if length == 4 {
                    // RFC 8972 §5.2: DSCP1 (6 bits, the DSCP the sender asks the reply to carry), DSCP2 (6 bits) and
                    // ECN (2 bits), what the test packet arrived with, RP (2 bits, reverse path: 0, the request is
                    // honoured; 1, it is not), 16 reserved bits.
                    let word = UnsafeRawPointer(packet).loadBigEndian(UInt16.self, at: value)
                    let dscp1 = UInt8(word >> 10)
                    let received = TrafficClass(byte: context.receivedTOS ?? 0)
                    let reflected =
                        UInt16(dscp1) << 10 | UInt16(received.dscp) << 4 | UInt16(received.ecn.rawValue) << 2
                        | (honourDSCP ? 0 : 1)
                    packet.storeBytes(of: reflected.bigEndian, toByteOffset: value, as: UInt16.self)
                    if honourDSCP {
                        reflection.requestedTOS = TrafficClass(dscp: dscp1, ecn: received.ecn.reflected).byte
                    }
                } else {
                    Self.flag(packet, offset, StampTLVFlag.malformed)
                }
            case .hmac:
                if length != StampKey.macLength {
                    Self.flag(packet, offset, StampTLVFlag.malformed)
                } else if key == nil {
                    Self.flag(packet, offset, StampTLVFlag.unrecognized)
                } else if hmacSeen != nil {
                    Self.flag(packet, offset, StampTLVFlag.integrity)
                } else {
                    hmacSeen = offset
                    reflection.hmacTLV = offset
                    let valid = Self.withHMACInput(packet, start: start, tlv: offset) { sequence, tlvs in
                        key!.verify(sequence, tlvs, mac: UnsafeRawPointer(packet + value))
                    }
                    if !valid { Self.flag(packet, offset, StampTLVFlag.integrity) }
                }
            case nil:
                Self.flag(packet, offset, StampTLVFlag.unrecognized)
            }
            offset = value + length
        }
        return reflection
    }

    /// After the reflected packet is complete: its HMAC TLV (at `tlv`, as ``reflect(_:from:to:context:key:honourDSCP:)``
    /// found it) signed again, over what the reply carries.
    static func sign(_ packet: UnsafeMutableRawPointer, from start: Int, tlv: Int, key: StampKey) {
        Self.withHMACInput(packet, start: start, tlv: tlv) { sequence, tlvs in
            key.sign(sequence, tlvs, into: packet + tlv + 4)
        }
    }

    /// What an HMAC TLV at `tlv` covers (RFC 8972 §4.8): the base packet's sequence number and the TLVs before it,
    /// as two buffers where they lie in the packet.
    private static func withHMACInput<Result>(
        _ packet: UnsafeMutableRawPointer,
        start: Int,
        tlv: Int,
        _ body: (UnsafeRawBufferPointer, UnsafeRawBufferPointer) -> Result
    ) -> Result {
        body(
            UnsafeRawBufferPointer(start: packet, count: 4),
            UnsafeRawBufferPointer(start: packet + start, count: tlv - start)
        )
    }

    private static func flag(_ packet: UnsafeMutableRawPointer, _ offset: Int, _ flag: UInt8) {
        packet.storeBytes(
            of: packet.load(fromByteOffset: offset, as: UInt8.self) | flag,
            toByteOffset: offset,
            as: UInt8.self
        )
    }

    /// Fills a Location TLV's ports and the address sub-TLVs the sender left room for; false when malformed.
    private static func fillLocation(
        _ packet: UnsafeMutableRawPointer,
        value: Int,
        length: Int,
        context: StampPacketContext
    ) -> Bool {
        guard length >= 4 else { return false }
        packet.storeBigEndian(context.destinationPort, at: value)
        packet.storeBigEndian(context.sourcePort, at: value + 2)
        var offset = value + 4
        let end = value + length
        while end - offset >= 2 {
            let type = packet.load(fromByteOffset: offset, as: UInt8.self)
            let size = Int(packet.load(fromByteOffset: offset + 1, as: UInt8.self))
            guard offset + 2 + size <= end else { return false }
            let address: [UInt8]? =
                switch type {
                case StampLocationSubTLV.ipv4Source where context.sourceAddress.count == 4: context.sourceAddress
                case StampLocationSubTLV.ipv4Destination where context.destinationAddress.count == 4:
                    context.destinationAddress
                case StampLocationSubTLV.ipv6Source where context.sourceAddress.count == 16: context.sourceAddress
                case StampLocationSubTLV.ipv6Destination where context.destinationAddress.count == 16:
                    context.destinationAddress
                default: nil
                }
            if let address, address.count == size {
                address.withUnsafeBytes { (packet + offset + 2).copyMemory(from: $0.baseAddress!, byteCount: size) }
            }
            offset += 2 + size
        }
        return offset == end
    }
}
