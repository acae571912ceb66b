#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// One flow of a run (one source port): what it sent and lost, and its round trips.
public struct FlowStatistics: Sendable {
    /// The flow's local (source) port: ECMP hashing picks a path per port.
    public var port: Int
    /// Probes sent from this port.
    public var sent: Int
    /// Probes answered.
    public var received: Int
    /// Probes not answered in time.
    public var lost: Int
    /// The flow's round trips, in nanoseconds (its percentiles).
    public var times: RoundTripTimes
    /// A uniform sample of the flow's round trips (nanoseconds), at most ``sampleCapacity``: what the latency test
    /// ranks.
    public var samples: [Int64]
    /// How many round trips the sample stands for.
    public var sampled: Int

    /// The most round trips ``samples`` keeps.
    public static let sampleCapacity = 20_000

    /// A flow's statistics.
    public init(port: Int, sent: Int = 0, received: Int = 0, lost: Int = 0, samples: [Int64] = []) {
        self.port = port
        self.sent = sent
        self.received = received
        self.lost = lost
        self.times = RoundTripTimes()
        self.samples = []
        self.sampled = 0
        for sample in samples { self.record(sample) }
    }

    /// The share of probes lost, 0...1 (0 when none was sent).
    public var loss: Double { self.sent == 0 ? 0 : Double(self.lost) / Double(self.sent) }

    mutating func record(_ roundTrip: Int64) {
        self.times.record(roundTrip)
        self.sampled += 1
        if self.samples.count < Self.sampleCapacity {
            self.samples.append(roundTrip)
        } else {
            // Reservoir sampling: every round trip has the same chance to be in the sample.
            let slot = Int.random(in: 0..<self.sampled)
            if slot < Self.sampleCapacity { self.samples[slot] = roundTrip }
        }
    }
}

/// Which flows of a run stand apart from the others: the source ports whose loss, or whose round trips, are worse
/// than the healthy flows' by more than chance explains (ECMP sends each source port over one of the equal-cost
/// paths, so a bad path shows as bad ports).
///
/// The test, for loss and for latency alike: the baseline starts as the best flow (the lowest loss rate, or median
/// round trip); a flow stands apart when it is worse than the baseline's other flows pooled, by a one-sided test at the significance level 0.01 / N (Bonferroni over the N flows), and by
/// a margin that matters (loss at least 1 percentage point higher; a median round trip at least 50% and 50 µs
/// higher: on one idle host, loopback flows' kernel-timestamped medians were seen to differ by up to 2.3x and 27 µs
/// from socket to socket, a difference of the host, not of paths). The flows that do not stand apart become the baseline, and the test runs again until nothing changes.
/// Loss uses Fisher's exact test on the 2x2 table (lost and answered, this flow against the baseline), latency the
/// Mann-Whitney U test (normal approximation) on the round trips. Starting from the best flow means that even a
/// majority of bad paths is found against the good ones; a flow that the best one's luck made look bad in the first
/// round is measured again against the wider baseline in the next, where it no longer stands apart.
public enum FlowComparison {
    /// A flow that stands apart, and why.
    public struct Outlier: Sendable, Equatable {
        /// What sets a flow apart.
        public enum Reason: Sendable, Equatable {
            /// Its loss against the baseline's, 0...1.
            case loss(Double, baseline: Double)
            /// Its median round trip against the baseline's, nanoseconds.
            case latency(Int64, baseline: Int64)
        }

        /// The flow's source port.
        public var port: Int
        /// Why it stands apart: its loss, its latency, or both.
        public var reasons: [Reason]
    }

    /// Significance over the whole run (divided among the flows).
    public static let significance = 0.01

    /// The flows that stand apart, in port order, with the reasons; empty with fewer than 3 flows.
    public static func outliers(_ flows: [FlowStatistics]) -> [Outlier] {
        guard flows.count >= 3 else { return [] }
        let level = Self.significance / Double(flows.count)
        let lossy = Self.apart(
            flows,
            score: { $0.loss },
            worse: { flow, baseline in
                let lost = baseline.reduce(0) { $0 + $1.lost }
                let sent = baseline.reduce(0) { $0 + $1.sent }
                let rate = sent == 0 ? 0 : Double(lost) / Double(sent)
                guard flow.sent > 0, flow.loss - rate >= 0.01 else { return false }
                return Self.fisherGreater(flow.lost, flow.sent - flow.lost, lost, sent - lost) < level
            }
        )
        let slow = Self.apart(
            flows.filter { !$0.samples.isEmpty },
            score: { Double($0.times.percentile(50)) },
            worse: { flow, baseline in
                let pooled = baseline.flatMap(\.samples)
                guard !pooled.isEmpty else { return false }
                let median = Self.median(pooled)
                let mine = flow.times.percentile(50)
                guard Double(mine) >= Double(median) * 1.5 && mine - median >= 50_000 else { return false }
                return Self.mannWhitneyGreater(flow.samples, pooled) < level
            }
        )
        var result: [Outlier] = []
        for flow in flows.sorted(by: { $0.port < $1.port }) {
            var reasons: [Outlier.Reason] = []
            if lossy.contains(flow.port) {
                let baseline = flows.filter { !lossy.contains($0.port) }
                let lost = baseline.reduce(0) { $0 + $1.lost }
                let sent = baseline.reduce(0) { $0 + $1.sent }
                reasons.append(.loss(flow.loss, baseline: sent == 0 ? 0 : Double(lost) / Double(sent)))
            }
            if slow.contains(flow.port) {
                let pooled = flows.filter { !slow.contains($0.port) }.flatMap(\.samples)
                reasons.append(.latency(flow.times.percentile(50), baseline: pooled.isEmpty ? 0 : Self.median(pooled)))
            }
            if !reasons.isEmpty { result.append(Outlier(port: flow.port, reasons: reasons)) }
        }
        return result
    }

    /// The ports that stand apart by `worse`, from the best flows (by `score`, lower is better) as the baseline.
    private static func apart(
        _ flows: [FlowStatistics],
        score: (FlowStatistics) -> Double,
        worse: (FlowStatistics, [FlowStatistics]) -> Bool
    ) -> Set<Int> {
        guard flows.count >= 3 else { return [] }
        let best = flows.map(score).min()!
        var baseline = Set(flows.filter { score($0) <= best }.map(\.port))
        var flagged: Set<Int> = []
        for _ in 0..<flows.count {
            flagged = Set(
                flows.filter { flow in
                    worse(flow, flows.filter { baseline.contains($0.port) && $0.port != flow.port })
                }.map(\.port)
            )
            let next = Set(flows.map(\.port)).subtracting(flagged)
            if next == baseline { break }
            baseline = next
        }
        return flagged
    }

    /// One-sided Fisher's exact test: the probability, with the margins fixed, of a table at least as extreme as
    /// `a` lost and `b` answered here against `c` lost and `d` answered in the baseline, towards more loss here.
    static func fisherGreater(_ a: Int, _ b: Int, _ c: Int, _ d: Int) -> Double {
        let row = a + b
        let lostTotal = a + c
        let total = a + b + c + d
        guard row > 0, total > row else { return 1 }
        func logChoose(_ n: Int, _ k: Int) -> Double {
            lgamma(Double(n + 1)) - lgamma(Double(k + 1)) - lgamma(Double(n - k + 1))
        }
        let denominator = logChoose(total, row)
        var p = 0.0
        for x in a...min(row, lostTotal) where lostTotal - x <= total - row {
            p += exp(logChoose(lostTotal, x) + logChoose(total - lostTotal, row - x) - denominator)
        }
        return min(1, p)
    }

    /// One-sided Mann-Whitney U test (normal approximation with a continuity correction, ties ranked by their
    /// mean): the probability of values at least this much larger in `sample` than in `baseline` by chance.
    static func mannWhitneyGreater(_ sample: [Int64], _ baseline: [Int64]) -> Double {
        let n1 = Double(sample.count)
        let n2 = Double(baseline.count)
        guard n1 > 0, n2 > 0 else { return 1 }
        var all = sample.map { ($0, true) } + baseline.map { ($0, false) }
        all.sort { $0.0 < $1.0 }
        var rankSum = 0.0
        var index = 0
        while index < all.count {
            var end = index
            while end + 1 < all.count && all[end + 1].0 == all[index].0 { end += 1 }
            let rank = Double(index + end) / 2 + 1
            for position in index...end where all[position].1 { rankSum += rank }
            index = end + 1
        }
        let u = rankSum - n1 * (n1 + 1) / 2
        let mean = n1 * n2 / 2
        let deviation = (n1 * n2 * (n1 + n2 + 1) / 12).squareRoot()
        guard deviation > 0 else { return 1 }
        let z = (u - mean - 0.5) / deviation
        return 0.5 * erfc(z / 2.0.squareRoot())
    }

    private static func median(_ values: [Int64]) -> Int64 {
        let sorted = values.sorted()
        return sorted[sorted.count / 2]
    }
}
