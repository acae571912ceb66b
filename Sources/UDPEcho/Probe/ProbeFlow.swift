import CUDPEcho
import NIOCore

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// One flow of a probe run: a connected socket, the ring of probes it sent (``ProbeRing``), and each probe's times.
final class ProbeFlow {
    let index: Int
    let descriptor: Int32
    /// The probes sent, and what became of each.
    let ring: ProbeRing
    /// How echo probes are written and checked (STAMP test packets are written by ``stamp``).
    let format: EchoProbeFormat
    /// Per probe (by ring position): when it was due (CLOCK_MONOTONIC), when the kernel says it left (its transmit
    /// timestamp's clock, 0 until known), and its round trip (-1 until answered). When the program sent it is the
    /// ring's ``ProbeRing/departure``.
    let scheduled: UnsafeMutablePointer<Int64>
    let kernelDeparture: UnsafeMutablePointer<Int64>
    let roundTrip: UnsafeMutablePointer<Int64>
    /// STAMP: T1 as written into each test packet.
    let stampTimestamp: UnsafeMutablePointer<UInt64>
    /// Writes STAMP test packets instead of echo probes.
    let stamp: StampProbeWriter?
    /// Transmit timestamp IDs to sequence numbers, by the ring position an ID would have as a sequence number.
    private let keys: UnsafeMutablePointer<UInt64>
    private var highestReceived: UInt64? = nil
    /// The next transmit timestamp ID.
    private(set) var nextKey: UInt32 = 0
    /// The round trip of the reply that came last, and RFC 3550's running jitter over this flow's replies.
    var lastArrivalRoundTrip: Int64?
    var rfc3550: Double = 0
    var jitterSamples = 0

    /// This flow's loss and round trips, by its source port.
    var statistics: FlowStatistics
    /// Whether probes carry the ``MarkingReport`` request (bytes 16-27), which a server may fill in.
    var markingReport: Bool { self.format.markingReport }
    /// When each probe left (the program's clock read), by ring position.
    var departure: UnsafeMutablePointer<Int64> { self.ring.departure }
    var outstanding: Int { self.ring.outstanding }
    var sent: Int { self.ring.sent }

    init(
        index: Int,
        target: SocketAddress,
        size: Int,
        capacity: Int,
        stamp: StampProbeWriter?,
        marking: PathMarking = PathMarking(),
        receiveMarks: Bool = false,
        markingReport: Bool = false,
        sourcePort: Int? = nil
    ) throws(EchoError) {
        self.index = index
        let family: Int32 = if case .v6 = target { AF_INET6 } else { AF_INET }
        let fd: Int32
        do {
            fd = try SystemCall.udpSocket(family: family)
        } catch {
            throw .socket(operation: "socket for", address: target.hostPortDescription, errno: error.errno)
        }
        _ = cudpecho_set_buffer_size(fd, SO_RCVBUF, 4 << 20)
        _ = cudpecho_set_buffer_size(fd, SO_SNDBUF, 4 << 20)
        if let sourcePort {
            let wildcard = try! SocketAddress(ipAddress: family == AF_INET6 ? "::" : "0.0.0.0", port: sourcePort)
            do {
                try SystemCall.posix("bind") { wildcard.withRawAddress { bind(fd, $0, $1) } }
            } catch {
                Glibc.close(fd)
                throw .socket(operation: "bind", address: wildcard.hostPortDescription, errno: error.errno)
            }
        }
        do {
            try SystemCall.posix("connect") { target.withRawAddress { connect(fd, $0, $1) } }
        } catch {
            Glibc.close(fd)
            throw .socket(operation: "connect to", address: target.hostPortDescription, errno: error.errno)
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
        self.format = EchoProbeFormat(size: size, flow: index, markingReport: markingReport && stamp == nil)
        self.ring = ProbeRing(capacity: capacity)
        func ring<T>(_ value: T) -> UnsafeMutablePointer<T> {
            let pointer = UnsafeMutablePointer<T>.allocate(capacity: capacity)
            pointer.initialize(repeating: value, count: capacity)
            return pointer
        }
        self.scheduled = ring(0)
        self.kernelDeparture = ring(0)
        self.roundTrip = ring(-1)
        self.stampTimestamp = ring(0)
        self.keys = ring(.max)
    }

    deinit {
        self.scheduled.deallocate()
        self.kernelDeparture.deallocate()
        self.roundTrip.deallocate()
        self.stampTimestamp.deallocate()
        self.keys.deallocate()
    }

    func close() {
        _ = Glibc.close(self.descriptor)
    }

    func position(_ sequence: UInt64) -> Int { self.ring.position(sequence) }

    /// Writes the next probe into `slot` of `batch` and remembers it as outstanding; returns its sequence number.
    /// When the ring is full, the oldest probes are given up on early and reported to `lost`.
    func prepare(into batch: OpaquePointer, slot: Int, scheduledAt: Int64, lost: (UInt64) -> Void) -> UInt64 {
        let (sequence, position) = self.ring.next(departure: scheduledAt) { sequence, _ in
            self.statistics.lost += 1
            lost(sequence)
        }
        self.scheduled[position] = scheduledAt
        self.kernelDeparture[position] = 0
        self.roundTrip[position] = -1
        let payload = UnsafeMutableRawPointer(cudpecho_batch_payload(batch, Int32(slot))!)
        if let stamp = self.stamp {
            self.stampTimestamp[position] = stamp.write(
                into: payload,
                sequence: sequence,
                realtime: cudpecho_realtime_ns()
            )
        } else {
            self.format.write(into: payload, sequence: sequence, scheduledAt: scheduledAt)
        }
        cudpecho_batch_set_length(batch, Int32(slot), self.format.size)
        return sequence
    }

    /// Takes the next transmit timestamp ID for the probe `sequence`.
    func assignKey(to sequence: UInt64) -> UInt32 {
        let key = self.nextKey
        self.nextKey &+= 1
        self.keys[self.ring.position(UInt64(key))] = sequence
        return key
    }

    /// Records the kernel's transmit timestamp of the send with ID `key`.
    func recordDeparture(key: UInt32, at time: Int64) {
        let sequence = self.keys[self.ring.position(UInt64(key))]
        guard sequence != .max, self.ring.remembers(sequence) else { return }
        self.kernelDeparture[self.ring.position(sequence)] = time
    }

    /// Forgets the probe `sequence`, which the kernel did not send.
    func unsend(_ sequence: UInt64) { self.ring.unsend(sequence) }

    /// The round trip of probe `sequence`, if it was answered and is still in the ring.
    func roundTrip(of sequence: UInt64) -> Int64? {
        guard self.ring.remembers(sequence) else { return nil }
        let value = self.roundTrip[self.ring.position(sequence)]
        return value >= 0 ? value : nil
    }

    /// Marks `sequence` answered; returns whether a later probe had been answered before it.
    func markReceived(_ sequence: UInt64) -> Bool {
        self.ring.resolve(sequence, as: .answered)
        self.statistics.received += 1
        defer { self.highestReceived = max(self.highestReceived ?? 0, sequence) }
        return (self.highestReceived ?? 0) > sequence
    }

    /// Marks lost, in order, the outstanding probes that left before `limit`, reporting each to `lost`.
    func expire(before limit: Int64, _ lost: (UInt64) -> Void) {
        self.ring.expire(before: limit) { sequence, _ in
            self.statistics.lost += 1
            lost(sequence)
        }
    }
}
