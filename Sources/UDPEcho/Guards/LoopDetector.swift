/// Notices an echo loop: the same datagram bouncing between this server and another echo service.
///
/// Two echo services that answer each other's replies pass one datagram back and forth, unchanged, as fast as the
/// path allows, for ever (CVE-1999-0103); one forged datagram is enough to start it. Port rules stop the loops with
/// well-known services and with other udpecho servers on known ports; this catches the rest. It remembers, per
/// source address and port, a fingerprint of the last datagram and how many identical ones came in a row, each within
/// ``window`` of the one before. Past `limit` in a row, the next copies are dropped, which ends the loop: the other
/// side gets nothing more to answer.
///
/// The fingerprint covers the length and up to 64 bytes at each end of the payload: measurement tools put a
/// sequence number or a timestamp there, so their probes never repeat.
///
/// Of a run of datagrams the kernel hands over coalesced (UDP GRO), only the first is seen. A looping datagram is
/// alone in flight, so it never arrives in a run; a run of different datagrams never makes "the same one in a row"
/// (seen one by one they would only reset each other); and a run that loops whole repeats its first datagram, which
/// is caught. A client that sends the same datagram several times in one write is not a loop. The table has a fixed size, 4-way
/// set-associative, chosen by a hash keyed per process; a new source takes the slot of the set's least recently seen.
struct LoopDetector {
    private struct Entry {
        var key: IPKey
        var fingerprint: UInt64
        var last: Int64
        var port: UInt16
        /// Identical datagrams in a row; 0 for an empty slot.
        var run: UInt32
    }

    /// The longest gap between two copies of a looping datagram: longer than any round trip a loop can have.
    static let window: Int64 = 1_000_000_000
    static let tableSize = 4096

    private let limit: Int
    private let storage: FixedStorage<Entry>
    private let setMask: Int

    init(limit: Int) {
        self.limit = limit
        self.setMask = Self.tableSize / 4 - 1
        self.storage = FixedStorage(
            repeating: Entry(key: IPKey(high: 0, low: 0), fingerprint: 0, last: 0, port: 0, run: 0),
            count: Self.tableSize
        )
    }

    /// Records a datagram from `source`:`port`; returns whether it is part of a loop (and must be dropped).
    mutating func isLoop(_ source: IPKey, port: UInt16, payload: UnsafeRawBufferPointer, now: Int64) -> Bool {
        let fingerprint = Self.fingerprint(payload)
        let entries = self.storage.base
        let base = (source.keyedHash(port: port) & self.setMask) * 4
        var victim = base
        for slot in base..<base + 4 {
            if entries[slot].run > 0 && entries[slot].key == source && entries[slot].port == port {
                if entries[slot].fingerprint == fingerprint && now - entries[slot].last <= Self.window {
                    if entries[slot].run < .max { entries[slot].run += 1 }
                } else {
                    entries[slot].fingerprint = fingerprint
                    entries[slot].run = 1
                }
                entries[slot].last = now
                return entries[slot].run > self.limit
            }
            if entries[slot].run == 0 {
                victim = slot
            } else if entries[victim].run != 0 && entries[slot].last < entries[victim].last {
                victim = slot
            }
        }
        entries[victim] = Entry(key: source, fingerprint: fingerprint, last: now, port: port, run: 1)
        return 1 > self.limit
    }

    /// A 64-bit fingerprint of the length and up to 64 bytes at each end of `payload`.
    static func fingerprint(_ payload: UnsafeRawBufferPointer) -> UInt64 {
        var hash = 0x9E37_79B9_7F4A_7C15 ^ UInt64(payload.count)
        @inline(__always) func mix(_ word: UInt64) {
            hash = (hash ^ word) &* 0xBF58_476D_1CE4_E5B9
            hash ^= hash >> 31
        }
        @inline(__always) func mix(_ range: Range<Int>) {
            var offset = range.lowerBound
            while offset + 8 <= range.upperBound {
                mix(payload.loadUnaligned(fromByteOffset: offset, as: UInt64.self))
                offset += 8
            }
            while offset < range.upperBound {
                mix(UInt64(payload[offset]))
                offset += 1
            }
        }
        mix(0..<min(payload.count, 64))
        if payload.count > 64 { mix(max(64, payload.count - 64)..<payload.count) }
        return hash
    }
}
