#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// The bytes a `udpecho ping` probe sets aside for the server to say what the probe arrived with: an echo alone
/// cannot tell a client which direction changed a marking (a DSCP bleached on the way there and one bleached on the
/// way back look the same in the reply).
///
/// Bytes 16-23 of the probe, right after its header, are the request `UDPE-TOS`; bytes 24-27 are zero as sent. A
/// udpecho server run with `--reflect-tos` that finds the request fills them: byte 24 says which fields it filled
/// (bit 0: the TOS or traffic class byte, bit 1: the TTL or hop limit), byte 25 is the traffic class the probe
/// arrived with, byte 26 its TTL. Every other byte comes back as sent, and a server without `--reflect-tos` (or any
/// other echo server) returns the probe unchanged: the client then knows only what came back.
public enum MarkingReport {
    /// Where the request starts: after the sequence number and timestamp.
    public static let offset = 16
    /// The request, bytes 16-23.
    public static let request: [UInt8] = Array("UDPE-TOS".utf8)
    /// The whole block: the request and the four bytes the server fills.
    public static let size = 12
    /// The smallest probe that carries the block.
    public static let minimumProbeSize = offset + size
    /// Bit 0 of byte 24: byte 25 holds the traffic class that arrived; bit 1: byte 26 holds the TTL.
    static let classFilled: UInt8 = 1
    static let ttlFilled: UInt8 = 2

    /// What a server reported: the traffic class and TTL the probe arrived with there, each nil when not reported.
    public struct Fields: Sendable, Equatable {
        /// The traffic class the probe arrived with, if the server reported it.
        public var trafficClass: TrafficClass?
        /// The TTL (hop limit) the probe arrived with, if the server reported it.
        public var ttl: Int?
    }

    /// Server side: if the datagram at `payload` carries the request, writes what it arrived with (`tos` and `ttl`,
    /// each -1 when the kernel did not say) into it and returns true.
    static func fill(_ payload: UnsafeMutableRawPointer, length: Int, tos: Int16, ttl: Int16) -> Bool {
        guard length >= Self.minimumProbeSize, Self.carriesRequest(UnsafeRawPointer(payload)) else { return false }
        var filled: UInt8 = 0
        if tos >= 0 {
            filled |= Self.classFilled
            payload.storeBytes(of: UInt8(truncatingIfNeeded: tos), toByteOffset: Self.offset + 9, as: UInt8.self)
        }
        if ttl >= 0 {
            filled |= Self.ttlFilled
            payload.storeBytes(of: UInt8(truncatingIfNeeded: ttl), toByteOffset: Self.offset + 10, as: UInt8.self)
        }
        payload.storeBytes(of: filled, toByteOffset: Self.offset + 8, as: UInt8.self)
        return true
    }

    /// Client side: the report in a reply that carries the request; nil when the server filled nothing.
    static func read(_ reply: UnsafeRawBufferPointer) -> Fields? {
        guard reply.count >= Self.minimumProbeSize else { return nil }
        let filled = reply[Self.offset + 8]
        guard filled & (Self.classFilled | Self.ttlFilled) != 0 else { return nil }
        return Fields(
            trafficClass: filled & Self.classFilled != 0 ? TrafficClass(byte: reply[Self.offset + 9]) : nil,
            ttl: filled & Self.ttlFilled != 0 ? Int(reply[Self.offset + 10]) : nil
        )
    }

    private static func carriesRequest(_ payload: UnsafeRawPointer) -> Bool {
        Self.request.withUnsafeBytes { memcmp(payload + Self.offset, $0.baseAddress!, Self.request.count) == 0 }
    }
}
