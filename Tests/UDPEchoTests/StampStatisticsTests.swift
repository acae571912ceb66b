import Testing

@testable import UDPEcho

/// One-way delays can be negative (two clocks): their distribution keeps fixed memory and still answers percentiles
/// across zero.
@Suite struct StampStatisticsTests {
    @Test func signedTimesSpanZero() {
        var times = SignedTimes()
        // -5.000 ms to +4.999 ms in 1 us steps, shuffled.
        for value in (-5000..<5000).shuffled() { times.record(Int64(value) * 1000) }
        #expect(times.count == 10_000)
        #expect(abs(times.mean - (-500)) < 1)
        func near(_ percentile: Double, _ expected: Int64) -> Bool {
            abs(times.percentile(percentile) - expected) <= max(abs(expected) / 500, 1000)
        }
        #expect(near(0, -5_000_000), "\(times.percentile(0))")
        #expect(near(25, -2_500_000), "\(times.percentile(25))")
        #expect(near(50, 0), "\(times.percentile(50))")
        #expect(near(75, 2_500_000), "\(times.percentile(75))")
        #expect(near(100, 4_999_000), "\(times.percentile(100))")
    }

    @Test func signedTimesAllOnOneSide() {
        var negative = SignedTimes()
        var positive = SignedTimes()
        for value in 1...1000 {
            negative.record(-Int64(value) * 1000)
            positive.record(Int64(value) * 1000)
        }
        #expect(abs(negative.percentile(50) + 500_000) <= 1000 && abs(positive.percentile(50) - 500_000) <= 1000)
        #expect(abs(negative.percentile(0) + 1_000_000) <= 1000 && abs(negative.percentile(100) + 1000) <= 2)
        #expect(SignedTimes().percentile(50) == 0 && SignedTimes().mean == 0)
    }
}
