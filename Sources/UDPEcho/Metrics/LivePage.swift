/// The live page the exporter and the mesh agent serve at `/`: a smoke graph of each target's last hour
/// (``LiveSeries``), refreshed every 30 seconds by the browser itself. Plain HTML with the drawings inline: no script,
/// nothing fetched from elsewhere, so it works offline, behind a proxy and in a terminal browser's dump.
public enum LivePage {
    /// The most graphs on a page; the rest are counted, not drawn.
    public static let maximumGraphs = 100

    /// One graph of the page.
    public struct Graph: Sendable {
        /// The heading: the target.
        public var title: String
        /// A line under it: its state.
        public var status: String
        /// Its last hour.
        public var series: LiveSeries
        /// What measured it, for the legend.
        public var clock: String

        /// A graph; see each property.
        public init(title: String, status: String, series: LiveSeries, clock: String) {
            self.title = title
            self.status = status
            self.series = series
            self.clock = clock
        }
    }

    /// The page: `heading`, `introduction` (HTML), the graphs at `now` (``LiveSeries/now()``), then `footer` (HTML).
    /// Graphs past ``maximumGraphs``, and `notDrawn` more targets that have no graph here, are counted under them.
    public static func html(
        heading: String,
        introduction: String,
        graphs: [Graph],
        notDrawn: Int = 0,
        empty: String,
        footer: String = "",
        now: Int64 = LiveSeries.now()
    ) -> String {
        var body = ""
        for (index, graph) in graphs.prefix(Self.maximumGraphs).enumerated() {
            var svg = graph.series.plot(title: graph.title, clock: graph.clock, now: now).svg(width: 800, height: 300)
            if svg.hasPrefix("<?xml") { svg = String(svg.drop { $0 != "\n" }.dropFirst()) }
            let totals = graph.series.totals(now: now)
            let loss =
                totals.sent == 0
                ? "" : ", lost \(totals.lost) (\(Self.percent(Double(totals.lost) / Double(totals.sent) * 100)))"
            body += """
                <div class="target" id="target-\(index)">
                <h3>\(SVGText.escape(graph.title))</h3>
                <p>\(SVGText.escape(graph.status)); last hour: \(totals.sent) sent\(loss)</p>
                \(svg)</div>

                """
        }
        let more = max(0, graphs.count - Self.maximumGraphs) + notDrawn
        if more > 0 && !graphs.isEmpty {
            body += "<p>\(more) more are not drawn here; their metrics are at /metrics.</p>\n"
        }
        if graphs.isEmpty { body = "<p>\(SVGText.escape(empty))</p>\n" }
        return """
            <!DOCTYPE html>
            <html><head><meta charset="utf-8"><meta http-equiv="refresh" content="30">
            <title>\(SVGText.escape(heading))</title>
            <style>body { font-family: sans-serif; margin: 20px; } td, th { padding: 4px 8px; }</style>
            </head>
            <body>
            <h1>\(SVGText.escape(heading))</h1>
            \(introduction)
            \(body)\(footer)
            </body></html>

            """
    }

    /// `value` in percent with at most two decimals: "0%", "30.25%".
    static func percent(_ value: Double) -> String {
        var text = String(format3: (value * 100).rounded() / 100)
        while text.contains(".") && (text.hasSuffix("0") || text.hasSuffix(".")) { text.removeLast() }
        return text + "%"
    }
}
