import CUDPEcho
import Foundation
import TestSupport
import Testing

@testable import UDPEcho

#if canImport(Glibc)
import Glibc
#endif

/// The C shim's one way to read control messages: a message whose `cmsg_len` is short for its type, or that runs
/// past the buffer, is skipped, never read past; and its one way to write them stops the process, loudly, when a
/// slot's buffer has no room (a reply would otherwise leave without its segment size: a run as one oversized
/// datagram) or a slot index is out of range.
@Suite struct ControlMessageTests {
    /// `cmsg_len`, level, type and data, laid out as the kernel lays a message out (aligned to 8 bytes).
    func message(length: Int, level: Int32, type: Int32, data: [UInt8]) -> [UInt8] {
        var bytes = [UInt8](repeating: 0, count: 16)
        withUnsafeBytes(of: length) { bytes.replaceSubrange(0..<8, with: $0) }
        withUnsafeBytes(of: level) { bytes.replaceSubrange(8..<12, with: $0) }
        withUnsafeBytes(of: type) { bytes.replaceSubrange(12..<16, with: $0) }
        bytes += data
        while bytes.count % 8 != 0 { bytes.append(0) }
        return bytes
    }

    func parse(_ control: [UInt8]) -> (info: cudpecho_datagram_info, segment: UInt16, family: Int32) {
        var info = cudpecho_datagram_info()
        var segment: UInt16 = 0
        // An allocation of exactly the buffer's size, so that AddressSanitizer (scripts/sanitize.sh) sees any read
        // past its end.
        let exact = UnsafeMutableRawBufferPointer.allocate(byteCount: max(1, control.count), alignment: 8)
        defer { exact.deallocate() }
        exact.copyBytes(from: control)
        let family = cudpecho_parse_control(exact.baseAddress, control.count, &info, &segment)
        return (info, segment, family)
    }

    @Test func readsWellFormedMessages() {
        let ttl = self.message(length: 16 + 4, level: Int32(IPPROTO_IP), type: IP_TTL, data: [61, 0, 0, 0])
        let tos = self.message(length: 16 + 1, level: Int32(IPPROTO_IP), type: IP_TOS, data: [0xB8])
        let gro = self.message(length: 16 + 4, level: Int32(IPPROTO_UDP), type: 104, data: [0xDC, 0x05, 0, 0])
        let parsed = self.parse(ttl + tos + gro)
        #expect(parsed.info.ttl == 61 && parsed.info.tos == 0xB8 && parsed.segment == 1500)
        #expect(parsed.family == 0)
    }

    /// A TTL message whose `cmsg_len` covers one byte of its four, a packet-info message cut short, and one whose
    /// length runs past the buffer: none is read.
    @Test func skipsMessagesThatLieAboutTheirLength() {
        let shortTTL = self.message(length: 16 + 1, level: Int32(IPPROTO_IP), type: IP_TTL, data: [61])
        let shortInfo = self.message(length: 16 + 4, level: Int32(IPPROTO_IP), type: IP_PKTINFO, data: [1, 0, 0, 0])
        #expect(self.parse(shortTTL).info.ttl == -1)
        let parsed = self.parse(shortInfo)
        #expect(parsed.family == 0, "a 4-byte in_pktinfo was read as 12")
        let pastTheEnd = self.message(length: 16 + 4096, level: Int32(IPPROTO_IP), type: IP_TTL, data: [61, 0, 0, 0])
        #expect(self.parse(pastTheEnd).info.ttl == -1)
        var random = SplitMix64(state: 2026)
        for _ in 0..<2000 {
            let count = Int(random.next() % 200)
            let bytes = (0..<count).map { _ in UInt8(truncatingIfNeeded: random.next()) }
            _ = self.parse(bytes)
        }
    }

    /// A traffic class or hop limit message carries an int; one outside 0-255 (none the kernel sends) reads as not
    /// reported (-1), never as a negative or truncated byte that a caller's UInt8(...) would trap on. The fuzzer
    /// found a traffic class of -73 (Fuzz/regressions/control-messages/traffic-class-out-of-range).
    @Test func markingsOutsideAByteReadAsNotReported() {
        func int(_ value: Int32) -> [UInt8] { withUnsafeBytes(of: value) { Array($0) } }
        for value: Int32 in [-73, 256, 70_000, -1] {
            let tclass = self.message(length: 16 + 4, level: Int32(IPPROTO_IPV6), type: IPV6_TCLASS, data: int(value))
            let hops = self.message(length: 16 + 4, level: Int32(IPPROTO_IPV6), type: IPV6_HOPLIMIT, data: int(value))
            let parsed = self.parse(tclass + hops)
            #expect(parsed.info.tos == -1 && parsed.info.ttl == -1, "\(value): \(parsed.info)")
        }
        let good = self.message(length: 16 + 4, level: Int32(IPPROTO_IPV6), type: IPV6_TCLASS, data: int(255))
        #expect(self.parse(good).info.tos == 255)
    }

    /// A timestamp message whose seconds no clock can give (past 2262, or before 1970), or whose nanoseconds are out
    /// of range, reads as no timestamp: converting it to nanoseconds overflowed a signed 64-bit integer, undefined
    /// behaviour that the fuzzer found (Fuzz/regressions/control-messages/timestamp-overflow).
    @Test func timestampsNoClockCanGiveReadAsNone() {
        func timestamping(seconds: Int, nanoseconds: Int) -> [UInt8] {
            var data = [UInt8]()
            for value in [seconds, nanoseconds, 0, 0, seconds, nanoseconds] {
                withUnsafeBytes(of: value) { data += $0 }
            }
            return self.message(length: 16 + 48, level: SOL_SOCKET, type: SO_TIMESTAMPING_OLD, data: data)
        }
        #expect(
            self.parse(timestamping(seconds: 1_700_000_000, nanoseconds: 5)).info.timestamp == 1_700_000_000_000_000_005
        )
        for (seconds, nanoseconds) in [(51_791_395_714_760_704, 0), (-1, 0), (1_700_000_000, 1_000_000_000), (1, -1)] {
            let control = timestamping(seconds: seconds, nanoseconds: nanoseconds)
            #expect(self.parse(control).info.timestamp == 0, "\(seconds) s \(nanoseconds) ns")
            var error = cudpecho_error_info()
            control.withUnsafeBytes { _ = cudpecho_parse_error_control($0.baseAddress, $0.count, 1, &error) }
            #expect(error.timestamp == 0, "\(seconds) s \(nanoseconds) ns, hardware")
        }
    }

    /// The third TOS message of a slot does not fit: the process stops with a message, rather than sending the reply
    /// without it. (Run in a process of its own: this test binary again, with only the child test below. Swift
    /// Testing's exit tests wait for any child of the process, and spun at 100% CPU beside the tests that spawn
    /// servers.)
    @Test func aFullControlBufferStopsTheProcess() async throws {
        let child = try await runChild("fullControlBuffer")
        // SIGABRT (134); under ThreadSanitizer, which takes the signal over, another failure status.
        #expect(child.status != 0, "\(child.status) \(child.error)")
        #expect(child.error.contains("udpecho: internal error: no room for a control message"), "\(child.error)")
    }

    @Test func aSlotOutOfRangeStopsTheProcess() async throws {
        let child = try await runChild("slotOutOfRange")
        #expect(child.status != 0, "\(child.status) \(child.error)")
        #expect(child.error.contains("udpecho: internal error: batch slot index out of range"), "\(child.error)")
    }

    /// The child's side: does what it is named for when this process was started for it, nothing otherwise.
    @Test func childThatStopsTheProcess() {
        switch ProcessInfo.processInfo.environment["UDPECHO_CHILD_TEST"] {
        case "fullControlBuffer":
            let batch = cudpecho_batch_create(1, 2048)
            for _ in 0..<64 { cudpecho_batch_set_reply_tos(batch, 0, 0, 46 << 2) }
        case "slotOutOfRange":
            let batch = cudpecho_batch_create(4, 2048)
            _ = cudpecho_batch_length(batch, 4)
        case "badDescriptor":
            // A send on a descriptor that is not open: a bug of ours, never a dropped datagram.
            _ = try? SystemCall.posix("sendto") { sendto(-1, nil, 0, 0, nil, 0) }
        default:
            return
        }
        Issue.record("the process went on")
    }

    /// Runs this test binary again with only ``childThatStopsTheProcess()``, told to do `what`.
    func runChild(_ what: String) async throws -> (status: Int32, error: String) {
        let executable = try FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")
        let run = try await Spawned.run(
            "/usr/bin/env",
            [
                "UDPECHO_CHILD_TEST=\(what)", executable, "--testing-library", "swift-testing", "--filter",
                "childThatStopsTheProcess",
            ],
            timeout: 60
        )
        return (run.status, run.error)
    }
}
