#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// A histogram of latencies kept two ways at once, as Prometheus' clients keep one: the classic buckets (fixed upper
/// bounds, 50 µs to 10 s, the text format's `_bucket{le=...}` series) and a native histogram's sparse exponential
/// buckets (schema 3: each power of two cut into 8 buckets, each about 9 % wider than the one below), which
/// Prometheus takes in its protobuf format as one series whatever the number of buckets.
public struct LatencyHistogram: Sendable, Equatable {
    /// The classic buckets' upper bounds, seconds.
    public static let classicBounds: [Double] = [
        0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10,
    ]
    /// The native buckets' schema: bucket *k* is (2^((k-1)/8), 2^(k/8)].
    public static let schema: Int32 = 3
    /// Observations at or below this (seconds) go to the zero bucket (Prometheus' clients' default).
    public static let zeroThreshold = 2.938735877055719e-39

    /// How many classic buckets there are: one per bound, and one above the highest.
    static let classicBucketCount = LatencyHistogram.classicBounds.count + 1

    /// The counts, 32 bits each: the classic buckets' first (``classicBucketCount``, not cumulative), then the native
    /// buckets', densely from index ``nativeOffset``. A peer's round trips span a few dozen native buckets; one array
    /// of 32-bit counts is a quarter of what two arrays of 64-bit ones took (and a dictionary took three times more
    /// again): at 10,000 mesh peers, each histogram kept twice (the prober's and the snapshot a scrape reads).
    private var low: [UInt32] = Array(repeating: 0, count: LatencyHistogram.classicBucketCount)
    /// The bits above the 32 of `low` of the counts that have passed 2^32 - 1 (after billions of observations in one
    /// bucket, weeks at a fast interval), by bucket: the classic bucket *b* as `Int32.min + b`, a native one by its
    /// index. Nil until then.
    private var high: [Int32: UInt32]? = nil
    /// The index of the first native bucket in `low`.
    private var nativeOffset: Int32 = 0
    /// Observations in all.
    public private(set) var count: UInt64 = 0
    /// Their sum, seconds.
    public private(set) var sum: Double = 0
    /// Observations in the zero bucket.
    public private(set) var zeroCount: UInt64 = 0

    /// Observations in each classic bucket, not cumulative; the last is above the highest bound.
    public var classic: [UInt64] { (0..<Self.classicBucketCount).map { self.classicCount($0) } }

    /// Observations in classic bucket `bucket` (0 to `classicBounds.count`, the last above the highest bound), not
    /// cumulative.
    public func classicCount(_ bucket: Int) -> UInt64 { self.value(at: bucket, key: Self.classicKey(bucket)) }

    /// The key in `high` of classic bucket `bucket`: below every native index.
    private static func classicKey(_ bucket: Int) -> Int32 { Int32.min + Int32(bucket) }

    /// How many native buckets `low` holds (some may be empty).
    private var nativeLength: Int { self.low.count - Self.classicBucketCount }

    /// The native bucket at `position` of the native part: its index and count.
    private func nativeBucket(_ position: Int) -> (index: Int32, count: UInt64) {
        let index = self.nativeOffset + Int32(position)
        return (index, self.value(at: Self.classicBucketCount + position, key: index))
    }

    /// The whole count at `slot` of `low`, whose bits above 32 are `high[key]`.
    private func value(at slot: Int, key: Int32) -> UInt64 {
        let low = UInt64(self.low[slot])
        guard let high = self.high?[key] else { return low }
        return UInt64(high) << 32 | low
    }

    /// Adds `amount` to the count at `slot` of `low`, carrying past 32 bits into `high[key]`.
    private mutating func add(_ amount: UInt64, at slot: Int, key: Int32) {
        let total = UInt64(self.low[slot]) + (amount & 0xFFFF_FFFF)
        self.low[slot] = UInt32(truncatingIfNeeded: total)
        let carry = UInt32(truncatingIfNeeded: (amount >> 32) + (total >> 32))
        if carry > 0 { self.high = (self.high ?? [:]).merging([key: carry], uniquingKeysWith: +) }
    }

    /// Observations in each native bucket that has any, by index.
    public var native: [Int32: UInt64] {
        var buckets: [Int32: UInt64] = [:]
        for position in 0..<self.nativeLength {
            let bucket = self.nativeBucket(position)
            if bucket.count > 0 { buckets[bucket.index] = bucket.count }
        }
        return buckets
    }

    /// Adds `count` observations to native bucket `index`, growing the array to reach it.
    private mutating func addNative(_ index: Int32, _ count: UInt64) {
        if self.nativeLength == 0 {
            self.nativeOffset = index
            self.low.append(0)
        } else if index < self.nativeOffset {
            self.low.insert(
                contentsOf: repeatElement(0, count: Int(self.nativeOffset - index)),
                at: Self.classicBucketCount
            )
            self.nativeOffset = index
        }
        let position = Int(index - self.nativeOffset)
        if position >= self.nativeLength {
            self.low.append(contentsOf: repeatElement(0, count: position - self.nativeLength + 1))
        }
        self.add(count, at: Self.classicBucketCount + position, key: index)
    }

    /// An empty histogram.
    public init() {}

    /// Records a latency of `nanoseconds`.
    public mutating func record(nanoseconds: Int64) { self.record(seconds: Double(max(0, nanoseconds)) / 1e9) }

    /// Records a latency of `seconds`.
    public mutating func record(seconds: Double) {
        guard seconds.isFinite, seconds >= 0 else { return }
        self.count += 1
        self.sum += seconds
        let bucket = Self.classicBounds.firstIndex { seconds <= $0 } ?? Self.classicBounds.count
        self.add(1, at: bucket, key: Self.classicKey(bucket))
        if seconds <= Self.zeroThreshold {
            self.zeroCount += 1
        } else {
            self.addNative(Self.nativeIndex(seconds), 1)
        }
    }

    /// Adds `other`'s observations (a group's histogram from its members').
    public mutating func merge(_ other: LatencyHistogram) {
        self.count += other.count
        self.sum += other.sum
        self.zeroCount += other.zeroCount
        for bucket in 0..<Self.classicBucketCount {
            self.add(other.classicCount(bucket), at: bucket, key: Self.classicKey(bucket))
        }
        for position in 0..<other.nativeLength {
            let bucket = other.nativeBucket(position)
            if bucket.count > 0 { self.addNative(bucket.index, bucket.count) }
        }
    }

    /// The native bucket of `seconds` (> 0) at ``schema``, computed as Prometheus' Go client does (from the binary
    /// exponent and the fraction, so that a value on a boundary falls in the bucket it bounds).
    public static func nativeIndex(_ seconds: Double) -> Int32 {
        let parts = frexp(seconds)  // seconds = fraction × 2^exponent, fraction in [0.5, 1)
        let perPower = 1 << Int(Self.schema)
        var position = 0
        while position < perPower && Self.fractionBounds[position] < parts.0 { position += 1 }
        return Int32(position + (Int(parts.1) - 1) * perPower)
    }

    /// The upper bound of native bucket `index`, seconds.
    public static func nativeUpperBound(_ index: Int32) -> Double {
        exp2(Double(index) / Double(1 << Int(Self.schema)))
    }

    /// 2^(i/8 - 1) for i in 0..<8: the fractions that bound the buckets within a power of two.
    private static let fractionBounds: [Double] = (0..<(1 << Int(LatencyHistogram.schema))).map {
        exp2(Double($0) / Double(1 << Int(LatencyHistogram.schema)) - 1)
    }

    /// The native buckets as the protobuf format carries them: spans of consecutive indexes (the first's offset from
    /// 0, the others' from the end of the one before) and each bucket's count as a difference from the previous
    /// bucket's.
    public func nativeSpans() -> (spans: [(offset: Int32, length: UInt32)], deltas: [Int64]) {
        var spans: [(offset: Int32, length: UInt32)] = []
        var deltas: [Int64] = []
        var previousIndex: Int32?
        var previousCount: Int64 = 0
        for position in 0..<self.nativeLength {
            let (index, stored) = self.nativeBucket(position)
            guard stored > 0 else { continue }
            let count = Int64(stored)
            if let before = previousIndex, index == before + 1 {
                spans[spans.count - 1].length += 1
            } else {
                spans.append((previousIndex.map { index - $0 - 1 } ?? index, 1))
            }
            deltas.append(count - previousCount)
            previousCount = count
            previousIndex = index
        }
        return (spans, deltas)
    }

    /// The latency at quantile `q` (0 to 1) as Prometheus' `histogram_quantile` finds it in the native buckets
    /// (interpolated within the bucket, exponentially), seconds; nil when empty.
    public func nativeQuantile(_ q: Double) -> Double? {
        guard self.count > 0 else { return nil }
        let rank = q * Double(self.count)
        var seen = Double(self.zeroCount)
        if rank <= seen { return 0 }
        for position in 0..<self.nativeLength {
            let (index, stored) = self.nativeBucket(position)
            guard stored > 0 else { continue }
            let inBucket = Double(stored)
            if seen + inBucket >= rank {
                let lower = Self.nativeUpperBound(index - 1)
                let upper = Self.nativeUpperBound(index)
                let fraction = (rank - seen) / inBucket
                return lower * pow(upper / lower, fraction)
            }
            seen += inBucket
        }
        return Self.nativeUpperBound(self.nativeOffset + Int32(self.nativeLength - 1))
    }
}
