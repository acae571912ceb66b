import Synchronization

/// A session this server received, finished: what Fetch-Session returns.
struct OwampResult: Sendable {
    /// The control client that requested it: only that address may fetch it.
    var owner: IPKey
    var plan: OwampSessionPlan
    /// The request (112 bytes, its HMAC zeros) and its slots, as a fetch repeats them.
    var request: [UInt8]
    var slots: [UInt8]
    /// What the sender said of it in Stop-Sessions.
    var description: OwampSessionDescription
    var records: [OwampRecord]

    init(
        owner: IPKey,
        plan: OwampSessionPlan,
        request: [UInt8],
        slots: [UInt8],
        description: OwampSessionDescription,
        records: [OwampRecord]
    ) {
        self.owner = owner
        self.plan = plan
        self.request = request
        self.slots = slots
        self.description = description
        self.records = records
    }
}

/// The finished sessions an ``OwampServer`` keeps for Fetch-Session: each for the retention time, and at most
/// `capacity` (the oldest go first).
final class OwampResultStore: Sendable {
    private let capacity: Int
    private let results = Mutex<[(sid: [UInt8], expires: Int64, result: OwampResult)]>([])

    init(capacity: Int) { self.capacity = capacity }

    func keep(_ result: OwampResult, now: Int64, retention: Int64) {
        self.results.withLock { results in
            results.removeAll { $0.expires <= now || $0.sid == result.plan.sid }
            if results.count >= self.capacity { results.removeFirst(results.count - self.capacity + 1) }
            results.append((result.plan.sid, now &+ retention, result))
        }
    }

    /// The session `sid`, if `owner` requested it and it is still kept.
    func result(sid: [UInt8], owner: IPKey, now: Int64) -> OwampResult? {
        self.results.withLock { results in
            results.removeAll { $0.expires <= now }
            return results.first { $0.sid == sid && $0.result.owner == owner }?.result
        }
    }

    var count: Int { self.results.withLock { $0.count } }

    /// The SIDs kept now.
    var sids: [[UInt8]] { self.results.withLock { $0.map(\.sid) } }
}
