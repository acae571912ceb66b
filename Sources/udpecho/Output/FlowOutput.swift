import UDPEcho

/// ping --flow-stats: a line per source port, then the ports that stand apart.
func flowStatisticsLines(_ flows: [FlowStatistics]) -> [String] {
    func pad(_ text: String, _ width: Int) -> String {
        String(repeating: " ", count: max(0, width - text.count)) + text
    }
    var lines = ["flows: \(flows.count) source ports", "   port    sent    lost    loss    p50 ms    p90 ms    p99 ms"]
    for flow in flows.sorted(by: { $0.port < $1.port }) {
        let hasTimes = flow.times.count > 0
        lines.append(
            pad("\(flow.port)", 7) + pad("\(flow.sent)", 8) + pad("\(flow.lost)", 8)
                + pad(EchoBenchmark.Result.percent(flow.loss * 100), 8)
                + [50.0, 90, 99].map { pad(hasTimes ? milliseconds(flow.times.percentile($0)) : "-", 10) }.joined()
        )
    }
    let apart = FlowComparison.outliers(flows)
    if apart.isEmpty {
        lines.append("flows: no source port stands apart from the others")
    } else {
        let named = apart.map { outlier in
            "\(outlier.port) ("
                + outlier.reasons.map { reason in
                    switch reason {
                    case .loss(let loss, let baseline):
                        "loss \(EchoBenchmark.Result.percent(loss * 100)) against \(EchoBenchmark.Result.percent(baseline * 100))"
                    case .latency(let median, let baseline):
                        "p50 \(milliseconds(median)) ms against \(milliseconds(baseline)) ms"
                    }
                }.joined(separator: ", ") + ")"
        }
        lines.append("flows: standing apart: " + named.joined(separator: ", "))
    }
    return lines
}

/// One flow in ping's JSON summary.
struct FlowSummary: Encodable {
    var port, sent, received, lost: Int
    var loss_percent: Double
    var rtt_ms: [String: Double]?
    var stands_apart: Bool
    var apart_by: [String]?

    init(_ flow: FlowStatistics, apart: FlowComparison.Outlier?) {
        self.port = flow.port
        self.sent = flow.sent
        self.received = flow.received
        self.lost = flow.lost
        self.loss_percent = flow.loss * 100
        self.rtt_ms = flow.times.count == 0 ? nil : flow.times.milliseconds([50, 90, 99])
        self.stands_apart = apart != nil
        self.apart_by = apart.map { outlier in
            outlier.reasons.map { reason in
                switch reason {
                case .loss: "loss"
                case .latency: "latency"
                }
            }
        }
    }
}
