import Atomics
import CUDPEcho
import NIOCore

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// Sends probes to an echo server over one connected UDP socket per flow and checks every reply, on one thread with
/// batched system calls (`sendmmsg`/`recvmmsg`, `epoll`).
///
/// A probe is `size` bytes: its sequence number (8 bytes), its scheduled send time (8 bytes, nanoseconds of
/// CLOCK_MONOTONIC) and a pattern of its flow. A reply is matched to its probe by the sequence number and must be
/// identical to it. Each flow keeps a ring of the probes it has sent; a reply older than the ring counts as late.
///
/// Three times are kept apart. The **round trip** is from the moment a probe actually left to the moment its reply
/// arrived, both taken by the kernel (`SO_TIMESTAMPING`) where it can, so that the client's own scheduling and
/// wake-ups are not counted as network time. The **latency** is from the probe's scheduled time to its reply, as an
/// open-loop load test must count it (a server that stalls cannot hide the stall by holding the sender back). The
/// **lateness** is how long after its scheduled time a probe left.
final class ProbeEngine {
    struct Configuration {
        enum Pacing {
            /// Closed loop: keep this many probes in flight per flow; a reply (or a loss) releases the next.
            case window(Int)
            /// Open loop: this many probes per second over all flows, on a fixed schedule.
            case rate(Double)
        }

        var target: SocketAddress
        var flows = 1
        var size = 64
        var pacing = Pacing.window(1)
        /// Stop sending after this long.
        var duration: Duration?
        /// Stop sending after this many probes over all flows.
        var count: Int?
        /// A probe without a reply after this long (after it left) is lost.
        var lossTimeout: Duration = .seconds(1)
        /// Which clock measures the times.
        var timestamps = TimestampSource.kernel
        /// Open loop: how long before a probe is due the engine stops sleeping and waits by polling, so that a late
        /// wake-up does not make the probe late.
        var spin: Duration = .zero
        /// Called with each probe's sequence number just before it is sent (tests use it to delay a departure).
        var beforeSend: ((UInt64) -> Void)? = nil
        /// Send STAMP test packets (a Session-Sender) instead of echo probes.
        var stamp: StampSenderConfiguration? = nil
        /// The first flow's local port (a TWAMP session's sender port, which the request named); nil: any.
        var sourcePort: Int? = nil
        /// Send each flow's batch as one segmented write (UDP GSO) and take replies coalesced (UDP GRO). The times
        /// are then the program's clock reads: the kernel timestamps a segmented write, and a coalesced run, once.
        var offload = false
        /// How probes leave: traffic class, TTL, DF.
        var marking = PathMarking()
        /// Read each reply's TTL and traffic class, and keep ``MarkingStatistics``.
        var arrivalMarks = false
        /// Ask a udpecho server what each probe arrived with (``MarkingReport``; echo probes of 28 bytes and more).
        var markingReport = false
        /// Keep each flow's loss and a sample of its round trips (``FlowStatistics``).
        var flowStatistics = false
    }

    /// Throws unless `size` holds a probe's header and fits one datagram to `target`.
    static func validate(size: Int, target: SocketAddress) throws(EchoError) {
        let maximum = target.maximumDatagramPayload
        guard (EchoProbeFormat.headerSize...maximum).contains(size) else {
            throw .invalidConfiguration(
                "the size \(size) is out of range: a probe carries a 16-byte sequence number and timestamp, "
                    + "and one datagram to \(target.hostPortDescription) holds at most \(maximum) bytes"
            )
        }
    }
    static let batchSize = 64
    /// Closed loop runs as fast as it can: a round trip is measured for every 16th request, which takes what
    /// transmit timestamps cost from about a third of the generator's capacity to a few percent (BENCHMARKS.md).
    static let closedLoopStride: UInt64 = 16
    /// Open loop: every request is measured up to this rate, a sample beyond it.
    static let timestampsPerSecond: Double = 20_000
    static let noDeadline = Int64.max

    let configuration: Configuration
    var flows: [ProbeFlow] = []
    let epoll: Int32
    /// Fires when the next open-loop probe is due (an absolute deadline), watched by `epoll` as ``timerToken``.
    let timer: Int32
    static let timerToken = UInt32.max
    /// The deadline the timer is armed for (0: disarmed).
    var timerDeadline: Int64 = 0
    let transmit: OpaquePointer
    /// Replies and the error queue, read in batches.
    let receiver: DatagramReceiver
    let lossTimeout: Int64
    var counts = ProbeCounts()
    /// Round trips, from each probe's departure.
    var times = RoundTripTimes()
    /// Latency from each probe's scheduled time to its reply.
    var latencies = RoundTripTimes()
    /// How late each answered probe left against its schedule.
    var lateness = RoundTripTimes()
    var jitter = Jitter()
    /// What the reflected packets said, in a STAMP run.
    var stampStatistics: StampStatistics?
    /// The clock that measured the times.
    var timestamps = TimestampSource.kernel
    /// Round trips measured with user-space clocks in a kernel-timestamped run, because a kernel timestamp was
    /// missing.
    var timestampFallbacks = 0
    /// The markings and hop counts of the replies, when ``Configuration/arrivalMarks`` is set.
    var markingStatistics: MarkingStatistics?
    /// Each flow's loss and round trips, by source port (with ``Configuration/flowStatistics``).
    var flowStatistics: [FlowStatistics]? {
        guard self.configuration.flowStatistics else { return nil }
        return self.flows.map { flow in
            var statistics = flow.statistics
            statistics.sent = flow.sent
            return statistics
        }
    }
    /// Whether batches leave as segmented writes (``Configuration/offload``, while the kernel takes them).
    var offload = false
    /// Why the kernel refused a segmented write, once it did (the run then went on without).
    var offloadRefused: Int32 = 0
    /// Replies that came coalesced in runs (UDP GRO), and the runs.
    var coalescedReplies = 0
    var coalescedRuns = 0
    /// Datagrams in one segmented write: the kernel's limit (UDP_MAX_SEGMENTS, 64 before Linux 6.9) and 64 KiB.
    let runLength: Int
    /// Whether the kernel takes each send's timestamp ID (SCM_TS_OPT_ID); else IDs count the datagrams sent.
    let explicitKeys: Bool
    /// Every how many probes of a flow (by sequence number) a transmit timestamp is taken and the round trip
    /// measured: 1 for ping and moderate rates; more where each timestamp would cost the load generator a notable
    /// share of its capacity (a queued error message and a wake-up in the kernel per send).
    let roundTripStride: UInt64
    let hardware: Int32
    /// CLOCK_REALTIME minus CLOCK_MONOTONIC, to place kernel timestamps on the schedule's clock; renewed each second.
    var realtimeOffset: Int64 = 0
    /// Why the last probe the kernel would not send was refused (errno), if one was.
    var lastSendError: Int32 = 0
    /// Probes handed to `sendmmsg`, sent or not: what the count limit counts.
    var attempted = 0
    /// The sequence numbers in the transmit batch, by slot.
    var batchSequences = [UInt64](repeating: 0, count: ProbeEngine.batchSize)
    /// When the run started, the last probe left, and the last matched reply came (CLOCK_MONOTONIC, ns).
    var startedAt: Int64 = 0
    var lastSentAt: Int64 = 0
    var lastReplyAt: Int64 = 0

    /// The time the load was on: from the start to the last probe sent or the last reply received, whichever came
    /// later. The wait at the end for replies that never come is not in it.
    var activeTime: Duration { .nanoseconds(max(self.lastSentAt, self.lastReplyAt, self.startedAt) - self.startedAt) }

    /// Opens and connects the flows' sockets, and asks for the timestamps configured.
    ///
    /// - Throws: ``EchoError`` when a socket cannot be opened, or hardware timestamps are asked for and the interface
    ///   towards the target has none.
    init(_ configuration: Configuration) throws(EchoError) {
        precondition(configuration.size >= EchoProbeFormat.headerSize && configuration.flows >= 1)
        var configuration = configuration
        if configuration.offload { configuration.timestamps = .user }
        self.offload = configuration.offload
        self.runLength = max(1, min(64, 65_000 / configuration.size))
        self.configuration = configuration
        self.lossTimeout = configuration.lossTimeout.nanoseconds
        self.hardware = configuration.timestamps == .hardware ? 1 : 0
        if configuration.timestamps == .hardware {
            try Self.checkHardware(configuration.target)
        }
        self.explicitKeys = configuration.timestamps != .user && cudpecho_timestamp_ids_supported() != 0
        switch (configuration.timestamps, configuration.pacing) {
        case (.user, _): self.roundTripStride = 1
        case (_, .window): self.roundTripStride = Self.closedLoopStride
        case (_, .rate(let rate)): self.roundTripStride = UInt64(max(1, rate / Self.timestampsPerSecond))
        }
        guard let transmit = cudpecho_batch_create(Int32(Self.batchSize), configuration.size),
            let receiver = DatagramReceiver()
        else {
            throw .socket(
                operation: "allocating buffers for",
                address: configuration.target.hostPortDescription,
                errno: ENOMEM
            )
        }
        cudpecho_batch_set_unaddressed(transmit)
        self.transmit = transmit
        self.receiver = receiver
        self.epoll = cudpecho_epoll_create()
        self.timer = cudpecho_timer_create()
        if self.epoll >= 0 && self.timer >= 0 { _ = cudpecho_epoll_add(self.epoll, self.timer, Self.timerToken) }
        let capacity = Self.ringCapacity(configuration)
        var source = configuration.timestamps
        do throws(EchoError) {
            guard self.epoll >= 0 else {
                throw .socket(
                    operation: "epoll for",
                    address: configuration.target.hostPortDescription,
                    errno: -self.epoll
                )
            }
            let family: Int32 = if case .v6 = configuration.target { AF_INET6 } else { AF_INET }
            let writer = try configuration.stamp.map { stamp throws(EchoError) in
                try StampProbeWriter(stamp, size: configuration.size, ipv6: family == AF_INET6)
            }
            self.stampStatistics = writer == nil ? nil : StampStatistics()
            if configuration.stamp?.twamp != nil { self.stampStatistics?.reflectorCounts = true }
            for index in 0..<configuration.flows {
                let flow = try ProbeFlow(
                    index: index,
                    target: configuration.target,
                    size: configuration.size,
                    capacity: capacity,
                    stamp: writer,
                    marking: configuration.marking,
                    receiveMarks: configuration.arrivalMarks,
                    markingReport: configuration.markingReport,
                    sourcePort: index == 0 ? configuration.sourcePort : nil
                )
                self.flows.append(flow)
                if index == 0 && configuration.arrivalMarks {
                    let ttl = cudpecho_sent_ttl(flow.descriptor, family)
                    self.markingStatistics = MarkingStatistics(
                        sentClass: configuration.marking.trafficClass ?? TrafficClass(byte: 0),
                        sentTTL: ttl > 0 ? Int(ttl) : nil
                    )
                }
                _ = cudpecho_epoll_add(self.epoll, flow.descriptor, UInt32(index))
                if configuration.offload { _ = cudpecho_enable_gro(flow.descriptor) }
                // ICMP errors come on the error queue in every mode (so that a refusal is tied to its probe);
                // timestamps as asked, falling back to user-space clocks where the kernel will not.
                let mode: Int32 = source == .user ? -1 : self.hardware
                if cudpecho_enable_timestamps(flow.descriptor, family, mode) != 0 {
                    if source == .hardware {
                        throw .invalidConfiguration(
                            "hardware timestamps: the socket refused SO_TIMESTAMPING with hardware flags"
                        )
                    }
                    source = .user
                    _ = cudpecho_enable_timestamps(flow.descriptor, family, -1)
                }
            }
        } catch {
            // The instance is whole by now: its deinit closes what was opened (closing here too would close the
            // descriptors twice, and the second time perhaps someone else's).
            throw error
        }
        self.timestamps = source
    }

    deinit {
        self.closeAll()
        cudpecho_batch_destroy(self.transmit)
    }

    func closeAll() {
        for flow in self.flows { flow.close() }
        self.flows.removeAll()
        if self.epoll >= 0 { close(self.epoll) }
        if self.timer >= 0 { close(self.timer) }
    }

    /// Throws unless the interface that the route to `target` leaves by timestamps in hardware.
    static func checkHardware(_ target: SocketAddress) throws(EchoError) {
        var name = [CChar](repeating: 0, count: Int(IF_NAMESIZE) + 1)
        let result = target.withRawAddress { raw, length in
            cudpecho_hardware_timestamping(raw, length, &name, name.count)
        }
        guard result != 0 else { return }
        let interface = String(decoding: name.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
        let via = interface.isEmpty ? "the interface towards \(target.hostPortDescription)" : "interface \(interface)"
        switch -result {
        case EOPNOTSUPP:
            throw .invalidConfiguration(
                "hardware timestamps: \(via) cannot timestamp in hardware (`ethtool -T \(interface.isEmpty ? "IFACE" : interface)` "
                    + "lists what it can); use --timestamps kernel"
            )
        case EPERM, EACCES:
            throw .invalidConfiguration(
                "hardware timestamps: turning them on for \(via) needs CAP_NET_ADMIN (root); use --timestamps kernel"
            )
        default:
            throw .invalidConfiguration(
                "hardware timestamps: \(via): \(String(cString: strerror(-result))); use --timestamps kernel"
            )
        }
    }

    /// Enough slots to remember every probe for a loss timeout at the expected rate, within bounds.
    static func ringCapacity(_ configuration: Configuration) -> Int {
        let wanted: Double
        switch configuration.pacing {
        case .window(let window): wanted = Double(window * 256)
        case .rate(let rate): wanted = rate / Double(configuration.flows) * configuration.lossTimeout.seconds * 2
        }
        var capacity = 4096
        while Double(capacity) < wanted && capacity < 1 << 20 { capacity <<= 1 }
        return capacity
    }

    /// CLOCK_REALTIME minus CLOCK_MONOTONIC, from the closest of three pairs of reads.
    static func measureRealtimeOffset() -> Int64 {
        var best: (gap: Int64, offset: Int64) = (.max, 0)
        for _ in 0..<3 {
            let before = cudpecho_now_ns()
            let realtime = cudpecho_realtime_ns()
            let after = cudpecho_now_ns()
            if after - before < best.gap { best = (after - before, realtime - (before + after) / 2) }
        }
        return best.offset
    }

    /// Runs until the configured duration or count is reached and every probe is answered or lost, or until `stop`
    /// is set (probes still in flight then count as lost).
    func run(
        stop: ManagedAtomic<Bool>,
        onEvent: ((ProbeEvent) -> Void)?,
        onProgress: ((ProbeProgress) -> Void)?
    ) {
        // Wake-ups as close to the deadlines asked for as the kernel can: no timer slack.
        cudpecho_set_timer_slack(1)
        self.realtimeOffset = Self.measureRealtimeOffset()
        let start = cudpecho_now_ns()
        self.startedAt = start
        let sendUntil = self.configuration.duration.map { start + $0.nanoseconds } ?? Self.noDeadline
        let limit = self.configuration.count ?? .max
        let spin = self.configuration.spin.nanoseconds
        var nextProgress = start + 1_000_000_000
        var receivedAtLastProgress = 0
        var tokens = [UInt32](repeating: 0, count: 64)
        var sending = true
        var totalScheduled = 0  // open loop: probes due so far

        while true {
            var now = cudpecho_now_ns()
            if stop.load(ordering: .relaxed) { break }
            if sending, case .rate(let rate) = self.configuration.pacing {
                // Every probe scheduled before the end is sent, late if need be (its latency then shows it).
                let horizon = min(now, sendUntil - 1)
                let due = min(limit, Int(Double(horizon - start) * rate / 1e9) + 1)
                if due > totalScheduled {
                    self.sendScheduled(from: totalScheduled, to: due, start: start, rate: rate, onEvent: onEvent)
                    totalScheduled = due
                }
            }
            if sending && (now >= sendUntil || self.attempted >= limit) { sending = false }
            if sending, case .window(let window) = self.configuration.pacing {
                for flow in self.flows where flow.outstanding < window {
                    let budget = limit - self.attempted
                    self.send(flow, count: min(window - flow.outstanding, budget), onEvent: onEvent)
                }
            } else if !sending && self.flows.allSatisfy({ $0.outstanding == 0 }) {
                break
            }

            // Wait for replies, no longer than the next send, loss check or progress report. The next send is an
            // absolute timer (an epoll timeout may be stretched by 0.1% of its length); just before it is due, poll
            // instead of sleeping: a wake-up comes late, a poll does not.
            now = cudpecho_now_ns()
            var wake = nextProgress
            var poll = false
            var sendTimer: Int64 = 0
            if sending, case .rate(let rate) = self.configuration.pacing {
                let nextSend = start + Int64((Double(totalScheduled) * 1e9 / rate).rounded(.up))
                if nextSend - now <= spin {
                    poll = true
                } else if self.timer >= 0 {
                    sendTimer = nextSend - spin
                } else {
                    wake = min(wake, nextSend - spin)
                }
            }
            self.armTimer(sendTimer)
            if sending && self.configuration.duration != nil { wake = min(wake, sendUntil) }
            if let oldest = self.flows.lazy.compactMap({ $0.ring.oldestDeadline(self.lossTimeout) }).min() {
                wake = min(wake, oldest)
            }
            let ready = cudpecho_epoll_wait(self.epoll, &tokens, 64, poll ? 0 : max(0, wake - now))
            if ready > 0 {
                for token in tokens[0..<Int(ready)] {
                    guard token != Self.timerToken else {
                        self.armTimer(0, fired: true)
                        continue
                    }
                    let flow = self.flows[Int(token)]
                    self.drain(flow, onEvent: onEvent)
                    if sending, case .window(let window) = self.configuration.pacing, flow.outstanding < window {
                        let budget = limit - self.attempted
                        self.send(flow, count: min(window - flow.outstanding, budget), onEvent: onEvent)
                    }
                }
            }
            now = cudpecho_now_ns()
            for flow in self.flows { self.expire(flow, now: now, onEvent: onEvent) }
            if now >= nextProgress {
                let elapsed = now - start
                let echoes = Double(self.counts.received - receivedAtLastProgress)
                receivedAtLastProgress = self.counts.received
                nextProgress += 1_000_000_000
                self.realtimeOffset = Self.measureRealtimeOffset()
                onProgress?(
                    ProbeProgress(
                        elapsed: .nanoseconds(elapsed),
                        echoesPerSecond: echoes,
                        counts: self.counts,
                        p99: self.times.percentile(99)
                    )
                )
            }
        }
        self.armTimer(0)
        if !stop.load(ordering: .relaxed) {
            // Every probe is answered or lost: a short grace period still counts duplicates and late replies that
            // are on their way.
            let graceEnd = cudpecho_now_ns() + min(self.lossTimeout, 50_000_000)
            while case let now = cudpecho_now_ns(), now < graceEnd {
                let ready = cudpecho_epoll_wait(self.epoll, &tokens, 64, graceEnd - now)
                guard ready > 0 else { break }
                for token in tokens[0..<Int(ready)] where token != Self.timerToken {
                    self.drain(self.flows[Int(token)], onEvent: onEvent)
                }
            }
        }
        // Stopped: what is still in flight will not be waited for.
        for flow in self.flows {
            self.expire(flow, now: Self.noDeadline, onEvent: onEvent)
        }
        let flowsWithJitter = self.flows.filter { $0.jitterSamples > 0 }
        if !flowsWithJitter.isEmpty {
            self.jitter.rfc3550 = flowsWithJitter.reduce(0) { $0 + $1.rfc3550 } / Double(flowsWithJitter.count)
        }
    }

    /// Arms the send timer for `deadline` (0: disarmed), with a system call only when that changes or it `fired`
    /// (which must be read, or epoll keeps reporting it).
    func armTimer(_ deadline: Int64, fired: Bool = false) {
        guard self.timer >= 0, fired || deadline != self.timerDeadline else { return }
        _ = cudpecho_timer_set(self.timer, deadline)
        self.timerDeadline = deadline
    }
}
