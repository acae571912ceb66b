import CUDPEcho

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// Receiving: replies and the error queue read in batches (``DatagramReceiver``), each reply judged by its
/// protocol's matcher (``EchoReplyMatcher``, ``StampReplyMatcher``), and the verdict counted, timed and reported here.
extension ProbeEngine {
    func drain(_ flow: ProbeFlow, onEvent: ((ProbeEvent) -> Void)?) {
        // Transmit timestamps first, so that the replies that follow find their probe's departure.
        self.drainErrors(flow, onEvent: onEvent)
        let batch = self.receiver.datagrams
        self.receiver.drain(flow.descriptor) { received in
            let now = cudpecho_now_ns()
            for slot in 0..<received {
                let bytes = self.receiver.datagram(slot)
                let length = bytes.count
                if self.configuration.offload, flow.stamp == nil,
                    case let size = Int(cudpecho_batch_received_segment_size(batch, Int32(slot))),
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
                    self.timestamps == .user ? 0 : cudpecho_batch_timestamp(batch, Int32(slot), self.hardware)
                let marks =
                    flow.stamp != nil || self.configuration.arrivalMarks
                    ? (
                        ttl: cudpecho_batch_received_ttl(batch, Int32(slot)),
                        tos: cudpecho_batch_received_tos(batch, Int32(slot))
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
        }
    }

    /// Reads the error queue of `flow`: transmit timestamps, and ICMP errors about probes.
    func drainErrors(_ flow: ProbeFlow, onEvent: ((ProbeEvent) -> Void)?) {
        self.receiver.drainErrors(flow.descriptor, hardware: self.hardware) { info, quoted in
            if Int32(info.origin) == cudpecho_ee_origin_timestamping {
                if info.timestamp != 0 { flow.recordDeparture(key: info.data, at: info.timestamp) }
            } else if info.error == ECONNREFUSED {
                // The ICMP error quotes the probe: its sequence number says which one was refused.
                let sequence = quoted.count >= 8 ? UInt64(littleEndian: quoted.loadUnaligned(as: UInt64.self)) : nil
                self.refused(sequence, on: flow, onEvent: onEvent)
            }
        }
    }

    private func refused(_ sequence: UInt64?, on flow: ProbeFlow, onEvent: ((ProbeEvent) -> Void)?) {
        if let sequence, case .outstanding = flow.ring.lookUp(sequence) {
            flow.ring.resolve(sequence, as: .refused)
            self.counts.refused += 1
            onEvent?(.refused(sequence: sequence))
        } else if sequence == nil {
            self.counts.refused += 1
            onEvent?(.refused(sequence: nil))
        }
    }

    /// Counts and reports a reply that is not an answer (``ReplyVerdict/answer(sequence:position:)`` is the
    /// caller's).
    private func count(
        _ verdict: ReplyVerdict,
        bytes: Int,
        on flow: ProbeFlow,
        now: Int64,
        kernelArrival: Int64,
        onEvent: ((ProbeEvent) -> Void)?
    ) {
        switch verdict {
        case .answer:
            preconditionFailure("an answer is counted where it is matched")
        case .duplicate(let sequence):
            self.counts.duplicate += 1
            onEvent?(.duplicate(sequence: sequence, bytes: bytes))
        case .late(let sequence, nil):
            self.counts.late += 1
            onEvent?(.late(sequence: sequence, bytes: bytes, roundTrip: -1))
        case .late(let sequence, let position?):
            self.counts.late += 1
            let times = self.times(of: sequence, at: position, on: flow, now: now, kernelArrival: kernelArrival)
            onEvent?(.late(sequence: sequence, bytes: bytes, roundTrip: times.roundTrip))
        case .corrupt(let sequence, let reason, let resolves):
            if resolves, let sequence { flow.ring.resolve(sequence, as: .answered) }
            self.counts.corrupt += 1
            onEvent?(.corrupt(sequence: sequence, bytes: bytes, reason: reason))
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
        let verdict = EchoReplyMatcher.match(reply, ring: flow.ring, format: flow.format, scheduled: flow.scheduled)
        guard case .answer(let sequence, let position) = verdict else {
            self.count(verdict, bytes: reply.count, on: flow, now: now, kernelArrival: kernelArrival, onEvent: onEvent)
            return
        }
        let (times, outOfOrder) = self.accept(sequence, at: position, on: flow, now: now, kernelArrival: kernelArrival)
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
                arrival.classSentBack = report.trafficClass.map { TrafficClass(dscp: $0.dscp, ecn: $0.ecn.reflected) }
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
    }

    /// A reply to a STAMP test packet: its four timestamps checked (a reflector cannot hold a packet for less than
    /// nothing, nor for longer than the round trip) and recorded.
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
        let (verdict, decoded) = StampReplyMatcher.match(
            reply,
            ring: flow.ring,
            configuration: writer.configuration,
            timestamps: flow.stampTimestamp
        )
        guard case .answer(let sequence, let position) = verdict, let fields = decoded else {
            self.count(verdict, bytes: reply.count, on: flow, now: now, kernelArrival: kernelArrival, onEvent: onEvent)
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
            // Such a reply's times are false, and none of them may reach a statistic.
            if reflectorTime < 0 || reflectorTime > times.roundTrip {
                flow.ring.resolve(sequence, as: .answered)
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
        let tlvs =
            writer.configuration.twamp == nil
            ? StampReplyDecoder.tlvs(reply, from: writer.layout.size) : (tos: nil, dscpHonoured: nil, source: nil)
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

    /// Counts probe `sequence` (outstanding at `position`) as answered now; returns its times and whether a later
    /// probe had been answered first.
    func accept(
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
    func accept(_ sequence: UInt64, on flow: ProbeFlow, now: Int64) -> Bool {
        let outOfOrder = flow.markReceived(sequence)
        self.counts.received += 1
        if outOfOrder { self.counts.reordered += 1 }
        self.lastReplyAt = now
        return outOfOrder
    }

    /// Records an answered probe's latency and, when it is in the round-trip sample, its `roundTrip`, lateness and
    /// jitter (and the flow's statistics).
    func record(
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

    /// The round trip, the latency from the schedule, and the lateness of the probe `sequence` at `position`, whose
    /// reply arrived `now` (CLOCK_MONOTONIC) or, as the kernel says, at `kernelArrival`. `measured` is false for a
    /// probe outside the round-trip sample (its round trip and lateness are then the program's clock reads, for
    /// its event only, and its latency uses the kernel's arrival time).
    func times(
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
    func recordJitter(_ sequence: UInt64, roundTrip: Int64, position: Int, on flow: ProbeFlow) {
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
    func expire(_ flow: ProbeFlow, now: Int64, onEvent: ((ProbeEvent) -> Void)?) {
        flow.expire(before: now == Self.noDeadline ? now : now - self.lossTimeout) { self.countLost($0, onEvent) }
    }
}
