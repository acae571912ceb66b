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
    public static let bucketBounds: [Double] = [
        0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10,
    ]

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
    public func run() async {
        let prober = UnsafeTransfer(self)
        await runOnOwnThread {
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

/// What the probing thread keeps, struct of arrays by target index.
struct MeshProberState {
    let configuration: MeshProber.Configuration
    let buckets = MeshProber.bucketBounds.count + 1
    var targets: [MeshTarget?] = []
    /// Each target's address as compared with a reply's source.
    var keys: [MeshAddressKey?] = []
    /// Receive buffers (64 x 64 KiB, an anonymous mapping: small replies touch a page each).
    let batch: OpaquePointer
    var indexOf: [MeshTarget: Int] = [:]
    var removedAt: [Int64] = []
    var free: [Int] = []
    var sent: [UInt64] = []
    var received: [UInt64] = []
    var lost: [UInt64] = []
    var duplicate: [UInt64] = []
    var corrupt: [UInt64] = []
    var skipped: [UInt64] = []
    var rttSum: [Double] = []
    var histogram: [UInt64] = []  // targets x buckets
    var flowCounts: [UInt64] = []  // targets x flows x 3 (sent, received, lost), with perFlow
    var lastReply: [Int64] = []
    var nextFlow: [UInt16] = []
    var times: [RoundTripTimes] = []
    /// Due times: a binary min-heap of (due, index, generation).
    var heap: [(due: Int64, index: Int32, generation: UInt32)] = []
    var generation: [UInt32] = []
    var nextDue: Int64 { self.heap.first?.due ?? Int64.max }
    /// Outstanding probes, by sequence number & mask.
    /// Outstanding probes: the send time on CLOCK_MONOTONIC, read just before the send (it never steps).
    var ring: [(sequence: UInt64, target: Int32, flow: UInt16, answered: Bool, sentMonotonic: Int64)]
    let mask: Int
    var nextSequence: UInt64 = 1
    var oldest: UInt64 = 1
    /// Sockets by family (0: IPv4, 1: IPv6) and flow; -1 until needed.
    var sockets: [[Int32]]
    /// Each socket's source port (0 until it is opened).
    var ports: [[Int]]
    var probe: [UInt8]
    var receiveBuffer = [UInt8](repeating: 0, count: 65536)
    var probeTokens: Double
    var byteTokens: Double
    var lastRefill: Int64 = 0
    var rng = SystemRandomNumberGenerator()

    init(_ configuration: MeshProber.Configuration) {
        self.configuration = configuration
        let wanted = configuration.maximumRate * (configuration.timeout.seconds + 1) * 2
        var capacity = 4096
        while Double(capacity) < wanted && capacity < 1 << 22 { capacity <<= 1 }
        self.ring = Array(repeating: (0, -1, 0, false, 0), count: capacity)
        self.mask = capacity - 1
        self.sockets = Array(repeating: Array(repeating: -1, count: configuration.flows), count: 2)
        self.ports = Array(repeating: Array(repeating: 0, count: configuration.flows), count: 2)
        self.probe = [UInt8](repeating: 0, count: configuration.size)
        self.batch = cudpecho_batch_create(64, 65536)!
        self.probeTokens = max(1, configuration.maximumRate / 10)
        self.byteTokens = max(Double(configuration.size + 48), configuration.maximumBytesPerSecond / 10)
    }

    mutating func closeSockets() {
        for family in self.sockets { for fd in family where fd >= 0 { close(fd) } }
        cudpecho_batch_destroy(self.batch)
    }

    // MARK: Targets

    mutating func apply(_ wanted: [MeshTarget], now: Int64) {
        let set = Set(wanted)
        for (target, index) in self.indexOf where !set.contains(target) && self.removedAt[index] == 0 {
            self.removedAt[index] = now
            self.generation[index] &+= 1  // its heap entries are stale now
        }
        for target in wanted {
            if let index = self.indexOf[target] {
                if self.removedAt[index] != 0 {
                    self.removedAt[index] = 0
                    self.generation[index] &+= 1
                    self.schedule(index, at: now + self.jitter(self.configuration.interval.nanoseconds))
                }
                continue
            }
            let family = if case .v6 = target.address { 1 } else { 0 }
            self.openSockets(family: family)
            let index = self.free.popLast() ?? self.grow()
            self.targets[index] = target
            self.keys[index] = target.address.withRawAddress { raw, _ in MeshAddressKey(raw) }
            self.indexOf[target] = index
            self.reset(index)
            // A random point of the first interval: agents started together do not probe together.
            self.schedule(
                index,
                at: now + Int64.random(in: 0..<self.configuration.interval.nanoseconds, using: &self.rng)
            )
        }
    }

    private mutating func grow() -> Int {
        self.targets.append(nil)
        self.keys.append(nil)
        self.removedAt.append(0)
        self.sent.append(0)
        self.received.append(0)
        self.lost.append(0)
        self.duplicate.append(0)
        self.corrupt.append(0)
        self.skipped.append(0)
        self.rttSum.append(0)
        self.histogram += Array(repeating: 0, count: self.buckets)
        if self.configuration.perFlow { self.flowCounts += Array(repeating: 0, count: self.configuration.flows * 3) }
        self.lastReply.append(0)
        self.nextFlow.append(0)
        self.generation.append(0)
        if self.configuration.percentiles { self.times.append(RoundTripTimes()) }
        return self.targets.count - 1
    }

    private mutating func reset(_ index: Int) {
        self.removedAt[index] = 0
        self.sent[index] = 0
        self.received[index] = 0
        self.lost[index] = 0
        self.duplicate[index] = 0
        self.corrupt[index] = 0
        self.skipped[index] = 0
        self.rttSum[index] = 0
        for bucket in 0..<self.buckets { self.histogram[index * self.buckets + bucket] = 0 }
        if self.configuration.perFlow {
            let width = self.configuration.flows * 3
            for slot in 0..<width { self.flowCounts[index * width + slot] = 0 }
        }
        self.lastReply[index] = 0
        self.nextFlow[index] = UInt16.random(in: 0..<UInt16(self.configuration.flows), using: &self.rng)
        self.generation[index] &+= 1
        if self.configuration.percentiles { self.times[index] = RoundTripTimes() }
    }

    /// Drops targets whose grace period is over; their index is used again (no probe of theirs is outstanding by
    /// then: the grace is longer than the loss timeout).
    mutating func forgetRemoved(now: Int64) {
        let grace = max(self.configuration.grace.nanoseconds, self.configuration.timeout.nanoseconds + 1_000_000_000)
        for index in self.targets.indices where self.targets[index] != nil && self.removedAt[index] != 0 {
            if now - self.removedAt[index] >= grace {
                self.indexOf[self.targets[index]!] = nil
                self.targets[index] = nil
                self.keys[index] = nil
                self.free.append(index)
            }
        }
    }

    private mutating func openSockets(family: Int) {
        guard self.sockets[family][0] < 0 else { return }
        for flow in 0..<self.configuration.flows {
            let fd = socket(
                family == 1 ? AF_INET6 : AF_INET,
                Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue) | Int32(SOCK_NONBLOCK.rawValue),
                Int32(IPPROTO_UDP)
            )
            guard fd >= 0 else { continue }
            // Bound now, to an ephemeral port: each flow's source port is known (and exported) from the start.
            let any: SocketAddress? =
                family == 1
                ? try? SocketAddress(ipAddress: "::", port: 0) : try? SocketAddress(ipAddress: "0.0.0.0", port: 0)
            if let any { _ = any.withRawAddress { bind(fd, $0, $1) } }
            _ = cudpecho_set_buffer_size(fd, SO_RCVBUF, 4 << 20)
            // Each reply with the kernel's receive time (software timestamps): the round trip is not stretched by
            // when the thread gets to read it.
            _ = cudpecho_enable_timestamps(fd, family == 1 ? AF_INET6 : AF_INET, 0)
            self.sockets[family][flow] = fd
            self.ports[family][flow] = SocketAddress.local(of: fd)?.port ?? 0
        }
    }

    private func jitter(_ interval: Int64) -> Int64 {
        var generator = SystemRandomNumberGenerator()
        return interval + Int64.random(in: -(interval / 10)...(interval / 10), using: &generator)
    }

    // MARK: The heap of due times

    private mutating func schedule(_ index: Int, at due: Int64) {
        self.heap.append((due, Int32(index), self.generation[index]))
        var child = self.heap.count - 1
        while child > 0 {
            let parent = (child - 1) / 2
            guard self.heap[child].due < self.heap[parent].due else { break }
            self.heap.swapAt(child, parent)
            child = parent
        }
    }

    private mutating func popDue() -> (due: Int64, index: Int32, generation: UInt32) {
        let top = self.heap[0]
        let last = self.heap.removeLast()
        if !self.heap.isEmpty {
            self.heap[0] = last
            var parent = 0
            while true {
                let left = 2 * parent + 1
                let right = left + 1
                var smallest = parent
                if left < self.heap.count && self.heap[left].due < self.heap[smallest].due { smallest = left }
                if right < self.heap.count && self.heap[right].due < self.heap[smallest].due { smallest = right }
                if smallest == parent { break }
                self.heap.swapAt(parent, smallest)
                parent = smallest
            }
        }
        return top
    }

    // MARK: Sending

    mutating func sendDue(now: Int64) {
        self.refill(now: now)
        var sentNow = 0
        while let first = self.heap.first, first.due <= now, sentNow < 10_000 {
            let entry = self.popDue()
            let index = Int(entry.index)
            guard entry.generation == self.generation[index], let target = self.targets[index] else { continue }
            self.schedule(index, at: entry.due + self.jitter(self.configuration.interval.nanoseconds))
            let wire = Double(self.configuration.size + (target.address.protocol == .inet6 ? 48 : 28))
            guard self.probeTokens >= 1, self.byteTokens >= wire else {
                self.skipped[index] += 1
                continue
            }
            self.probeTokens -= 1
            self.byteTokens -= wire
            self.send(index, target: target, now: now)
            sentNow += 1
        }
    }

    private mutating func refill(now: Int64) {
        if self.lastRefill == 0 { self.lastRefill = now }
        let elapsed = Double(now - self.lastRefill) / 1e9
        self.lastRefill = now
        // Bursts of a tenth of a second at most.
        self.probeTokens = min(
            max(1, self.configuration.maximumRate / 10),
            self.probeTokens + elapsed * self.configuration.maximumRate
        )
        self.byteTokens = min(
            max(Double(self.configuration.size + 48), self.configuration.maximumBytesPerSecond / 10),
            self.byteTokens + elapsed * self.configuration.maximumBytesPerSecond
        )
    }

    private mutating func send(_ index: Int, target: MeshTarget, now: Int64) {
        let flow = self.nextFlow[index]
        self.nextFlow[index] = (flow + 1) % UInt16(self.configuration.flows)
        let family = if case .v6 = target.address { 1 } else { 0 }
        let fd = self.sockets[family][Int(flow)]
        guard fd >= 0 else { return }
        // The ring is full of probes still outstanding: the oldest are given up as lost.
        while self.nextSequence - self.oldest > UInt64(self.mask) { self.expireOldest() }
        let sequence = self.nextSequence
        self.nextSequence += 1
        self.probe.withUnsafeMutableBytes {
            MeshProbe.write(into: $0, sequence: sequence, target: UInt32(index), flow: flow)
        }
        let sentAt = cudpecho_now_ns()
        let result = self.probe.withUnsafeBytes { bytes in
            target.address.withRawAddress { sendto(fd, bytes.baseAddress, bytes.count, Int32(MSG_DONTWAIT), $0, $1) }
        }
        guard result >= 0 else { return }  // not sent (no route, a full buffer): not counted as a probe
        self.ring[Int(sequence) & self.mask] = (sequence, Int32(index), flow, false, sentAt)
        self.sent[index] += 1
        if self.configuration.perFlow { self.flowCounts[(index * self.configuration.flows + Int(flow)) * 3] += 1 }
    }

    // MARK: Receiving

    /// Reads every socket's queued replies, in batches (recvmmsg), each with its kernel receive time.
    mutating func drainAll() {
        for family in 0..<2 {
            for fd in self.sockets[family] where fd >= 0 {
                // ICMP errors (a peer's port unreachable) queue on the error queue: read and let go; the probes
                // they are about count as lost.
                while cudpecho_batch_recv_errors(fd, self.batch, 64) == 64 {}
                while true {
                    let received = cudpecho_batch_recv(fd, self.batch, 64, 0)
                    if received == -EINTR || received == -ECONNREFUSED || received == -EHOSTUNREACH { continue }
                    guard received > 0 else { break }
                    // The kernel stamps arrivals on CLOCK_REALTIME, which steps; probes are timed on CLOCK_MONOTONIC,
                    // which does not: each arrival is carried over by the offset between the two read now.
                    let drained = cudpecho_now_ns()
                    let offset = cudpecho_realtime_ns() - drained
                    for slot in 0..<Int(received) {
                        var length: socklen_t = 0
                        let peer = cudpecho_batch_peer(self.batch, Int32(slot), &length)!
                        let arrival = cudpecho_batch_timestamp(self.batch, Int32(slot), 0)
                        let reply = UnsafeRawBufferPointer(
                            start: cudpecho_batch_payload(self.batch, Int32(slot)),
                            count: cudpecho_batch_length(self.batch, Int32(slot))
                        )
                        self.match(
                            reply,
                            from: MeshAddressKey(peer),
                            arrival: arrival != 0 ? arrival - offset : drained,
                            drained: drained
                        )
                    }
                    if received < 64 { break }
                }
            }
        }
    }

    /// `arrival`: the kernel's receive time carried over to CLOCK_MONOTONIC; `drained`: when it was read.
    private mutating func match(
        _ reply: UnsafeRawBufferPointer,
        from source: MeshAddressKey?,
        arrival: Int64,
        drained: Int64
    ) {
        guard reply.count >= MeshProbe.headerSize else { return }
        let sequence = UInt64(littleEndian: reply.loadUnaligned(as: UInt64.self))
        let claimed = Int(UInt32(littleEndian: reply.loadUnaligned(fromByteOffset: 8, as: UInt32.self)))
        let slot = Int(sequence & UInt64(self.mask))
        let entry = self.ring[slot]
        // Whose probe it is: the ring says, when it still remembers the sequence number; a reply that names a
        // target but no outstanding probe of it is counted against that target only if it came from its address.
        guard entry.sequence == sequence, entry.target >= 0 else {
            if claimed < self.targets.count, self.targets[claimed] != nil, source == self.keys[claimed] {
                self.corrupt[claimed] += sequence < self.nextSequence ? 0 : 1
            }
            return
        }
        let index = Int(entry.target)
        guard self.targets[index] != nil, source == self.keys[index] else { return }
        guard
            MeshProbe.matches(
                reply,
                size: self.configuration.size,
                sequence: sequence,
                target: UInt32(index),
                flow: entry.flow
            )
        else {
            self.corrupt[index] += 1
            return
        }
        if entry.answered {
            self.duplicate[index] += 1
            return
        }
        self.ring[slot].answered = true
        let roundTrip = MeshProber.roundTrip(sent: entry.sentMonotonic, arrival: arrival, drained: drained)
        self.received[index] += 1
        self.lastReply[index] = cudpecho_now_ns()
        let seconds = Double(roundTrip) / 1e9
        self.rttSum[index] += seconds
        let bucket = MeshProber.bucketBounds.firstIndex { seconds <= $0 } ?? MeshProber.bucketBounds.count
        self.histogram[index * self.buckets + bucket] += 1
        if self.configuration.perFlow {
            self.flowCounts[(index * self.configuration.flows + Int(entry.flow)) * 3 + 1] += 1
        }
        if self.configuration.percentiles { self.times[index].record(roundTrip) }
    }

    // MARK: Losses

    mutating func expire(now: Int64) {
        let limit = now - self.configuration.timeout.nanoseconds
        while self.oldest < self.nextSequence {
            let entry = self.ring[Int(self.oldest) & self.mask]
            if entry.sequence == self.oldest && entry.sentMonotonic > limit { return }
            self.expireOldest()
        }
    }

    private mutating func expireOldest() {
        let slot = Int(self.oldest) & self.mask
        let entry = self.ring[slot]
        if entry.sequence == self.oldest && entry.target >= 0 {
            if !entry.answered {
                let index = Int(entry.target)
                self.lost[index] += 1
                if self.configuration.perFlow {
                    self.flowCounts[(index * self.configuration.flows + Int(entry.flow)) * 3 + 2] += 1
                }
            }
            // Kept until overwritten, so that a late duplicate is still recognised; a late reply to a lost probe
            // is not counted again.
            self.ring[slot].answered = true
        }
        self.oldest += 1
    }

    // MARK: Publication

    func snapshot(now: Int64) -> MeshSnapshot {
        var snapshot = MeshSnapshot()
        snapshot.flows = self.configuration.flows
        snapshot.perFlow = self.configuration.perFlow
        let upWindow = 3 * self.configuration.interval.nanoseconds + self.configuration.timeout.nanoseconds
        for index in self.targets.indices {
            guard let target = self.targets[index] else { continue }
            var statistics = MeshTargetStatistics(target: target)
            statistics.sent = self.sent[index]
            statistics.received = self.received[index]
            statistics.lost = self.lost[index]
            statistics.duplicate = self.duplicate[index]
            statistics.corrupt = self.corrupt[index]
            statistics.skipped = self.skipped[index]
            statistics.rttSum = self.rttSum[index]
            statistics.buckets = Array(self.histogram[(index * self.buckets)..<((index + 1) * self.buckets)])
            statistics.up = self.lastReply[index] != 0 && now - self.lastReply[index] <= upWindow
            statistics.removed = self.removedAt[index] != 0
            if self.configuration.perFlow {
                let width = self.configuration.flows * 3
                let counts = self.flowCounts[(index * width)..<((index + 1) * width)]
                statistics.flowCounts = Array(counts)
                let family = if case .v6 = target.address { 1 } else { 0 }
                statistics.flowPorts = self.ports[family]
            }
            if self.configuration.percentiles { statistics.times = self.times[index] }
            snapshot.targets.append(statistics)
        }
        return snapshot
    }

}

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
    /// Round trips: their sum (seconds) and how many fell in each bucket of ``MeshProber/bucketBounds`` (the last:
    /// above 10 s), not cumulative.
    public var rttSum: Double = 0
    /// How many round trips fell in each bucket (see ``rttSum``).
    public var buckets: [UInt64] = []
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

/// An address and port as compared on the receive path (no formatting): IPv4 mapped into IPv6.
struct MeshAddressKey: Equatable {
    var address: IPKey
    var port: UInt16

    init?(_ raw: UnsafePointer<sockaddr>) {
        guard let address = IPKey(raw) else { return nil }
        self.address = address
        self.port =
            Int32(raw.pointee.sa_family) == AF_INET
            ? raw.withMemoryRebound(to: sockaddr_in.self, capacity: 1) { UInt16(bigEndian: $0.pointee.sin_port) }
            : raw.withMemoryRebound(to: sockaddr_in6.self, capacity: 1) { UInt16(bigEndian: $0.pointee.sin6_port) }
    }
}
