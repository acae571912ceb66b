/// What is wrong with a duration that a user wrote.
public struct DurationParseError: Error, CustomStringConvertible, Equatable {
    /// The text as written.
    public var text: String
    /// What is wrong with it.
    public var reason: String

    /// What is wrong with the duration, and what a valid one looks like.
    public var description: String {
        "'\(self.text)' is not a duration: \(self.reason); write a number with a unit, for example 500ms, 2s, 1m or 1m30s"
    }
}

extension Duration {
    private static let units: [(suffix: String, nanoseconds: UInt64)] = [
        ("ns", 1), ("us", 1000), ("µs", 1000), ("μs", 1000), ("ms", 1_000_000), ("s", 1_000_000_000),
        ("m", 60_000_000_000), ("h", 3_600_000_000_000),
    ]

    /// The longest duration Go can represent, and so the longest accepted: 2^63 - 1 nanoseconds.
    public static let maximumParsable = Duration.nanoseconds(Int64.max)

    /// Parses a duration as Go's `time.ParseDuration` reads it: one or more decimal numbers, each with a unit
    /// (`ns`, `us`/`µs`, `ms`, `s`, `m`, `h`), such as `500ms`, `2s`, `1.5s`, `.5s`, `1m30s`; `0` needs no unit. The
    /// result is exact to the nanosecond, up to 2562047h47m16.854775807s. Negative durations are refused.
    ///
    /// - Throws: ``DurationParseError`` saying what is wrong.
    public init(parsing text: String) throws(DurationParseError) {
        var rest = Substring(text.trimmingSpaces())
        guard !rest.isEmpty else { throw DurationParseError(text: text, reason: "it is empty") }
        if rest.hasPrefix("-") && rest != "-0" { throw DurationParseError(text: text, reason: "it is negative") }
        if rest.hasPrefix("-") || rest.hasPrefix("+") { rest = rest.dropFirst() }
        if rest == "0" {
            self = .zero
            return
        }
        var total: UInt64 = 0
        let tooLong = DurationParseError(
            text: text,
            reason: "it is longer than 2562047h47m16.854775807s, the most Go allows"
        )
        while !rest.isEmpty {
            let integerText = rest.prefix { $0.isASCII && $0.isNumber }
            rest = rest.dropFirst(integerText.count)
            var fractionText = Substring("")
            if rest.hasPrefix(".") {
                rest = rest.dropFirst()
                fractionText = rest.prefix { $0.isASCII && $0.isNumber }
                rest = rest.dropFirst(fractionText.count)
            }
            guard !integerText.isEmpty || !fractionText.isEmpty else {
                throw DurationParseError(text: text, reason: "expected a number at '\(rest)'")
            }
            let unitText = rest.prefix { !($0.isASCII && ($0.isNumber || $0 == ".")) }
            let number = integerText + (fractionText.isEmpty ? "" : "." + fractionText)
            guard !unitText.isEmpty else { throw DurationParseError(text: text, reason: "'\(number)' has no unit") }
            guard let unit = Self.units.first(where: { $0.suffix == unitText })?.nanoseconds else {
                throw DurationParseError(text: text, reason: "'\(unitText)' is not a unit (ns, us, ms, s, m, h)")
            }
            rest = rest.dropFirst(unitText.count)
            // Whole units, exactly; too many digits is too long.
            guard integerText.count <= 19, let integer = UInt64(integerText.isEmpty ? "0" : integerText) else {
                throw tooLong
            }
            let (whole, overflow) = integer.multipliedReportingOverflow(by: unit)
            guard !overflow else { throw tooLong }
            // The fraction of a unit, to the nanosecond (digits past the 18th cannot matter and are ignored, as Go
            // ignores them).
            let digits = fractionText.prefix(18)
            var fraction: UInt64 = 0
            if let value = UInt64(digits), !digits.isEmpty {
                var scale: UInt64 = 1
                for _ in 0..<digits.count { scale *= 10 }
                fraction = scale.dividingFullWidth(unit.multipliedFullWidth(by: value)).quotient
            }
            let (sum, overflowSum) = total.addingReportingOverflow(whole)
            let (next, overflowNext) = sum.addingReportingOverflow(fraction)
            guard !overflowSum, !overflowNext, next <= UInt64(Int64.max) else { throw tooLong }
            total = next
        }
        self = .nanoseconds(Int64(total))
    }

    /// The duration written as ``init(parsing:)`` reads it, in the largest unit that keeps it short:
    /// `15s`, `500ms`, `1m30s`, `1.5ms`.
    public var shortDescription: String {
        let nanoseconds = self.nanoseconds
        if nanoseconds == 0 { return "0s" }
        if nanoseconds % 60_000_000_000 == 0 && nanoseconds >= 60_000_000_000 {
            let minutes = nanoseconds / 60_000_000_000
            return minutes % 60 == 0 ? "\(minutes / 60)h" : "\(minutes)m"
        }
        if nanoseconds > 60_000_000_000 {
            let minutes = nanoseconds / 60_000_000_000
            let rest = Duration.nanoseconds(nanoseconds - minutes * 60_000_000_000)
            return "\(minutes)m\(rest.shortDescription)"
        }
        for (suffix, scale) in [("s", 1e9), ("ms", 1e6), ("us", 1e3)] where Double(nanoseconds) >= scale {
            return Self.trim(Double(nanoseconds) / scale) + suffix
        }
        return "\(nanoseconds)ns"
    }

    /// The whole duration in nanoseconds (saturating past about 292 years).
    public var nanoseconds: Int64 {
        let (seconds, attoseconds) = self.components
        guard abs(seconds) < 9_000_000_000 else { return seconds < 0 ? .min : .max }
        return seconds * 1_000_000_000 + attoseconds / 1_000_000_000
    }

    /// The duration in seconds, as a floating-point number.
    public var seconds: Double {
        Double(self.components.seconds) + Double(self.components.attoseconds) / 1e18
    }

    private static func trim(_ value: Double) -> String {
        var text = String(format3: value)
        while text.contains(".") && (text.hasSuffix("0") || text.hasSuffix(".")) { text.removeLast() }
        return text
    }
}

extension String {
    /// `value` with three decimals, without Foundation.
    init(format3 value: Double) {
        let scaled = (value * 1000).rounded()
        let whole = Int64(scaled / 1000)
        let fraction = Int64(abs(scaled.truncatingRemainder(dividingBy: 1000)))
        let padded = String(fraction)
        self = "\(whole).\(String(repeating: "0", count: 3 - padded.count))\(padded)"
    }

    fileprivate func trimmingSpaces() -> Substring {
        let start = self.firstIndex { $0 != " " } ?? self.endIndex
        let end = self.lastIndex { $0 != " " }.map { self.index(after: $0) } ?? start
        return self[start..<max(start, end)]
    }
}
