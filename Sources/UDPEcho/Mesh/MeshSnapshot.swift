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
    public var samples: [SmokePlot.Sample]?
    /// With ``MeshProber/Configuration/liveGraphs``: the last hour.
    public var live: LiveSeries?
    /// Whether a reply came within the last three intervals (and a timeout).
    public var up = false
    /// Whether the target left the peer list (it is exported until its grace period ends).
    public var removed = false
    /// With per-flow counts: sent, received and lost of each flow, in flow order, and each flow's source port.
    public var flowCounts: [UInt64] = []
    /// With per-flow counts: each flow's source port, in flow order.
    public var flowPorts: [Int] = []
    /// The round trips, when percentiles were asked for.
    public var times: RoundTripTimes?

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
