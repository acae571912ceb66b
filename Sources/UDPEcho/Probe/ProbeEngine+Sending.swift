import CUDPEcho

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// Sending: probes written into the transmit batch, sent with `sendmmsg` (or as segmented runs), under
/// ``ProbeErrnoPolicy``.
extension ProbeEngine {

    /// Closed loop: sends `count` probes on `flow`, scheduled now.
    func send(_ flow: ProbeFlow, count: Int, onEvent: ((ProbeEvent) -> Void)?) {
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

    func countLost(_ sequence: UInt64, _ onEvent: ((ProbeEvent) -> Void)?) {
        self.counts.lost += 1
        onEvent?(.lost(sequence: sequence))
    }

    /// Open loop: sends the probes numbered first..<end over all flows, probe k on flow k % flows, scheduled at
    /// start + k / rate.
    func sendScheduled(
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
    func transmitBatch(_ flow: ProbeFlow, count: Int, onEvent: ((ProbeEvent) -> Void)?) {
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
            switch ProbeErrnoPolicy.afterSend(-sent, offloading: self.offload) {
            case .retry:
                continue
            case .stopOffloading:
                // Sent datagram by datagram from now on, and said.
                self.offload = false
                self.offloadRefused = -sent
                continue
            case .retryOnce where !retriedRefusal:
                retriedRefusal = true
                continue
            case .waitForRoom:
                // Wait a little for room, then count the rest as not sent.
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
            case .retryOnce, .notSent:
                // Not sent: said, counted.
                flow.unsend(self.batchSequences[next])
                self.counts.sendErrors += 1
                self.lastSendError = -sent
                onEvent?(.sendError(errno: -sent))
                next += 1
            }
        }
        self.counts.sent = self.flows.reduce(0) { $0 + $1.sent }
    }
}
