import CUDPEcho
import NIOCore

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// What the probing thread keeps, struct of arrays by target index.
struct MeshProberState {
    let configuration: MeshProber.Configuration
    let buckets = MeshProber.bucketBounds.count + 1
    var targets: [MeshTarget?] = []
    /// Each target's address as compared with a reply's source.
    var keys: [EndpointKey?] = []
    /// Replies and the error queue, read in batches.
    let receiver: DatagramReceiver
    var indexOf: [MeshTarget: Int] = [:]
    var removedAt: [Int64] = []
    var free: [Int] = []
    var sent: [UInt64] = []
    var received: [UInt64] = []
    var lost: [UInt64] = []
    var duplicate: [UInt64] = []
    var corrupt: [UInt64] = []
    var skipped: [UInt64] = []
    var histograms: [LatencyHistogram] = []
    /// With `samples`: each target's probes, by departure from the prober's start.
    var samples: [[SmokePlot.Sample]] = []
    /// With `liveGraphs`: the last hour of each target the live page draws (the first LivePage.maximumGraphs).
    var live: [LiveSeries] = []
    /// When the prober started (CLOCK_MONOTONIC), the origin of the samples' times.
    var started: Int64 = cudpecho_now_ns()
    var flowCounts: [UInt64] = []  // targets x flows x 3 (sent, received, lost), with perFlow
    var lastReply: [Int64] = []
    var nextFlow: [UInt16] = []
    var times: [RoundTripTimes] = []
    /// Due times: a binary min-heap of (due, index, generation).
    var heap: [(due: Int64, index: Int32, generation: UInt32)] = []
    var generation: [UInt32] = []
    var nextDue: Int64 { self.heap.first?.due ?? Int64.max }
    /// The probes sent, over all targets; each one's departure is on CLOCK_MONOTONIC, read just before the send (it
    /// never steps). Beside it, by ring position: the target and flow each probe went to.
    let ring: ProbeRing
    var targetOf: [Int32]
    var flowOf: [UInt16]
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
        self.ring = ProbeRing(capacity: capacity, first: 1)
        self.targetOf = Array(repeating: -1, count: capacity)
        self.flowOf = Array(repeating: 0, count: capacity)
        self.sockets = Array(repeating: Array(repeating: -1, count: configuration.flows), count: 2)
        self.ports = Array(repeating: Array(repeating: 0, count: configuration.flows), count: 2)
        self.probe = [UInt8](repeating: 0, count: configuration.size)
        self.receiver = DatagramReceiver()!
        self.probeTokens = max(1, configuration.maximumRate / 10)
        self.byteTokens = max(Double(configuration.size + 48), configuration.maximumBytesPerSecond / 10)
    }

    mutating func closeSockets() {
        for family in self.sockets { for fd in family where fd >= 0 { close(fd) } }
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
            self.keys[index] = target.address.withRawAddress { raw, _ in EndpointKey(raw) }
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
        self.histograms.append(LatencyHistogram())
        if self.configuration.samples { self.samples.append([]) }
        // The page draws at most LivePage.maximumGraphs peers: only theirs have a series.
        if self.configuration.liveGraphs && self.live.count < LivePage.maximumGraphs { self.live.append(LiveSeries()) }
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
        self.histograms[index] = LatencyHistogram()
        if self.configuration.samples { self.samples[index] = [] }
        if index < self.live.count { self.live[index] = LiveSeries() }
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
            // A socket that cannot be had (out of descriptors) leaves its flow unprobed: its ports show 0.
            guard let fd = try? SystemCall.udpSocket(family: family == 1 ? AF_INET6 : AF_INET, nonBlocking: true)
            else { continue }
            // Bound now, to an ephemeral port: each flow's source port is known (and exported) from the start.
            let any: SocketAddress? =
                family == 1
                ? try? SocketAddress(ipAddress: "::", port: 0) : try? SocketAddress(ipAddress: "0.0.0.0", port: 0)
            if let any { _ = try? SystemCall.posix("bind") { any.withRawAddress { bind(fd, $0, $1) } } }
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
        // When the ring is full of probes still outstanding, the oldest are given up as lost.
        let (sequence, position) = self.ring.next(departure: 0) { _, position in self.countLost(position) }
        self.targetOf[position] = Int32(index)
        self.flowOf[position] = flow
        self.probe.withUnsafeMutableBytes {
            MeshProbe.write(into: $0, sequence: sequence, target: UInt32(index), flow: flow)
        }
        self.ring.departure[position] = cudpecho_now_ns()
        do {
            try SystemCall.posix("sendto") {
                self.probe.withUnsafeBytes { bytes in
                    target.address.withRawAddress {
                        sendto(fd, bytes.baseAddress, bytes.count, Int32(MSG_DONTWAIT), $0, $1)
                    }
                }
            }
        } catch {
            // Not sent (no route, a full buffer): not counted as a probe.
            self.ring.unsend(sequence)
            return
        }
        self.sent[index] += 1
        if self.configuration.perFlow { self.flowCounts[(index * self.configuration.flows + Int(flow)) * 3] += 1 }
    }

    // MARK: Receiving

    /// Reads every socket's queued replies, in batches (recvmmsg), each with its kernel receive time.
    mutating func drainAll() {
        let receiver = self.receiver
        for family in 0..<2 {
            for fd in self.sockets[family] where fd >= 0 {
                // ICMP errors (a peer's port unreachable) queue on the error queue: read and let go; the probes
                // they are about count as lost.
                receiver.drainErrors(fd, hardware: 0) { _, _ in }
                receiver.drain(fd) { received in
                    // The kernel stamps arrivals on CLOCK_REALTIME, which steps; probes are timed on CLOCK_MONOTONIC,
                    // which does not: each arrival is carried over by the offset between the two read now.
                    let drained = cudpecho_now_ns()
                    let offset = cudpecho_realtime_ns() - drained
                    for slot in 0..<received {
                        var length: socklen_t = 0
                        let peer = cudpecho_batch_peer(receiver.datagrams, Int32(slot), &length)!
                        let arrival = cudpecho_batch_timestamp(receiver.datagrams, Int32(slot), 0)
                        self.match(
                            receiver.datagram(slot),
                            from: EndpointKey(peer),
                            arrival: arrival != 0 ? arrival - offset : drained,
                            drained: drained
                        )
                    }
                }
            }
        }
    }

    /// `arrival`: the kernel's receive time carried over to CLOCK_MONOTONIC; `drained`: when it was read.
    private mutating func match(
        _ reply: UnsafeRawBufferPointer,
        from source: EndpointKey?,
        arrival: Int64,
        drained: Int64
    ) {
        let verdict = MeshReplyMatcher.match(
            reply,
            from: source,
            ring: self.ring,
            targetOf: self.targetOf,
            flowOf: self.flowOf,
            keys: self.keys,
            size: self.configuration.size
        )
        let index: Int
        let position: Int
        switch verdict {
        case .ignored: return
        case .corrupt(let target):
            self.corrupt[target] += 1
            return
        case .duplicate(let target):
            self.duplicate[target] += 1
            return
        case .answer(let target, let at):
            (index, position) = (target, at)
        }
        let sequence = UInt64(littleEndian: reply.loadUnaligned(as: UInt64.self))
        self.ring.resolve(sequence, as: .answered)
        let roundTrip = MeshProber.roundTrip(sent: self.ring.departure[position], arrival: arrival, drained: drained)
        self.received[index] += 1
        self.lastReply[index] = cudpecho_now_ns()
        self.histograms[index].record(nanoseconds: roundTrip)
        self.recordSample(index, departure: self.ring.departure[position], roundTrip: roundTrip)
        if self.configuration.perFlow {
            self.flowCounts[(index * self.configuration.flows + Int(self.flowOf[position])) * 3 + 1] += 1
        }
        if self.configuration.percentiles { self.times[index].record(roundTrip) }
    }

    // MARK: Losses

    mutating func expire(now: Int64) {
        self.ring.expire(before: now - self.configuration.timeout.nanoseconds) { _, position in
            self.countLost(position)
        }
    }

    private mutating func countLost(_ position: Int) {
        let index = Int(self.targetOf[position])
        guard index >= 0 else { return }
        self.lost[index] += 1
        self.recordSample(index, departure: self.ring.departure[position], roundTrip: nil)
        if self.configuration.perFlow {
            self.flowCounts[(index * self.configuration.flows + Int(self.flowOf[position])) * 3 + 2] += 1
        }
    }

    /// Keeps a probe's outcome for the drawings, when they are wanted.
    private mutating func recordSample(_ index: Int, departure: Int64, roundTrip: Int64?) {
        if self.configuration.samples {
            self.samples[index].append(SmokePlot.Sample(time: departure - self.started, roundTrip: roundTrip))
        }
        // The page draws at most LivePage.maximumGraphs peers: only theirs are kept (a series never recorded costs
        // nothing), so that 10,000 peers do not cost 35 MB for graphs nobody sees.
        if index < self.live.count {
            self.live[index].record(at: LiveSeries.now(), roundTrip: roundTrip)
        }
    }

    // MARK: Publication

    func snapshot(now: Int64) -> MeshSnapshot {
        var snapshot = MeshSnapshot()
        // Exactly as many as there are: grown by doubling, the array of 10,000 would hold room for 16,384.
        snapshot.targets.reserveCapacity(self.indexOf.count)
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
            statistics.histogram = self.histograms[index]
            if self.configuration.samples { statistics.samples = self.samples[index] }
            if index < self.live.count { statistics.live = self.live[index] }
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
