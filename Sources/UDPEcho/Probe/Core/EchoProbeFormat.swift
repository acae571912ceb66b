#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// The bytes of a `ping`/`bench` echo probe, written and checked: its sequence number (bytes 0-7, little-endian),
/// its scheduled send time (8-15, CLOCK_MONOTONIC ns), then a pattern of its flow. With a ``MarkingReport`` request
/// (bytes 16-27), the four bytes a server fills in are not compared.
struct EchoProbeFormat {
    static let headerSize = 16

    let size: Int
    let markingReport: Bool
    private let pattern: [UInt8]

    /// The probes of flow `flow`, `size` bytes each (at least ``headerSize``).
    init(size: Int, flow: Int, markingReport: Bool) {
        precondition(size >= Self.headerSize)
        self.size = size
        self.markingReport = markingReport && size >= MarkingReport.minimumProbeSize
        var pattern = (0..<(size - Self.headerSize)).map { UInt8(truncatingIfNeeded: $0 &* 7 &+ flow &* 13 &+ 1) }
        if self.markingReport {
            pattern.replaceSubrange(0..<MarkingReport.request.count, with: MarkingReport.request)
            for byte in MarkingReport.request.count..<MarkingReport.size { pattern[byte] = 0 }
        }
        self.pattern = pattern
    }

    /// Writes probe `sequence`, due at `scheduledAt`, at `payload` (``size`` bytes).
    func write(into payload: UnsafeMutableRawPointer, sequence: UInt64, scheduledAt: Int64) {
        payload.storeBytes(of: sequence.littleEndian, as: UInt64.self)
        payload.storeBytes(of: scheduledAt.littleEndian, toByteOffset: 8, as: Int64.self)
        self.pattern.withUnsafeBytes {
            guard let pattern = $0.baseAddress else { return }
            (payload + Self.headerSize).copyMemory(from: pattern, byteCount: $0.count)
        }
    }

    /// The sequence number a reply carries, nil when it is shorter than a header.
    static func sequence(of reply: UnsafeRawBufferPointer) -> UInt64? {
        guard reply.count >= Self.headerSize else { return nil }
        return UInt64(littleEndian: reply.loadUnaligned(as: UInt64.self))
    }

    /// Where `reply` differs from the probe due at `scheduledAt` that it names, in words; nil when it is the probe.
    func difference(_ reply: UnsafeRawBufferPointer, scheduledAt: Int64) -> String? {
        if reply.count != self.size { return "\(reply.count) bytes, the probe had \(self.size)" }
        let stamp = Int64(littleEndian: reply.loadUnaligned(fromByteOffset: 8, as: Int64.self))
        if stamp != scheduledAt { return "its timestamp (bytes 8-15) differs" }
        let body = UnsafeRawBufferPointer(rebasing: reply[Self.headerSize...])
        guard !body.isEmpty else { return nil }
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
        return "first difference at byte \(Self.headerSize + offset)"
    }
}
