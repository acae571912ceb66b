import Synchronization
import UDPEcho

/// Collects a ping run's probes for `--plot`, from the threads that report them; does nothing without a title (no
/// `--plot`).
final class PlotRecorder: Sendable {
    private let plot: Mutex<SmokePlot?>

    init(_ title: String?) { self.plot = Mutex(title.map { SmokePlot(title: $0, clock: "") }) }

    /// The run started, its round trips measured by `clock`.
    func start(clock: String) { self.plot.withLock { $0?.clock = clock } }

    func add(_ event: ProbeEvent, interval: Duration) { self.plot.withLock { $0?.add(event, interval: interval) } }

    /// The drawing so far.
    func svg() -> String { self.plot.withLock { $0?.svg() ?? "" } }
}
