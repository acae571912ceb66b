#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// Round trip over time as smokeping draws it: the run cut into intervals, each interval's median a line coloured by
/// the interval's loss, the spread of its round trips grey smoke around it (p5–p95, p10–p90, p25–p75), and the lost
/// probes marked along the top. A self-contained SVG (no scripts, no external assets) whose size depends on the
/// number of intervals, not of probes.
///
/// ```swift
/// var plot = SmokePlot(title: "udpecho ping 192.0.2.1:1337", clock: "kernel timestamps")
/// plot.add(time: 0, roundTrip: 412_000)
/// plot.add(time: 1_000_000_000, roundTrip: nil)  // lost
/// let svg = plot.svg()
/// ```
public struct SmokePlot: Sendable {
    /// One probe: when it was sent (its scheduled time, nanoseconds from the start of the run) and its round trip
    /// in nanoseconds, nil if it was lost.
    public struct Sample: Sendable, Equatable {
        public var time: Int64
        public var roundTrip: Int64?

        public init(time: Int64, roundTrip: Int64?) {
            self.time = time
            self.roundTrip = roundTrip
        }
    }

    public var title: String
    /// What measured the round trips, for the legend ("kernel timestamps (SO_TIMESTAMPING, software)").
    public var clock: String
    public private(set) var samples: [Sample] = []
    /// How many intervals the run is cut into (at most one per probe).
    public var intervals: Int

    /// An empty plot; ``add(time:roundTrip:)`` gives it probes.
    public init(title: String, clock: String, intervals: Int = 60) {
        self.title = title
        self.clock = clock
        self.intervals = max(1, min(intervals, 1000))
    }

    /// Adds a probe sent at `time` (nanoseconds from the start) whose round trip was `roundTrip` ns, or nil if lost.
    public mutating func add(time: Int64, roundTrip: Int64?) {
        self.samples.append(Sample(time: max(0, time), roundTrip: roundTrip))
    }

    /// Adds the probe a ping event tells of (a reply, a STAMP reply, a loss, a refusal: lost too; other events add
    /// nothing), probe *n* sent at *n* × `interval`.
    public mutating func add(_ event: ProbeEvent, interval: Duration) {
        let step = interval.nanoseconds
        switch event {
        case .reply(let sequence, _, let roundTrip, _, _, _):
            self.add(time: Int64(clamping: sequence) &* step, roundTrip: roundTrip)
        case .stampReply(let reply):
            self.add(time: Int64(clamping: reply.sequence) &* step, roundTrip: reply.roundTrip)
        case .lost(let sequence), .refused(let sequence?):
            self.add(time: Int64(clamping: sequence) &* step, roundTrip: nil)
        default:
            break
        }
    }

    /// The colours of the median by the interval's loss: none, up to 2 %, 10 %, 50 %, more.
    static let lossColors: [(limit: Double, color: String, label: String)] = [
        (0, "#1a9641", "0"), (0.02, "#2b83ba", "≤2%"), (0.10, "#7b3294", "≤10%"), (0.50, "#e66101", "≤50%"),
        (1, "#d7191c", ">50%"),
    ]

    /// The colour of an interval that lost `fraction` of its probes.
    static func color(loss fraction: Double) -> String {
        Self.lossColors.first { fraction <= $0.limit }?.color ?? Self.lossColors.last!.color
    }

    /// One column of the drawing: a stretch of time, its probes sent and lost, and the percentiles of its round
    /// trips (nil when none came back). The drawing is made of columns whether they come from single probes
    /// (``add(time:roundTrip:)``) or from a summary kept over time (``LiveSeries``).
    public struct Column: Sendable, Equatable {
        /// Start and end, nanoseconds from the start of the drawing.
        public var start: Int64
        public var end: Int64
        /// Probes sent and lost in it.
        public var sent: Int
        public var lost: Int
        /// The round trips' 5th, 10th, 25th, 50th, 75th, 90th and 95th percentiles, nanoseconds.
        public var percentiles: [Int64]?

        /// The percentiles drawn: the smoke's bands and the median.
        public static let ranks: [Double] = [5, 10, 25, 50, 75, 90, 95]

        /// A column; see each property.
        public init(start: Int64, end: Int64, sent: Int, lost: Int, percentiles: [Int64]?) {
            self.start = start
            self.end = end
            self.sent = sent
            self.lost = lost
            self.percentiles = percentiles
        }

        /// The share of its probes lost.
        public var loss: Double { self.sent == 0 ? 0 : Double(self.lost) / Double(self.sent) }

        func percentile(_ rank: Double) -> Int64 {
            guard let percentiles = self.percentiles, let index = Self.ranks.firstIndex(of: rank) else { return 0 }
            return percentiles[index]
        }

        /// The percentiles of `sorted` (ascending round trips) at ``ranks``.
        public static func percentiles(ofSorted sorted: [Int64]) -> [Int64]? {
            guard !sorted.isEmpty else { return nil }
            return Self.ranks.map { rank in
                let index = Int((rank / 100 * Double(sorted.count)).rounded(.up)) - 1
                return sorted[min(max(index, 0), sorted.count - 1)]
            }
        }
    }

    /// Columns given whole (a live graph's), instead of single probes.
    private var givenColumns: [Column]?
    /// The time the drawing spans, when fixed (a live graph's hour); otherwise up to the last probe.
    public var window: Int64?
    /// The time axis' label and how many nanoseconds its unit is: seconds since the first probe by default.
    public var timeAxis: (label: String, unit: Double) = ("time since the first probe (s)", 1e9)

    /// A drawing of `columns` over `window` nanoseconds (a live graph: the last hour, a column a minute).
    public init(title: String, clock: String, columns: [Column], window: Int64) {
        self.init(title: title, clock: clock, intervals: max(1, columns.count))
        self.givenColumns = columns
        self.window = window
    }

    /// The run cut into intervals of equal time.
    func cut() -> [Column] {
        if let given = self.givenColumns { return given }
        guard let last = self.samples.map(\.time).max() else { return [] }
        let count = min(self.intervals, self.samples.count)
        let span = max(last + 1, self.window ?? 0)
        var roundTrips = [[Int64]](repeating: [], count: count)
        var lost = [Int](repeating: 0, count: count)
        for sample in self.samples {
            let index = min(count - 1, Int(sample.time * Int64(count) / span))
            if let roundTrip = sample.roundTrip {
                roundTrips[index].append(roundTrip)
            } else {
                lost[index] += 1
            }
        }
        return (0..<count).map { index in
            Column(
                start: span * Int64(index) / Int64(count),
                end: span * Int64(index + 1) / Int64(count),
                sent: roundTrips[index].count + lost[index],
                lost: lost[index],
                percentiles: Column.percentiles(ofSorted: roundTrips[index].sorted())
            )
        }
    }

    /// The drawing, `width` by `height` pixels.
    public func svg(width: Int = 800, height: Int = 360) -> String {
        let width = Double(max(width, 320))
        let height = Double(max(height, 240))
        let (left, right, top, bottom) = (64.0, 20.0, 44.0, 78.0)
        let plotWidth = width - left - right
        let plotHeight = height - top - bottom
        let intervals = self.cut()
        let span = Double(max(self.window ?? 0, intervals.last?.end ?? 1, 1))
        let tallest = intervals.filter { $0.percentiles != nil }.map { $0.percentile(95) }.max() ?? 1_000_000
        let maximum = SVGText.niceCeiling(max(Double(tallest) / 1e6 * 1.1, 0.001))
        func px(_ time: Int64) -> Double { left + Double(time) / span * plotWidth }
        func py(_ nanoseconds: Int64) -> Double {
            top + plotHeight - min(Double(nanoseconds) / 1e6, maximum) / maximum * plotHeight
        }
        var svg = SVGText.header(width: width, height: height, title: self.title)
        // Axes: milliseconds up the side, seconds from the start along the bottom.
        for tick in 0...5 {
            let value = maximum * Double(tick) / 5
            let y = top + plotHeight - plotHeight * Double(tick) / 5
            svg += "<line x1=\"\(left)\" y1=\"\(y)\" x2=\"\(left + plotWidth)\" y2=\"\(y)\" stroke=\"#eee\"/>\n"
            svg += "<text x=\"\(left - 6)\" y=\"\(y + 4)\" text-anchor=\"end\">\(SVGText.format(value))</text>\n"
        }
        let seconds = span / self.timeAxis.unit
        let step = SVGText.niceCeiling(max(seconds / 8, 1e-3))
        var tick = 0.0
        while tick <= seconds + 1e-9 {
            let x = left + tick / seconds * plotWidth
            svg +=
                "<line x1=\"\(x)\" y1=\"\(top + plotHeight)\" x2=\"\(x)\" y2=\"\(top + plotHeight + 4)\" stroke=\"#333\"/>\n"
            svg +=
                "<text x=\"\(x)\" y=\"\(top + plotHeight + 17)\" text-anchor=\"middle\">\(SVGText.format(tick))</text>\n"
            tick += step
        }
        svg += "<text x=\"16\" y=\"\(top + plotHeight / 2)\" text-anchor=\"middle\" "
        svg += "transform=\"rotate(-90 16 \(top + plotHeight / 2))\">round trip (ms)</text>\n"
        svg += "<text x=\"\(left + plotWidth / 2)\" y=\"\(top + plotHeight + 32)\" text-anchor=\"middle\">"
        svg += "\(SVGText.escape(self.timeAxis.label))</text>\n"
        // The smoke, lightest band first.
        let bands: [(low: Double, high: Double, color: String)] = [
            (5, 95, "#e3e3e3"), (10, 90, "#cfcfcf"), (25, 75, "#b0b0b0"),
        ]
        var medians = ""
        var lost = ""
        let lostProbes = intervals.reduce(0) { $0 + $1.lost }
        for interval in intervals {
            let x = px(interval.start)
            let w = max(0.5, px(interval.end) - x)
            if interval.percentiles != nil {
                for band in bands {
                    let high = py(interval.percentile(band.high))
                    let low = py(interval.percentile(band.low))
                    svg += "<rect class=\"smoke\" x=\"\(SVGText.format(x))\" y=\"\(SVGText.format(high))\" "
                    svg += "width=\"\(SVGText.format(w))\" height=\"\(SVGText.format(max(0.5, low - high)))\" "
                    svg += "fill=\"\(band.color)\"/>\n"
                }
                let y = SVGText.format(py(interval.percentile(50)))
                medians += "<line class=\"median\" x1=\"\(SVGText.format(x))\" y1=\"\(y)\" "
                medians += "x2=\"\(SVGText.format(x + w))\" y2=\"\(y)\" stroke=\"\(Self.color(loss: interval.loss))\" "
                medians += "stroke-width=\"3\"/>\n"
            }
            // Lost probes along the top: one mark per interval that lost any, as tall as its share of loss.
            if interval.lost > 0 {
                let tall = max(2, 10 * interval.loss)
                lost += "<rect class=\"lost\" x=\"\(SVGText.format(x))\" y=\"\(SVGText.format(top - tall))\" "
                lost += "width=\"\(SVGText.format(w))\" height=\"\(SVGText.format(tall))\" fill=\"#d7191c\"/>\n"
            }
        }
        svg += medians + lost
        svg +=
            "<rect x=\"\(left)\" y=\"\(top)\" width=\"\(plotWidth)\" height=\"\(plotHeight)\" fill=\"none\" stroke=\"#333\"/>\n"
        if intervals.allSatisfy({ $0.sent == 0 }) {
            svg += "<text x=\"\(width / 2)\" y=\"\(top + plotHeight / 2)\" text-anchor=\"middle\">no probes</text>\n"
        }
        // The legend: the median's colours, the smoke, the lost marks, the clock.
        var y = top + plotHeight + 50
        var x = left
        svg += "<text x=\"\(x)\" y=\"\(y)\">median by loss:</text>\n"
        x += 96
        for entry in Self.lossColors {
            svg += "<line x1=\"\(x)\" y1=\"\(y - 4)\" x2=\"\(x + 16)\" y2=\"\(y - 4)\" stroke=\"\(entry.color)\" "
            svg += "stroke-width=\"3\"/>\n<text x=\"\(x + 20)\" y=\"\(y)\">\(SVGText.escape(entry.label))</text>\n"
            x += 58
        }
        svg += "<rect x=\"\(x + 6)\" y=\"\(y - 9)\" width=\"10\" height=\"8\" fill=\"#d7191c\"/>\n"
        svg += "<text x=\"\(x + 20)\" y=\"\(y)\">lost (\(lostProbes))</text>\n"
        y += 18
        let smoke = "smoke: p5–p95, p10–p90, p25–p75 of each interval; \(intervals.count) intervals"
        let (legendSize, legend) = SVGText.fit(smoke + "; clock: " + self.clock, width: plotWidth, fontSize: 12)
        svg += "<text x=\"\(left)\" y=\"\(y)\" font-size=\"\(SVGText.format(legendSize))\">"
        svg += "\(SVGText.escape(legend))</text>\n"
        svg += "</svg>\n"
        return svg
    }
}

extension SmokePlot {
    /// `plots` one under the other in one self-contained SVG (`mesh --once --plot`: a graph per peer), each
    /// `width` by `height`.
    public static func stacked(_ plots: [SmokePlot], width: Int = 800, height: Int = 300) -> String {
        let total = max(1, plots.count) * height
        var svg = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n"
        svg += "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"\(width)\" height=\"\(total)\" "
        svg += "viewBox=\"0 0 \(width) \(total)\">\n"
        for (index, plot) in plots.enumerated() {
            var panel = plot.svg(width: width, height: height)
            if panel.hasPrefix("<?xml") { panel = String(panel.drop { $0 != "\n" }.dropFirst()) }
            // A nested <svg> placed by its y: each panel keeps its own coordinates.
            panel = panel.replacingFirst("<svg ", with: "<svg x=\"0\" y=\"\(index * height)\" ")
            svg += panel
        }
        return svg + "</svg>\n"
    }
}

extension String {
    fileprivate func replacingFirst(_ target: String, with replacement: String) -> String {
        guard let range = self.firstRange(of: target) else { return self }
        var copy = self
        copy.replaceSubrange(range, with: replacement)
        return copy
    }
}

/// Text in the SVG drawings: numbers without trailing zeros, escaping, and fitting a line to a width.
enum SVGText {
    /// The width of `count` characters at `fontSize` in a sans-serif font, generously (most glyphs are narrower).
    static func estimatedWidth(characters count: Int, fontSize: Double) -> Double { Double(count) * fontSize * 0.6 }

    /// `text` at `fontSize`, or smaller (down to 9) if it would run past `width`, and cut with an ellipsis if even
    /// that does not fit.
    static func fit(_ text: String, width: Double, fontSize: Double) -> (Double, String) {
        let count = text.count
        guard Self.estimatedWidth(characters: count, fontSize: fontSize) > width else { return (fontSize, text) }
        let smaller = max(9, width / (Double(count) * 0.6))
        guard Self.estimatedWidth(characters: count, fontSize: smaller) > width else { return (smaller, text) }
        let keep = max(1, Int(width / (smaller * 0.6)) - 1)
        return (smaller, String(text.prefix(keep)) + "…")
    }

    static func niceCeiling(_ value: Double) -> Double {
        let magnitude = pow(10, floor(log10(value)))
        for step in [1.0, 2.0, 2.5, 5.0, 10.0] where step * magnitude >= value { return step * magnitude }
        return 10 * magnitude
    }

    /// A number with at most three decimals and no trailing zeros: 412.5, 0.125, 70.
    static func format(_ value: Double) -> String {
        let thousandths = Int64((value * 1000).rounded())
        let whole = thousandths / 1000
        var fraction = String(abs(thousandths % 1000))
        fraction = String(repeating: "0", count: 3 - fraction.count) + fraction
        while fraction.hasSuffix("0") { fraction.removeLast() }
        let sign = thousandths < 0 && whole == 0 ? "-" : ""
        return fraction.isEmpty ? "\(sign)\(whole)" : "\(sign)\(whole).\(fraction)"
    }

    /// The opening of a drawing `width` by `height`: white, with `title` centred at the top (set smaller, or cut, to
    /// stay on the canvas).
    static func header(width: Double, height: Double, title: String) -> String {
        let (size, fitted) = Self.fit(title, width: width - 20, fontSize: 15)
        return """
            <?xml version="1.0" encoding="UTF-8"?>
            <svg xmlns="http://www.w3.org/2000/svg" width="\(Int(width))" height="\(Int(height))" \
            viewBox="0 0 \(Int(width)) \(Int(height))" font-family="sans-serif" font-size="12">
            <rect width="100%" height="100%" fill="white"/>
            <text x="\(width / 2)" y="22" text-anchor="middle" font-size="\(Self.format(size))">\(Self.escape(fitted))</text>

            """
    }

    static func escape(_ text: String) -> String {
        text.escaping(["&": "&amp;", "<": "&lt;", ">": "&gt;", "\"": "&quot;"])
    }
}
