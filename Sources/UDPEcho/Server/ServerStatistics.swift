import Atomics

/// Why the server did not echo a datagram. Every drop is counted under one reason.
public enum DropReason: String, CaseIterable, Sendable, Hashable, CustomStringConvertible {
    /// The reply could not be written before the write deadline (`--timeout`): the socket's send buffer stayed full.
    case writeTimeout = "write-timeout"
    /// The kernel refused the reply because an earlier one to that peer was answered with ICMP port unreachable.
    case refused
    /// No route to the peer (`EHOSTUNREACH`, `ENETUNREACH`).
    case unreachable
    /// The reply was larger than the path allows (`EMSGSIZE`).
    case tooLarge = "too-large"
    /// The kernel had no buffer memory for the reply (`ENOBUFS`, `ENOMEM`).
    case noBuffers = "no-buffers"
    /// A firewall rule or policy forbade the reply (`EPERM`, `EACCES`).
    case forbidden
    /// The datagram was larger than the receive slot and arrived cut (`MSG_TRUNC`); a cut datagram is never echoed.
    case truncated
    /// Any other error sending the reply.
    case sendError = "send-error"
    /// Guard: larger than the configured maximum size.
    case oversize
    /// Guard: from a well-known or denied source port, or from the server's own port (a spoofed loop with another
    /// service, or a reflection).
    case sourcePort = "source-port"
    /// Guard: from a multicast, broadcast or unspecified address, or from a loopback or local address that arrived
    /// from outside (forged).
    case sourceAddress = "source-address"
    /// Guard: from the server's own address and port (a loop with itself).
    case ownEndpoint = "own-endpoint"
    /// Guard: from a prefix of the deny list, or outside the allow list.
    case denied
    /// Guard: the same datagram from the same address and port too many times in a row: an echo loop with another
    /// echo service.
    case loop
    /// Guard: its source prefix used up its token bucket.
    case rateLimited = "rate-limited"
    /// Guard: the global reply budget was used up.
    case overBudget = "over-budget"
    /// STAMP and TWAMP: an authenticated test packet whose HMAC does not verify (a wrong key, or a forgery).
    case auth
    /// TWAMP: a test packet from an address and port with no running test session.
    case noSession = "no-session"
    /// STAMP: not a test packet: shorter than a TWAMP-Light sender's 14-byte header, or, authenticated, than 112.
    case malformed

    /// The reason's name, as the `reason` label of the metrics and the summary's fields have it.
    public var description: String { self.rawValue }

    /// The reasons in a fixed order, built once: a drop on the serving path looks its reason up here rather than
    /// building `allCases` again.
    static let ordered = DropReason.allCases

    /// The reason's place in ``ordered``.
    var ordinal: Int { Self.ordered.firstIndex(of: self)! }
}

/// A snapshot of a server's counters.
public struct EchoServerStatistics: Sendable, Equatable {
    /// Datagrams read from the socket(s).
    public var received = 0
    /// Payload bytes read.
    public var receivedBytes = 0
    /// Datagrams written back whole.
    public var echoed = 0
    /// Payload bytes written back.
    public var echoedBytes = 0
    /// Errors reported by the socket while reading (for example a pending ICMP error); none of them stops the server.
    public var receiveErrors = 0
    /// Sources in the rate limiter's tables now (bounded by the table size, per thread).
    public var rateTableEntries = 0
    /// Sources the rate limiter forgot to make room for new ones.
    public var rateTableEvictions = 0
    /// Events the event handler could not be given because it was behind (its queue was full); the datagrams
    /// themselves were served and counted.
    public var eventsNotDelivered = 0
    /// Datagrams received but not echoed, by reason.
    public var drops: [DropReason: Int] = [:]
    /// Sessions in the stateful STAMP reflector's tables (0 otherwise).
    public var stampSessions = 0
    /// Runs of datagrams the kernel handed over coalesced (UDP GRO), each answered with one segmented write; their
    /// datagrams are counted one by one in ``received``.
    public var coalescedRuns = 0
    /// Segmented writes the kernel or the device refused, sent again datagram by datagram.
    public var offloadFallbacks = 0
    /// Datagrams received by each worker thread, in thread order.
    public var receivedPerThread: [Int] = []
    /// What the XDP program did, where the server has one; its datagrams are in the totals above too.
    public var xdp: XDPStatistics?

    /// All datagrams received but not echoed.
    public var dropped: Int { self.drops.values.reduce(0, +) }

    /// All counters at zero.
    public init() {}
}

/// The counters of one worker thread. Each worker is the only writer of its own block, so increments never contend;
/// readers on other threads see relaxed, eventually-consistent values. The block is padded to its own cache lines.
final class WorkerCounters: @unchecked Sendable {
    enum Slot: Int, CaseIterable {
        case received, receivedBytes, echoed, echoedBytes, receiveErrors, rateTableEntries, rateTableEvictions
        case eventsNotDelivered, stampSessions, coalescedRuns, offloadFallbacks
    }

    private static let padding = 16  // 128 bytes either side: no false sharing with a neighbour's block
    private static let dropBase = Slot.allCases.count
    private static let count = dropBase + DropReason.ordered.count
    private let storage: UnsafeMutablePointer<UnsafeAtomic<Int>.Storage>

    init() {
        let total = Self.count + 2 * Self.padding
        self.storage = .allocate(capacity: total)
        self.storage.initialize(repeating: .init(0), count: total)
    }

    deinit {
        self.storage.deinitialize(count: Self.count + 2 * Self.padding)
        self.storage.deallocate()
    }

    private func atomic(_ index: Int) -> UnsafeAtomic<Int> {
        UnsafeAtomic(at: self.storage + Self.padding + index)
    }

    @inline(__always)
    func add(_ slot: Slot, _ value: Int) {
        // Single writer: a relaxed load and store is enough, and cheaper than a locked read-modify-write.
        let atomic = self.atomic(slot.rawValue)
        atomic.store(atomic.load(ordering: .relaxed) &+ value, ordering: .relaxed)
    }

    /// Sets a slot that holds a level rather than a running count.
    func set(_ slot: Slot, _ value: Int) {
        self.atomic(slot.rawValue).store(value, ordering: .relaxed)
    }

    @inline(__always)
    func addDrop(_ reason: DropReason, _ value: Int = 1) {
        guard value > 0 else { return }
        let atomic = self.atomic(Self.dropBase + reason.ordinal)
        atomic.store(atomic.load(ordering: .relaxed) &+ value, ordering: .relaxed)
    }

    func value(_ slot: Slot) -> Int { self.atomic(slot.rawValue).load(ordering: .relaxed) }

    func drops(_ reason: DropReason) -> Int {
        self.atomic(Self.dropBase + reason.ordinal).load(ordering: .relaxed)
    }

    /// Adds this block's values to `statistics`.
    func accumulate(into statistics: inout EchoServerStatistics) {
        statistics.received += self.value(.received)
        statistics.receivedBytes += self.value(.receivedBytes)
        statistics.echoed += self.value(.echoed)
        statistics.echoedBytes += self.value(.echoedBytes)
        statistics.receiveErrors += self.value(.receiveErrors)
        statistics.rateTableEntries += self.value(.rateTableEntries)
        statistics.rateTableEvictions += self.value(.rateTableEvictions)
        statistics.eventsNotDelivered += self.value(.eventsNotDelivered)
        statistics.stampSessions += self.value(.stampSessions)
        statistics.coalescedRuns += self.value(.coalescedRuns)
        statistics.offloadFallbacks += self.value(.offloadFallbacks)
        for reason in DropReason.allCases {
            let count = self.drops(reason)
            if count > 0 { statistics.drops[reason, default: 0] += count }
        }
        statistics.receivedPerThread.append(self.value(.received))
    }
}
