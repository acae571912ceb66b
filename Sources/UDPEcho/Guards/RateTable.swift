/// A token bucket per source prefix, in the spirit of DNS Response Rate Limiting: a source (an IPv4 /32 or an IPv6
/// /64 by default, since one IPv6 host owns a whole /64) gets `perSecond` replies a second, with bursts up to
/// `burst`. The table of sources has a fixed size: when it is full, the source seen longest ago is forgotten, so a
/// flood from millions of spoofed sources cannot exhaust memory (the global budget bounds that flood instead).
public struct RateLimit: Sendable, Equatable {
    /// Replies per second per source.
    public var perSecond: Double
    /// Replies a source may get at once after being quiet (at least one is always allowed, so that a fractional
    /// rate such as 0.5 a second answers one datagram every two seconds instead of none).
    public var burst: Double
    /// Bits of an IPv4 address that make one source.
    public var ipv4PrefixLength: Int
    /// Bits of an IPv6 address that make one source.
    public var ipv6PrefixLength: Int
    /// Sources remembered per serving thread.
    public var tableSize: Int

    /// A rate limit; the default is generous: 10000 replies a second per source, bursts of 20000.
    public init(
        perSecond: Double = 10_000,
        burst: Double = 20_000,
        ipv4PrefixLength: Int = 32,
        ipv6PrefixLength: Int = 64,
        tableSize: Int = 16384
    ) {
        self.perSecond = perSecond
        self.burst = burst
        self.ipv4PrefixLength = ipv4PrefixLength
        self.ipv6PrefixLength = ipv6PrefixLength
        self.tableSize = tableSize
    }
}

struct TokenBucket {
    var tokens: Double
    var last: Int64

    mutating func take(now: Int64, rate: Double, burst: Double) -> Bool {
        if now > self.last {
            self.tokens = min(burst, self.tokens + Double(now - self.last) * rate / 1e9)
            self.last = now
        }
        guard self.tokens >= 1 else { return false }
        self.tokens -= 1
        return true
    }
}

/// The sets of 4 slots that a 4-way set-associative table of at least `entries` entries takes: a power of two (a
/// hash masked picks one), at least one. The rate limiter's, the loop detector's and the STAMP sessions' tables are
/// laid out so, and the XDP program's copies of the first two.
func fourWaySets(_ entries: Int) -> Int {
    var sets = 1
    while sets * 4 < entries { sets <<= 1 }
    return sets
}

/// Memory for a fixed number of table entries, allocated once and freed with the last reference: copies of a
/// guard share one table, without copy-on-write, and nothing is allocated per datagram.
final class FixedStorage<Entry>: @unchecked Sendable {
    let base: UnsafeMutablePointer<Entry>
    let count: Int

    init(repeating entry: Entry, count: Int) {
        self.count = count
        self.base = .allocate(capacity: count)
        self.base.initialize(repeating: entry, count: count)
    }

    deinit {
        self.base.deinitialize(count: self.count)
        self.base.deallocate()
    }
}

/// A fixed-size table of token buckets, 4-way set-associative: a source lives in one set of 4 slots, chosen by a
/// hash keyed per process, and a new source takes the slot of the set's least recently seen one.
///
/// A newcomer takes over the bucket of the source it displaces, refilled for the time since that one was last seen,
/// rather than a full one: otherwise a few sources that share a set would evict one another in turn and each come
/// back to a fresh burst, unlimited. When the set was quiet, the inherited bucket has refilled to the full burst.
struct RateTable {
    private struct Entry {
        var key: IPKey
        var bucket: TokenBucket
        var used: Bool
    }

    private let perSecond: Double
    private let burst: Double
    private let storage: FixedStorage<Entry>
    private let setMask: Int
    private(set) var count = 0
    private(set) var evictions = 0

    init(_ limit: RateLimit) {
        self.perSecond = limit.perSecond
        self.burst = max(1, limit.burst)
        let sets = fourWaySets(limit.tableSize)
        self.setMask = sets - 1
        self.storage = FixedStorage(
            repeating: Entry(key: IPKey(high: 0, low: 0), bucket: TokenBucket(tokens: 0, last: 0), used: false),
            count: sets * 4
        )
    }

    /// The table's size in entries (its memory is fixed at creation).
    var capacity: Int { self.storage.count }

    mutating func allow(_ key: IPKey, now: Int64) -> Bool {
        let entries = self.storage.base
        let base = (key.keyedHash() & self.setMask) * 4
        var victim = base
        for slot in base..<base + 4 {
            if entries[slot].used && entries[slot].key == key {
                return entries[slot].bucket.take(now: now, rate: self.perSecond, burst: self.burst)
            }
            if !entries[slot].used {
                victim = slot
            } else if entries[victim].used && entries[slot].bucket.last < entries[victim].bucket.last {
                victim = slot
            }
        }
        let bucket: TokenBucket
        if entries[victim].used {
            self.evictions += 1
            bucket = entries[victim].bucket
        } else {
            self.count += 1
            bucket = TokenBucket(tokens: self.burst, last: now)
        }
        entries[victim] = Entry(key: key, bucket: bucket, used: true)
        return entries[victim].bucket.take(now: now, rate: self.perSecond, burst: self.burst)
    }
}
