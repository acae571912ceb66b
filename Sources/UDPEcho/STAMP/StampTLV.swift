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

/// Location sub-TLVs (RFC 8972 §4.2.1, Table 5): each with the 4-byte header of a TLV (flags, type, 16-bit length).
/// A Session-Sender asks with the generic types (16 bytes of zeros); the reflector answers each with the specific
/// type of the packet's family, the address in its value (an IPv4 address followed by 12 zero bytes).
enum StampLocationSubTLV {
    static let sourceMAC: UInt8 = 1
    static let sourceEUI48: UInt8 = 2
    static let sourceEUI64: UInt8 = 3
    static let destinationIP: UInt8 = 4
    static let destinationIPv4: UInt8 = 5
    static let destinationIPv6: UInt8 = 6
    static let sourceIP: UInt8 = 7
    static let sourceIPv4: UInt8 = 8
    static let sourceIPv6: UInt8 = 9
    /// The length of an address sub-TLV's value (types 4-9), and of a MAC one's (1-3).
    static let addressLength = 16
    static let macLength = 8
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

    /// Fills a Location TLV (RFC 8972 §4.2): the ports the packet arrived with, and each address sub-TLV (source or
    /// destination, generic or of either family) answered with the specific type of the packet's family and the
    /// address. A MAC sub-TLV is returned as it came (the socket does not see the frame); a sub-TLV of another type is
    /// flagged U, one of an address type but another length M. False when the sub-TLVs do not fill the value exactly
    /// (the Location TLV is malformed).
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
        while end - offset >= 4 {
            let type = packet.load(fromByteOffset: offset + 1, as: UInt8.self)
            let size = Int(UnsafeRawPointer(packet).loadBigEndian(UInt16.self, at: offset + 2))
            guard offset + 4 + size <= end else { return false }
            let address: (type: UInt8, bytes: [UInt8])? =
                switch type {
                case StampLocationSubTLV.destinationIP...StampLocationSubTLV.destinationIPv6:
                    Self.answer(
                        context.destinationAddress,
                        v4: StampLocationSubTLV.destinationIPv4,
                        v6: StampLocationSubTLV.destinationIPv6
                    )
                case StampLocationSubTLV.sourceIP...StampLocationSubTLV.sourceIPv6:
                    Self.answer(
                        context.sourceAddress,
                        v4: StampLocationSubTLV.sourceIPv4,
                        v6: StampLocationSubTLV.sourceIPv6
                    )
                default: nil
                }
            if let address {
                if size == StampLocationSubTLV.addressLength {
                    packet.storeBytes(of: address.type, toByteOffset: offset + 1, as: UInt8.self)
                    address.bytes.withUnsafeBytes {
                        (packet + offset + 4).copyMemory(from: $0.baseAddress!, byteCount: size)
                    }
                } else {
                    Self.flag(packet, offset, StampTLVFlag.malformed)
                }
            } else if type < StampLocationSubTLV.sourceMAC || type > StampLocationSubTLV.sourceEUI64 {
                Self.flag(packet, offset, StampTLVFlag.unrecognized)
            } else if size != StampLocationSubTLV.macLength {
                Self.flag(packet, offset, StampTLVFlag.malformed)
            }
            offset += 4 + size
        }
        return offset == end
    }

    /// An address sub-TLV's answer for `address` (4 or 16 bytes): its specific type, and its 16-byte value.
    private static func answer(_ address: [UInt8], v4: UInt8, v6: UInt8) -> (type: UInt8, bytes: [UInt8])? {
        switch address.count {
        case 4: (v4, address + [UInt8](repeating: 0, count: 12))
        case 16: (v6, address)
        default: nil
        }
    }
}
