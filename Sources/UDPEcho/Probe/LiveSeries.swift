/// The last hour of a target's probes, a minute at a time, for live smoke graphs (the exporter's and the mesh
/// agent's `/` page): per minute, the probes sent and lost, exactly, and the percentiles of its round trips, from at
/// most ``reservoirSize`` of them chosen uniformly (reservoir sampling), kept to the microsecond. Its memory is fixed,
/// about 3.5 KB (an hour of 48-byte minutes and the reservoir), however many probes a minute brings.
///
/// Times are nanoseconds on a monotonic clock (``now()``): a step of the wall clock moves nothing.
public struct LiveSeries: Sendable {
    /// Minutes kept: an hour.
    public static let minutes = 60
    /// Round trips kept of the current minute to take its percentiles from.
    public static let reservoirSize = 64
    static let minute: Int64 = 60_000_000_000

    /// A closed minute in 48 bytes: its counts and its percentiles in microseconds (all 0: no round trip).
    private struct Minute: Sendable {
        var index: Int64
        var sent: UInt32
        var lost: UInt32
        var percentiles: SIMD8<UInt32>

        init(index: Int64, sent: Int, lost: Int, percentiles: [Int64]?) {
            self.index = index
            self.sent = UInt32(clamping: sent)
            self.lost = UInt32(clamping: lost)
            var packed = SIMD8<UInt32>(repeating: 0)
            if let percentiles {
                // At least 1 us, so that a minute with round trips is told from one without.
                for (slot, value) in percentiles.prefix(7).enumerated() {
                    packed[slot] = UInt32(clamping: max(1, (value + 500) / 1000))
                }
            }
            self.percentiles = packed
        }

        var values: [Int64]? {
            self.percentiles[0] == 0 ? nil : (0..<7).map { Int64(self.percentiles[$0]) * 1000 }
        }
    }

    /// The minute being counted: its index and counts (its percentiles come from the reservoir).
    private var current: (index: Int64, sent: Int, lost: Int) = (-1, 0, 0)
    private var reservoir: [Int64] = []
    private var seen = 0
    private var random: UInt64 = 0x9E37_79B9_7F4A_7C15
    /// The closed minutes by index modulo an hour; allocated with the first (a series never recorded costs nothing).
    private var past: [Minute?] = []

    /// An empty series.
    public init() {}

    /// Nanoseconds on the monotonic clock the series counts in.
    public static func now() -> Int64 {
        (ContinuousClock.now - Self.origin).nanoseconds
    }

    private static let origin = ContinuousClock.now

    /// Records a probe sent at `time` (``now()``) whose round trip was `roundTrip` nanoseconds, or nil if lost.
    public mutating func record(at time: Int64, roundTrip: Int64?) {
        let index = time / Self.minute
        if index != self.current.index {
            guard index > self.current.index else { return }  // a late record of a closed minute: dropped
            self.close()
            self.current = (index, 0, 0)
        }
        self.current.sent += 1
        guard let roundTrip else {
            self.current.lost += 1
            return
        }
        self.seen += 1
        if self.reservoir.count < Self.reservoirSize {
            self.reservoir.append(roundTrip)
        } else {
            // Algorithm R: the n-th round trip replaces a kept one with probability size / n.
            self.random ^= self.random << 13
            self.random ^= self.random >> 7
            self.random ^= self.random << 17
            let slot = Int(self.random % UInt64(self.seen))
            if slot < Self.reservoirSize { self.reservoir[slot] = roundTrip }
        }
    }

    /// Closes the current minute: its percentiles are taken and it joins the past.
    private mutating func close() {
        guard self.current.index >= 0 else { return }
        let closed = Minute(
            index: self.current.index,
            sent: self.current.sent,
            lost: self.current.lost,
            percentiles: SmokePlot.Column.percentiles(ofSorted: self.reservoir.sorted())
        )
        if self.past.isEmpty { self.past = [Minute?](repeating: nil, count: Self.minutes) }
        self.past[Int(closed.index % Int64(Self.minutes))] = closed
        self.reservoir.removeAll(keepingCapacity: true)
        self.seen = 0
    }

    /// The columns of the hour that ends with the minute of `now`, oldest first: one a minute, empty where nothing
    /// was probed.
    public func columns(now: Int64) -> [SmokePlot.Column] {
        let last = now / Self.minute
        let first = last - Int64(Self.minutes) + 1
        return (first...last).map { index in
            let start = (index - first) * Self.minute
            if index == self.current.index {
                return SmokePlot.Column(
                    start: start,
                    end: start + Self.minute,
                    sent: self.current.sent,
                    lost: self.current.lost,
                    percentiles: SmokePlot.Column.percentiles(ofSorted: self.reservoir.sorted())
                )
            }
            if index >= 0, !self.past.isEmpty, let kept = self.past[Int(index % Int64(Self.minutes))],
                kept.index == index
            {
                return SmokePlot.Column(
                    start: start,
                    end: start + Self.minute,
                    sent: Int(kept.sent),
                    lost: Int(kept.lost),
                    percentiles: kept.values
                )
            }
            return SmokePlot.Column(start: start, end: start + Self.minute, sent: 0, lost: 0, percentiles: nil)
        }
    }

    /// Probes sent and lost over the hour that ends at `now`.
    public func totals(now: Int64) -> (sent: Int, lost: Int) {
        self.columns(now: now).reduce((0, 0)) { ($0.0 + $1.sent, $0.1 + $1.lost) }
    }

    /// The hour that ends at `now` as a smoke graph.
    public func plot(title: String, clock: String, now: Int64) -> SmokePlot {
        var plot = SmokePlot(
            title: title,
            clock: clock,
            columns: self.columns(now: now),
            window: Int64(Self.minutes) * Self.minute
        )
        plot.timeAxis = ("minutes: the last hour, now at 60", 60e9)
        return plot
    }
}
