import CUDPEcho
import NIOCore
import Synchronization

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// What both ends of an OWAMP test session know of it (RFC 4656 §3.5): its SID, schedule, packet count, padding,
/// loss timeout and mode.
struct OwampSessionPlan: Sendable {
    var sid: [UInt8]
    var slots: [ScheduleSlot]
    var count: UInt32
    /// The schedule's start, CLOCK_REALTIME ns.
    var start: Int64
    var padding: Int
    /// The loss timeout, ns: a packet not received this long after its send time is lost, and a sender this late
    /// skips the packet.
    var timeout: Int64
    /// The keys of the test packets, in authenticated and encrypted modes.
    var cipher: TestSessionCipher?

    /// A test packet's size: 14 bytes of fields unauthenticated, 48 in the keyed modes, then the padding.
    var packetSize: Int {
        (self.cipher == nil ? TwampReflector.shortestUnauthenticated : TestSessionCipher.senderSize) + self.padding
    }

    /// Each packet's send time (CLOCK_REALTIME ns), in sequence order.
    func sendTimes() -> [Int64] {
        var schedule = OwampSchedule(sid: self.sid, slots: self.slots)
        return (0..<Int(self.count)).map { _ in self.start &+ IPPMTime.nanoseconds(ntp: schedule.next()) }
    }
}

/// A UDP socket of an OWAMP test session, bound to `local` (port 0: a free one). It is closed once its session
/// released it and no thread uses it, whichever comes last: a descriptor closed under a thread that still polls it
/// could be reused by another socket, whose datagrams that thread would then read.
final class OwampSocket: Sendable {
    let fd: Int32
    let port: UInt16
    private let use = Mutex((threads: 0, released: false, closed: false))

    init(local: SocketAddress) throws(EchoError) {
        let family = local.protocol == .inet6 ? AF_INET6 : AF_INET
        let fd: Int32
        do { fd = try SystemCall.udpSocket(family: family) } catch {
            throw .socket(operation: "socket for", address: local.hostPortDescription, errno: error.errno)
        }
        do {
            try SystemCall.posix("bind") { local.withRawAddress { bind(fd, $0, $1) } }
        } catch {
            Glibc.close(fd)
            throw .socket(operation: "bind", address: local.hostPortDescription, errno: error.errno)
        }
        // Kernel receive timestamps and TTLs; replies and test packets leave with TTL 255 (the receiver's hop count).
        _ = cudpecho_enable_datagram_info(fd, family)
        _ = cudpecho_set_marking(fd, family, -1, 255, 0)
        self.fd = fd
        self.port = UInt16(SocketAddress.local(of: fd)?.port ?? 0)
    }

    /// A thread will use the socket (said before it starts, so that a release meanwhile does not close it).
    func retain() { self.use.withLock { $0.threads += 1 } }

    /// A thread is done with the socket.
    func threadEnded() { self.closeIfUnused { $0.threads -= 1 } }

    /// The session is done with the socket.
    func release() { self.closeIfUnused { $0.released = true } }

    private func closeIfUnused(_ change: (inout (threads: Int, released: Bool, closed: Bool)) -> Void) {
        self.use.withLock { use in
            change(&use)
            if use.released && use.threads == 0 && !use.closed {
                use.closed = true
                Glibc.close(self.fd)
            }
        }
    }
}

/// The sending end of an OWAMP test session: sends each packet at its scheduled time, skipping those it would send
/// more than the loss timeout late (RFC 4656 §4.1), until the schedule ends or ``stop()``.
final class OwampSender: Sendable {
    let plan: OwampSessionPlan
    let socket: OwampSocket
    let destination: SocketAddress
    private struct State {
        var next: UInt32 = 0
        var skips: [OwampSkipRange] = []
        var stopped = false
        var sendErrors = 0
    }
    private let state = Mutex(State())

    init(plan: OwampSessionPlan, socket: OwampSocket, destination: SocketAddress) {
        self.plan = plan
        self.socket = socket
        self.destination = destination
    }

    /// Sends the session's packets; returns when the schedule ends or the sender is stopped.
    func run() {
        let plan = self.plan
        var schedule = OwampSchedule(sid: plan.sid, slots: plan.slots)
        var packet = randomBytes(plan.packetSize)
        let fieldsEnd = plan.cipher == nil ? TwampReflector.shortestUnauthenticated : TestSessionCipher.senderSize
        // The clock's error estimate, read (and encoded) once a second, not for every packet.
        var errorEstimate: UInt16 = 0
        var nextClockRead = cudpecho_now_ns()
        for sequence in 0..<plan.count {
            let due = plan.start &+ IPPMTime.nanoseconds(ntp: schedule.next())
            guard Self.sleep(until: due, while: { !self.state.withLock { $0.stopped } }) else { return }
            if cudpecho_now_ns() >= nextClockRead {
                errorEstimate = HostClock.current().ippmErrorEstimate.raw
                nextClockRead = cudpecho_now_ns() + 1_000_000_000
            }
            let sent = self.state.withLock { state -> Bool in
                guard !state.stopped else { return false }
                let now = cudpecho_realtime_ns()
                if now > due &+ plan.timeout {
                    if let last = state.skips.last, last.last &+ 1 == sequence {
                        state.skips[state.skips.count - 1].last = sequence
                    } else {
                        state.skips.append(OwampSkipRange(first: sequence, last: sequence))
                    }
                } else {
                    for index in 0..<fieldsEnd { packet[index] = 0 }
                    let timestampAt = plan.cipher == nil ? 4 : 16
                    packet.put(sequence, at: 0)
                    packet.put(StampTimestampFormat.ntp.encode(now, taiOffset: 0), at: timestampAt)
                    packet.put(errorEstimate, at: timestampAt + 8)
                    packet.withUnsafeMutableBytes { bytes in
                        plan.cipher?.sealSender(bytes)
                        let result = self.destination.withRawAddress { address, length in
                            sendto(self.socket.fd, bytes.baseAddress, bytes.count, 0, address, length)
                        }
                        if result < 0 { state.sendErrors += 1 }
                    }
                }
                state.next = sequence &+ 1
                return true
            }
            guard sent else { return }
        }
    }

    /// Stops sending (at once, between two packets) and says how far it got.
    func stop() -> OwampSessionDescription {
        self.state.withLock { state in
            state.stopped = true
            return OwampSessionDescription(sid: self.plan.sid, nextSequence: state.next, skips: state.skips)
        }
    }

    /// Sends that failed (the kernel refused them: no route, a full buffer).
    var sendErrors: Int { self.state.withLock { $0.sendErrors } }

    /// Sleeps until CLOCK_REALTIME reaches `deadline`, in steps of at most 50 ms while `proceed` holds; false if it
    /// stopped holding.
    static func sleep(until deadline: Int64, while proceed: () -> Bool) -> Bool {
        while true {
            guard proceed() else { return false }
            let left = deadline - cudpecho_realtime_ns()
            if left <= 0 { return true }
            let step = min(left, 50_000_000)
            var request = timespec(tv_sec: Int(step / 1_000_000_000), tv_nsec: Int(step % 1_000_000_000))
            nanosleep(&request, nil)
        }
    }
}

/// The receiving end of an OWAMP test session: records each test packet from the session's sender (its sequence
/// number, send time and error estimate, the kernel's receive timestamp, the TTL) until stopped or the schedule's
/// end plus the loss timeout; then says what was lost.
final class OwampReceiver: Sendable {
    let plan: OwampSessionPlan
    let socket: OwampSocket
    /// The only address test packets are taken from (nil: any).
    let sender: IPKey?
    /// The most extra copies kept: as many as the packets, up to 1024 (a flood of copies is counted, not kept; the
    /// first copy of each packet always is).
    let duplicateCapacity: Int

    /// What came in that is not a record.
    struct Discards: Sendable, Equatable {
        /// From another address than the session's sender.
        var foreign = 0
        /// Of the wrong length, with a sequence number past the session's count, or an HMAC that does not verify.
        var malformed = 0
        /// Copies past the limit of duplicates kept.
        var overflow = 0
    }

    private struct State {
        var records: [OwampRecord] = []
        var seen: [Bool]
        var duplicates = 0
        var discards = Discards()
        var stopped = false
    }
    private let state: Mutex<State>

    init(plan: OwampSessionPlan, socket: OwampSocket, sender: IPKey?) {
        self.plan = plan
        self.socket = socket
        self.sender = sender
        self.duplicateCapacity = min(Int(plan.count), 1024)
        self.state = Mutex(State(seen: [Bool](repeating: false, count: Int(plan.count))))
    }

    /// Receives until stopped, or until CLOCK_REALTIME passes `deadline`. Each batch is read and recorded under the
    /// state's lock, as ``stop()`` reads what is still queued: no datagram is taken by one and dropped by the other.
    func run(until deadline: Int64) {
        guard let batch = cudpecho_batch_create(32, 65_536) else { return }
        defer { cudpecho_batch_destroy(batch) }
        var receiveError = HostClock.current().ippmErrorEstimate
        var nextClockRead = cudpecho_now_ns() + 1_000_000_000
        while !self.state.withLock({ $0.stopped }) {
            let left = deadline - cudpecho_realtime_ns()
            guard left > 0 else { return }
            guard cudpecho_wait(self.socket.fd, cudpecho_pollin, Int32(min(left / 1_000_000 + 1, 50))) > 0 else {
                continue
            }
            if cudpecho_now_ns() >= nextClockRead {
                receiveError = HostClock.current().ippmErrorEstimate
                nextClockRead = cudpecho_now_ns() + 1_000_000_000
            }
            self.state.withLock { state in
                guard !state.stopped else { return }
                self.receiveQueued(batch, receiveError: receiveError, into: &state)
            }
        }
    }

    /// Reads what the socket has queued, without waiting, and records it.
    private func receiveQueued(_ batch: OpaquePointer, receiveError: StampErrorEstimate, into state: inout State) {
        while true {
            let count = cudpecho_batch_recv(self.socket.fd, batch, 32, 0)
            guard count > 0 else { return }
            for slot in 0..<count {
                let index = Int32(slot)
                var length: socklen_t = 0
                let peer = cudpecho_batch_peer(batch, index, &length)
                if let sender = self.sender, peer.flatMap({ IPKey($0) }) != sender {
                    state.discards.foreign += 1
                    continue
                }
                let size = cudpecho_batch_length(batch, index)
                let payload = UnsafeMutableRawBufferPointer(start: cudpecho_batch_payload(batch, index), count: size)
                let kernel = cudpecho_batch_timestamp(batch, index, 0)
                let ttl = cudpecho_batch_received_ttl(batch, index)
                guard cudpecho_batch_truncated(batch, index) == 0,
                    let record = Self.record(
                        of: payload,
                        plan: self.plan,
                        receiveTime: kernel > 0 ? kernel : cudpecho_realtime_ns(),
                        receiveError: receiveError,
                        ttl: ttl >= 0 ? UInt8(truncatingIfNeeded: ttl) : 255
                    )
                else {
                    state.discards.malformed += 1
                    continue
                }
                if !state.seen[Int(record.sequence)] {
                    state.seen[Int(record.sequence)] = true
                } else if state.duplicates < self.duplicateCapacity {
                    state.duplicates += 1
                } else {
                    state.discards.overflow += 1
                    continue
                }
                state.records.append(record)
            }
        }
    }

    /// The record of the test packet in `payload` (decrypted in place in the keyed modes), received at
    /// `receiveTime` (CLOCK_REALTIME ns); nil if it is not one of the session's: the wrong length, an HMAC that does
    /// not verify, a sequence number past the session's count.
    static func record(
        of payload: UnsafeMutableRawBufferPointer,
        plan: OwampSessionPlan,
        receiveTime: Int64,
        receiveError: StampErrorEstimate,
        ttl: UInt8
    ) -> OwampRecord? {
        guard payload.count == plan.packetSize else { return nil }
        if let cipher = plan.cipher, !cipher.openSender(payload) { return nil }
        let base = UnsafeRawPointer(payload.baseAddress!)
        let sequence = base.loadBigEndian(UInt32.self, at: 0)
        guard sequence < plan.count else { return nil }
        let timestampAt = plan.cipher == nil ? 4 : 16
        return OwampRecord(
            sequence: sequence,
            sendTime: base.loadBigEndian(UInt64.self, at: timestampAt),
            receiveTime: StampTimestampFormat.ntp.encode(receiveTime, taiOffset: 0),
            sendError: StampErrorEstimate(raw: base.loadBigEndian(UInt16.self, at: timestampAt + 8)),
            receiveError: receiveError,
            ttl: ttl
        )
    }

    /// Stops receiving, after recording what the socket still has queued (a thread that started late, or was not
    /// scheduled for a while, may not have read it).
    func stop() {
        self.state.withLock { state in
            guard !state.stopped else { return }
            state.stopped = true
            guard let batch = cudpecho_batch_create(32, 65_536) else { return }
            defer { cudpecho_batch_destroy(batch) }
            let error = HostClock.current().ippmErrorEstimate
            self.receiveQueued(batch, receiveError: error, into: &state)
        }
    }

    var discards: Discards { self.state.withLock { $0.discards } }

    /// The session's records as a fetch returns them, in sequence order: each packet received (duplicates too), and
    /// a lost record (receive time zero) for each packet below `nextSequence`, not skipped, that did not come and
    /// whose send time plus the loss timeout had passed by `stopTime` (CLOCK_REALTIME ns; a later one is neither
    /// received nor lost: RFC 4656 §3.8).
    func records(nextSequence: UInt32, skips: [OwampSkipRange], stopTime: Int64) -> [OwampRecord] {
        let received = self.state.withLock { $0.records }
        let limit = min(nextSequence, self.plan.count)
        var bySequence: [UInt32: [OwampRecord]] = [:]
        for record in received where record.sequence < limit { bySequence[record.sequence, default: []].append(record) }
        let times = self.plan.sendTimes()
        let lostError = HostClock.current().ippmErrorEstimate
        var records: [OwampRecord] = []
        records.reserveCapacity(Int(limit))
        // The ranges in order (Stop-Sessions' decoding checks it), walked once alongside the sequence numbers.
        let ranges = skips.sorted { $0.first < $1.first }
        var range = 0
        for sequence in 0..<limit {
            while range < ranges.count && ranges[range].last < sequence { range += 1 }
            let skipped = range < ranges.count && ranges[range].contains(sequence)
            if let copies = bySequence[sequence] {
                records += copies
            } else if !skipped, times[Int(sequence)] &+ self.plan.timeout <= stopTime {
                records.append(
                    OwampRecord(
                        sequence: sequence,
                        sendTime: StampTimestampFormat.ntp.encode(times[Int(sequence)], taiOffset: 0),
                        receiveTime: 0,
                        sendError: lostError,
                        receiveError: lostError,
                        ttl: 255
                    )
                )
            }
        }
        return records
    }
}
