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

    static let headerSize = 16

    /// Throws unless `size` holds a probe's header and fits one datagram to `target`.
    static func validate(size: Int, target: SocketAddress) throws(EchoError) {
        let maximum = target.maximumDatagramPayload
        guard (Self.headerSize...maximum).contains(size) else {
            throw .invalidConfiguration(
                "the size \(size) is out of range: a probe carries a 16-byte sequence number and timestamp, "
                    + "and one datagram to \(target.hostPortDescription) holds at most \(maximum) bytes"
            )
        }
    }
    private static let batchSize = 64
    /// Closed loop runs as fast as it can: a round trip is measured for every 16th request, which takes what
    /// transmit timestamps cost from about a third of the generator's capacity to a few percent (BENCHMARKS.md).
    static let closedLoopStride: UInt64 = 16
    /// Open loop: every request is measured up to this rate, a sample beyond it.
    static let timestampsPerSecond: Double = 20_000
    private static let noDeadline = Int64.max

    private let configuration: Configuration
    private var flows: [ProbeFlow] = []
    private let epoll: Int32
    /// Fires when the next open-loop probe is due (an absolute deadline), watched by `epoll` as ``timerToken``.
    private let timer: Int32
    private static let timerToken = UInt32.max
    /// The deadline the timer is armed for (0: disarmed).
    private var timerDeadline: Int64 = 0
    private let transmit: OpaquePointer
    private let receive: OpaquePointer
    private let lossTimeout: Int64
    private(set) var counts = ProbeCounts()
    /// Round trips, from each probe's departure.
    private(set) var times = RoundTripTimes()
    /// Latency from each probe's scheduled time to its reply.
    private(set) var latencies = RoundTripTimes()
    /// How late each answered probe left against its schedule.
    private(set) var lateness = RoundTripTimes()
    private(set) var jitter = Jitter()
    /// What the reflected packets said, in a STAMP run.
    private(set) var stampStatistics: StampStatistics?
    /// The clock that measured the times.
    private(set) var timestamps = TimestampSource.kernel
    /// Round trips measured with user-space clocks in a kernel-timestamped run, because a kernel timestamp was
    /// missing.
    private(set) var timestampFallbacks = 0
    /// The markings and hop counts of the replies, when ``Configuration/arrivalMarks`` is set.
    private(set) var markingStatistics: MarkingStatistics?
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
    private(set) var offload = false
    /// Why the kernel refused a segmented write, once it did (the run then went on without).
    private(set) var offloadRefused: Int32 = 0
    /// Replies that came coalesced in runs (UDP GRO), and the runs.
    private(set) var coalescedReplies = 0
    private(set) var coalescedRuns = 0
    /// Datagrams in one segmented write: the kernel's limit (UDP_MAX_SEGMENTS, 64 before Linux 6.9) and 64 KiB.
    private let runLength: Int
    /// Whether the kernel takes each send's timestamp ID (SCM_TS_OPT_ID); else IDs count the datagrams sent.
    private let explicitKeys: Bool
    /// Every how many probes of a flow (by sequence number) a transmit timestamp is taken and the round trip
    /// measured: 1 for ping and moderate rates; more where each timestamp would cost the load generator a notable
    /// share of its capacity (a queued error message and a wake-up in the kernel per send).
    let roundTripStride: UInt64
    private let hardware: Int32
    /// CLOCK_REALTIME minus CLOCK_MONOTONIC, to place kernel timestamps on the schedule's clock; renewed each second.
    private var realtimeOffset: Int64 = 0
    /// Why the last probe the kernel would not send was refused (errno), if one was.
    private(set) var lastSendError: Int32 = 0
    /// Probes handed to `sendmmsg`, sent or not: what the count limit counts.
    private var attempted = 0
    /// The sequence numbers in the transmit batch, by slot.
    private var batchSequences = [UInt64](repeating: 0, count: ProbeEngine.batchSize)
    /// When the run started, the last probe left, and the last matched reply came (CLOCK_MONOTONIC, ns).
    private var startedAt: Int64 = 0
    private var lastSentAt: Int64 = 0
    private var lastReplyAt: Int64 = 0

    /// The time the load was on: from the start to the last probe sent or the last reply received, whichever came
    /// later. The wait at the end for replies that never come is not in it.
    var activeTime: Duration { .nanoseconds(max(self.lastSentAt, self.lastReplyAt, self.startedAt) - self.startedAt) }

    /// Opens and connects the flows' sockets, and asks for the timestamps configured.
    ///
    /// - Throws: ``EchoError`` when a socket cannot be opened, or hardware timestamps are asked for and the interface
    ///   towards the target has none.
    init(_ configuration: Configuration) throws(EchoError) {
        precondition(configuration.size >= Self.headerSize && configuration.flows >= 1)
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
            let receive = cudpecho_batch_create(Int32(Self.batchSize), 65536)
        else {
            throw .socket(
                operation: "allocating buffers for",
                address: configuration.target.hostPortDescription,
                errno: ENOMEM
            )
        }
        cudpecho_batch_set_unaddressed(transmit)
        self.transmit = transmit
        self.receive = receive
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
            for index in 0..<configuration.flows {
                let flow = try ProbeFlow(
                    index: index,
                    target: configuration.target,
                    size: configuration.size,
                    capacity: capacity,
                    stamp: writer,
                    marking: configuration.marking,
                    receiveMarks: configuration.arrivalMarks,
                    markingReport: configuration.markingReport
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
        cudpecho_batch_destroy(self.receive)
    }

    private func closeAll() {
        for flow in self.flows { flow.close() }
        self.flows.removeAll()
        if self.epoll >= 0 { close(self.epoll) }
        if self.timer >= 0 { close(self.timer) }
    }

    /// Throws unless the interface that the route to `target` leaves by timestamps in hardware.
    private static func checkHardware(_ target: SocketAddress) throws(EchoError) {
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
    private static func ringCapacity(_ configuration: Configuration) -> Int {
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
    private static func measureRealtimeOffset() -> Int64 {
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
            if let oldest = self.flows.lazy.compactMap({ $0.oldestDeadline(self.lossTimeout) }).min() {
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
    private func armTimer(_ deadline: Int64, fired: Bool = false) {
        guard self.timer >= 0, fired || deadline != self.timerDeadline else { return }
        _ = cudpecho_timer_set(self.timer, deadline)
        self.timerDeadline = deadline
    }

    // MARK: Sending

    /// Closed loop: sends `count` probes on `flow`, scheduled now.
    private func send(_ flow: ProbeFlow, count: Int, onEvent: ((ProbeEvent) -> Void)?) {
        var remaining = count
        while remaining > 0 {
            let batch = min(remaining, Self.batchSize)
            let now = cudpecho_now_ns()
            for slot in 0..<batch {
                self.batchSequences[slot] = flow.prepare(into: self.transmit, slot: slot, scheduledAt: now) {
                    self.countLost($0, onEvent)
                }
            }
            self.transmitBatch(flow, count: batch, onEvent: onEvent)
            remaining -= batch
        }
    }

    private func countLost(_ sequence: UInt64, _ onEvent: ((ProbeEvent) -> Void)?) {
        self.counts.lost += 1
        onEvent?(.lost(sequence: sequence))
    }

    /// Open loop: sends the probes numbered first..<end over all flows, probe k on flow k % flows, scheduled at
    /// start + k / rate.
    private func sendScheduled(
        from first: Int,
        to end: Int,
        start: Int64,
        rate: Double,
        onEvent: ((ProbeEvent) -> Void)?
    ) {
        let flowCount = self.flows.count
        for flow in self.flows {
            var k = first + ((flow.index - first % flowCount) + flowCount) % flowCount
            var filled = 0
            while k < end {
                let scheduledAt = start + Int64((Double(k) * 1e9 / rate).rounded(.up))
                self.batchSequences[filled] = flow.prepare(into: self.transmit, slot: filled, scheduledAt: scheduledAt)
                {
                    self.countLost($0, onEvent)
                }
                filled += 1
                k += flowCount
                if filled == Self.batchSize {
                    self.transmitBatch(flow, count: filled, onEvent: onEvent)
                    filled = 0
                }
            }
            if filled > 0 { self.transmitBatch(flow, count: filled, onEvent: onEvent) }
        }
    }

    /// Sends the `count` probes prepared in the transmit batch, noting when they left; those the kernel refuses are
    /// unmarked and counted.
    private func transmitBatch(_ flow: ProbeFlow, count: Int, onEvent: ((ProbeEvent) -> Void)?) {
        self.attempted += count
        if let beforeSend = self.configuration.beforeSend {
            for slot in 0..<count { beforeSend(self.batchSequences[slot]) }
        }
        let timestamped = self.timestamps != .user
        if timestamped {
            for slot in 0..<count {
                let sequence = self.batchSequences[slot]
                if sequence % self.roundTripStride == 0 {
                    let key = self.explicitKeys ? flow.assignKey(to: sequence) : 0
                    cudpecho_batch_request_timestamp(
                        self.transmit,
                        Int32(slot),
                        self.hardware,
                        self.explicitKeys ? 1 : 0,
                        key
                    )
                } else {
                    cudpecho_batch_clear_control(self.transmit, Int32(slot))
                }
            }
        }
        var departure = cudpecho_now_ns()
        for slot in 0..<count { flow.departure[flow.position(self.batchSequences[slot])] = departure }
        var next = 0
        var retriedRefusal = false
        while next < count {
            let sent =
                self.offload
                ? cudpecho_batch_send_run(
                    flow.descriptor,
                    self.transmit,
                    Int32(next),
                    Int32(min(count - next, self.runLength)),
                    UInt16(self.configuration.size)
                )
                : cudpecho_batch_send(flow.descriptor, self.transmit, Int32(next), Int32(count - next))
            if sent > 0 {
                if timestamped && !self.explicitKeys {
                    // The kernel numbers the timestamps of the timestamped datagrams it took, in order.
                    for slot in next..<next + Int(sent) where self.batchSequences[slot] % self.roundTripStride == 0 {
                        _ = flow.assignKey(to: self.batchSequences[slot])
                    }
                }
                next += Int(sent)
                self.lastSentAt = cudpecho_now_ns()
                continue
            }
            switch -sent {
            case EINTR:
                continue
            case let code where self.offload && [EIO, EINVAL, EMSGSIZE, EOPNOTSUPP].contains(code):
                // The kernel (or the device) will not cut runs: send datagram by datagram from now on, and say so.
                self.offload = false
                self.offloadRefused = code
                continue
            case ECONNREFUSED where !retriedRefusal:
                // An ICMP error about an earlier probe, reported on this send, which did not happen; the error
                // queue ties the refusal to its probe. Send again.
                retriedRefusal = true
                continue
            case EAGAIN, EWOULDBLOCK:
                // The socket's send buffer is full: wait a little for room, then count the rest as not sent.
                if cudpecho_wait(flow.descriptor, cudpecho_pollout, 100) > 0 {
                    departure = cudpecho_now_ns()
                    for slot in next..<count { flow.departure[flow.position(self.batchSequences[slot])] = departure }
                    continue
                }
                for slot in next..<count { flow.unsend(self.batchSequences[slot]) }
                self.counts.sendErrors += count - next
                self.lastSendError = EAGAIN
                onEvent?(.sendError(errno: EAGAIN))
                next = count
            default:
                // Not sent (EMSGSIZE: larger than the path's known MTU with DF; EPERM: a firewall...): said, counted.
                flow.unsend(self.batchSequences[next])
                self.counts.sendErrors += 1
                self.lastSendError = -sent
                onEvent?(.sendError(errno: -sent))
                next += 1
            }
        }
        self.counts.sent = self.flows.reduce(0) { $0 + $1.sent }
    }

    // MARK: Receiving

    private func drain(_ flow: ProbeFlow, onEvent: ((ProbeEvent) -> Void)?) {
        // Transmit timestamps first, so that the replies that follow find their probe's departure.
        self.drainErrors(flow, onEvent: onEvent)
        while true {
            let received = cudpecho_batch_recv(flow.descriptor, self.receive, Int32(Self.batchSize), 0)
            if received < 0 {
                switch -received {
                case EINTR, ECONNREFUSED: continue  // a refusal is read from the error queue, with its probe
                default: return  // EAGAIN: nothing more for now
                }
            }
            let now = cudpecho_now_ns()
            for slot in 0..<Int(received) {
                let length = cudpecho_batch_length(self.receive, Int32(slot))
                let bytes = UnsafeRawBufferPointer(
                    start: cudpecho_batch_payload(self.receive, Int32(slot)),
                    count: length
                )
                if self.configuration.offload, flow.stamp == nil,
                    case let size = Int(cudpecho_batch_received_segment_size(self.receive, Int32(slot))),
                    size > 0 && length > size
                {
                    // A coalesced run of replies: each is matched on its own.
                    self.coalescedRuns += 1
                    var offset = 0
                    while offset < length {
                        let part = UnsafeRawBufferPointer(rebasing: bytes[offset..<min(length, offset + size)])
                        self.coalescedReplies += 1
                        self.match(part, on: flow, now: now, kernelArrival: 0, marks: (-1, -1), onEvent: onEvent)
                        offset += size
                    }
                    continue
                }
                let kernelArrival =
                    self.timestamps == .user ? 0 : cudpecho_batch_timestamp(self.receive, Int32(slot), self.hardware)
                let marks =
                    flow.stamp != nil || self.configuration.arrivalMarks
                    ? (
                        ttl: cudpecho_batch_received_ttl(self.receive, Int32(slot)),
                        tos: cudpecho_batch_received_tos(self.receive, Int32(slot))
                    ) : (ttl: -1, tos: -1)
                if flow.stamp != nil {
                    self.matchStamp(
                        bytes,
                        on: flow,
                        now: now,
                        kernelArrival: kernelArrival,
                        tos: marks.tos >= 0 ? UInt8(marks.tos) : nil,
                        ttl: marks.ttl >= 0 ? Int(marks.ttl) : nil,
                        onEvent: onEvent
                    )
                } else {
                    self.match(bytes, on: flow, now: now, kernelArrival: kernelArrival, marks: marks, onEvent: onEvent)
                }
            }
            if received < Self.batchSize { return }
        }
    }

    /// Reads the error queue of `flow`: transmit timestamps, and ICMP errors about probes.
    private func drainErrors(_ flow: ProbeFlow, onEvent: ((ProbeEvent) -> Void)?) {
        var info = cudpecho_error_info()
        while true {
            let received = cudpecho_batch_recv_errors(flow.descriptor, self.receive, Int32(Self.batchSize))
            guard received > 0 else { return }
            for slot in 0..<Int(received)
            where cudpecho_batch_error(self.receive, Int32(slot), self.hardware, &info) != 0 {
                if Int32(info.origin) == cudpecho_ee_origin_timestamping {
                    if info.timestamp != 0 { flow.recordDeparture(key: info.data, at: info.timestamp) }
                } else if info.error == ECONNREFUSED {
                    // The ICMP error quotes the probe: its sequence number says which one was refused.
                    let length = cudpecho_batch_length(self.receive, Int32(slot))
                    var sequence: UInt64? = nil
                    if length >= 8 {
                        sequence = UInt64(
                            littleEndian: UnsafeRawPointer(cudpecho_batch_payload(self.receive, Int32(slot))!)
                                .loadUnaligned(as: UInt64.self)
                        )
                    }
                    self.refused(sequence, on: flow, onEvent: onEvent)
                }
            }
            if received < Self.batchSize { return }
        }
    }

    private func refused(_ sequence: UInt64?, on flow: ProbeFlow, onEvent: ((ProbeEvent) -> Void)?) {
        if let sequence, case .outstanding = flow.lookUp(sequence) {
            flow.resolve(sequence, as: .refused)
            self.counts.refused += 1
            onEvent?(.refused(sequence: sequence))
        } else if sequence == nil {
            self.counts.refused += 1
            onEvent?(.refused(sequence: nil))
        }
    }

    private func match(
        _ reply: UnsafeRawBufferPointer,
        on flow: ProbeFlow,
        now: Int64,
        kernelArrival: Int64,
        marks received: (ttl: Int32, tos: Int32),
        onEvent: ((ProbeEvent) -> Void)?
    ) {
        guard reply.count >= Self.headerSize else {
            self.counts.corrupt += 1
            onEvent?(.corrupt(sequence: nil, bytes: reply.count, reason: "shorter than a probe's header"))
            return
        }
        let sequence = UInt64(littleEndian: reply.loadUnaligned(as: UInt64.self))
        let stamp = Int64(littleEndian: reply.loadUnaligned(fromByteOffset: 8, as: Int64.self))
        switch flow.lookUp(sequence) {
        case .notYetSent:
            self.damagedSequence(sequence, bytes: reply.count, "which had not been sent yet", onEvent)
        case .notSent:
            self.damagedSequence(sequence, bytes: reply.count, "a probe the kernel refused to send", onEvent)
        case .forgotten:
            self.counts.late += 1
            onEvent?(.late(sequence: sequence, bytes: reply.count, roundTrip: -1))
        case .outstanding(let position):
            if let difference = flow.difference(reply, scheduledAt: flow.scheduled[position], stamp: stamp) {
                flow.resolve(sequence, as: .answered)
                self.counts.corrupt += 1
                onEvent?(.corrupt(sequence: sequence, bytes: reply.count, reason: difference))
                return
            }
            let (times, outOfOrder) = self.accept(
                sequence,
                at: position,
                on: flow,
                now: now,
                kernelArrival: kernelArrival
            )
            self.record(times, roundTrip: times.roundTrip, of: sequence, at: position, on: flow)
            var marks: ArrivalMarks? = nil
            if self.configuration.arrivalMarks {
                var arrival = ArrivalMarks(
                    ttlHere: received.ttl >= 0 ? Int(received.ttl) : nil,
                    classHere: received.tos >= 0 ? TrafficClass(byte: UInt8(truncatingIfNeeded: received.tos)) : nil
                )
                if flow.markingReport, let report = MarkingReport.read(reply) {
                    arrival.ttlThere = report.ttl
                    arrival.classThere = report.trafficClass
                    arrival.classSentBack = report.trafficClass.map {
                        TrafficClass(dscp: $0.dscp, ecn: $0.ecn.reflected)
                    }
                }
                self.markingStatistics?.record(arrival)
                marks = arrival
            }
            onEvent?(
                .reply(
                    sequence: sequence,
                    bytes: reply.count,
                    roundTrip: times.roundTrip,
                    lateness: times.lateness,
                    outOfOrder: outOfOrder,
                    marks: marks
                )
            )
        case .answered:
            self.counts.duplicate += 1
            onEvent?(.duplicate(sequence: sequence, bytes: reply.count))
        case .lost(let position):
            if flow.difference(reply, scheduledAt: flow.scheduled[position], stamp: stamp) == nil {
                self.counts.late += 1
                let times = self.times(of: sequence, at: position, on: flow, now: now, kernelArrival: kernelArrival)
                onEvent?(.late(sequence: sequence, bytes: reply.count, roundTrip: times.roundTrip))
            } else {
                self.counts.corrupt += 1
                onEvent?(.corrupt(sequence: sequence, bytes: reply.count, reason: "it differs from the probe"))
            }
        case .refused:
            // A reply after all (the ICMP error was about an earlier datagram, or the server came up): late.
            self.counts.late += 1
            onEvent?(.late(sequence: sequence, bytes: reply.count, roundTrip: -1))
        }
    }

    /// A reply to a STAMP test packet: a reflected packet (or, from an echo server, the test packet itself),
    /// matched by the sender sequence number the reflector copied, checked by its copy of T1 (and the HMAC).
    private func matchStamp(
        _ reply: UnsafeRawBufferPointer,
        on flow: ProbeFlow,
        now: Int64,
        kernelArrival: Int64,
        tos: UInt8?,
        ttl: Int?,
        onEvent: ((ProbeEvent) -> Void)?
    ) {
        let writer = flow.stamp!
        let fields: StampReplyDecoder.Fields
        switch StampReplyDecoder.decode(reply, writer.configuration) {
        case .failure(let error):
            self.counts.corrupt += 1
            onEvent?(.corrupt(sequence: nil, bytes: reply.count, reason: error.description))
            return
        case .success(let decoded):
            fields = decoded
        }
        let sequence = flow.sequence(fromLow: fields.senderSequence)
        switch flow.lookUp(sequence) {
        case .notYetSent:
            self.damagedSequence(sequence, bytes: reply.count, "which had not been sent yet", onEvent)
        case .notSent:
            self.damagedSequence(sequence, bytes: reply.count, "a probe the kernel refused to send", onEvent)
        case .forgotten, .refused:
            self.counts.late += 1
            onEvent?(.late(sequence: sequence, bytes: reply.count, roundTrip: -1))
        case .answered(let position):
            // A copy of an answered probe's reply is a duplicate only if it carries that probe's T1: an all-zero
            // packet (our sequence number 0, no timestamp) is not.
            guard fields.senderTimestamp == flow.stampTimestamp[position] else {
                self.counts.corrupt += 1
                onEvent?(.corrupt(sequence: sequence, bytes: reply.count, reason: "its copy of our timestamp differs"))
                return
            }
            self.counts.duplicate += 1
            onEvent?(.duplicate(sequence: sequence, bytes: reply.count))
        case .lost(let position):
            guard fields.senderTimestamp == flow.stampTimestamp[position] else {
                self.counts.corrupt += 1
                onEvent?(.corrupt(sequence: sequence, bytes: reply.count, reason: "its copy of our timestamp differs"))
                return
            }
            self.counts.late += 1
            let times = self.times(of: sequence, at: position, on: flow, now: now, kernelArrival: kernelArrival)
            onEvent?(.late(sequence: sequence, bytes: reply.count, roundTrip: times.roundTrip))
        case .outstanding(let position):
            guard fields.senderTimestamp == flow.stampTimestamp[position] else {
                flow.resolve(sequence, as: .answered)
                self.counts.corrupt += 1
                onEvent?(
                    .corrupt(sequence: sequence, bytes: reply.count, reason: "its copy of our timestamp (T1) differs")
                )
                return
            }
            let times = self.times(of: sequence, at: position, on: flow, now: now, kernelArrival: kernelArrival)
            // The four timestamps on CLOCK_REALTIME: ours from the kernel where it gave them.
            let kernel = self.timestamps == .kernel
            let t1 =
                kernel && flow.kernelDeparture[position] != 0
                ? flow.kernelDeparture[position] : flow.departure[position] + self.realtimeOffset
            let t4 = kernel && kernelArrival != 0 ? kernelArrival : now + self.realtimeOffset
            var reflectorTime: Int64 = 0
            var forward: Int64 = 0
            var backward: Int64 = 0
            if !fields.plainEcho {
                let format = fields.errorEstimate.format
                let t2 = format.decode(fields.receiveTimestamp, taiOffset: writer.taiOffset)
                let t3 = format.decode(fields.transmitTimestamp, taiOffset: writer.taiOffset)
                reflectorTime = t3 - t2
                forward = t2 - t1
                backward = t4 - t3
                // A reflector cannot have held the packet for less than nothing, nor for longer than the whole round
                // trip: such a reply's times are false, and none of them may reach a statistic.
                if reflectorTime < 0 || reflectorTime > times.roundTrip {
                    flow.resolve(sequence, as: .answered)
                    self.counts.impossible += 1
                    onEvent?(
                        .impossible(
                            sequence: sequence,
                            bytes: reply.count,
                            reason: "the reflector says it held the probe \(Self.milliseconds(reflectorTime)) ms "
                                + "(T3 - T2), but the round trip was \(Self.milliseconds(times.roundTrip)) ms"
                        )
                    )
                    return
                }
            }
            let outOfOrder = self.accept(sequence, on: flow, now: now)
            // The round trip without the time the reflector held the packet: (T4 - T1) - (T3 - T2).
            let roundTrip = times.roundTrip - max(0, reflectorTime)
            self.record(times, roundTrip: roundTrip, of: sequence, at: position, on: flow)
            let tlvs = StampReplyDecoder.tlvs(reply, from: writer.layout.size)
            let stampReply = StampReply(
                sequence: sequence,
                bytes: reply.count,
                roundTrip: roundTrip,
                lateness: times.lateness,
                outOfOrder: outOfOrder,
                reflectorSequence: fields.reflectorSequence,
                reflectorTime: reflectorTime,
                forwardDelay: forward,
                backwardDelay: backward,
                ttlAtReflector: fields.ttl,
                reflectorErrorEstimate: fields.errorEstimate,
                tosAtReflector: tlvs.tos,
                tosHere: tos,
                dscpHonoured: tlvs.dscpHonoured,
                ttlHere: ttl,
                sourceSeenByReflector: tlvs.source,
                plainEcho: fields.plainEcho
            )
            self.stampStatistics?.record(stampReply)
            if self.configuration.arrivalMarks {
                let there = tlvs.tos.map { TrafficClass(byte: $0) }
                self.markingStatistics?.record(
                    ArrivalMarks(
                        ttlHere: ttl,
                        classHere: tos.map { TrafficClass(byte: $0) },
                        ttlThere: fields.plainEcho ? nil : Int(fields.ttl),
                        classThere: there,
                        // The reflector answers with the DSCP the Class of Service TLV asked for, and our ECN rule,
                        // unless it says it declined (RP 1): then what it sent is not known.
                        classSentBack: writer.configuration.classOfService.flatMap { dscp in
                            tlvs.dscpHonoured == true
                                ? there.map { TrafficClass(dscp: dscp & 63, ecn: $0.ecn.reflected) } : nil
                        }
                    )
                )
            }
            onEvent?(.stampReply(stampReply))
        }
    }

    /// Counts probe `sequence` (outstanding at `position`) as answered now; returns its times and whether a later
    /// probe had been answered first.
    private func accept(
        _ sequence: UInt64,
        at position: Int,
        on flow: ProbeFlow,
        now: Int64,
        kernelArrival: Int64
    ) -> (times: (roundTrip: Int64, latency: Int64, lateness: Int64, measured: Bool), outOfOrder: Bool) {
        let times = self.times(of: sequence, at: position, on: flow, now: now, kernelArrival: kernelArrival)
        return (times, self.accept(sequence, on: flow, now: now))
    }

    /// Counts probe `sequence` as answered now, its times already read; returns whether a later probe had been
    /// answered first.
    private func accept(_ sequence: UInt64, on flow: ProbeFlow, now: Int64) -> Bool {
        let outOfOrder = flow.markReceived(sequence)
        self.counts.received += 1
        if outOfOrder { self.counts.reordered += 1 }
        self.lastReplyAt = now
        return outOfOrder
    }

    /// Records an answered probe's latency and, when it is in the round-trip sample, its `roundTrip`, lateness and
    /// jitter (and the flow's statistics).
    private func record(
        _ times: (roundTrip: Int64, latency: Int64, lateness: Int64, measured: Bool),
        roundTrip: Int64,
        of sequence: UInt64,
        at position: Int,
        on flow: ProbeFlow
    ) {
        self.latencies.record(times.latency)
        guard times.measured else { return }
        self.times.record(roundTrip)
        self.lateness.record(times.lateness)
        self.recordJitter(sequence, roundTrip: roundTrip, position: position, on: flow)
        if self.configuration.flowStatistics { flow.statistics.record(roundTrip) }
    }

    /// Nanoseconds as milliseconds with three decimals, for a reason's text.
    private static func milliseconds(_ nanoseconds: Int64) -> String {
        let sign = nanoseconds < 0 ? "-" : ""
        let magnitude = nanoseconds.magnitude / 1000
        let fraction = String(magnitude % 1000)
        return sign + "\(magnitude / 1000)." + String(repeating: "0", count: 3 - fraction.count) + fraction
    }

    /// A reply whose bytes 0-7 were damaged (or that is not an echo of ours): which probe it was cannot be known.
    private func damagedSequence(_ sequence: UInt64, bytes: Int, _ which: String, _ onEvent: ((ProbeEvent) -> Void)?) {
        self.counts.corrupt += 1
        onEvent?(
            .corrupt(sequence: nil, bytes: bytes, reason: "its sequence number (bytes 0-7) reads \(sequence), \(which)")
        )
    }

    /// The round trip, the latency from the schedule, and the lateness of the probe `sequence` at `position`, whose
    /// reply arrived `now` (CLOCK_MONOTONIC) or, as the kernel says, at `kernelArrival`. `measured` is false for a
    /// probe outside the round-trip sample (its round trip and lateness are then the program's clock reads, for
    /// its event only, and its latency uses the kernel's arrival time).
    private func times(
        of sequence: UInt64,
        at position: Int,
        on flow: ProbeFlow,
        now: Int64,
        kernelArrival: Int64
    ) -> (roundTrip: Int64, latency: Int64, lateness: Int64, measured: Bool) {
        let scheduled = flow.scheduled[position]
        let departure = flow.departure[position]
        if sequence % self.roundTripStride != 0 {
            let arrival = self.timestamps == .kernel && kernelArrival != 0 ? kernelArrival - self.realtimeOffset : now
            return (now - departure, arrival - scheduled, departure - scheduled, false)
        }
        var kernelDeparture = flow.kernelDeparture[position]
        if self.timestamps != .user && kernelDeparture == 0 && kernelArrival != 0 {
            // The transmit timestamp may still be on the error queue behind the reply.
            self.drainErrors(flow, onEvent: nil)
            kernelDeparture = flow.kernelDeparture[position]
        }
        if self.timestamps != .user && kernelDeparture != 0 && kernelArrival != 0 {
            let roundTrip = kernelArrival - kernelDeparture
            if self.timestamps == .hardware {
                // The card's clock is not the system's: the schedule is compared with the program's clock reads.
                return (roundTrip, now - scheduled, departure - scheduled, true)
            }
            return (
                roundTrip, kernelArrival - self.realtimeOffset - scheduled,
                kernelDeparture - self.realtimeOffset - scheduled, true
            )
        }
        if self.timestamps != .user { self.timestampFallbacks += 1 }
        return (now - departure, now - scheduled, departure - scheduled, true)
    }

    /// IPDV with the neighbouring measured probes of the flow (each pair counted once, when its second reply comes),
    /// and RFC 3550's jitter in the order replies arrive.
    private func recordJitter(_ sequence: UInt64, roundTrip: Int64, position: Int, on flow: ProbeFlow) {
        flow.roundTrip[position] = roundTrip
        let stride = self.roundTripStride
        if sequence >= stride, let previous = flow.roundTrip(of: sequence - stride) {
            self.jitter.ipdv.record(abs(roundTrip - previous))
        }
        if let next = flow.roundTrip(of: sequence + stride) {
            self.jitter.ipdv.record(abs(next - roundTrip))
        }
        if let last = flow.lastArrivalRoundTrip {
            flow.rfc3550 += (Double(abs(roundTrip - last)) - flow.rfc3550) / 16
            flow.jitterSamples += 1
        }
        flow.lastArrivalRoundTrip = roundTrip
    }

    /// Counts as lost the probes of `flow` whose loss timeout passed by `now`.
    private func expire(_ flow: ProbeFlow, now: Int64, onEvent: ((ProbeEvent) -> Void)?) {
        flow.expire(before: now == Self.noDeadline ? now : now - self.lossTimeout) { self.countLost($0, onEvent) }
    }
}
