import NIOCore

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// One target's counts, as of a snapshot.
public struct MeshTargetStatistics: Sendable {
    /// The target counted.
    public var target: MeshTarget
    /// Probes sent.
    public var sent: UInt64 = 0
    /// Probes answered in time.
    public var received: UInt64 = 0
    /// Probes not answered within the timeout.
    public var lost: UInt64 = 0
    /// Replies to a probe already answered.
    public var duplicate: UInt64 = 0
    /// Replies whose bytes differ from the probe's.
    public var corrupt: UInt64 = 0
    /// Probes not sent because a rate cap was reached.
    public var skipped: UInt64 = 0
    /// The round trips: classic buckets and native ones.
    public var histogram = LatencyHistogram()
    /// Round trips: their sum, seconds.
    public var rttSum: Double { self.histogram.sum }
    /// How many round trips fell in each bucket of ``MeshProber/bucketBounds`` (the last: above 10 s), not
    /// cumulative.
    public var buckets: [UInt64] { self.histogram.classic }
    /// With ``MeshProber/Configuration/samples``: every probe, by its departure from the prober's start.
    public var samples: [SmokePlot.Sample]? {
        get { self.extras?.value.samples }
        set { self.changeExtras { $0.samples = newValue } }
    }
    /// With ``MeshProber/Configuration/liveGraphs``: the last hour (of the targets the live page draws).
    public var live: LiveSeries? {
        get { self.extras?.value.live }
        set { self.changeExtras { $0.live = newValue } }
    }
    /// Whether a reply came within the last three intervals (and a timeout).
    public var up = false
    /// Whether the target left the peer list (it is exported until its grace period ends).
    public var removed = false
    /// With per-flow counts: sent, received and lost of each flow, in flow order, and each flow's source port.
    public var flowCounts: [UInt64] {
        get { self.extras?.value.flowCounts ?? [] }
        set { self.changeExtras { $0.flowCounts = newValue } }
    }
    /// With per-flow counts: each flow's source port, in flow order.
    public var flowPorts: [Int] {
        get { self.extras?.value.flowPorts ?? [] }
        set { self.changeExtras { $0.flowPorts = newValue } }
    }
    /// The round trips, when percentiles were asked for.
    public var times: RoundTripTimes? {
        get { self.extras?.value.times }
        set { self.changeExtras { $0.times = newValue } }
    }

    /// What only some configurations keep, behind one reference: a target without them costs a pointer, not the
    /// 300 bytes they take inline (a snapshot of 10,000 targets is copied each second, and a scrape holds one).
    private var extras: ExtrasBox?

    private struct Extras: Sendable {
        var samples: [SmokePlot.Sample]?
        var live: LiveSeries?
        var flowCounts: [UInt64] = []
        var flowPorts: [Int] = []
        var times: RoundTripTimes?
    }

    private final class ExtrasBox: Sendable {
        let value: Extras
        init(_ value: Extras) { self.value = value }
    }

    private mutating func changeExtras(_ change: (inout Extras) -> Void) {
        var value = self.extras?.value ?? Extras()
        change(&value)
        self.extras = ExtrasBox(value)
    }

    init(target: MeshTarget) { self.target = target }
}

/// Every target's counts at one moment.
public struct MeshSnapshot: Sendable {
    /// Each target's counts.
    public var targets: [MeshTargetStatistics] = []
    /// The source ports (flows) each target is probed from.
    public var flows = 0
    /// Whether the targets carry per-flow counts.
    public var perFlow = false
}
