/// A stateful reflector's sessions (RFC 8762 §4.3): its own sequence counter per session, a session being the
/// sender's address and port and its SSID. The table has a fixed size, 4-way set-associative by a hash keyed per
/// process, as the rate limiter's: a flood of made-up sessions cannot grow memory, and a session forgotten to make
/// room starts again at 0 (which its sender sees as a restart, never as a wrong count).
struct StampSessions {
    private struct Entry {
        var address: IPKey
        var port: UInt16
        var ssid: UInt16
        var next: UInt32
        var last: Int64
        var used: Bool
    }

    private let storage: FixedStorage<Entry>
    private let setMask: Int
    private(set) var count = 0

    init(capacity: Int) {
        let sets = fourWaySets(capacity)
        self.setMask = sets - 1
        self.storage = FixedStorage(
            repeating: Entry(address: IPKey(high: 0, low: 0), port: 0, ssid: 0, next: 0, last: 0, used: false),
            count: sets * 4
        )
    }

    /// The next sequence number of the session, counted.
    mutating func next(_ address: IPKey, port: UInt16, ssid: UInt16, now: Int64) -> UInt32 {
        let entries = self.storage.base
        let base = (address.keyedHash(port: port ^ ssid.byteSwapped) & self.setMask) * 4
        var victim = base
        for slot in base..<base + 4 {
            if entries[slot].used && entries[slot].address == address && entries[slot].port == port
                && entries[slot].ssid == ssid
            {
                let value = entries[slot].next
                entries[slot].next &+= 1
                entries[slot].last = now
                return value
            }
            if !entries[slot].used {
                victim = slot
            } else if entries[victim].used && entries[slot].last < entries[victim].last {
                victim = slot
            }
        }
        if !entries[victim].used { self.count += 1 }
        entries[victim] = Entry(address: address, port: port, ssid: ssid, next: 1, last: now, used: true)
        return 0
    }
}
