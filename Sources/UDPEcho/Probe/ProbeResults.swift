public import Histogram

/// What happened to the probes of a run, counted.
public struct ProbeCounts: Sendable, Equatable, Codable {
    /// Probes handed to the kernel.
    public var sent = 0
    /// Replies that matched their probe byte for byte, in time.
    public var received = 0
    /// Probes with no reply within the loss timeout (or still unanswered when the run was stopped).
    public var lost = 0
    /// Replies to a probe that had already been answered.
    public var duplicate = 0
    /// Replies that differ from every probe sent: wrong length, wrong bytes, a sequence number never sent.
    public var corrupt = 0
    /// Correct replies that came after their probe was counted as lost.
    public var late = 0
    /// Replies that came after a reply to a later probe of the same flow.
    public var reordered = 0
    /// Probes the kernel would not send (the run goes on).
    public var sendErrors = 0
    /// Probes answered with ICMP "port unreachable": nothing listens at the target. Each is counted once, and not
    /// as lost.
    public var refused = 0
    /// Replies whose times cannot be true (a STAMP reflector that says it held the probe for longer than the whole
    /// round trip, or for less than nothing): counted apart, and kept out of every statistic.
    public var impossible = 0

    /// No counts yet.
    public init() {}

    /// The share of probes sent that got no reply matching them, in percent: a reply with impossible times was still
    /// a reply, and is not counted as a loss.
    public var lossPercent: Double {
        self.sent == 0 ? 0 : Double(self.sent - self.received - self.impossible) / Double(self.sent) * 100
    }
}

/// A distribution of times (round trips, latencies, lateness, delay variation): an HdrHistogram in nanoseconds, and
/// exact minimum, maximum, mean and deviation.
public struct RoundTripTimes: Sendable {
    /// Every time recorded, in nanoseconds, to 3 significant digits, up to an hour.
    public var histogram = Histogram<UInt64>(
        highestTrackableValue: 3_600_000_000_000,
        numberOfSignificantValueDigits: .three
    )
    /// The shortest time recorded, in nanoseconds (`Int64.max` before any).
    public private(set) var minimum: Int64 = .max
    /// The longest time recorded, in nanoseconds.
    public private(set) var maximum: Int64 = 0
    private var sum: Double = 0
    private var sumOfSquares: Double = 0

    /// No times yet.
    public init() {}

    mutating func record(_ nanoseconds: Int64) {
        let value = min(max(1, nanoseconds), 3_600_000_000_000)
        _ = self.histogram.record(UInt64(value))
        self.minimum = min(self.minimum, value)
        self.maximum = max(self.maximum, value)
        let asDouble = Double(value)
        self.sum += asDouble
        self.sumOfSquares += asDouble * asDouble
    }

    /// How many times were recorded.
    public var count: Int { Int(self.histogram.totalCount) }
    /// Mean, in nanoseconds.
    public var mean: Double { self.count == 0 ? 0 : self.sum / Double(self.count) }
    /// Standard deviation (ping's "mdev"), in nanoseconds.
    public var deviation: Double {
        guard self.count > 0 else { return 0 }
        let mean = self.mean
        return (max(0, self.sumOfSquares / Double(self.count) - mean * mean)).squareRoot()
    }
    /// The time at `percentile` (0...100), in nanoseconds.
    public func percentile(_ percentile: Double) -> Int64 {
        self.count == 0 ? 0 : Int64(self.histogram.valueAtPercentile(percentile))
    }
}

/// How much the round trip varies from probe to probe.
public struct Jitter: Sendable {
    /// The absolute IP packet delay variation of consecutive probes of a flow (RFC 3393, RFC 5481: the difference of
    /// two consecutive round trips, both answered), in nanoseconds: its mean is ``RoundTripTimes/mean``, its
    /// percentiles ``RoundTripTimes/percentile(_:)``.
    public var ipdv = RoundTripTimes()
    /// RFC 3550's interarrival jitter, `J += (|D| - J) / 16` over the round trips in the order their replies came,
    /// in nanoseconds; with several flows, the mean of theirs.
    public var rfc3550: Double = 0

    /// No jitter measured yet.
    public init() {}
}

/// Which clock measured a run's times.
public enum TimestampSource: String, Sendable, CaseIterable, Codable, CustomStringConvertible {
    /// The kernel's software timestamps (`SO_TIMESTAMPING`): when a probe left the socket layer for the network
    /// (transmit) and when its reply arrived from it (receive). The client's own scheduling and wake-ups are not in
    /// them.
    case kernel
    /// Clock reads in the program, just before sending and just after receiving.
    case user
    /// The network card's clock (`SO_TIMESTAMPING` hardware), where the card and its driver offer it.
    case hardware

    /// The source's name, as `--timestamps` takes it.
    public var description: String { self.rawValue }

    /// How the source is named in outputs: "kernel timestamps (SO_TIMESTAMPING)".
    public var label: String {
        switch self {
        case .kernel: "kernel timestamps (SO_TIMESTAMPING, software)"
        case .user: "user-space timestamps (clock reads around the system calls)"
        case .hardware: "hardware timestamps (SO_TIMESTAMPING, the network card's clock)"
        }
    }
}

/// Something that happened to one probe, for tools that show each (ping).
public enum ProbeEvent: Sendable, Equatable {
    /// The reply to probe `sequence` came back intact: `roundTrip` nanoseconds after the probe actually left,
    /// which was `lateness` nanoseconds after its scheduled time; with `marks` when the run reads them (ping).
    case reply(sequence: UInt64, bytes: Int, roundTrip: Int64, lateness: Int64, outOfOrder: Bool, marks: ArrivalMarks?)
    /// Another reply to probe `sequence`, which had been answered already.
    case duplicate(sequence: UInt64, bytes: Int)
    /// Probe `sequence` got no reply in time.
    case lost(sequence: UInt64)
    /// A STAMP reflector's reply to a test packet, with what it said (``StampReply``).
    case stampReply(StampReply)
    /// The reply to probe `sequence` came, intact, after it had been counted as lost.
    case late(sequence: UInt64, bytes: Int, roundTrip: Int64)
    /// A reply that matches no probe: `sequence` when it names one that was sent, and where it first differs.
    case corrupt(sequence: UInt64?, bytes: Int, reason: String)
    /// A reply to probe `sequence` whose times cannot be true (``ProbeCounts/impossible``), and why.
    case impossible(sequence: UInt64, bytes: Int, reason: String)
    /// The target's host answered probe `sequence` with ICMP "port unreachable": nothing listens there.
    case refused(sequence: UInt64?)
    /// The kernel would not send a probe.
    case sendError(errno: Int32)
}

/// A snapshot taken once a second during a run.
public struct ProbeProgress: Sendable {
    /// Time since the run started.
    public var elapsed: Duration
    /// Matched replies in the last interval, per second.
    public var echoesPerSecond: Double
    /// The counts so far.
    public var counts: ProbeCounts
    /// The 99th percentile of the round-trip times so far, in nanoseconds.
    public var p99: Int64
}
