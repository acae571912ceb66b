import Atomics
import CUDPEcho
public import Histogram
import NIOCore

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

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
    /// ICMP "port unreachable" reports: nothing listens at the target.
    public var refused = 0

    public init() {}
}

/// Round-trip times of a run: an HdrHistogram in nanoseconds, and exact minimum, maximum, mean and deviation.
public struct RoundTripTimes: Sendable {
    /// Every matched reply's round-trip time, in nanoseconds, to 3 significant digits, up to an hour.
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
        let value = max(1, nanoseconds)
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

/// Something that happened to one probe, for tools that show each (ping).
public enum ProbeEvent: Sendable, Equatable {
    /// The reply to probe `sequence` came back intact after `roundTrip` nanoseconds.
    case reply(sequence: UInt64, bytes: Int, roundTrip: Int64, outOfOrder: Bool)
    /// Another reply to probe `sequence`, which had been answered already.
    case duplicate(sequence: UInt64, bytes: Int)
    /// Probe `sequence` got no reply in time.
    case lost(sequence: UInt64)
    /// The reply to probe `sequence` came, intact, after it had been counted as lost.
    case late(sequence: UInt64, bytes: Int, roundTrip: Int64)
    /// A reply that matches no probe: `sequence` when it names one that was sent, and where it first differs.
    case corrupt(sequence: UInt64?, bytes: Int, reason: String)
    /// The target's host reported that nothing listens there.
    case refused
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

/// Sends probes to an echo server over one connected UDP socket per flow and checks every reply, on one thread with
/// batched system calls (`sendmmsg`/`recvmmsg`, `epoll`).
///
/// A probe is `size` bytes: its sequence number (8 bytes), its scheduled send time (8 bytes, nanoseconds of
/// CLOCK_MONOTONIC) and a pattern of its flow. A reply is matched to its probe by the sequence number and must be
/// identical to it. Each flow keeps a ring of the probes it has sent; a reply older than the ring counts as late.
final class ProbeEngine {
    struct Configuration {
        enum Pacing {
            /// Closed loop: keep this many probes in flight per flow; a reply (or a loss) releases the next.
            case window(Int)
            /// Open loop: this many probes per second over all flows, on a fixed schedule; round-trip times are
            /// measured from each probe's scheduled time, so a stalled server cannot hide its stall.
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
        /// A probe without a reply after this long is lost.
        var lossTimeout: Duration = .seconds(1)
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
    private static let noDeadline = Int64.max

    private let configuration: Configuration
    private var flows: [Flow] = []
    private let epoll: Int32
    private let transmit: OpaquePointer
    private let receive: OpaquePointer
    private let lossTimeout: Int64
    private(set) var counts = ProbeCounts()
    private(set) var times = RoundTripTimes()
    /// Probes handed to `sendmmsg`, sent or not: what the count limit counts.
    private var attempted = 0
    /// When the run started, the last probe left, and the last matched reply came (CLOCK_MONOTONIC, ns).
    private var startedAt: Int64 = 0
    private var lastSentAt: Int64 = 0
    private var lastReplyAt: Int64 = 0

    /// The time the load was on: from the start to the last probe sent or the last reply received, whichever came
    /// later. The wait at the end for replies that never come is not in it.
    var activeTime: Duration { .nanoseconds(max(self.lastSentAt, self.lastReplyAt, self.startedAt) - self.startedAt) }

    /// Opens and connects the flows' sockets.
    init(_ configuration: Configuration) throws(EchoError) {
        precondition(configuration.size >= Self.headerSize && configuration.flows >= 1)
        self.configuration = configuration
        self.lossTimeout = configuration.lossTimeout.nanoseconds
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
        let capacity = Self.ringCapacity(configuration)
        do throws(EchoError) {
            guard self.epoll >= 0 else {
                throw .socket(
                    operation: "epoll for",
                    address: configuration.target.hostPortDescription,
                    errno: -self.epoll
                )
            }
            for index in 0..<configuration.flows {
                let flow = try Flow(
                    index: index,
                    target: configuration.target,
                    size: configuration.size,
                    capacity: capacity
                )
                self.flows.append(flow)
                _ = cudpecho_epoll_add(self.epoll, flow.descriptor, UInt32(index))
            }
        } catch {
            self.closeAll()
            throw error
        }
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

    /// Runs until the configured duration or count is reached and every probe is answered or lost, or until `stop`
    /// is set (probes still in flight then count as lost).
    func run(
        stop: ManagedAtomic<Bool>,
        onEvent: ((ProbeEvent) -> Void)?,
        onProgress: ((ProbeProgress) -> Void)?
    ) {
        let start = cudpecho_now_ns()
        self.startedAt = start
        let sendUntil = self.configuration.duration.map { start + $0.nanoseconds } ?? Self.noDeadline
        let limit = self.configuration.count ?? .max
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
                    self.send(flow, count: min(window - flow.outstanding, budget), now: now, onEvent: onEvent)
                }
            } else if !sending && self.flows.allSatisfy({ $0.outstanding == 0 }) {
                break
            }

            // Wait for replies, no longer than the next send, loss check or progress report.
            var wake = nextProgress
            if sending, case .rate(let rate) = self.configuration.pacing {
                wake = min(wake, start + Int64(Double(totalScheduled) * 1e9 / rate))
            }
            if sending && self.configuration.duration != nil { wake = min(wake, sendUntil) }
            if let oldest = self.flows.lazy.compactMap({ $0.oldestDeadline(self.lossTimeout) }).min() {
                wake = min(wake, oldest)
            }
            let ready = cudpecho_epoll_wait(self.epoll, &tokens, 64, max(0, wake - now))
            if ready > 0 {
                for token in tokens[0..<Int(ready)] {
                    let flow = self.flows[Int(token)]
                    self.drain(flow, onEvent: onEvent)
                    if sending, case .window(let window) = self.configuration.pacing, flow.outstanding < window {
                        let budget = limit - self.attempted
                        let now = cudpecho_now_ns()
                        self.send(flow, count: min(window - flow.outstanding, budget), now: now, onEvent: onEvent)
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
        if !stop.load(ordering: .relaxed) {
            // Every probe is answered or lost: a short grace period still counts duplicates and late replies that
            // are on their way.
            let graceEnd = cudpecho_now_ns() + min(self.lossTimeout, 50_000_000)
            while case let now = cudpecho_now_ns(), now < graceEnd {
                let ready = cudpecho_epoll_wait(self.epoll, &tokens, 64, graceEnd - now)
                guard ready > 0 else { break }
                for token in tokens[0..<Int(ready)] { self.drain(self.flows[Int(token)], onEvent: onEvent) }
            }
        }
        // Stopped: what is still in flight will not be waited for.
        for flow in self.flows {
            self.expire(flow, now: Self.noDeadline, onEvent: onEvent)
        }
    }

    // MARK: Sending

    /// Closed loop: sends `count` probes on `flow`, scheduled now.
    private func send(_ flow: Flow, count: Int, now: Int64, onEvent: ((ProbeEvent) -> Void)?) {
        var remaining = count
        while remaining > 0 {
            let batch = min(remaining, Self.batchSize)
            for slot in 0..<batch {
                flow.prepare(into: self.transmit, slot: slot, scheduledAt: now) { self.countLost($0, onEvent) }
            }
            self.transmitBatch(flow, count: batch)
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
                let scheduledAt = start + Int64(Double(k) * 1e9 / rate)
                flow.prepare(into: self.transmit, slot: filled, scheduledAt: scheduledAt) {
                    self.countLost($0, onEvent)
                }
                filled += 1
                k += flowCount
                if filled == Self.batchSize {
                    self.transmitBatch(flow, count: filled)
                    filled = 0
                }
            }
            if filled > 0 { self.transmitBatch(flow, count: filled) }
        }
    }

    /// Sends the `count` probes prepared in the transmit batch; those the kernel refuses are unmarked and counted.
    private func transmitBatch(_ flow: Flow, count: Int) {
        self.attempted += count
        var next = 0
        while next < count {
            let sent = cudpecho_batch_send(flow.descriptor, self.transmit, Int32(next), Int32(count - next))
            if sent > 0 {
                next += Int(sent)
                self.lastSentAt = cudpecho_now_ns()
                continue
            }
            switch -sent {
            case EINTR:
                continue
            case EAGAIN, EWOULDBLOCK:
                // The socket's send buffer is full: wait a little for room, then count the rest as not sent.
                if cudpecho_wait(flow.descriptor, cudpecho_pollout, 100) > 0 { continue }
                for slot in next..<count { flow.unsend(self.transmit, slot: slot) }
                self.counts.sendErrors += count - next
                next = count
            case ECONNREFUSED:
                flow.unsend(self.transmit, slot: next)
                self.counts.refused += 1
                next += 1
            default:
                flow.unsend(self.transmit, slot: next)
                self.counts.sendErrors += 1
                next += 1
            }
        }
        self.counts.sent = self.flows.reduce(0) { $0 + $1.sent }
    }

    // MARK: Receiving

    private func drain(_ flow: Flow, onEvent: ((ProbeEvent) -> Void)?) {
        while true {
            let received = cudpecho_batch_recv(flow.descriptor, self.receive, Int32(Self.batchSize), 0)
            if received < 0 {
                switch -received {
                case EINTR: continue
                case ECONNREFUSED:
                    self.counts.refused += 1
                    onEvent?(.refused)
                    continue
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
                self.match(bytes, on: flow, now: now, onEvent: onEvent)
            }
            if received < Self.batchSize { return }
        }
    }

    private func match(_ reply: UnsafeRawBufferPointer, on flow: Flow, now: Int64, onEvent: ((ProbeEvent) -> Void)?) {
        guard reply.count >= Self.headerSize else {
            self.counts.corrupt += 1
            onEvent?(.corrupt(sequence: nil, bytes: reply.count, reason: "shorter than a probe's header"))
            return
        }
        let sequence = UInt64(littleEndian: reply.loadUnaligned(as: UInt64.self))
        let stamp = Int64(littleEndian: reply.loadUnaligned(fromByteOffset: 8, as: Int64.self))
        switch flow.lookUp(sequence) {
        case .notYetSent:
            // Bytes 0-7 were damaged (or the reply is not an echo of ours): which probe it was cannot be known.
            self.counts.corrupt += 1
            onEvent?(
                .corrupt(
                    sequence: nil,
                    bytes: reply.count,
                    reason: "its sequence number (bytes 0-7) reads \(sequence), which had not been sent yet"
                )
            )
        case .notSent:
            self.counts.corrupt += 1
            onEvent?(
                .corrupt(
                    sequence: nil,
                    bytes: reply.count,
                    reason: "its sequence number (bytes 0-7) reads \(sequence), a probe the kernel refused to send"
                )
            )
        case .forgotten:
            self.counts.late += 1
            onEvent?(.late(sequence: sequence, bytes: reply.count, roundTrip: -1))
        case .outstanding(let scheduledAt):
            if let difference = flow.difference(reply, scheduledAt: scheduledAt, stamp: stamp) {
                flow.resolve(sequence, as: .answered)
                self.counts.corrupt += 1
                onEvent?(.corrupt(sequence: sequence, bytes: reply.count, reason: difference))
                return
            }
            let outOfOrder = flow.markReceived(sequence)
            let roundTrip = now - scheduledAt
            self.counts.received += 1
            self.lastReplyAt = now
            if outOfOrder { self.counts.reordered += 1 }
            self.times.record(roundTrip)
            onEvent?(.reply(sequence: sequence, bytes: reply.count, roundTrip: roundTrip, outOfOrder: outOfOrder))
        case .answered:
            self.counts.duplicate += 1
            onEvent?(.duplicate(sequence: sequence, bytes: reply.count))
        case .lost(let scheduledAt):
            if flow.difference(reply, scheduledAt: scheduledAt, stamp: stamp) == nil {
                self.counts.late += 1
                onEvent?(.late(sequence: sequence, bytes: reply.count, roundTrip: now - scheduledAt))
            } else {
                self.counts.corrupt += 1
                onEvent?(.corrupt(sequence: sequence, bytes: reply.count, reason: "it differs from the probe"))
            }
        }
    }

    /// Counts as lost the probes of `flow` whose loss timeout passed by `now`.
    private func expire(_ flow: Flow, now: Int64, onEvent: ((ProbeEvent) -> Void)?) {
        flow.expire(before: now == Self.noDeadline ? now : now - self.lossTimeout) { self.countLost($0, onEvent) }
    }
}

/// One flow: a connected socket and the ring of probes it sent.
private final class Flow {
    enum State: UInt8 {
        case none = 0
        case outstanding, answered, lost
    }

    enum LookUp {
        /// A sequence number beyond the last one sent.
        case notYetSent
        /// A probe that the kernel would not send.
        case notSent
        /// Older than the ring remembers.
        case forgotten
        case outstanding(Int64)
        case answered
        case lost(Int64)
    }

    let index: Int
    let descriptor: Int32
    private let size: Int
    private let mask: Int
    private let scheduled: UnsafeMutablePointer<Int64>
    private let sequences: UnsafeMutablePointer<UInt64>
    private let states: UnsafeMutablePointer<UInt8>
    private let pattern: [UInt8]
    private var nextSequence: UInt64 = 0
    private var oldest: UInt64 = 0
    private var highestReceived: UInt64? = nil
    private(set) var outstanding = 0
    private(set) var sent = 0

    init(index: Int, target: SocketAddress, size: Int, capacity: Int) throws(EchoError) {
        self.index = index
        self.size = size
        self.mask = capacity - 1
        let family: Int32 = if case .v6 = target { AF_INET6 } else { AF_INET }
        let fd = socket(family, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), Int32(IPPROTO_UDP))
        guard fd >= 0 else { throw .socket(operation: "socket for", address: target.hostPortDescription, errno: errno) }
        _ = cudpecho_set_buffer_size(fd, SO_RCVBUF, 4 << 20)
        _ = cudpecho_set_buffer_size(fd, SO_SNDBUF, 4 << 20)
        guard target.withRawAddress({ connect(fd, $0, $1) }) == 0 else {
            let code = errno
            Glibc.close(fd)
            throw .socket(operation: "connect to", address: target.hostPortDescription, errno: code)
        }
        self.descriptor = fd
        self.scheduled = .allocate(capacity: capacity)
        self.scheduled.initialize(repeating: 0, count: capacity)
        self.sequences = .allocate(capacity: capacity)
        self.sequences.initialize(repeating: .max, count: capacity)
        self.states = .allocate(capacity: capacity)
        self.states.initialize(repeating: 0, count: capacity)
        self.pattern = (0..<(size - ProbeEngine.headerSize)).map {
            UInt8(truncatingIfNeeded: $0 &* 7 &+ index &* 13 &+ 1)
        }
    }

    deinit {
        self.scheduled.deallocate()
        self.sequences.deallocate()
        self.states.deallocate()
    }

    func close() {
        _ = Glibc.close(self.descriptor)
    }

    /// Writes the next probe into `slot` of `batch` and remembers it as outstanding. When the ring is full, the
    /// oldest probes are given up on early and reported to `lost`.
    func prepare(into batch: OpaquePointer, slot: Int, scheduledAt: Int64, lost: (UInt64) -> Void) {
        if self.nextSequence - self.oldest > UInt64(self.mask) {
            self.expire(before: .max, upTo: self.nextSequence - UInt64(self.mask), lost)
        }
        let sequence = self.nextSequence
        self.nextSequence += 1
        let position = Int(sequence) & self.mask
        self.scheduled[position] = scheduledAt
        self.sequences[position] = sequence
        self.states[position] = State.outstanding.rawValue
        self.outstanding += 1
        self.sent += 1
        let payload = UnsafeMutableRawPointer(cudpecho_batch_payload(batch, Int32(slot))!)
        payload.storeBytes(of: sequence.littleEndian, as: UInt64.self)
        payload.storeBytes(of: scheduledAt.littleEndian, toByteOffset: 8, as: Int64.self)
        self.pattern.withUnsafeBytes {
            (payload + ProbeEngine.headerSize).copyMemory(from: $0.baseAddress!, byteCount: $0.count)
        }
        cudpecho_batch_set_length(batch, Int32(slot), self.size)
    }

    /// Forgets the probe in `slot` of `batch`, which the kernel did not send.
    func unsend(_ batch: OpaquePointer, slot: Int) {
        let payload = UnsafeRawPointer(cudpecho_batch_payload(batch, Int32(slot))!)
        let sequence = UInt64(littleEndian: payload.loadUnaligned(as: UInt64.self))
        let position = Int(sequence) & self.mask
        if self.states[position] == State.outstanding.rawValue {
            self.states[position] = State.none.rawValue
            self.outstanding -= 1
            self.sent -= 1
        }
    }

    func lookUp(_ sequence: UInt64) -> LookUp {
        guard sequence < self.nextSequence else { return .notYetSent }
        let position = Int(sequence) & self.mask
        guard self.sequences[position] == sequence else { return .forgotten }
        switch State(rawValue: self.states[position]) {
        case .outstanding: return .outstanding(self.scheduled[position])
        case .answered: return .answered
        case .lost: return .lost(self.scheduled[position])
        case .some(.none), nil: return .notSent
        }
    }

    /// Where `reply` differs from the probe it names, in words; nil when it is the probe.
    func difference(_ reply: UnsafeRawBufferPointer, scheduledAt: Int64, stamp: Int64) -> String? {
        if reply.count != self.size { return "\(reply.count) bytes, the probe had \(self.size)" }
        if stamp != scheduledAt { return "its timestamp (bytes 8-15) differs" }
        let body = UnsafeRawBufferPointer(rebasing: reply[ProbeEngine.headerSize...])
        let same = self.pattern.withUnsafeBytes { memcmp($0.baseAddress!, body.baseAddress!, body.count) == 0 }
        if same { return nil }
        let offset = zip(self.pattern, body).prefix { $0 == $1 }.count
        return "first difference at byte \(ProbeEngine.headerSize + offset)"
    }

    /// Marks `sequence` answered; returns whether a later probe had been answered before it.
    func markReceived(_ sequence: UInt64) -> Bool {
        self.resolve(sequence, as: .answered)
        defer { self.highestReceived = max(self.highestReceived ?? 0, sequence) }
        return (self.highestReceived ?? 0) > sequence
    }

    func resolve(_ sequence: UInt64, as state: State) {
        let position = Int(sequence) & self.mask
        if self.states[position] == State.outstanding.rawValue { self.outstanding -= 1 }
        self.states[position] = state.rawValue
    }

    /// The time at which the oldest outstanding probe will be lost, if any is outstanding.
    func oldestDeadline(_ timeout: Int64) -> Int64? {
        guard self.outstanding > 0 else { return nil }
        var sequence = self.oldest
        while sequence < self.nextSequence {
            let position = Int(sequence) & self.mask
            if self.states[position] == State.outstanding.rawValue {
                return self.scheduled[position] + timeout
            }
            sequence += 1
        }
        return nil
    }

    /// Marks lost, in order, the outstanding probes scheduled before `limit`, and steps past resolved ones, up to
    /// sequence `end` (exclusive).
    func expire(before limit: Int64, upTo end: UInt64 = .max, _ lost: (UInt64) -> Void) {
        while self.oldest < min(end, self.nextSequence) {
            let position = Int(self.oldest) & self.mask
            if self.states[position] == State.outstanding.rawValue {
                guard self.scheduled[position] < limit else { return }
                self.states[position] = State.lost.rawValue
                self.outstanding -= 1
                lost(self.oldest)
            }
            self.oldest += 1
        }
    }
}
