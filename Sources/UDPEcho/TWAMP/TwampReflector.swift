import CUDPEcho

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// One serving thread's TWAMP Session-Reflector (RFC 5357 §4.2): answers the test packets of the sessions in a
/// ``TwampSessionTable``, in place in the receive slot, so that the batched echo path sends the replies as it sends
/// echoes (and STAMP's reflected packets).
///
/// A reflected packet has the fields of STAMP's (RFC 8762 keeps TWAMP's places): 41 bytes in unauthenticated mode,
/// 112 in the others, or the test packet's length if that is longer (as twampd). Packets from a source with no running
/// session are dropped and counted (``DropReason/noSession``), as are authenticated and encrypted packets whose HMAC
/// does not verify (``DropReason/auth``).
struct TwampReflector {
    private let table: TwampSessionTable
    private var clock = HostClock.current()
    private var errorEstimate: UInt16 = 0
    private var nextClockRead: Int64 = 0
    private var sessions: [EndpointKey: TwampTestSession] = [:]

    /// The shortest test packets: the sender's fields in unauthenticated mode (sequence number, timestamp, error
    /// estimate), and with their MBZ and HMAC in the other modes.
    static let shortestUnauthenticated = 14
    static let unauthenticatedReply = 41

    init(table: TwampSessionTable) {
        self.table = table
        self.errorEstimate = self.clock.ippmErrorEstimate.raw
    }

    /// Takes the table's sessions for a batch, and the clock's state at most once a second.
    mutating func beginBatch(now: Int64) {
        self.sessions = self.table.current
        guard now >= self.nextClockRead else { return }
        self.clock = HostClock.current()
        self.errorEstimate = self.clock.ippmErrorEstimate.raw
        self.nextClockRead = now + 1_000_000_000
    }

    /// Builds the reflected packet of the test packet in `packet[0..<length]`, in place.
    mutating func reflect(
        _ packet: UnsafeMutableRawPointer,
        length: Int,
        capacity: Int,
        peer: UnsafePointer<sockaddr>,
        info: cudpecho_datagram_info,
        transmitTime: Int64,
        now: Int64
    ) -> StampReflector.Outcome {
        guard let source = EndpointKey(peer), let session = self.sessions[source],
            session.deadline.load(ordering: .relaxed) > now
        else { return .drop(.noSession) }
        let layout: StampLayout
        let replyLength: Int
        var timestampOffset = 4
        if let cipher = session.cipher {
            layout = .authenticated
            replyLength = max(length, TestSessionCipher.reflectedSize)
            guard length >= TestSessionCipher.senderSize, replyLength <= capacity else { return .drop(.malformed) }
            guard cipher.openSender(UnsafeMutableRawBufferPointer(start: packet, count: length)) else {
                session.refused.wrappingIncrement(ordering: .relaxed)
                return .drop(.auth)
            }
            timestampOffset = 16
        } else {
            layout = .unauthenticated
            replyLength = max(length, Self.unauthenticatedReply)
            guard length >= Self.shortestUnauthenticated, replyLength <= capacity else { return .drop(.malformed) }
            if length < layout.size {
                (packet + length).initializeMemory(as: UInt8.self, repeating: 0, count: layout.size - length)
            }
            // A reflected packet come back as a test packet (see StampReflector): its sender-timestamp copy holds the
            // T3 this reflector wrote a round trip ago.
            if StampReflector.isOwnReply(
                UnsafeRawPointer(packet).loadBigEndian(UInt64.self, at: layout.senderTimestamp),
                format: .ntp,
                transmitTime: transmitTime,
                taiOffset: self.clock.taiOffset
            ) {
                return .drop(.loop)
            }
        }
        let clear = UnsafeRawPointer(packet)
        let senderSequence = clear.loadBigEndian(UInt32.self, at: 0)
        let senderTimestamp = clear.loadUnaligned(fromByteOffset: timestampOffset, as: UInt64.self)
        let senderErrorEstimate = clear.loadUnaligned(fromByteOffset: timestampOffset + 8, as: UInt16.self)

        let receiveTime = info.timestamp != 0 ? info.timestamp : transmitTime
        let taiOffset = self.clock.taiOffset
        packet.initializeMemory(as: UInt8.self, repeating: 0, count: layout.hmac.map { $0 + 16 } ?? layout.size)
        packet.storeBigEndian(session.nextSequence(), at: layout.sequence)
        packet.storeBigEndian(StampTimestampFormat.ntp.encode(transmitTime, taiOffset: taiOffset), at: layout.timestamp)
        packet.storeBigEndian(self.errorEstimate, at: layout.errorEstimate)
        packet.storeBigEndian(
            StampTimestampFormat.ntp.encode(receiveTime, taiOffset: taiOffset),
            at: layout.receiveTimestamp
        )
        packet.storeBigEndian(senderSequence, at: layout.senderSequence)
        packet.storeBytes(of: senderTimestamp, toByteOffset: layout.senderTimestamp, as: UInt64.self)
        packet.storeBytes(of: senderErrorEstimate, toByteOffset: layout.senderErrorEstimate, as: UInt16.self)
        packet.storeBytes(of: UInt8(clamping: max(0, Int(info.ttl))), toByteOffset: layout.senderTTL, as: UInt8.self)
        if replyLength > length {
            let start = max(length, layout.hmac.map { $0 + 16 } ?? layout.size)
            if replyLength > start {
                (packet + start).initializeMemory(as: UInt8.self, repeating: 0, count: replyLength - start)
            }
        }
        session.cipher?.sealReflected(UnsafeMutableRawBufferPointer(start: packet, count: replyLength))
        session.reflected.wrappingIncrement(ordering: .relaxed)
        return .reply(length: replyLength, tos: session.tos)
    }
}
