// Longer than 500 lines on purpose: this is the echo path of one serving thread, receive, guards, STAMP, offload
// runs, send and the write deadline, and the order of those steps over one batch is the thing to review. Split
// across files, the per-slot state they share (outcomes, errnos, the dropped-datagram list) would have to be widened
// from private to the whole module.
import Atomics
import CUDPEcho
import NIOCore

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// The echo loop of one socket, on its own thread: block in one `recvmmsg` until datagrams arrive, send the replies
/// with one `sendmmsg`, repeat. Nothing on this path allocates, locks, logs or formats: an event to report is a
/// fixed-size record written into this thread's ring, which the server's event thread turns into a ``ServerEvent``.
/// The server stops the loop by shutting the socket down for reading, which wakes the blocked call.
final class EchoWorker: @unchecked Sendable {
    struct Settings {
        var batchSize: Int
        var slotSize: Int
        var writeTimeout: Duration
        var reporting: EventReporting
        var eventsPerSecond: Int?
        var guards: GuardConfiguration
        var threads: Int
        /// Reflect STAMP test packets instead of echoing.
        var stamp: StampReflectorConfiguration?
        /// Runs of datagrams arrive coalesced (UDP GRO) and leave as one segmented write (UDP GSO).
        var offload = false
        /// How long to poll without blocking after the last datagram before sleeping in the kernel.
        var busyPoll: Duration = .zero
        /// Reply with the marking each datagram arrived with, and fill in udpecho ping's marking report.
        var reflectTOS = false
        /// Reflect the test packets of these TWAMP sessions instead of echoing.
        var twampSessions: TwampSessionTable?
    }

    /// A datagram of a coalesced run that a guard dropped while the rest of its run is echoed (or, when the whole
    /// run is dropped, each of its datagrams): reported one by one.
    struct DroppedDatagram {
        var slot: Int32
        var length: Int32
        var reason: DropReason
    }

    /// What became of a slot of the current batch (kept once a drop happened in it).
    enum SlotOutcome: Equatable {
        case echoed
        case dropped(DropReason)
        /// Every datagram of the slot's run was dropped, each reported on its own from the dropped-datagram list.
        case droppedOneByOne
    }

    /// Dropped datagrams of runs remembered per batch for their events; past that they are only counted.
    private static let droppedDatagramCapacity = 4096

    private let socket: ServerSocket
    private let stopping: ManagedAtomic<Bool>
    private let settings: Settings
    /// Where events go; nil when none are reported.
    private let events: EventChannel?
    /// Whether events were written since the event thread was last woken.
    private var eventsPending = false
    let counters = WorkerCounters()

    // Owned by the worker thread alone once `run()` starts.
    private let batch: OpaquePointer
    /// Per slot of the current batch, once a drop happened in it.
    private let outcomes: UnsafeMutablePointer<SlotOutcome>
    private let errnos: UnsafeMutablePointer<Int32>
    private var batchHasDrops = false
    private var budget: EventBudget
    private var receiveTimeoutArmed = false
    /// The guards' state, in memory of its own: the serving loop reaches it without copying the struct (a copy per
    /// batch retained and released each of its tables) and without the class property's exclusivity checks.
    private let sourceGuard: UnsafeMutablePointer<SourceGuard>
    private var reflector: StampReflector?
    private var twampReflector: TwampReflector?
    /// Whether the current batch holds a coalesced run.
    private var batchHasRuns = false
    private let droppedDatagrams: UnsafeMutablePointer<DroppedDatagram>
    private var droppedDatagramCount = 0

    init(
        socket: ServerSocket,
        stopping: ManagedAtomic<Bool>,
        settings: Settings,
        events: EventChannel?
    ) throws(EchoError) {
        guard let batch = cudpecho_batch_create(Int32(settings.batchSize), settings.slotSize) else {
            throw .socket(
                operation: "allocating buffers for",
                address: socket.localAddress.hostPortDescription,
                errno: ENOMEM
            )
        }
        self.batch = batch
        self.socket = socket
        self.stopping = stopping
        self.settings = settings
        self.events = settings.reporting == .none ? nil : events
        self.outcomes = .allocate(capacity: settings.batchSize)
        self.outcomes.initialize(repeating: .echoed, count: settings.batchSize)
        self.errnos = .allocate(capacity: settings.batchSize)
        self.errnos.initialize(repeating: 0, count: settings.batchSize)
        self.droppedDatagrams = .allocate(capacity: Self.droppedDatagramCapacity)
        self.budget = EventBudget(perWindow: settings.eventsPerSecond ?? .max)
        self.sourceGuard = .allocate(capacity: 1)
        self.sourceGuard.initialize(
            to: SourceGuard(settings.guards, localAddress: socket.localAddress, threads: settings.threads)
        )
        self.reflector = settings.stamp.map { StampReflector($0, localAddress: socket.localAddress) }
        self.twampReflector = settings.twampSessions.map { TwampReflector(table: $0) }
    }

    deinit {
        cudpecho_batch_destroy(self.batch)
        self.outcomes.deallocate()
        self.errnos.deallocate()
        self.sourceGuard.deinitialize(count: 1)
        self.sourceGuard.deallocate()
        self.droppedDatagrams.deallocate()
    }

    /// Serves until the server stops, then echoes what is already queued (a bounded amount) and returns.
    func run() {
        let batchSize = Int32(self.settings.batchSize)
        let busyPoll = self.settings.busyPoll.nanoseconds
        var pollUntil: Int64 = 0
        while true {
            var received: Int32
            if busyPoll > 0 {
                // Poll while datagrams came within the last busyPoll; block (and be woken) only after that.
                received = cudpecho_batch_recv(self.socket.descriptor, self.batch, batchSize, 0)
                if received > 0 {
                    pollUntil = 0
                } else if received == -EAGAIN {
                    let now = cudpecho_now_ns()
                    if pollUntil == 0 { pollUntil = now + busyPoll }
                    if now < pollUntil && !self.stopping.load(ordering: .relaxed) { continue }
                    pollUntil = 0
                    received = cudpecho_batch_recv(self.socket.descriptor, self.batch, batchSize, 1)
                }
            } else {
                received = cudpecho_batch_recv(self.socket.descriptor, self.batch, batchSize, 1)
            }
            if received > 0 {
                let datagrams = self.serve(Int(received))
                if datagrams < Int(received) || self.stopping.load(ordering: .relaxed) { break }  // shut down
                continue
            }
            switch -received {
            case EAGAIN, EWOULDBLOCK:
                // The receive timeout, armed only while a "not shown" report is due.
                self.reportSuppressed(now: cudpecho_now_ns())
                self.wakeEventThread()
            case EINTR:
                continue
            default:
                self.receiveFailed(errno: -received)
            }
            if self.stopping.load(ordering: .relaxed) { break }
        }
        // Replies in flight go out: whatever the kernel already queued for us is echoed, within a bound, so that a
        // client still sending cannot hold the server open.
        for _ in 0..<8 {
            let received = cudpecho_batch_recv(self.socket.descriptor, self.batch, batchSize, 0)
            guard received > 0, self.serve(Int(received)) == Int(received) else { break }
        }
        self.reportSuppressed(now: .max)
        self.wakeEventThread()
    }

    /// Echoes the datagrams of a received batch; returns how many of the `received` messages were datagrams (fewer
    /// when the batch ends with the shutdown's wake-up).
    private func serve(_ received: Int) -> Int {
        var bytes = 0
        var truncated: Int32 = 0
        let count = Int(cudpecho_batch_prepare_replies(self.batch, Int32(received), &bytes, &truncated))
        guard count > 0 else { return 0 }
        var datagrams = count
        self.batchHasRuns = false
        self.droppedDatagramCount = 0
        if self.settings.offload {
            var runs = 0
            for index in 0..<count where cudpecho_batch_segment_size(self.batch, Int32(index)) != 0 {
                runs += 1
                datagrams += self.datagrams(in: index) - 1
            }
            if runs > 0 {
                self.batchHasRuns = true
                self.counters.add(.coalescedRuns, runs)
            }
        }
        self.counters.add(.received, datagrams)
        self.counters.add(.receivedBytes, bytes)
        self.batchHasDrops = false

        if truncated > 0 {
            for index in 0..<count where cudpecho_batch_truncated(self.batch, Int32(index)) != 0 {
                self.drop(index, count, .truncated, errno: 0)
            }
        }
        if self.sourceGuard.pointee.isActive {
            self.applyGuards(count)
        }
        if self.reflector != nil {
            self.reflectStamp(count)
        } else if self.twampReflector != nil {
            self.reflectTwamp(count)
        } else if self.settings.reflectTOS {
            self.reflectMarking(count)
        }
        if self.batchHasRuns {
            // Each run leaves as one write of the segment size it came with: the client gets the datagrams it sent.
            for index in 0..<count where !self.batchHasDrops || self.outcomes[index] == .echoed {
                let slot = Int32(index)
                cudpecho_batch_set_segment_size(self.batch, slot, cudpecho_batch_segment_size(self.batch, slot))
            }
        }
        if self.batchHasDrops {
            var start = 0
            while start < count {
                while start < count && self.outcomes[start] != .echoed { start += 1 }
                var end = start
                while end < count && self.outcomes[end] == .echoed { end += 1 }
                if end > start { self.send(start, end, count) }
                start = end
            }
        } else {
            self.send(0, count, count)
        }

        if self.batchHasDrops || self.reflector != nil || self.twampReflector != nil || self.droppedDatagramCount > 0 {
            var echoedBytes = 0
            var echoed = 0
            for index in 0..<count where !self.batchHasDrops || self.outcomes[index] == .echoed {
                echoed += self.datagrams(in: index)
                echoedBytes &+= cudpecho_batch_length(self.batch, Int32(index))
            }
            self.counters.add(.echoed, echoed)
            self.counters.add(.echoedBytes, echoedBytes)
        } else {
            self.counters.add(.echoed, datagrams)
            self.counters.add(.echoedBytes, bytes)
        }
        if self.events != nil
            && (self.batchHasDrops || self.droppedDatagramCount > 0 || self.settings.reporting == .all)
        {
            self.report(count)
            self.wakeEventThread()
        }
        return count
    }

    /// How many datagrams slot `index` holds: one, or those of its coalesced run (all of the segment size but the
    /// last).
    @inline(__always)
    private func datagrams(in index: Int) -> Int {
        let size = Int(cudpecho_batch_segment_size(self.batch, Int32(index)))
        guard size != 0 else { return 1 }
        return max(1, (cudpecho_batch_length(self.batch, Int32(index)) + size - 1) / size)
    }

    /// Applies the guards to each datagram of the coalesced run in slot `index`. Dropped datagrams are counted and
    /// remembered for their events, and the ones kept are moved together (all but the last are of the segment size,
    /// and the last stays last), so that the run still leaves as one segmented write. A run with none kept is
    /// dropped.
    private func guardRun(_ index: Int, _ count: Int, _ sourceGuard: UnsafeMutablePointer<SourceGuard>, now: Int64) {
        let slot = Int32(index)
        let size = Int(cudpecho_batch_segment_size(self.batch, slot))
        let payload = cudpecho_batch_payload(self.batch, slot)!
        let length = cudpecho_batch_length(self.batch, slot)
        var length32: socklen_t = 0
        let peer = cudpecho_batch_peer(self.batch, slot, &length32)!
        let loopback = cudpecho_batch_arrived_on_loopback(self.batch, slot)
        var offset = 0
        var kept = 0
        var lastReason: DropReason?
        while offset < length {
            let part = min(size, length - offset)
            let datagram = UnsafeRawBufferPointer(start: payload + offset, count: part)
            if let reason = sourceGuard.pointee.check(
                peer: peer,
                payload: datagram,
                arrivedOnLoopback: loopback,
                now: now,
                loopCheck: offset == 0
            ) {
                self.counters.addDrop(reason)
                self.rememberDropped(slot: slot, length: part, reason: reason)
                lastReason = reason
            } else {
                if kept != offset { (payload + kept).update(from: payload + offset, count: part) }
                kept += part
            }
            offset += part
        }
        guard let lastReason else { return }
        if kept == 0 {
            self.markDropped(index, count, lastReason, errno: 0)
            self.outcomes[index] = .droppedOneByOne
        } else {
            cudpecho_batch_set_length(self.batch, slot, kept)
        }
    }

    private func rememberDropped(slot: Int32, length: Int, reason: DropReason) {
        if self.droppedDatagramCount < Self.droppedDatagramCapacity {
            self.droppedDatagrams[self.droppedDatagramCount] = DroppedDatagram(
                slot: slot,
                length: Int32(length),
                reason: reason
            )
        }
        self.droppedDatagramCount += 1
    }

    /// Drops the datagrams of the batch that a guard catches.
    private func applyGuards(_ count: Int) {
        let now = cudpecho_now_ns()
        let sourceGuard = self.sourceGuard
        sourceGuard.pointee.refreshInterfaces(now: now)
        for index in 0..<count where !self.batchHasDrops || self.outcomes[index] == .echoed {
            if self.batchHasRuns && cudpecho_batch_segment_size(self.batch, Int32(index)) != 0 {
                self.guardRun(index, count, sourceGuard, now: now)
                continue
            }
            var length: socklen_t = 0
            let slot = Int32(index)
            let peer = cudpecho_batch_peer(self.batch, slot, &length)!
            let reason = sourceGuard.pointee.check(
                peer: peer,
                payload: UnsafeRawBufferPointer(
                    start: cudpecho_batch_payload(self.batch, slot),
                    count: cudpecho_batch_length(self.batch, slot)
                ),
                arrivedOnLoopback: cudpecho_batch_arrived_on_loopback(self.batch, slot),
                now: now
            )
            if let reason { self.drop(index, count, reason, errno: 0) }
        }
        if let table = sourceGuard.pointee.table {
            self.counters.set(.rateTableEntries, table.count)
            self.counters.set(.rateTableEvictions, table.evictions)
        }
    }

    /// Turns the STAMP test packets of the batch into reflected packets, in place; drops (and counts) what is not a
    /// valid test packet.
    private func reflectStamp(_ count: Int) {
        let now = cudpecho_now_ns()
        let transmitTime = cudpecho_realtime_ns()
        var reflector = self.reflector!
        defer { self.reflector = reflector }
        reflector.refreshClock(now: now)
        self.reflectEach(count) { payload, length, peer, info in
            reflector.reflect(
                payload,
                length: length,
                capacity: self.settings.slotSize,
                peer: peer,
                info: info,
                transmitTime: transmitTime,
                now: now
            )
        }
        self.counters.set(.stampSessions, reflector.sessionCount)
    }

    /// Turns the TWAMP test packets of the batch into reflected packets, in place; drops (and counts) the rest.
    private func reflectTwamp(_ count: Int) {
        let now = cudpecho_now_ns()
        let transmitTime = cudpecho_realtime_ns()
        var reflector = self.twampReflector!
        defer { self.twampReflector = reflector }
        reflector.beginBatch(now: now)
        self.reflectEach(count) { payload, length, peer, info in
            reflector.reflect(
                payload,
                length: length,
                capacity: self.settings.slotSize,
                peer: peer,
                info: info,
                transmitTime: transmitTime,
                now: now
            )
        }
    }

    /// Runs `reflect` over each datagram of the batch still to be answered, and carries out its outcome: the reply's
    /// length and traffic class, or the drop.
    private func reflectEach(
        _ count: Int,
        _ reflect: (UnsafeMutableRawPointer, Int, UnsafePointer<sockaddr>, cudpecho_datagram_info) ->
            StampReflector.Outcome
    ) {
        let ipv6 = self.socket.localAddress.protocol == .inet6
        for index in 0..<count where !self.batchHasDrops || self.outcomes[index] == .echoed {
            let slot = Int32(index)
            var length: socklen_t = 0
            let info = cudpecho_batch_info(self.batch, slot)!.pointee
            let outcome = reflect(
                UnsafeMutableRawPointer(cudpecho_batch_payload(self.batch, slot)!),
                cudpecho_batch_length(self.batch, slot),
                cudpecho_batch_peer(self.batch, slot, &length)!,
                info
            )
            switch outcome {
            case .drop(let reason):
                self.drop(index, count, reason, errno: 0)
            case .reply(let replyLength, let tos):
                cudpecho_batch_set_length(self.batch, slot, replyLength)
                if let tos {
                    // A v4-mapped peer on a dual-stack socket gets an IPv4 packet: IP_TOS, not IPV6_TCLASS.
                    let mapped = info.family == AF_INET
                    cudpecho_batch_set_reply_tos(self.batch, slot, ipv6 && !mapped ? 1 : 0, Int32(tos))
                }
            }
        }
    }

    /// Gives each reply the traffic class its datagram arrived with (CE as ECT(0)), and fills in the marking report
    /// of the udpecho ping probes that ask for one.
    private func reflectMarking(_ count: Int) {
        let ipv6 = self.socket.localAddress.protocol == .inet6
        for index in 0..<count where !self.batchHasDrops || self.outcomes[index] == .echoed {
            let slot = Int32(index)
            let info = cudpecho_batch_info(self.batch, slot)!.pointee
            _ = MarkingReport.fill(
                UnsafeMutableRawPointer(cudpecho_batch_payload(self.batch, slot)!),
                length: cudpecho_batch_length(self.batch, slot),
                tos: info.tos,
                ttl: info.ttl
            )
            guard info.tos >= 0 else { continue }
            let arrived = TrafficClass(byte: UInt8(truncatingIfNeeded: info.tos))
            let reply = TrafficClass(dscp: arrived.dscp, ecn: arrived.ecn.reflected)
            // A v4-mapped peer on a dual-stack socket gets an IPv4 packet: IP_TOS, not IPV6_TCLASS.
            let mapped = info.family == AF_INET
            cudpecho_batch_set_reply_tos(self.batch, slot, ipv6 && !mapped ? 1 : 0, Int32(reply.byte))
        }
    }

    /// Sends slots start..<end of a batch of `count`, dropping (and counting) those that fail.
    private func send(_ start: Int, _ end: Int, _ count: Int) {
        var next = start
        var deadline: Int64? = nil
        while next < end {
            let sent = cudpecho_batch_send(self.socket.descriptor, self.batch, Int32(next), Int32(end - next))
            if sent > 0 {
                next += Int(sent)
                continue
            }
            let code = -sent
            switch code {
            case EAGAIN, EWOULDBLOCK:
                // The send buffer is full: wait for room, but no longer than the write deadline.
                let now = cudpecho_now_ns()
                let limit = deadline ?? now + self.settings.writeTimeout.nanoseconds
                deadline = limit
                if now >= limit
                    || cudpecho_wait(self.socket.descriptor, cudpecho_pollout, Self.milliseconds(limit - now)) == 0
                {
                    for index in next..<end { self.drop(index, count, .writeTimeout, errno: EAGAIN) }
                    return
                }
            case EINTR:
                continue
            case let code
            where (code == EIO || code == EINVAL || code == EOPNOTSUPP || code == EMSGSIZE) && self.batchHasRuns
                && self.datagrams(in: next) > 1:
                // The kernel or the device would not cut this run (a segment longer than the path MTU allows says
                // EMSGSIZE, a device without checksum offload EIO on older kernels):
                // its datagrams go one by one.
                self.counters.add(.offloadFallbacks, 1)
                self.sendSplit(next, count, deadline: &deadline)
                next += 1
            default:
                // This one reply failed (a refused or unreachable peer, a firewall, no memory); the others go on.
                self.drop(next, count, Self.reason(for: code), errno: code)
                next += 1
            }
        }
    }

    /// Sends the run in slot `index` datagram by datagram, within the write deadline. Datagrams that cannot be sent
    /// are dropped and counted one by one; the slot then holds the ones sent.
    private func sendSplit(_ index: Int, _ count: Int, deadline: inout Int64?) {
        let slot = Int32(index)
        var sent: Int32 = 0
        var code: Int32 = 0
        while true {
            let result = cudpecho_batch_send_split(self.socket.descriptor, self.batch, slot, &sent)
            if result == 0 { return }
            code = -result
            guard code == EAGAIN || code == EINTR else { break }
            let now = cudpecho_now_ns()
            let limit = deadline ?? now + self.settings.writeTimeout.nanoseconds
            deadline = limit
            if code == EAGAIN
                && (now >= limit
                    || cudpecho_wait(self.socket.descriptor, cudpecho_pollout, Self.milliseconds(limit - now)) == 0)
            {
                break
            }
        }
        let reason: DropReason = code == EAGAIN ? .writeTimeout : Self.reason(for: code)
        if sent == 0 {
            self.drop(index, count, reason, errno: code)
            return
        }
        // Some went: the slot keeps those (they count as echoed), the rest are dropped one by one.
        let size = Int(cudpecho_batch_segment_size(self.batch, slot))
        let length = cudpecho_batch_length(self.batch, slot)
        var offset = Int(sent) * size
        while offset < length {
            let part = min(size, length - offset)
            self.counters.addDrop(reason)
            self.rememberDropped(slot: slot, length: part, reason: reason)
            offset += part
        }
        cudpecho_batch_set_length(self.batch, slot, Int(sent) * size)
    }

    /// Drops slot `index` (every datagram of its run) and counts it.
    private func drop(_ index: Int, _ count: Int, _ reason: DropReason, errno: Int32) {
        self.markDropped(index, count, reason, errno: errno)
        self.counters.addDrop(reason, self.batchHasRuns ? self.datagrams(in: index) : 1)
    }

    /// Marks slot `index` as not to be sent, without counting it.
    private func markDropped(_ index: Int, _ count: Int, _ reason: DropReason, errno: Int32) {
        if !self.batchHasDrops {
            self.outcomes.update(repeating: .echoed, count: count)
            self.batchHasDrops = true
        }
        self.outcomes[index] = .dropped(reason)
        self.errnos[index] = errno
    }

    private func receiveFailed(errno code: Int32) {
        self.counters.add(.receiveErrors, 1)
        if self.events != nil, self.budget.take(now: cudpecho_now_ns()) {
            var event = cudpecho_event()
            event.kind = UInt8(CUDPECHO_EVENT_RECEIVE_ERROR)
            event.error = code
            self.push(&event)
            self.wakeEventThread()
        }
        switch code {
        case ECONNREFUSED, EHOSTUNREACH, ENETUNREACH, ENOBUFS, ENOMEM:
            break
        default:
            // An error that says nothing about one datagram: do not spin on it.
            _ = cudpecho_wait(self.socket.descriptor, cudpecho_pollin, 10)
        }
    }

    /// Writes the events of a batch, within the per-second budget: one per datagram, those of a run included.
    private func report(_ count: Int) {
        let now = cudpecho_now_ns()
        if self.batchHasDrops || self.batchHasRuns {
            for index in 0..<count {
                let outcome = self.batchHasDrops ? self.outcomes[index] : .echoed
                if outcome == .droppedOneByOne || (outcome == .echoed && self.settings.reporting == .errors) {
                    continue
                }
                let size = Int(cudpecho_batch_segment_size(self.batch, Int32(index)))
                let length = cudpecho_batch_length(self.batch, Int32(index))
                guard size != 0 && length > size else {
                    if self.budget.take(now: now) { self.emit(index, outcome: outcome, length: length) }
                    continue
                }
                var offset = 0
                for _ in 0..<self.budget.take(self.datagrams(in: index), now: now) {
                    self.emit(index, outcome: outcome, length: min(size, length - offset))
                    offset += size
                }
            }
            for dropped in 0..<min(self.droppedDatagramCount, Self.droppedDatagramCapacity) {
                let datagram = self.droppedDatagrams[dropped]
                if self.budget.take(now: now) {
                    self.emit(Int(datagram.slot), outcome: .dropped(datagram.reason), length: Int(datagram.length))
                }
            }
            if self.droppedDatagramCount > Self.droppedDatagramCapacity {
                self.counters.add(.eventsNotDelivered, self.droppedDatagramCount - Self.droppedDatagramCapacity)
            }
        } else {
            // Every datagram echoed: take the window's budget for the whole batch in one step.
            for index in 0..<self.budget.take(count, now: now) {
                self.emit(index, outcome: .echoed, length: cudpecho_batch_length(self.batch, Int32(index)))
            }
        }
        self.reportSuppressed(now: now)
    }

    private func emit(_ index: Int, outcome: SlotOutcome, length: Int) {
        var peerLength: socklen_t = 0
        let raw = cudpecho_batch_peer(self.batch, Int32(index), &peerLength)!
        var event = cudpecho_event()
        switch outcome {
        case .echoed:
            event.kind = UInt8(CUDPECHO_EVENT_ECHOED)
        case .dropped(let reason):
            event.kind = UInt8(CUDPECHO_EVENT_DROPPED)
            event.reason = UInt8(reason.ordinal)
            event.error = self.errnos[index]
        case .droppedOneByOne:
            preconditionFailure("a run dropped datagram by datagram is reported from the dropped-datagram list")
        }
        event.value = UInt64(length)
        cudpecho_event_set_peer(&event, raw, peerLength)
        self.push(&event)
    }

    /// Writes an event record into this thread's ring, or counts the events it stands for as not delivered when the
    /// ring is full: a served datagram is two (received, echoed), a dropped one two or one (whether its reception is
    /// reported too).
    private func push(_ event: inout cudpecho_event) {
        if self.events!.push(&event) {
            self.eventsPending = true
            return
        }
        let events =
            switch Int32(event.kind) {
            case Int32(CUDPECHO_EVENT_ECHOED): 2
            case Int32(CUDPECHO_EVENT_DROPPED): self.settings.reporting == .all ? 2 : 1
            default: 1
            }
        self.counters.add(.eventsNotDelivered, events)
    }

    private func wakeEventThread() {
        guard self.eventsPending, let events = self.events else { return }
        self.eventsPending = false
        events.wake()
    }

    /// Reports how many datagrams the last window did not show, once it is over; keeps a receive timeout armed while
    /// such a report is due, so that it comes out even when the traffic stops.
    private func reportSuppressed(now: Int64) {
        if self.events != nil, let count = self.budget.collectSuppressed(now: now) {
            var event = cudpecho_event()
            event.kind = UInt8(CUDPECHO_EVENT_NOT_SHOWN)
            event.value = UInt64(count)
            self.push(&event)
        }
        let due = self.budget.hasSuppressed
        if due != self.receiveTimeoutArmed {
            _ = cudpecho_set_receive_timeout(self.socket.descriptor, due ? 1000 : 0)
            self.receiveTimeoutArmed = due
        }
    }

    private static func reason(for code: Int32) -> DropReason {
        switch code {
        case ECONNREFUSED: return .refused
        case EHOSTUNREACH, ENETUNREACH, EHOSTDOWN, ENETDOWN: return .unreachable
        case EMSGSIZE: return .tooLarge
        case ENOBUFS, ENOMEM: return .noBuffers
        case EPERM, EACCES: return .forbidden
        default: return .sendError
        }
    }

    private static func milliseconds(_ nanoseconds: Int64) -> Int32 {
        Int32(clamping: (nanoseconds + 999_999) / 1_000_000)
    }
}
