import TestSupport
import Testing

@testable import UDPEcho

/// The test that names the source ports standing apart: its two statistics against known values, and its verdicts
/// on made-up runs where the answer is known.
@Suite struct FlowComparisonTests {
    /// Fisher's exact test, one-sided, against values computed by hand from the hypergeometric distribution.
    @Test func fisherMatchesTheHypergeometricTail() {
        // [[3, 1], [1, 3]]: P(X >= 3) = (C(4,3)C(4,1) + C(4,4)C(4,0)) / C(8,4) = 17/70.
        #expect(abs(FlowComparison.fisherGreater(3, 1, 1, 3) - 17.0 / 70) < 1e-12)
        // [[1, 199], [0, 3000]]: one loss among 3200 probes lands in the 200-probe flow with chance 200/3200.
        #expect(abs(FlowComparison.fisherGreater(1, 199, 0, 3000) - 200.0 / 3200) < 1e-9)
        // Nothing lost anywhere: nothing to see.
        #expect(FlowComparison.fisherGreater(0, 100, 0, 1000) == 1)
    }

    @Test func mannWhitneyTellsAShiftFromNoise() {
        let base = (0..<500).map { Int64(100_000 + ($0 * 7919) % 20_000) }
        let same = (0..<100).map { Int64(100_000 + ($0 * 104_729) % 20_000) }
        let slower = same.map { $0 + 15_000 }
        #expect(FlowComparison.mannWhitneyGreater(same, base) > 0.05)
        #expect(FlowComparison.mannWhitneyGreater(slower, base) < 1e-6)
        // One-sided: faster is not "greater".
        #expect(FlowComparison.mannWhitneyGreater(same.map { $0 - 15_000 }, base) > 0.5)
    }

    func flow(_ port: Int, sent: Int, lost: Int, median: Int64 = 100_000) -> FlowStatistics {
        let samples = (0..<(sent - lost)).map { median - 5_000 + Int64(($0 * 7919) % 10_000) }
        return FlowStatistics(port: port, sent: sent, received: sent - lost, lost: lost, samples: samples)
    }

    @Test(arguments: [0, 1, 2, 8, 12, 15, 16])
    func namesExactlyTheLossyPorts(bad: Int) {
        // 16 ports, 200 probes each; `bad` of them lose 30% (60), the others 0 or 1.
        let flows = (0..<16).map { index in
            self.flow(1000 + index, sent: 200, lost: index < bad ? 54 + index % 13 : index % 2)
        }
        let named = Set(FlowComparison.outliers(flows).map(\.port))
        // With every port bad, none stands apart: the verdict compares ports with each other.
        #expect(named == (bad == 16 ? [] : Set((0..<bad).map { 1000 + $0 })), "\(named.sorted())")
    }

    @Test func evenLossNamesNobody() {
        // 5% loss everywhere, spread by chance (8 to 12 of 200).
        let flows = (0..<16).map { self.flow(2000 + $0, sent: 200, lost: 8 + $0 % 5) }
        #expect(FlowComparison.outliers(flows).isEmpty)
    }

    @Test func aSlowPortIsNamedForLatency() {
        var flows = (0..<8).map { self.flow(3000 + $0, sent: 100, lost: 0) }
        flows[3] = self.flow(3003, sent: 100, lost: 0, median: 400_000)
        let outliers = FlowComparison.outliers(flows)
        #expect(outliers.map(\.port) == [3003])
        guard case .latency(let median, let baseline) = outliers.first?.reasons.first else {
            Issue.record("no latency reason: \(outliers)")
            return
        }
        #expect(abs(median - 400_000) < 10_000 && abs(baseline - 100_000) < 10_000)
    }
}

extension FlowComparisonTests {
    /// Flows that all lose the same share by chance: over 300 runs of 16 ports x 200 probes at 5% loss, a port is
    /// named in at most 1% of runs (the test's level).
    @Test func chanceAloneRarelyNamesAPort() {
        var random = SplitMix64(state: 42)
        var runsWithAName = 0
        for _ in 0..<300 {
            let flows = (0..<16).map { index in
                let lost = (0..<200).filter { _ in Double.random(in: 0..<1, using: &random) < 0.05 }.count
                return FlowStatistics(port: 4000 + index, sent: 200, received: 200 - lost, lost: lost)
            }
            if !FlowComparison.outliers(flows).isEmpty { runsWithAName += 1 }
        }
        #expect(runsWithAName <= 3, "\(runsWithAName) of 300 runs named a port")
    }
}
