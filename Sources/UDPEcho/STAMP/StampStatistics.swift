/// A distribution of times that may be negative (one-way delays between two clocks that disagree), in nanoseconds:
/// two histograms (the times from 0 up, and the magnitudes of those below 0), each to 3 significant digits, so that
/// its memory is fixed however long the run.
public struct SignedTimes: Sendable {
    private var positive = RoundTripTimes()
    private var negative = RoundTripTimes()
    private var sum: Double = 0

    /// No times yet.
    public init() {}

    mutating func record(_ nanoseconds: Int64) {
        if nanoseconds < 0 { self.negative.record(-nanoseconds) } else { self.positive.record(nanoseconds) }
        self.sum += Double(nanoseconds)
    }

    /// How many times were recorded.
    public var count: Int { self.positive.count + self.negative.count }
    /// Their mean, in nanoseconds (negative when the times below 0 outweigh the others).
    public var mean: Double { self.count == 0 ? 0 : self.sum / Double(self.count) }

    /// The time at `percentile` (0...100), nanoseconds; 0 without samples.
    public func percentile(_ percentile: Double) -> Int64 {
        guard self.count > 0 else { return 0 }
        let below = Double(self.count) * min(max(percentile, 0), 100) / 100
        let negatives = Double(self.negative.count)
        if below <= negatives && negatives > 0 {
            // The smallest times are the negative ones of the largest magnitude.
            return -self.negative.percentile(100 * (1 - below / negatives))
        }
        let positives = Double(self.positive.count)
        return self.positive.percentile(min(100, 100 * (below - negatives) / positives))
    }
}

/// What the reflected packets of a `ping --stamp` run said, over the run.
public struct StampStatistics: Sendable {
    /// T3 - T2 of each reply: how long the reflector held the packet.
    public var reflectorTime = RoundTripTimes()
    /// T2 - T1 and T4 - T3: forward and backward delay, meaningful only between synchronized clocks.
    public var forwardDelay = SignedTimes()
    /// T4 - T3: the backward delay.
    public var backwardDelay = SignedTimes()
    /// How many replies reported each TTL at the reflector, each TOS byte at the reflector (Class of Service TLV) and
    /// here.
    public var ttlAtReflector: [UInt8: Int] = [:]
    /// Replies by the TOS byte their test packet arrived at the reflector with (Class of Service TLV).
    public var tosAtReflector: [UInt8: Int] = [:]
    /// Replies by the TOS byte they arrived here with.
    public var tosHere: [UInt8: Int] = [:]
    /// The reflector's last error estimate: its clock's synchronization and its timestamp format.
    public var reflectorErrorEstimate: StampErrorEstimate?
    /// Replies that were our own test packet unchanged (an echo server, not a reflector).
    public var plainEchoes = 0
    /// Replies whose Class of Service TLV said the reflector declined the DSCP asked of it (RP 1).
    public var dscpDeclined = 0
    /// The source address and port the reflector saw (Location TLV).
    public var sourceSeenByReflector: String?
    /// The highest sender sequence number answered.
    var highestSenderSequence: Int64 = -1
    /// Whether the reflector counts what it received: its sequence numbers differed from ours once (a stateful STAMP
    /// reflector), or it is a TWAMP reflector, whose sequence number is its own count (RFC 5357 §4.2.1).
    public internal(set) var reflectorCounts = false
    /// How many times a stateful reflector's counter went back (or stood still) while our numbers went on: its
    /// session restarted (evicted from its table, the reflector restarted) or it does not count honestly.
    public private(set) var counterRestarts = 0
    /// The run of replies since the reflector's counter last restarted.
    private var segment: CounterSegment?
    /// Forward losses in the runs before it.
    private var forwardLossBefore = 0
    /// Probes between two runs (sent after the last reply of one and before the first of the next) that were not
    /// answered: the counter restarted among them, so which way they were lost cannot be told.
    private var lostAcrossRestarts = 0

    /// Replies between two restarts of the reflector's counter: where it began and how far both counters went.
    private struct CounterSegment {
        /// Our and the reflector's numbers just before the run: -1 for the first run (both counters started with our
        /// first probe), the first reply's own for a later one.
        var startSender, startReflector: Int64
        var highestSender, highestReflector: Int64

        /// Probes of this run that the reflector never counted: lost on the way there.
        var forwardLoss: Int {
            Int(max(0, (self.highestSender - self.startSender) - (self.highestReflector - self.startReflector)))
        }
    }

    /// Statistics before the first reply.
    public init() {}

    mutating func record(_ reply: StampReply) {
        if reply.plainEcho {
            self.plainEchoes += 1
            return
        }
        self.reflectorTime.record(reply.reflectorTime)
        self.forwardDelay.record(reply.forwardDelay)
        self.backwardDelay.record(reply.backwardDelay)
        self.ttlAtReflector[reply.ttlAtReflector, default: 0] += 1
        if let tos = reply.tosAtReflector { self.tosAtReflector[tos, default: 0] += 1 }
        if let tos = reply.tosHere { self.tosHere[tos, default: 0] += 1 }
        if reply.dscpHonoured == false { self.dscpDeclined += 1 }
        self.reflectorErrorEstimate = reply.reflectorErrorEstimate
        if let source = reply.sourceSeenByReflector { self.sourceSeenByReflector = source }
        if UInt64(reply.reflectorSequence) != reply.sequence & 0xFFFF_FFFF { self.reflectorCounts = true }
        self.follow(sender: Int64(reply.sequence), reflector: Int64(reply.reflectorSequence))
        self.highestSenderSequence = max(self.highestSenderSequence, Int64(reply.sequence))
    }

    /// Follows the two counters: a reply later than every one before whose reflector number is not ahead of the last
    /// one's is a restart of the reflector's counter, and begins a new run. (A reply that comes out of order is left
    /// out: its numbers are below the run's highest on both sides.)
    private mutating func follow(sender: Int64, reflector: Int64) {
        guard var segment = self.segment else {
            self.segment = CounterSegment(
                startSender: -1,
                startReflector: -1,
                highestSender: sender,
                highestReflector: reflector
            )
            return
        }
        guard sender > segment.highestSender else { return }
        if reflector > segment.highestReflector {
            segment.highestSender = sender
            segment.highestReflector = reflector
            self.segment = segment
            return
        }
        self.counterRestarts += 1
        self.forwardLossBefore += segment.forwardLoss
        self.lostAcrossRestarts += Int(sender - segment.highestSender - 1)
        self.segment = CounterSegment(
            startSender: sender,
            startReflector: reflector,
            highestSender: sender,
            highestReflector: reflector
        )
    }

    /// Probes lost on the way to the reflector, where a stateful reflector's counter shows it (nil otherwise): the
    /// test packets sent up to the last one answered that the reflector never counted, run by run between restarts
    /// of its counter.
    public var forwardLoss: Int? {
        guard self.reflectorCounts, let segment = self.segment else { return nil }
        return self.forwardLossBefore + segment.forwardLoss
    }

    /// The `lost` of `sent` probes (numbered from 0) by direction, where a stateful reflector's counter tells (nil
    /// otherwise): lost on the way there, lost on the way back, and those whose direction no reply can tell (after
    /// the last probe answered, or where the reflector's counter restarted). No direction is ever given more than
    /// `lost`, and the three add up to it.
    public func lossByDirection(sent: Int, lost: Int) -> (forward: Int, backward: Int, unknown: Int)? {
        guard let counted = self.forwardLoss else { return nil }
        let lost = max(0, lost)
        let forward = min(counted, lost)
        let afterLast = max(0, sent - 1 - Int(self.highestSenderSequence))
        let unknown = min(afterLast + self.lostAcrossRestarts, lost - forward)
        return (forward, lost - forward - unknown, unknown)
    }

    /// The clock offset the one-way delays imply (reflector minus sender, nanoseconds): half their difference.
    public var impliedClockOffset: Double {
        (self.forwardDelay.mean - self.backwardDelay.mean) / 2
    }
}
