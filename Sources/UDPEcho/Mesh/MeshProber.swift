import Atomics
import CUDPEcho
import NIOCore
import Synchronization

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// Probes a mesh agent's peers: each target (a peer's address) every `interval`, with random jitter so that agents
/// do not synchronize, in turn from `flows` source ports (ECMP sends each port over one of the equal-cost paths),
/// under hard caps on probes and bytes per second, so that a mistake in a peer list cannot become a flood. One
/// thread, unconnected sockets (one per source port and family), read on a 5 ms tick.
///
/// A probe is `size` bytes: a sequence number, the target's index and the flow, then a pattern derived from the
/// sequence number; a reply counts when it comes from the target's address and equals the probe. Round trips are
/// the program's clock reads (CLOCK_MONOTONIC) around the send and the receive.
public final class MeshProber: @unchecked Sendable {
    /// How to probe.
    public struct Configuration: Sendable {
        /// Time between probes to each target (each probe is sent within ±10% of it).
        public var interval: Duration
        /// Source ports to probe from, in turn.
        public var flows: Int
        /// UDP payload bytes per probe, 32 and more.
        public var size: Int
        /// A probe without a reply after this long is lost.
        public var timeout: Duration
        /// At most this many probes a second over all targets; probes beyond it are skipped and counted.
        public var maximumRate: Double
        /// At most this many bytes a second over all targets, IP and UDP headers included.
        public var maximumBytesPerSecond: Double
        /// Keep counts and round trips per target and source port too.
        public var perFlow: Bool
        /// Keep each target's round trips in a histogram for percentiles (``MeshTargetStatistics/times``).
        public var percentiles: Bool
        /// How long a target that left the peer list is still exported.
        public var grace: Duration
        /// Keep each target's probes, one by one (``MeshTargetStatistics/samples``), for `mesh --once --plot`.
        public var samples = false
        /// Keep the last hour a minute at a time (``MeshTargetStatistics/live``) of the first
        /// ``LivePage/maximumGraphs`` targets, those the live page draws; about 3.5 KB each.
        public var liveGraphs = false

        /// Probes of 64 bytes every second from 8 ports, lost after 1 s; caps of 1100 probes and 125 000 bytes
        /// (1 Mbit/s) a second, which 1000 peers at 1/s stay under.
        public init(
            interval: Duration = .seconds(1),
            flows: Int = 8,
            size: Int = 64,
            timeout: Duration = .seconds(1),
            maximumRate: Double = 1100,
            maximumBytesPerSecond: Double = 125_000,
            perFlow: Bool = false,
            percentiles: Bool = false,
            grace: Duration = .seconds(300)
        ) {
            self.interval = interval
            self.flows = flows
            self.size = size
            self.timeout = timeout
            self.maximumRate = maximumRate
            self.maximumBytesPerSecond = maximumBytesPerSecond
            self.perFlow = perFlow
            self.percentiles = percentiles
            self.grace = grace
        }

        /// Throws ``EchoError/invalidConfiguration(_:)`` naming a setting out of range.
        public func validate() throws(EchoError) {
            guard self.interval >= .milliseconds(1) else {
                throw .invalidConfiguration("the interval must be at least 1ms")
            }
            guard (1...64).contains(self.flows) else { throw .invalidConfiguration("the flows go from 1 to 64") }
            guard (MeshProbe.headerSize...DatagramLimits.ipv4MaximumPayload).contains(self.size) else {
                throw .invalidConfiguration(
                    "the size \(self.size) is out of range: from \(MeshProbe.headerSize) to \(DatagramLimits.ipv4MaximumPayload)"
                )
            }
            guard self.timeout > .zero && self.timeout <= .seconds(60) else {
                throw .invalidConfiguration("the timeout must be more than 0 and at most 60s")
            }
            guard self.maximumRate > 0 && self.maximumRate <= 1_000_000 else {
                throw .invalidConfiguration("the probe rate cap must be more than 0 and at most 1000000 a second")
            }
            guard self.maximumBytesPerSecond >= 1000 else {
                throw .invalidConfiguration("the byte rate cap must be at least 1000 bytes a second")
            }
        }
    }

    /// Round-trip histogram buckets (upper bounds, seconds): 50 µs to 10 s.
    public static let bucketBounds: [Double] = LatencyHistogram.classicBounds

    /// How the prober probes.
    public let configuration: Configuration
    private let stop = ManagedAtomic(false)
    private let sending = ManagedAtomic(true)
    private let pending = Mutex<[MeshTarget]?>(nil)
    private let published = Mutex(MeshSnapshot())
    private let wake: Int32

    /// A prober; call ``setTargets(_:)`` and ``run()``.
    public init(_ configuration: Configuration) throws(EchoError) {
        try configuration.validate()
        self.configuration = configuration
        self.wake = cudpecho_eventfd()
    }

    deinit { if self.wake >= 0 { close(self.wake) } }

    /// Replaces the set of targets: new ones start being probed (at a random point of the interval), vanished ones
    /// stop at once and are still exported for the grace period. Safe from any thread.
    public func setTargets(_ targets: [MeshTarget]) {
        self.pending.withLock { $0 = targets }
        var one: UInt64 = 1
        _ = write(self.wake, &one, 8)
    }

    /// Stops sending probes; replies to those in flight are still taken, and they are lost after the timeout.
    /// (`mesh --once`: probe for a while, then wait for the last replies.)
    public func finishSending() { self.sending.store(false, ordering: .relaxed) }

    /// The statistics as of the last publication (at most half a second old).
    public func snapshot() -> MeshSnapshot { self.published.withLock { $0 } }

    /// A probe's round trip on CLOCK_MONOTONIC: from `sent` to `arrival` (the kernel's receive time, carried over from
    /// CLOCK_REALTIME by the clocks' offset when the reply was read at `drained`). The realtime clock may have
    /// stepped between the arrival and the read (the offset then differs by the step): an arrival before the send or
    /// after the read is impossible, and the read time, an upper bound a tick late at most, is taken instead.
    static func roundTrip(sent: Int64, arrival: Int64, drained: Int64) -> Int64 {
        arrival >= sent && arrival <= drained ? arrival - sent : max(0, drained - sent)
    }

    /// Probes until the task is cancelled; then publishes once more and returns.
    ///
    /// - Throws: ``EchoError/threadsExhausted(purpose:errno:)`` if the probing thread cannot be started.
    public func run() async throws(EchoError) {
        let prober = UnsafeTransfer(self)
        try await runOnOwnThread("mesh prober") {
            prober.wrappedValue.loop()
        } onCancel: {
            self.stop.store(true, ordering: .relaxed)
            var one: UInt64 = 1
            _ = write(self.wake, &one, 8)
        }
    }

    // MARK: The probing thread

    private func loop() {
        var state = MeshProberState(self.configuration)
        let epoll = cudpecho_epoll_create()
        guard epoll >= 0 else { return }
        defer {
            close(epoll)
            state.closeSockets()
        }
        _ = cudpecho_epoll_add(epoll, self.wake, UInt32.max)
        var tokens = [UInt32](repeating: 0, count: 64)
        var nextPublish: Int64 = 0
        // The thread wakes on a tick, not for each reply: replies carry the kernel's receive time, so reading them
        // a few milliseconds later changes no round trip, and 10,000 targets cost 1/tick wake-ups, not 10,000.
        let tick: Int64 = 5_000_000
        while !self.stop.load(ordering: .relaxed) {
            if let targets = self.pending.withLock({ value -> [MeshTarget]? in
                defer { value = nil }
                return value
            }) {
                state.apply(targets, now: cudpecho_now_ns())
            }
            var now = cudpecho_now_ns()
            state.drainAll()
            if self.sending.load(ordering: .relaxed) { state.sendDue(now: now) }
            state.expire(now: now)
            if now >= nextPublish {
                state.forgetRemoved(now: now)
                let snapshot = state.snapshot(now: now)
                self.published.withLock { $0 = snapshot }
                nextPublish = now + 1_000_000_000
            }
            now = cudpecho_now_ns()
            let due = self.sending.load(ordering: .relaxed) ? state.nextDue : Int64.max
            let wait = max(tick, min(due - now, 20_000_000, nextPublish - now))
            let ready = cudpecho_epoll_wait(epoll, &tokens, Int32(tokens.count), wait)
            if ready > 0 && tokens[0..<Int(ready)].contains(UInt32.max) {
                var value: UInt64 = 0
                _ = read(self.wake, &value, 8)
            }
        }
        state.drainAll()
        let snapshot = state.snapshot(now: cudpecho_now_ns())
        self.published.withLock { $0 = snapshot }
    }
}

/// What a mesh probe carries: its sequence number (bytes 0-7), its target's index (8-11) and flow (12-13), the tag
/// `ME` (14-15), then a pattern derived from the sequence number.
enum MeshProbe {
    static let headerSize = 16

    static func write(into buffer: UnsafeMutableRawBufferPointer, sequence: UInt64, target: UInt32, flow: UInt16) {
        buffer.storeBytes(of: sequence.littleEndian, toByteOffset: 0, as: UInt64.self)
        buffer.storeBytes(of: target.littleEndian, toByteOffset: 8, as: UInt32.self)
        buffer.storeBytes(of: flow.littleEndian, toByteOffset: 12, as: UInt16.self)
        buffer[14] = 0x4D
        buffer[15] = 0x45
        for index in Self.headerSize..<buffer.count {
            buffer[index] = UInt8(truncatingIfNeeded: UInt64(index) &* 131 &+ sequence)
        }
    }

    /// Whether `reply` is exactly the probe with these fields.
    static func matches(
        _ reply: UnsafeRawBufferPointer,
        size: Int,
        sequence: UInt64,
        target: UInt32,
        flow: UInt16
    )
        -> Bool
    {
        guard reply.count == size,
            reply.loadUnaligned(fromByteOffset: 8, as: UInt32.self) == target.littleEndian,
            reply.loadUnaligned(fromByteOffset: 12, as: UInt16.self) == flow.littleEndian,
            reply[14] == 0x4D, reply[15] == 0x45
        else { return false }
        for index in Self.headerSize..<size
        where reply[index] != UInt8(truncatingIfNeeded: UInt64(index) &* 131 &+ sequence) {
            return false
        }
        return true
    }
}
