import CUDPEcho

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// Where the fields of STAMP test packets are (RFC 8762 §4.2 and §4.3, with RFC 8972 §3's SSID), in the two modes.
///
/// Sender packets carry a sequence number, a timestamp (T1) and an error estimate; reflected packets add the
/// reflector's own sequence number, timestamp (T3) and error estimate, the time it received the test packet (T2), and
/// a copy of the sender's fields with the TTL or hop limit the test packet arrived with. All fields are big-endian.
/// In authenticated mode the base packet is 112 bytes and ends with an HMAC-SHA-256 of the 96 bytes before it,
/// truncated to 16 (RFC 8762 §4.4). TLVs (RFC 8972 §4) follow the base packet.
public struct StampLayout: Sendable, Equatable {
    /// The base packet's size: 44 bytes, or 112 authenticated.
    public let size: Int
    let sequence = 0
    let timestamp: Int
    let errorEstimate: Int
    let ssid: Int
    let receiveTimestamp: Int
    let senderSequence: Int
    let senderTimestamp: Int
    let senderErrorEstimate: Int
    let senderTTL: Int
    /// Where the HMAC is, in authenticated mode (it covers the bytes before it).
    let hmac: Int?

    /// Unauthenticated mode: 44 bytes.
    public static let unauthenticated = StampLayout(
        size: 44,
        timestamp: 4,
        errorEstimate: 12,
        ssid: 14,
        receiveTimestamp: 16,
        senderSequence: 24,
        senderTimestamp: 28,
        senderErrorEstimate: 36,
        senderTTL: 40,
        hmac: nil
    )

    /// Authenticated mode: 112 bytes, the HMAC in the last 16.
    public static let authenticated = StampLayout(
        size: 112,
        timestamp: 16,
        errorEstimate: 24,
        ssid: 26,
        receiveTimestamp: 32,
        senderSequence: 48,
        senderTimestamp: 64,
        senderErrorEstimate: 72,
        senderTTL: 80,
        hmac: 96
    )

    /// The smallest unauthenticated test packet answered: a TWAMP-Light sender's header (sequence number,
    /// timestamp, error estimate). Shorter ones are read as if padded with zeros to 44 bytes (RFC 8762 §4.6).
    public static let shortestTestPacket = 14
}

/// The two timestamp formats of STAMP: NTP's 64 bits (seconds since 1900 and a binary fraction) and PTPv2's truncated
/// 64 bits (seconds since 1970 on TAI, and nanoseconds), told apart by the Z bit of the error estimate.
public enum StampTimestampFormat: String, Sendable, CaseIterable, Codable {
    /// NTP: seconds since 1900 and a binary fraction of a second (RFC 5905), STAMP's default.
    case ntp
    /// PTPv2 truncated: seconds since 1970 on TAI, and nanoseconds.
    case ptp

    /// Seconds from 1900 (NTP's era 0) to 1970.
    static let ntpEpochOffset: UInt64 = 2_208_988_800

    /// `nanoseconds` since 1970 (CLOCK_REALTIME, UTC) in this format; `taiOffset` is TAI - UTC in seconds (PTP).
    func encode(_ nanoseconds: Int64, taiOffset: Int) -> UInt64 {
        let seconds = UInt64(max(0, nanoseconds) / 1_000_000_000)
        let remainder = UInt64(max(0, nanoseconds) % 1_000_000_000)
        switch self {
        case .ntp:
            let fraction = (remainder << 32) / 1_000_000_000
            return (seconds &+ Self.ntpEpochOffset) << 32 | fraction
        case .ptp:
            return (seconds &+ UInt64(taiOffset)) << 32 | remainder
        }
    }

    /// A timestamp of this format as nanoseconds since 1970 (UTC).
    func decode(_ value: UInt64, taiOffset: Int) -> Int64 {
        let seconds = Int64(value >> 32)
        let low = Int64(value & 0xFFFF_FFFF)
        switch self {
        case .ntp:
            return (seconds - Int64(Self.ntpEpochOffset)) * 1_000_000_000 + (low * 1_000_000_000) >> 32
        case .ptp:
            return (seconds - Int64(taiOffset)) * 1_000_000_000 + low
        }
    }
}

/// The error estimate of a STAMP timestamp (RFC 4656 §4.1.2, RFC 8186's Z bit): whether the clock is synchronized to
/// UTC by an external source (S), the timestamp format (Z), and an error bound of `multiplier * 2^(scale - 32)`
/// seconds.
public struct StampErrorEstimate: Sendable, Equatable {
    /// S: the clock is synchronized to UTC by an external source.
    public var synchronized: Bool
    /// Z: the format of the timestamps.
    public var format: StampTimestampFormat
    /// The error bound's exponent (6 bits).
    public var scale: UInt8
    /// The error bound's multiplier.
    public var multiplier: UInt8

    /// An estimate from its fields.
    public init(synchronized: Bool, format: StampTimestampFormat, scale: UInt8, multiplier: UInt8) {
        self.synchronized = synchronized
        self.format = format
        self.scale = scale & 0x3F
        self.multiplier = multiplier
    }

    /// From the field's 16 bits.
    public init(raw: UInt16) {
        self.init(
            synchronized: raw & 0x8000 != 0,
            format: raw & 0x4000 != 0 ? .ptp : .ntp,
            scale: UInt8((raw >> 8) & 0x3F),
            multiplier: UInt8(raw & 0xFF)
        )
    }

    /// An estimate of at least `seconds` (the smallest scale whose multiplier fits 8 bits).
    public init(synchronized: Bool, format: StampTimestampFormat, seconds: Double) {
        var scale = 0
        var multiplier = 1.0
        let error = max(seconds, 1e-9)
        while scale < 63 {
            multiplier = (error / pow(2, Double(scale) - 32)).rounded(.up)
            if multiplier <= 255 { break }
            scale += 1
        }
        self.init(
            synchronized: synchronized,
            format: format,
            scale: UInt8(scale),
            multiplier: UInt8(max(1, min(255, multiplier)))
        )
    }

    /// The field's 16 bits.
    public var raw: UInt16 {
        (self.synchronized ? 0x8000 : 0) | (self.format == .ptp ? 0x4000 : 0) | UInt16(self.scale & 0x3F) << 8
            | UInt16(self.multiplier)
    }

    /// The error bound in seconds.
    public var seconds: Double { Double(self.multiplier) * pow(2, Double(self.scale) - 32) }
}

/// What the kernel says about this host's clock (`adjtimex`): whether it is synchronized to an external source, its
/// estimated error, and TAI - UTC. Read when a reflector starts and again every second.
struct HostClock: Sendable {
    var synchronized: Bool
    var estimatedError: Double
    var taiOffset: Int

    static func current() -> HostClock {
        var synchronized: Int32 = 0
        var error = 0
        var tai: Int32 = 0
        cudpecho_clock_state(&synchronized, &error, &tai)
        // TAI - UTC has been 37 s since 2017; the kernel knows it only where a time daemon told it.
        return HostClock(
            synchronized: synchronized != 0,
            estimatedError: Double(max(1, error)) * 1e-6,
            taiOffset: tai > 0 ? Int(tai) : 37
        )
    }

    func errorEstimate(_ format: StampTimestampFormat) -> StampErrorEstimate {
        StampErrorEstimate(synchronized: self.synchronized, format: format, seconds: self.estimatedError)
    }

    /// The estimate as OWAMP's and TWAMP's packets carry it: NTP format, its Z bit zero (MBZ in RFC 4656 and 5357).
    var ippmErrorEstimate: StampErrorEstimate {
        StampErrorEstimate(raw: self.errorEstimate(.ntp).raw & 0xBFFF)
    }
}

extension UnsafeMutableRawPointer {
    @inline(__always) func storeBigEndian<T: FixedWidthInteger>(_ value: T, at offset: Int) {
        self.storeBytes(of: value.bigEndian, toByteOffset: offset, as: T.self)
    }
}

extension UnsafeRawPointer {
    @inline(__always) func loadBigEndian<T: FixedWidthInteger>(_ type: T.Type, at offset: Int) -> T {
        T(bigEndian: self.loadUnaligned(fromByteOffset: offset, as: T.self))
    }
}
