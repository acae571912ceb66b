import CUDPEcho
import Foundation
import NIOCore
import Testing

@testable import UDPEcho

/// The probe core without sockets: the ring of outstanding probes, and each protocol's reply matcher fed bytes.
@Suite struct ProbeCoreTests {
    /// Probes 0..<count sent on a ring of `capacity`, each due and leaving at its number in ms.
    func ring(_ count: Int, capacity: Int = 16) -> ProbeRing {
        let ring = ProbeRing(capacity: capacity)
        for k in 0..<count {
            let (sequence, _) = ring.next(departure: Int64(k) * 1_000_000) { _, _ in Issue.record("lost early") }
            #expect(sequence == UInt64(k))
        }
        return ring
    }

    @Test func theRingTracksEachProbeToItsEnd() {
        let ring = self.ring(5)
        #expect(ring.outstanding == 5 && ring.sent == 5)
        ring.resolve(1, as: .answered)
        ring.resolve(2, as: .refused)
        ring.unsend(3)
        #expect(ring.lookUp(0) == .outstanding(position: 0))
        #expect(ring.lookUp(1) == .answered(position: 1))
        #expect(ring.lookUp(2) == .refused)
        #expect(ring.lookUp(3) == .notSent)
        #expect(ring.lookUp(5) == .notYetSent)
        #expect(ring.outstanding == 2 && ring.sent == 4)
        // Probes 0 and 4 left at 0 and 4 ms: with a 2.5 ms timeout at 3 ms only probe 0 is lost, in order.
        var lost: [UInt64] = []
        #expect(ring.oldestDeadline(2_500_000) == 2_500_000)
        ring.expire(before: 3_000_000 - 2_500_000) { sequence, _ in lost.append(sequence) }
        #expect(lost == [0])
        #expect(ring.lookUp(0) == .lost(position: 0))
        #expect(ring.oldestDeadline(2_500_000) == Int64(6_500_000))
        ring.expire(before: .max) { sequence, _ in lost.append(sequence) }
        #expect(lost == [0, 4] && ring.outstanding == 0)
    }

    @Test func aFullRingGivesItsOldestProbesUpAsLostNeverSilently() {
        let ring = ProbeRing(capacity: 4)
        var lost: [UInt64] = []
        for _ in 0..<6 { _ = ring.next(departure: 0) { sequence, _ in lost.append(sequence) } }
        // Probes 4 and 5 took the places of 0 and 1, which were still outstanding: each counted lost once.
        #expect(lost == [0, 1])
        #expect(ring.lookUp(0) == .forgotten && ring.lookUp(1) == .forgotten)
        #expect(ring.lookUp(5) == .outstanding(position: 1))
        #expect(ring.outstanding == 4)
    }

    @Test func stampsThirtyTwoBitSequenceNumbersAreWidenedToTheLatestSent() {
        let ring = ProbeRing(capacity: 4, first: (1 << 32) + 10)
        _ = ring.next(departure: 0) { _, _ in }
        #expect(ring.sequence(fromLow: 10) == (1 << 32) + 10)
        // A low number above the last sent belongs to the previous round of 2^32.
        #expect(ring.sequence(fromLow: 11) == 11)
    }

    /// Echo probes of `size` bytes written by `format` for the probes of `ring`, by sequence number.
    func probes(_ ring: ProbeRing, _ format: EchoProbeFormat, scheduled: UnsafeMutablePointer<Int64>) -> [[UInt8]] {
        (0..<Int(ring.nextSequence)).map { k in
            scheduled[ring.position(UInt64(k))] = Int64(k) * 1_000_000
            var bytes = [UInt8](repeating: 0, count: format.size)
            bytes.withUnsafeMutableBytes {
                format.write(into: $0.baseAddress!, sequence: UInt64(k), scheduledAt: Int64(k) * 1_000_000)
            }
            return bytes
        }
    }

    @Test func theEchoMatcherJudgesEveryKindOfReply() {
        let ring = self.ring(4)
        let format = EchoProbeFormat(size: 64, flow: 2, markingReport: false)
        let scheduled = UnsafeMutablePointer<Int64>.allocate(capacity: 16)
        defer { scheduled.deallocate() }
        let sent = self.probes(ring, format, scheduled: scheduled)
        func verdict(_ bytes: [UInt8]) -> ReplyVerdict {
            bytes.withUnsafeBytes { EchoReplyMatcher.match($0, ring: ring, format: format, scheduled: scheduled) }
        }
        #expect(verdict(sent[1]) == .answer(sequence: 1, position: 1))
        ring.resolve(1, as: .answered)
        #expect(verdict(sent[1]) == .duplicate(sequence: 1))
        var flipped = sent[2]
        flipped[40] ^= 0xFF
        #expect(verdict(flipped) == .corrupt(sequence: 2, reason: "first difference at byte 40", resolves: true))
        #expect(
            verdict(Array(sent[2].prefix(20)))
                == .corrupt(sequence: 2, reason: "20 bytes, the probe had 64", resolves: true)
        )
        #expect(
            verdict(Array(sent[2].prefix(15)))
                == .corrupt(sequence: nil, reason: "shorter than a probe's header", resolves: false)
        )
        var future = sent[3]
        future.withUnsafeMutableBytes { $0.storeBytes(of: UInt64(99).littleEndian, as: UInt64.self) }
        #expect(
            verdict(future)
                == .corrupt(
                    sequence: nil,
                    reason: "its sequence number (bytes 0-7) reads 99, which had not been sent yet",
                    resolves: false
                )
        )
        ring.expire(before: 1_000_000) { _, _ in }  // probe 0 lost
        #expect(verdict(sent[0]) == .late(sequence: 0, position: 0))
        var wrongTime = sent[0]
        wrongTime[9] ^= 1
        #expect(verdict(wrongTime) == .corrupt(sequence: 0, reason: "it differs from the probe", resolves: false))
        ring.resolve(3, as: .refused)
        #expect(verdict(sent[3]) == .late(sequence: 3, position: nil))
    }

    @Test func theEchoMatcherLeavesTheMarkingReportBytesOut() {
        let ring = self.ring(1)
        let format = EchoProbeFormat(size: 40, flow: 0, markingReport: true)
        let scheduled = UnsafeMutablePointer<Int64>.allocate(capacity: 16)
        defer { scheduled.deallocate() }
        var reply = self.probes(ring, format, scheduled: scheduled)[0]
        #expect(Array(reply[16..<24]) == Array("UDPE-TOS".utf8))
        reply[24] = 3  // what a server fills in
        reply[25] = 0xB8
        var verdict = reply.withUnsafeBytes {
            EchoReplyMatcher.match($0, ring: ring, format: format, scheduled: scheduled)
        }
        #expect(verdict == .answer(sequence: 0, position: 0))
        reply[30] ^= 1
        verdict = reply.withUnsafeBytes { EchoReplyMatcher.match($0, ring: ring, format: format, scheduled: scheduled) }
        #expect(verdict == .corrupt(sequence: 0, reason: "first difference at byte 30", resolves: true))
    }

    /// A reflected packet (RFC 8762 §4.3.1): reflector sequence, T3, error estimate, SSID, T2, then the sender's
    /// sequence number, T1, error estimate and TTL.
    func reflected(sequence: UInt32, t1: UInt64) -> [UInt8] {
        var bytes = [UInt8](repeating: 0, count: 44)
        func put<T: FixedWidthInteger>(_ value: T, at offset: Int) {
            withUnsafeBytes(of: value.bigEndian) { bytes.replaceSubrange(offset..<offset + $0.count, with: $0) }
        }
        put(UInt32(7), at: 0)
        put(UInt64(0xE900_0000_0000_0010), at: 4)
        put(UInt16(0x8001), at: 12)
        put(UInt64(0xE900_0000_0000_0000), at: 16)
        put(sequence, at: 24)
        put(t1, at: 28)
        bytes[42] = 64
        return bytes
    }

    @Test func theStampMatcherChecksTheCopyOfT1() {
        let ring = self.ring(3)
        let timestamps = UnsafeMutablePointer<UInt64>.allocate(capacity: 16)
        defer { timestamps.deallocate() }
        for k in 0..<3 { timestamps[k] = 0xE800_0000_0000_0000 + UInt64(k) }
        let configuration = StampSenderConfiguration(ssid: 1)
        func verdict(_ bytes: [UInt8]) -> ReplyVerdict {
            bytes.withUnsafeBytes {
                StampReplyMatcher.match($0, ring: ring, configuration: configuration, timestamps: timestamps).0
            }
        }
        #expect(verdict(self.reflected(sequence: 1, t1: timestamps[1])) == .answer(sequence: 1, position: 1))
        #expect(
            verdict(self.reflected(sequence: 2, t1: 5))
                == .corrupt(sequence: 2, reason: "its copy of our timestamp (T1) differs", resolves: true)
        )
        ring.resolve(1, as: .answered)
        #expect(verdict(self.reflected(sequence: 1, t1: timestamps[1])) == .duplicate(sequence: 1))
        // An all-zero packet names probe 0 but carries no T1 of ours.
        ring.resolve(0, as: .answered)
        #expect(
            verdict([UInt8](repeating: 0, count: 44))
                == .corrupt(sequence: 0, reason: "its copy of our timestamp differs", resolves: false)
        )
        if case .corrupt(nil, let reason, false) = verdict([UInt8](repeating: 1, count: 20)) {
            #expect(reason.contains("20"), "\(reason)")
        } else {
            Issue.record("a 20-byte reply is not called corrupt")
        }
    }

    /// The mesh's matcher: one ring for every target; a reply counts for the target its probe went to, only from
    /// that target's address, and only with the probe's bytes.
    @Test func theMeshMatcherCountsOnlyWhatItsTargetSent() throws {
        func key(_ ip: String) throws -> EndpointKey {
            try SocketAddress(ipAddress: ip, port: 9000).withSockAddr { raw, _ in EndpointKey(raw)! }
        }
        let keys: [EndpointKey?] = [try key("127.0.0.2"), try key("127.0.0.3")]
        let ring = ProbeRing(capacity: 8, first: 1)
        var targetOf = [Int32](repeating: -1, count: 8)
        var flowOf = [UInt16](repeating: 0, count: 8)
        var probes: [UInt64: [UInt8]] = [:]
        for (target, flow) in [(0, UInt16(2)), (1, UInt16(0))] {
            let (sequence, position) = ring.next(departure: 0) { _, _ in }
            targetOf[position] = Int32(target)
            flowOf[position] = flow
            var bytes = [UInt8](repeating: 0, count: 48)
            bytes.withUnsafeMutableBytes {
                MeshProbe.write(into: $0, sequence: sequence, target: UInt32(target), flow: flow)
            }
            probes[sequence] = bytes
        }
        func verdict(_ bytes: [UInt8], from source: EndpointKey?) -> MeshReplyMatcher.Verdict {
            bytes.withUnsafeBytes {
                MeshReplyMatcher.match(
                    $0,
                    from: source,
                    ring: ring,
                    targetOf: targetOf,
                    flowOf: flowOf,
                    keys: keys,
                    size: 48
                )
            }
        }
        #expect(verdict(probes[1]!, from: keys[0]) == .answer(target: 0, position: 1))
        #expect(verdict(probes[1]!, from: keys[1]) == .ignored)  // another host's copy: not the target's reply
        ring.resolve(1, as: .answered)
        #expect(verdict(probes[1]!, from: keys[0]) == .duplicate(target: 0))
        var flipped = probes[2]!
        flipped[30] ^= 0x10
        #expect(verdict(flipped, from: keys[1]) == .corrupt(target: 1))
        var future = probes[2]!
        future.withUnsafeMutableBytes { $0.storeBytes(of: UInt64(5).littleEndian, as: UInt64.self) }
        #expect(verdict(future, from: keys[1]) == .corrupt(target: 1))
        #expect(verdict(future, from: keys[0]) == .ignored)
        ring.expire(before: 1) { _, _ in }  // probe 2 lost: a reply now is not counted again
        #expect(verdict(probes[2]!, from: keys[1]) == .duplicate(target: 1))
        #expect(verdict(Array(probes[2]!.prefix(15)), from: keys[1]) == .ignored)
        #expect(verdict(probes[2]!, from: nil) == .ignored)
    }

    /// Reading the error queue while a batch of replies is being read (the engine does, for a transmit timestamp
    /// that came after its reply) leaves the replies still to be read as they were: the two have buffers of their
    /// own. (With one batch for both, the error message overwrote slot 0.)
    @Test func theErrorQueueIsReadWithoutTouchingTheRepliesBeingRead() throws {
        let receiver = try #require(DatagramReceiver())
        let a = try SystemCall.udpSocket(family: AF_INET, nonBlocking: true)
        defer { close(a) }
        let loopback = try SocketAddress(ipAddress: "127.0.0.1", port: 0)
        try SystemCall.posix("bind") { loopback.withSockAddr { bind(a, $0, socklen_t($1)) } }
        #expect(cudpecho_enable_timestamps(a, AF_INET, -1) == 0)  // the error queue only
        let here = try #require(SocketAddress.local(of: a))
        // A port nobody listens on: a datagram from `a` to it comes back as an ICMP error on `a`'s error queue.
        let closed = try SystemCall.udpSocket(family: AF_INET)
        try SystemCall.posix("bind") { loopback.withSockAddr { bind(closed, $0, socklen_t($1)) } }
        let nowhere = try #require(SocketAddress.local(of: closed))
        close(closed)
        let probe = Array("probe-q!".utf8)
        _ = probe.withUnsafeBytes { bytes in
            nowhere.withSockAddr { sendto(a, bytes.baseAddress, bytes.count, 0, $0, socklen_t($1)) }
        }
        let b = try SystemCall.udpSocket(family: AF_INET)
        defer { close(b) }
        let replies = (0..<3).map { index in [UInt8](repeating: UInt8(0x41 + index), count: 100 + index) }
        for reply in replies {
            _ = reply.withUnsafeBytes { bytes in
                here.withSockAddr { sendto(b, bytes.baseAddress, bytes.count, 0, $0, socklen_t($1)) }
            }
        }
        #expect(cudpecho_wait(a, cudpecho_pollin, 2000) > 0)
        var read: [[UInt8]] = []
        var refused: [[UInt8]] = []
        receiver.drain(a) { count in
            for slot in 0..<count {
                let before = Array(receiver.datagram(slot))
                receiver.drainErrors(a, hardware: 0) { info, quoted in
                    if info.error == ECONNREFUSED { refused.append(Array(quoted)) }
                }
                #expect(Array(receiver.datagram(slot)) == before, "slot \(slot) changed under the error queue's read")
                read.append(before)
            }
        }
        #expect(read == replies)
        #expect(refused == [probe])
    }

    @Test func theErrnoPolicyIsOneList() {
        #expect(ProbeErrnoPolicy.afterSend(EINTR, offloading: false) == .retry)
        #expect(ProbeErrnoPolicy.afterSend(EIO, offloading: true) == .stopOffloading)
        #expect(ProbeErrnoPolicy.afterSend(EIO, offloading: false) == .notSent)
        #expect(ProbeErrnoPolicy.afterSend(EMSGSIZE, offloading: false) == .notSent)
        #expect(ProbeErrnoPolicy.afterSend(ECONNREFUSED, offloading: false) == .retryOnce)
        #expect(ProbeErrnoPolicy.afterSend(EAGAIN, offloading: false) == .waitForRoom)
        #expect(ProbeErrnoPolicy.afterSend(EPERM, offloading: false) == .notSent)
        for code in [EINTR, ECONNREFUSED, EHOSTUNREACH, ENETUNREACH] {
            #expect(ProbeErrnoPolicy.receiveAgain(after: code), "\(code)")
        }
        #expect(!ProbeErrnoPolicy.receiveAgain(after: EAGAIN))
    }

    @Test func theSystemCallWrapperRetriesInterruptsAndNamesTheCall() throws {
        var calls = 0
        let result = try SystemCall.posix("read") { () -> Int in
            calls += 1
            if calls < 3 {
                errno = EINTR
                return -1
            }
            return 7
        }
        #expect(result == 7 && calls == 3)
        #expect(throws: SystemCallError(call: "connect", errno: ECONNREFUSED)) {
            try SystemCall.posix("connect") { () -> Int32 in
                errno = ECONNREFUSED
                return -1
            }
        }
        #expect(throws: SystemCallError(call: "sendmmsg", errno: EMSGSIZE)) {
            try SystemCall.shim("sendmmsg") { -EMSGSIZE }
        }
        #expect(SystemCallError(call: "bind", errno: EADDRINUSE).description == "bind: Address already in use")
    }

    @Test func anImpossibleErrnoStopsTheProcess() async throws {
        let child = try await ControlMessageTests().runChild("badDescriptor")
        #expect(child.status != 0, "\(child.status) \(child.error)")
        #expect(
            child.error.contains("sendto failed with Bad file descriptor: a descriptor or buffer of ours is wrong"),
            "\(child.error)"
        )
    }
}
