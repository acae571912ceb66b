/// What one direction of an OWAMP test measured, from its receiver's records (RFC 4656 §3.7) and its sender's
/// Stop-Sessions: one-way delay (as the two hosts' clocks tell it: meaningful across hosts only when both are
/// synchronized, as ``synchronized`` says, within ``maximumError``), its percentiles and jitter, loss and
/// duplicates, and the hops the packets crossed.
public struct OwampDirectionResult: Sendable, Equatable {
    /// The session's identifier, as perfSONAR prints it (32 hex digits).
    public var sid: String
    /// Packets the sender sent (its next sequence number, less the ones it skipped), and skipped.
    public var sent: Int
    public var skipped: Int
    /// Packets that arrived (each counted once), that did not within the loss timeout, and extra copies.
    public var received: Int
    public var lost: Int
    public var duplicates: Int
    /// One-way delays of the packets received (the first copy of each), nanoseconds, ascending; negative when the
    /// receiver's clock is behind the sender's by more than the delay.
    public var delays: [Int64]
    /// Whether every timestamp came from a clock synchronized to UTC (the S bits of the error estimates).
    public var synchronized: Bool
    /// The largest error bound of a delay: the sender's and the receiver's estimates added, seconds.
    public var maximumError: Double
    /// The fewest and most hops the packets crossed (255 less the TTL they arrived with, as owping counts them; nil
    /// when none arrived).
    public var hops: ClosedRange<Int>?

    /// The delay at `percentile` (0...100), nanoseconds (0 without delays).
    public func delay(atPercentile percentile: Double) -> Int64 {
        guard !self.delays.isEmpty else { return 0 }
        let rank = Int((percentile / 100 * Double(self.delays.count)).rounded(.up)) - 1
        return self.delays[min(max(rank, 0), self.delays.count - 1)]
    }

    /// owping's jitter: the 95th percentile of the delay less its median, nanoseconds.
    public var jitter: Int64 { self.delay(atPercentile: 95) - self.delay(atPercentile: 50) }

    /// The loss as a fraction of the packets sent.
    public var lossRatio: Double { self.sent == 0 ? 0 : Double(self.lost) / Double(self.sent) }

    /// The result of `records` (as the receiver keeps them: lost ones with receive time zero), the sender having sent
    /// up to `nextSequence` and skipped `skips`.
    init(sid: [UInt8], records: [OwampRecord], nextSequence: UInt32, skips: [OwampSkipRange]) {
        self.sid = sid.map { String($0, radix: 16).count == 1 ? "0" + String($0, radix: 16) : String($0, radix: 16) }
            .joined()
        var skipped = 0
        for skip in skips where skip.first < nextSequence {
            skipped += Int(min(skip.last, nextSequence &- 1) - skip.first) + 1
        }
        self.skipped = skipped
        self.sent = Int(nextSequence) - skipped
        var seen = Set<UInt32>()
        var lost = Set<UInt32>()
        var duplicates = 0
        var delays: [Int64] = []
        var synchronized = true
        var maximumError = 0.0
        var fewest = Int.max
        var most = Int.min
        for record in records where record.sequence < nextSequence {
            synchronized = synchronized && record.sendError.synchronized && record.receiveError.synchronized
            maximumError = max(maximumError, record.sendError.seconds + record.receiveError.seconds)
            if record.isLost {
                lost.insert(record.sequence)
                continue
            }
            guard seen.insert(record.sequence).inserted else {
                duplicates += 1
                continue
            }
            let sent = StampTimestampFormat.ntp.decode(record.sendTime, taiOffset: 0)
            let received = StampTimestampFormat.ntp.decode(record.receiveTime, taiOffset: 0)
            delays.append(received &- sent)
            fewest = min(fewest, 255 - Int(record.ttl))
            most = max(most, 255 - Int(record.ttl))
        }
        self.received = seen.count
        self.lost = lost.subtracting(seen).count
        self.duplicates = duplicates
        self.delays = delays.sorted()
        self.synchronized = synchronized
        self.maximumError = maximumError
        self.hops = most >= 0 ? fewest...most : nil
    }
}

/// What ``OwampPinger/run(_:)`` measured: each direction asked for.
public struct OwampResults: Sendable, Equatable {
    /// From this host to the server (the server received; its records fetched).
    public var toServer: OwampDirectionResult?
    /// From the server to this host (this host received).
    public var fromServer: OwampDirectionResult?
    /// The mode the control connection ran in.
    public var mode: IPPMModes
}
