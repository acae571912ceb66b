/// What is wrong with a duration that a user wrote.
public struct DurationParseError: Error, CustomStringConvertible, Equatable {
    /// The text as written.
    public var text: String
    /// What is wrong with it.
    public var reason: String

    public var description: String {
        "'\(self.text)' is not a duration: \(self.reason); write a number with a unit, for example 500ms, 2s, 1m or 1m30s"
    }
}

extension Duration {
    private static let units: [(suffix: String, nanoseconds: Double)] = [
        ("ns", 1), ("us", 1e3), ("µs", 1e3), ("μs", 1e3), ("ms", 1e6), ("s", 1e9), ("m", 60e9), ("h", 3600e9),
    ]

    /// Parses a duration as Go's `time.ParseDuration` reads it: one or more decimal numbers, each with a unit
    /// (`ns`, `us`/`µs`, `ms`, `s`, `m`, `h`), such as `500ms`, `2s`, `1.5s`, `1m30s`.
    ///
    /// - Throws: ``DurationParseError`` saying what is wrong.
    public init(parsing text: String) throws(DurationParseError) {
        var rest = Substring(text.trimmingSpaces())
        guard !rest.isEmpty else { throw DurationParseError(text: text, reason: "it is empty") }
        if rest.hasPrefix("-") { throw DurationParseError(text: text, reason: "it is negative") }
        var total = 0.0
        while !rest.isEmpty {
            let number = rest.prefix { $0.isASCII && ($0.isNumber || $0 == ".") }
            guard !number.isEmpty, let value = Double(number) else {
                throw DurationParseError(text: text, reason: "expected a number at '\(rest)'")
            }
            rest = rest.dropFirst(number.count)
            let unitText = rest.prefix { !($0.isASCII && ($0.isNumber || $0 == ".")) }
            guard !unitText.isEmpty else { throw DurationParseError(text: text, reason: "'\(number)' has no unit") }
            guard let unit = Self.units.first(where: { $0.suffix == unitText }) else {
                throw DurationParseError(text: text, reason: "'\(unitText)' is not a unit (ns, us, ms, s, m, h)")
            }
            rest = rest.dropFirst(unitText.count)
            total += value * unit.nanoseconds
        }
        guard total < 1e18 else { throw DurationParseError(text: text, reason: "it is too long") }
        self = .nanoseconds(Int64(total.rounded()))
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
