import Atomics
import Synchronization

/// The exporter's continuous targets (smokeping_prober's way): each target of the configuration is probed with its
/// module every `every`, on its own schedule (a random start within the first interval, so that targets are not
/// probed in step), and its results add up over time: counters, a round-trip histogram, and the last hour for the
/// live graphs (``LiveSeries``). A reload that changes the targets restarts them; a target that stays keeps its
/// series.
final class ContinuousProbes: Sendable {
    /// One target's results over time.
    struct Series: Sendable {
        var target: ContinuousTarget
        var probes: (success: UInt64, failure: UInt64) = (0, 0)
        var sent: UInt64 = 0
        var received: UInt64 = 0
        var lost: UInt64 = 0
        var duplicate: UInt64 = 0
        var histogram = LatencyHistogram()
        var up = false
        var lastFailure: String?
        var live = LiveSeries()
        /// Whether the round trips are OWAMP's one-way delays.
        var oneWay = false
    }

    private let series = Mutex<[String: Series]>([:])
    private let generation = ManagedAtomic(0)

    static func key(_ target: ContinuousTarget) -> String { target.target + " " + target.module }

    /// The series, in the configuration's order.
    func snapshot(order: [ContinuousTarget]) -> [Series] {
        let all = self.series.withLock { $0 }
        return order.compactMap { all[Self.key($0)] }
    }

    /// The targets changed: the running loops end, and ``run(configuration:)`` starts the new ones.
    func restart() { self.generation.wrappingIncrement(ordering: .relaxed) }

    /// Probes the targets of `configuration()` until cancelled, starting again with the new targets after each
    /// ``restart()``.
    func run(configuration: @escaping @Sendable () -> ExporterConfiguration) async {
        while !Task.isCancelled {
            let current = self.generation.load(ordering: .relaxed)
            let configuration = configuration()
            let keys = Set(configuration.targets.map(Self.key))
            self.series.withLock { series in
                series = series.filter { keys.contains($0.key) }
                for target in configuration.targets where series[Self.key(target)] == nil {
                    var new = Series(target: target)
                    new.oneWay = configuration.modules[target.module]?.probeProtocol == .owamp
                    series[Self.key(target)] = new
                }
            }
            await withTaskGroup(of: Void.self) { group in
                for target in configuration.targets {
                    guard let module = configuration.modules[target.module] else { continue }
                    group.addTask { await self.probe(target, module: module, generation: current) }
                }
                // Without targets, wait for a reload that may bring some.
                group.addTask {
                    while !Task.isCancelled && self.generation.load(ordering: .relaxed) == current {
                        try? await Task.sleep(for: .milliseconds(200))
                    }
                }
                await group.waitForAll()
            }
        }
    }

    private func probe(_ target: ContinuousTarget, module: ProbeModule, generation: Int) async {
        let key = Self.key(target)
        guard let endpoint = try? ExporterProbe.parseTarget(target.target, protocol: module.probeProtocol, allow: nil)
        else { return }
        var next = ContinuousClock.now + target.every * Double.random(in: 0..<1)
        while !Task.isCancelled && self.generation.load(ordering: .relaxed) == generation {
            guard await self.sleep(until: next, generation: generation) else { return }
            let started = ContinuousClock.now
            next = started + target.every
            let report = await ExporterProbe.run(
                module,
                endpoint: endpoint,
                started: started,
                deadline: started + target.every
            ) { [self] roundTrip in
                let now = LiveSeries.now()
                self.series.withLock { series in
                    series[key]?.live.record(at: now, roundTrip: roundTrip)
                    if let roundTrip { series[key]?.histogram.record(nanoseconds: roundTrip) }
                }
            }
            self.series.withLock { series in
                guard var entry = series[key] else { return }
                if report.success { entry.probes.success += 1 } else { entry.probes.failure += 1 }
                entry.up = report.success
                entry.lastFailure = report.failure
                if let result = report.roundTrip {
                    entry.sent += UInt64(result.counts.sent)
                    entry.received += UInt64(result.counts.received)
                    // Unanswered: lost, refused (ICMP), not sent.
                    entry.lost += UInt64(max(0, result.counts.sent - result.counts.received - result.counts.impossible))
                    entry.duplicate += UInt64(result.counts.duplicate)
                }
                if let result = report.oneWay {
                    for direction in [result.toServer, result.fromServer].compactMap({ $0 }) {
                        entry.sent += UInt64(direction.sent)
                        entry.received += UInt64(direction.received)
                        entry.lost += UInt64(direction.lost)
                        entry.duplicate += UInt64(direction.duplicates)
                    }
                }
                series[key] = entry
            }
        }
    }

    /// Sleeps until `instant`, a second at a time so that a restart is seen; false when the loop should end.
    private func sleep(until instant: ContinuousClock.Instant, generation: Int) async -> Bool {
        while ContinuousClock.now < instant {
            if Task.isCancelled || self.generation.load(ordering: .relaxed) != generation { return false }
            try? await Task.sleep(until: min(instant, ContinuousClock.now + .seconds(1)), clock: .continuous)
        }
        return !Task.isCancelled && self.generation.load(ordering: .relaxed) == generation
    }
}
