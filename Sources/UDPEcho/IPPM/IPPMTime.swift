/// Conversions between NTP-format times (32.32 seconds) and nanoseconds.
enum IPPMTime {
    /// A duration in nanoseconds as NTP's 32.32 seconds.
    static func ntpDuration(nanoseconds: Int64) -> UInt64 {
        let clamped = max(0, nanoseconds)
        return UInt64(clamped / 1_000_000_000) << 32 | UInt64((clamped % 1_000_000_000) << 32 / 1_000_000_000)
    }

    /// An NTP-format duration in nanoseconds, saturating.
    static func nanoseconds(ntp value: UInt64) -> Int64 {
        let seconds = value >> 32
        let fraction = value & 0xFFFF_FFFF
        guard seconds < 9_000_000_000 else { return .max }
        return Int64(seconds) * 1_000_000_000 + Int64((fraction * 1_000_000_000) >> 32)
    }
}
