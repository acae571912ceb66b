import ArgumentParser
import UDPEcho

extension TimestampSource: ExpressibleByArgument {}

extension RoundTripTimes {
    /// Percentiles in milliseconds, keyed "p50", "p99"...
    func milliseconds(_ percentiles: [Double]) -> [String: Double] {
        var values: [String: Double] = [:]
        for percentile in percentiles {
            let key = percentile == percentile.rounded() ? "p\(Int(percentile))" : "p\(percentile)"
            values[key] = Double(self.percentile(percentile)) / 1e6
        }
        return values
    }
}

extension Jitter {
    /// IPDV's mean absolute value, p50 and p99, in milliseconds.
    var ipdvMilliseconds: [String: Double] {
        var values = self.ipdv.milliseconds([50, 99])
        values["mean"] = self.ipdv.mean / 1e6
        return values
    }
}

extension EchoBenchmark.Result {
    /// `ipdv mean/p50/p99 = ... ms, jitter (RFC 3550) ... ms`.
    var jitterLine: String {
        let ipdv = self.jitter.ipdv
        return "ipdv mean/p50/p99 = \(milliseconds(Int64(ipdv.mean)))/\(milliseconds(ipdv.percentile(50)))/"
            + "\(milliseconds(ipdv.percentile(99))) ms, jitter (RFC 3550) \(milliseconds(Int64(self.jitter.rfc3550))) ms"
    }
}
