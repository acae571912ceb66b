import Histogram

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

extension RoundTripTimes {
    /// The percentile distribution in HdrHistogram's text format (`.hgrm`), in milliseconds, which HdrHistogram's
    /// plotters read: `Value Percentile TotalCount 1/(1-Percentile)` rows, then mean, deviation, maximum and count,
    /// and, if given, `comment` as a last `#[...]` line (what was measured, and with which clock).
    public func percentileDistribution(comment: String? = nil) -> String {
        var text = ""
        self.histogram.outputPercentileDistribution(to: &text, outputValueUnitScalingRatio: 1e6)
        if let comment { text += "#[\(comment)]\n" }
        return text
    }

    /// An SVG drawing of latency by percentile, with a logarithmic percentile axis (0%, 90%, 99%, 99.9%, ...) as
    /// HdrHistogram's plots have, so that the tail is as visible as the median.
    public func percentilePlot(title: String) -> String {
        Self.percentilePlot(title: title, curves: [("", self)])
    }

    /// Several distributions in one drawing (as ``percentilePlot(title:)``), each a curve with its label in a
    /// legend: for example latency from the schedule and round trip from the departure.
    public static func percentilePlot(title: String, curves: [(label: String, times: RoundTripTimes)]) -> String {
        let colors = ["#1f5fbf", "#d0662c", "#2c9a4a", "#8a3fb0"]
        let width = 800.0
        let height = 480.0
        let left = 70.0
        let right = 45.0
        let top = 40.0
        let bottom = 50.0
        let plotWidth = width - left - right
        let plotHeight = height - top - bottom

        // x = log10(1 / (1 - p)): 0 at 0%, 1 at 90%, 2 at 99%... up to what the sample count can show.
        let count = max(1, curves.map(\.times.count).max() ?? 1)
        let maximumX = max(1.0, min(6.0, (log10(Double(count))).rounded(.up)))
        var lines: [[(x: Double, milliseconds: Double)]] = []
        for curve in curves {
            var points: [(x: Double, milliseconds: Double)] = []
            if curve.times.count > 0 {
                for step in curve.times.histogram.percentiles(ticksPerHalfDistance: 5) {
                    let fraction = step.percentileLevelIteratedTo / 100
                    let x = fraction >= 1 ? maximumX : min(maximumX, log10(1 / (1 - fraction)))
                    points.append((x, Double(step.value) / 1e6))
                    if fraction >= 1 { break }
                }
            }
            lines.append(points)
        }
        let highest = lines.flatMap { $0.map(\.milliseconds) }.max() ?? 1
        let maximumMilliseconds = SVGText.niceCeiling(max(highest, 1e-3))
        func px(_ x: Double) -> Double { left + x / maximumX * plotWidth }
        func py(_ milliseconds: Double) -> Double { top + plotHeight - milliseconds / maximumMilliseconds * plotHeight }

        // A long title (a host name, every option) is made smaller, or cut, to stay on the canvas.
        var svg = SVGText.header(width: width, height: height, title: title)
        for tick in 0...Int(maximumX) {
            let x = px(Double(tick))
            // 0%, 90%, 99%, 99.9%, 99.99%...
            let label =
                tick == 0
                ? "0%"
                : (tick == 1 ? "90" : "99" + (tick > 2 ? "." + String(repeating: "9", count: tick - 2) : "")) + "%"
            svg += "<line x1=\"\(x)\" y1=\"\(top)\" x2=\"\(x)\" y2=\"\(top + plotHeight)\" stroke=\"#ddd\"/>\n"
            svg += "<text x=\"\(x)\" y=\"\(top + plotHeight + 18)\" text-anchor=\"middle\">\(label)</text>\n"
        }
        for tick in 0...5 {
            let milliseconds = maximumMilliseconds * Double(tick) / 5
            let y = py(milliseconds)
            svg += "<line x1=\"\(left)\" y1=\"\(y)\" x2=\"\(left + plotWidth)\" y2=\"\(y)\" stroke=\"#ddd\"/>\n"
            svg += "<text x=\"\(left - 6)\" y=\"\(y + 4)\" text-anchor=\"end\">\(SVGText.format(milliseconds))</text>\n"
        }
        svg += "<text x=\"\(left + plotWidth / 2)\" y=\"\(height - 10)\" text-anchor=\"middle\">percentile</text>\n"
        svg += "<text x=\"16\" y=\"\(top + plotHeight / 2)\" text-anchor=\"middle\" "
        svg += "transform=\"rotate(-90 16 \(top + plotHeight / 2))\">time (ms)</text>\n"
        svg +=
            "<rect x=\"\(left)\" y=\"\(top)\" width=\"\(plotWidth)\" height=\"\(plotHeight)\" fill=\"none\" stroke=\"#333\"/>\n"
        for (index, points) in lines.enumerated() where !points.isEmpty {
            let color = colors[index % colors.count]
            let path = points.map { "\(SVGText.format(px($0.x))),\(SVGText.format(py($0.milliseconds)))" }.joined(
                separator: " "
            )
            svg += "<polyline fill=\"none\" stroke=\"\(color)\" stroke-width=\"2\" points=\"\(path)\"/>\n"
            let label = curves[index].label
            if !label.isEmpty {
                let y = top + 16 + Double(index) * 16
                svg += "<line x1=\"\(left + 12)\" y1=\"\(y - 4)\" x2=\"\(left + 32)\" y2=\"\(y - 4)\" "
                svg += "stroke=\"\(color)\" stroke-width=\"2\"/>\n"
                svg += "<text x=\"\(left + 38)\" y=\"\(y)\">\(SVGText.escape(label))</text>\n"
            }
        }
        if lines.allSatisfy(\.isEmpty) {
            svg += "<text x=\"\(width / 2)\" y=\"\(height / 2)\" text-anchor=\"middle\">no replies</text>\n"
        }
        svg += "</svg>\n"
        return svg
    }
}
