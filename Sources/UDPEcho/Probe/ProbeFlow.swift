import CUDPEcho
import NIOCore

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// One flow of a probe run: a connected socket and the ring of probes it sent, with each probe's times.
final class ProbeFlow {
    enum State: UInt8 {
        case none = 0
        case outstanding, answered, lost, refused
    }

    enum LookUp {
        /// A sequence number beyond the last one sent.
        case notYetSent
        /// A probe that the kernel would not send.
        case notSent
        /// Older than the ring remembers.
        case forgotten
        case outstanding(position: Int)
        case answered(position: Int)
        case lost(position: Int)
        case refused
    }

    let index: Int
    let descriptor: Int32
    private let size: Int
    private let mask: Int
    /// Per probe (by ring position): when it was due (CLOCK_MONOTONIC), when the program sent it (CLOCK_MONOTONIC),
    /// when the kernel says it left (its transmit timestamp's clock, 0 until known), and its round trip (-1 until
    /// answered).
    let scheduled: UnsafeMutablePointer<Int64>
    let departure: UnsafeMutablePointer<Int64>
    let kernelDeparture: UnsafeMutablePointer<Int64>
    let roundTrip: UnsafeMutablePointer<Int64>
    /// STAMP: T1 as written into each test packet.
    let stampTimestamp: UnsafeMutablePointer<UInt64>
    /// Writes STAMP test packets instead of echo probes.
    let stamp: StampProbeWriter?
    private let sequences: UnsafeMutablePointer<UInt64>
    private let states: UnsafeMutablePointer<UInt8>
    /// Transmit timestamp IDs to sequence numbers, by `ID & mask`.
    private let keys: UnsafeMutablePointer<UInt64>
    private let pattern: [UInt8]
    private(set) var nextSequence: UInt64 = 0
    private var oldest: UInt64 = 0
    private var highestReceived: UInt64? = nil
    /// The next transmit timestamp ID.
    private(set) var nextKey: UInt32 = 0
    private(set) var outstanding = 0
    private(set) var sent = 0
    /// The round trip of the reply that came last, and RFC 3550's running jitter over this flow's replies.
    var lastArrivalRoundTrip: Int64?
    var rfc3550: Double = 0
    var jitterSamples = 0

    /// This flow's loss and round trips, by its source port.
    var statistics: FlowStatistics
    /// Whether probes carry the ``MarkingReport`` request (bytes 16-27), which a server may fill in.
    let markingReport: Bool

    init(
        index: Int,
        target: SocketAddress,
        size: Int,
        capacity: Int,
        stamp: StampProbeWriter?,
        marking: PathMarking = PathMarking(),
        receiveMarks: Bool = false,
        markingReport: Bool = false
    ) throws(EchoError) {
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
        if marking.isSet {
            let result = cudpecho_set_marking(
                fd,
                family,
                marking.trafficClass.map { Int32($0.byte) } ?? -1,
                marking.ttl.map { Int32($0) } ?? -1,
                marking.dontFragment ? 1 : 0
            )
            if result < 0 {
                Glibc.close(fd)
                throw .socket(
                    operation: "marking (TOS, TTL, DF) probes to",
                    address: target.hostPortDescription,
                    errno: -result
                )
            }
        }
        let port = SocketAddress.local(of: fd)?.port ?? 0
        self.statistics = FlowStatistics(port: port)
        self.descriptor = fd
        self.stamp = stamp
        if stamp != nil || receiveMarks { _ = cudpecho_enable_receive_marks(fd, family) }
        self.markingReport = markingReport && stamp == nil && size >= MarkingReport.minimumProbeSize
        func ring<T>(_ value: T) -> UnsafeMutablePointer<T> {
            let pointer = UnsafeMutablePointer<T>.allocate(capacity: capacity)
            pointer.initialize(repeating: value, count: capacity)
            return pointer
        }
        self.scheduled = ring(0)
        self.departure = ring(0)
        self.kernelDeparture = ring(0)
        self.roundTrip = ring(-1)
        self.stampTimestamp = ring(0)
        self.sequences = ring(.max)
        self.states = ring(0)
        self.keys = ring(.max)
        var pattern = (0..<(size - ProbeEngine.headerSize)).map {
            UInt8(truncatingIfNeeded: $0 &* 7 &+ index &* 13 &+ 1)
        }
        if self.markingReport {
            pattern.replaceSubrange(0..<MarkingReport.request.count, with: MarkingReport.request)
            for byte in MarkingReport.request.count..<MarkingReport.size { pattern[byte] = 0 }
        }
        self.pattern = pattern
    }

    deinit {
        self.scheduled.deallocate()
        self.departure.deallocate()
        self.kernelDeparture.deallocate()
        self.roundTrip.deallocate()
        self.stampTimestamp.deallocate()
        self.sequences.deallocate()
        self.states.deallocate()
        self.keys.deallocate()
    }

    func close() {
        _ = Glibc.close(self.descriptor)
    }

    func position(_ sequence: UInt64) -> Int { Int(truncatingIfNeeded: sequence) & self.mask }

    /// Writes the next probe into `slot` of `batch` and remembers it as outstanding; returns its sequence number.
    /// When the ring is full, the oldest probes are given up on early and reported to `lost`.
    func prepare(into batch: OpaquePointer, slot: Int, scheduledAt: Int64, lost: (UInt64) -> Void) -> UInt64 {
        if self.nextSequence - self.oldest > UInt64(self.mask) {
            self.expire(before: .max, upTo: self.nextSequence - UInt64(self.mask), lost)
        }
        let sequence = self.nextSequence
        self.nextSequence += 1
        let position = self.position(sequence)
        self.scheduled[position] = scheduledAt
        self.departure[position] = scheduledAt
        self.kernelDeparture[position] = 0
        self.roundTrip[position] = -1
        self.sequences[position] = sequence
        self.states[position] = State.outstanding.rawValue
        self.outstanding += 1
        self.sent += 1
        let payload = UnsafeMutableRawPointer(cudpecho_batch_payload(batch, Int32(slot))!)
        if let stamp = self.stamp {
            self.stampTimestamp[position] = stamp.write(
                into: payload,
                sequence: sequence,
                realtime: cudpecho_realtime_ns()
            )
            cudpecho_batch_set_length(batch, Int32(slot), self.size)
            return sequence
        }
        payload.storeBytes(of: sequence.littleEndian, as: UInt64.self)
        payload.storeBytes(of: scheduledAt.littleEndian, toByteOffset: 8, as: Int64.self)
        self.pattern.withUnsafeBytes {
            (payload + ProbeEngine.headerSize).copyMemory(from: $0.baseAddress!, byteCount: $0.count)
        }
        cudpecho_batch_set_length(batch, Int32(slot), self.size)
        return sequence
    }

    /// Takes the next transmit timestamp ID for the probe `sequence`.
    func assignKey(to sequence: UInt64) -> UInt32 {
        let key = self.nextKey
        self.nextKey &+= 1
        self.keys[Int(key) & self.mask] = sequence
        return key
    }

    /// Records the kernel's transmit timestamp of the send with ID `key`.
    func recordDeparture(key: UInt32, at time: Int64) {
        let sequence = self.keys[Int(key) & self.mask]
        guard sequence != .max else { return }
        let position = self.position(sequence)
        if self.sequences[position] == sequence { self.kernelDeparture[position] = time }
    }

    /// Forgets the probe `sequence`, which the kernel did not send.
    func unsend(_ sequence: UInt64) {
        let position = self.position(sequence)
        if self.sequences[position] == sequence && self.states[position] == State.outstanding.rawValue {
            self.states[position] = State.none.rawValue
            self.outstanding -= 1
            self.sent -= 1
        }
    }

    func lookUp(_ sequence: UInt64) -> LookUp {
        guard sequence < self.nextSequence else { return .notYetSent }
        let position = self.position(sequence)
        guard self.sequences[position] == sequence else { return .forgotten }
        switch State(rawValue: self.states[position]) {
        case .outstanding: return .outstanding(position: position)
        case .answered: return .answered(position: position)
        case .lost: return .lost(position: position)
        case .refused: return .refused
        case .some(.none), nil: return .notSent
        }
    }

    /// The full sequence number whose low 32 bits are `low` (STAMP carries 32): the latest one sent so far.
    func sequence(fromLow low: UInt32) -> UInt64 {
        let candidate = (self.nextSequence & ~0xFFFF_FFFF) | UInt64(low)
        return candidate >= self.nextSequence && candidate >= 1 << 32 ? candidate - (1 << 32) : candidate
    }

    /// The round trip of probe `sequence`, if it was answered and is still in the ring.
    func roundTrip(of sequence: UInt64) -> Int64? {
        let position = self.position(sequence)
        guard sequence < self.nextSequence, self.sequences[position] == sequence, self.roundTrip[position] >= 0 else {
            return nil
        }
        return self.roundTrip[position]
    }

    /// Where `reply` differs from the probe it names, in words; nil when it is the probe.
    func difference(_ reply: UnsafeRawBufferPointer, scheduledAt: Int64, stamp: Int64) -> String? {
        if reply.count != self.size { return "\(reply.count) bytes, the probe had \(self.size)" }
        if stamp != scheduledAt { return "its timestamp (bytes 8-15) differs" }
        let body = UnsafeRawBufferPointer(rebasing: reply[ProbeEngine.headerSize...])
        // The bytes a server fills in with its marking report are not compared.
        let filled = self.markingReport ? MarkingReport.request.count..<MarkingReport.size : 0..<0
        let same = self.pattern.withUnsafeBytes {
            filled.isEmpty
                ? memcmp($0.baseAddress!, body.baseAddress!, body.count) == 0
                : memcmp($0.baseAddress!, body.baseAddress!, filled.lowerBound) == 0
                    && memcmp(
                        $0.baseAddress! + filled.upperBound,
                        body.baseAddress! + filled.upperBound,
                        body.count - filled.upperBound
                    ) == 0
        }
        if same { return nil }
        let offset = zip(self.pattern, body).enumerated().prefix {
            $0.element.0 == $0.element.1 || filled.contains($0.offset)
        }.count
        return "first difference at byte \(ProbeEngine.headerSize + offset)"
    }

    /// Marks `sequence` answered; returns whether a later probe had been answered before it.
    func markReceived(_ sequence: UInt64) -> Bool {
        self.resolve(sequence, as: .answered)
        self.statistics.received += 1
        defer { self.highestReceived = max(self.highestReceived ?? 0, sequence) }
        return (self.highestReceived ?? 0) > sequence
    }

    func resolve(_ sequence: UInt64, as state: State) {
        let position = self.position(sequence)
        if self.states[position] == State.outstanding.rawValue { self.outstanding -= 1 }
        self.states[position] = state.rawValue
    }

    /// The time at which the oldest outstanding probe will be lost, if any is outstanding.
    func oldestDeadline(_ timeout: Int64) -> Int64? {
        guard self.outstanding > 0 else { return nil }
        var sequence = self.oldest
        while sequence < self.nextSequence {
            let position = self.position(sequence)
            if self.states[position] == State.outstanding.rawValue {
                return self.departure[position] + timeout
            }
            sequence += 1
        }
        return nil
    }

    /// Marks lost, in order, the outstanding probes that left before `limit`, and steps past resolved ones, up to
    /// sequence `end` (exclusive).
    func expire(before limit: Int64, upTo end: UInt64 = .max, _ lost: (UInt64) -> Void) {
        while self.oldest < min(end, self.nextSequence) {
            let position = self.position(self.oldest)
            if self.states[position] == State.outstanding.rawValue {
                guard self.departure[position] < limit else { return }
                self.states[position] = State.lost.rawValue
                self.outstanding -= 1
                self.statistics.lost += 1
                lost(self.oldest)
            }
            self.oldest += 1
        }
    }
}
