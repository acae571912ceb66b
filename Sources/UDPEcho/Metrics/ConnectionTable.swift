import Dispatch
import NIOCore
import Synchronization

/// The endpoint's connections and what each is doing, across the event loops.
///
/// When the endpoint is full, a new connection waits, accepted but not yet read, in a queue served in order of
/// arrival; it takes the place of a connection that has waited more than ``MetricsEndpoint/Configuration/requestGrace``
/// for a complete request (the longest waiting first), or of one that closes. So a client that opens connections
/// and dribbles requests a line at a time (slowloris) can hold a slot for at most the grace before someone waiting
/// takes it, reconnecting only puts it at the back of the queue, and a scraper, whose request is complete at once,
/// gets in after the connections queued before it. When the queue is full too, a new connection is closed at once.
///
/// A connection is closed to make room only by its own event loop, and only if it still waits for a request once
/// that loop has read what it sent: a scraper whose complete request sits unread on a busy loop is answered, not reset.
/// Its grace begins when it is active on its loop, not when it is given a slot.
final class ConnectionTable: Sendable {
    private struct Entry {
        let channel: any Channel
        let source: IPKey?
        /// When it began to wait for a complete request (active on its loop, or answered its last one); nil while it
        /// is being set up and while a request of its is being answered.
        var waitingSince: UInt64?
    }

    private struct Waiting {
        let channel: any Channel
        let source: IPKey?
        /// Sets the connection up in `slot` once it has one.
        let start: @Sendable (Int) -> Void
        /// Closes it unserved.
        let refuse: @Sendable () -> Void
    }

    private struct State {
        var next = 0
        var entries: [Int: Entry] = [:]
        var queue: [Waiting] = []
        /// Slots whose connection its own loop is asked to close to make room, if it still waits then.
        var evicting: Set<Int> = []
    }

    private let state = Mutex(State())
    private let maximum: Int
    private let maximumPerSource: Int
    private let maximumQueued: Int
    private let grace: UInt64

    init(_ configuration: MetricsEndpoint.Configuration) {
        self.maximum = max(1, configuration.maximumConnections)
        self.maximumPerSource = max(1, min(configuration.maximumConnectionsPerSource, self.maximum))
        self.maximumQueued = max(0, configuration.maximumQueuedConnections)
        self.grace = UInt64(max(0, configuration.requestGrace.nanoseconds))
    }

    /// Connections served now (not those queued).
    var count: Int { self.state.withLock { $0.entries.count } }

    /// Takes `channel` in: `start` is called with its slot now or, when the endpoint is full, once a slot is free
    /// for it. Returns false when it is refused (the queue is full too).
    func admit(
        _ channel: any Channel,
        refuse: @escaping @Sendable () -> Void,
        start: @escaping @Sendable (Int) -> Void
    ) -> Bool {
        let source = channel.remoteAddress.flatMap { address in address.withRawAddress { raw, _ in IPKey(raw) } }
        let admitted = self.state.withLock { state -> Bool in
            guard state.queue.count < self.maximumQueued || self.place(source, in: &state) != nil else { return false }
            state.queue.append(Waiting(channel: channel, source: source, start: start, refuse: refuse))
            return true
        }
        if admitted { self.serveQueue() }
        return admitted
    }

    /// Gives free slots to queued connections in order of arrival, and asks the loops of connections that waited
    /// past the grace for a request to close them to make room (one for each queued connection that needs one and
    /// is not already covered by such a request). Called when a connection comes, closes, and on a timer while any
    /// are queued.
    func serveQueue() {
        let now = DispatchTime.now().uptimeNanoseconds
        var started: [(Waiting, Int)] = []
        var evictions: [(any Channel, Int)] = []
        self.state.withLock { state in
            var covered = state.evicting.count
            var index = 0
            while index < state.queue.count {
                let waiting = state.queue[index]
                guard let place = self.place(waiting.source, in: &state, now: now) else {
                    index += 1
                    continue
                }
                if case .replacing(let victim) = place {
                    // It waits for the slot its loop frees (or for the next turn, if that connection is served).
                    if covered > 0 {
                        covered -= 1
                    } else {
                        state.evicting.insert(victim)
                        evictions.append((state.entries[victim]!.channel, victim))
                    }
                    index += 1
                    continue
                }
                let slot = state.next
                state.next += 1
                state.entries[slot] = Entry(channel: waiting.channel, source: waiting.source, waitingSince: nil)
                state.queue.remove(at: index)
                started.append((waiting, slot))
            }
        }
        for (channel, slot) in evictions {
            // After the loop's reads: a request that came meanwhile is read, and marks the connection answering.
            channel.eventLoop.execute { self.evict(slot) }
        }
        for (waiting, slot) in started { waiting.start(slot) }
    }

    /// On the connection's own loop: closes the connection in `slot` if it still waits past the grace for a
    /// request, then gives its slot to the queue.
    func evict(_ slot: Int) {
        let now = DispatchTime.now().uptimeNanoseconds
        let closing = self.state.withLock { state -> (any Channel)? in
            state.evicting.remove(slot)
            guard let entry = state.entries[slot], let since = entry.waitingSince, now >= since + self.grace else {
                return nil
            }
            state.entries.removeValue(forKey: slot)
            return entry.channel
        }
        closing?.close(promise: nil)
        self.serveQueue()
    }

    /// How a connection can be served now.
    private enum Placement {
        /// There is room for it.
        case free
        /// In place of the connection in this slot, which has waited longest past the grace.
        case replacing(Int)
    }

    /// Whether a connection from `source` can be served now: with room to spare, or (when `now` is given) in place
    /// of the connection that has waited longest past the grace (of the same source when the source is at its
    /// limit); nil when it must wait.
    private func place(_ source: IPKey?, in state: inout State, now: UInt64? = nil) -> Placement? {
        let fromSource = source.map { key in state.entries.values.lazy.filter { $0.source == key }.count } ?? 0
        let sourceFull = fromSource >= self.maximumPerSource
        guard sourceFull || state.entries.count >= self.maximum else { return .free }
        guard let now else { return nil }
        let victim = state.entries.filter { slot, entry in
            guard let since = entry.waitingSince, now >= since + self.grace, !state.evicting.contains(slot) else {
                return false
            }
            return !sourceFull || entry.source == source
        }.min { $0.value.waitingSince! < $1.value.waitingSince! }
        return victim.map { .replacing($0.key) }
    }

    /// How many wait in the queue.
    var queuedCount: Int { self.state.withLock { $0.queue.count } }

    /// A request of the connection's is being answered: it cannot be closed to make room.
    func answering(_ slot: Int) { self.state.withLock { $0.entries[slot]?.waitingSince = nil } }

    /// The connection waits for a request from now on: its first, once it is active on its loop, or its next.
    func waiting(_ slot: Int) {
        let now = DispatchTime.now().uptimeNanoseconds
        self.state.withLock { $0.entries[slot]?.waitingSince = now }
    }

    /// The connection in `slot` closed: its slot goes to the first that waits for one.
    func remove(_ slot: Int) {
        let removed = self.state.withLock { $0.entries.removeValue(forKey: slot) != nil }
        if removed { self.serveQueue() }
    }

    /// Closes the queued connections (the endpoint stops).
    func closeQueued() {
        let queue = self.state.withLock { state -> [Waiting] in
            defer { state.queue = [] }
            return state.queue
        }
        for waiting in queue { waiting.refuse() }
    }
}
