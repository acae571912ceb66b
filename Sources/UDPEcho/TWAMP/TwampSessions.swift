import Atomics
import CUDPEcho
import Synchronization

/// One TWAMP test session a control connection negotiated: whose test packets to answer, how, and until when.
///
/// The serving threads read it without a lock; what they change (the reflector's sequence number and the counts)
/// is atomic. A session's packets come from one address and port, so the kernel gives them all to one serving thread,
/// and the atomics are never contended.
final class TwampTestSession: Sendable {
    /// The session identifier of the Accept-Session.
    let sid: [UInt8]
    /// The Session-Sender's address and port: only its packets are answered.
    let sender: EndpointKey
    /// Authenticated or encrypted mode's keys; nil in unauthenticated mode.
    let cipher: TestSessionCipher?
    /// The traffic class byte the replies leave with: the DSCP the request's Type-P descriptor asked for (RFC 5357
    /// §3.5), ECN not-ECT; nil for the system's.
    let tos: UInt8?
    /// The reflector's own sequence number (RFC 5357 §4.2.1: it counts the packets it reflects, from zero).
    private let sequence = ManagedAtomic<UInt32>(0)
    /// Test packets answered, and refused because their HMAC did not verify.
    let reflected = ManagedAtomic<Int>(0)
    let refused = ManagedAtomic<Int>(0)
    /// CLOCK_MONOTONIC ns after which the session's packets are no longer answered: its longest allowed duration
    /// from Start-Sessions, or its timeout after Stop-Sessions.
    let deadline: ManagedAtomic<Int64>

    init(sid: [UInt8], sender: EndpointKey, cipher: TestSessionCipher?, tos: UInt8? = nil, deadline: Int64) {
        self.sid = sid
        self.sender = sender
        self.cipher = cipher
        self.tos = tos
        self.deadline = ManagedAtomic(deadline)
    }

    /// The next reflector sequence number.
    func nextSequence() -> UInt32 { self.sequence.loadThenWrappingIncrement(ordering: .relaxed) }

    /// Ends the session `after` ns from now, unless it ends sooner already.
    func end(at time: Int64) {
        var current = self.deadline.load(ordering: .relaxed)
        while time < current {
            let (exchanged, original) = self.deadline.compareExchange(
                expected: current,
                desired: time,
                ordering: .relaxed
            )
            if exchanged { return }
            current = original
        }
    }
}

/// The TWAMP test sessions that are running, shared between the control connections (which add and end them) and
/// the serving threads (which answer their packets).
///
/// A serving thread takes the table once per batch (a copy of the dictionary, which costs a reference count)
/// and looks each packet's source up in it; a control connection's change replaces the dictionary. Sessions past their
/// deadline are swept out on each change and by ``sweep(now:)``.
public final class TwampSessionTable: Sendable {
    private let sessions = Mutex<[EndpointKey: TwampTestSession]>([:])
    /// Sessions in the table, kept beside it for readers that should not take the lock.
    private let count = ManagedAtomic<Int>(0)

    public init() {}

    /// The running sessions, for one batch.
    var current: [EndpointKey: TwampTestSession] { self.sessions.withLock { $0 } }

    /// Sessions in the table now.
    public var sessionCount: Int { self.count.load(ordering: .relaxed) }

    /// Adds sessions that have just started; false (and nothing added) if one's sender already has a session.
    func start(_ added: [TwampTestSession], now: Int64) -> Bool {
        self.sessions.withLock { table in
            Self.sweep(&table, now: now)
            guard added.allSatisfy({ table[$0.sender] == nil }),
                Set(added.map(\.sender)).count == added.count
            else { return false }
            for session in added { table[session.sender] = session }
            self.count.store(table.count, ordering: .relaxed)
            return true
        }
    }

    /// Whether a sender already has a running session.
    func contains(_ sender: EndpointKey) -> Bool { self.sessions.withLock { $0[sender] != nil } }

    /// Removes the sessions at once (their control connection closed).
    func remove(_ removed: [TwampTestSession]) {
        self.sessions.withLock { table in
            for session in removed where table[session.sender] === session { table[session.sender] = nil }
            self.count.store(table.count, ordering: .relaxed)
        }
    }

    /// Drops sessions past their deadline.
    public func sweep(now: Int64 = cudpecho_now_ns()) {
        self.sessions.withLock { table in
            Self.sweep(&table, now: now)
            self.count.store(table.count, ordering: .relaxed)
        }
    }

    private static func sweep(_ table: inout [EndpointKey: TwampTestSession], now: Int64) {
        guard table.values.contains(where: { $0.deadline.load(ordering: .relaxed) <= now }) else { return }
        table = table.filter { $0.value.deadline.load(ordering: .relaxed) > now }
    }
}
