/// The probes a sender has sent, by sequence number, until they are answered, lost, or overwritten: a ring whose
/// capacity is a power of two, so that a probe's place is its sequence number's low bits.
///
/// One ring per flow in `ping` and `bench` (``ProbeFlow``), one for all targets in the mesh (``MeshProberState``);
/// what else a sender keeps per probe (when it was due, its kernel timestamps, its target) it keeps in arrays of its
/// own, indexed by the same ``position(_:)``. A probe that is still outstanding when the ring comes round to it again
/// is given up as lost first, so the ring never forgets a probe without counting it.
///
/// Socket-free: the reply matchers (``EchoReplyMatcher``, ``StampReplyMatcher``) read it, and the tests drive it
/// directly.
final class ProbeRing {
    enum State: UInt8 {
        /// Never sent, or the kernel refused to send it.
        case none = 0
        case outstanding, answered, lost, refused
    }

    /// What the ring knows of a sequence number a reply carries.
    enum LookUp: Equatable {
        /// Beyond the last one sent.
        case notYetSent
        /// A probe that the kernel would not send.
        case notSent
        /// Older than the ring remembers.
        case forgotten
        case outstanding(position: Int)
        case answered(position: Int)
        case lost(position: Int)
        case refused
    }

    private let mask: Int
    private let sequences: UnsafeMutablePointer<UInt64>
    private let states: UnsafeMutablePointer<UInt8>
    /// When each probe left (CLOCK_MONOTONIC, ns, the program's read): what the loss timeout counts from.
    let departure: UnsafeMutablePointer<Int64>
    private(set) var nextSequence: UInt64
    private var oldest: UInt64
    /// Probes outstanding now.
    private(set) var outstanding = 0
    /// Probes sent (less those the kernel refused).
    private(set) var sent = 0

    /// A ring of `capacity` probes (a power of two) whose first sequence number is `first`.
    init(capacity: Int, first: UInt64 = 0) {
        precondition(capacity > 0 && capacity & (capacity - 1) == 0, "a ring's capacity is a power of two")
        self.mask = capacity - 1
        self.sequences = .allocate(capacity: capacity)
        self.sequences.initialize(repeating: .max, count: capacity)
        self.states = .allocate(capacity: capacity)
        self.states.initialize(repeating: 0, count: capacity)
        self.departure = .allocate(capacity: capacity)
        self.departure.initialize(repeating: 0, count: capacity)
        self.nextSequence = first
        self.oldest = first
    }

    deinit {
        self.sequences.deallocate()
        self.states.deallocate()
        self.departure.deallocate()
    }

    /// Where probe `sequence` is kept (in this ring and in the sender's own arrays).
    @inline(__always)
    func position(_ sequence: UInt64) -> Int { Int(truncatingIfNeeded: sequence) & self.mask }

    /// Takes the next sequence number for a probe leaving at `departure`, outstanding from now. When the ring is
    /// full, the oldest probes are given up early and reported to `lost`.
    func next(departure: Int64, lost: (UInt64, Int) -> Void) -> (sequence: UInt64, position: Int) {
        if self.nextSequence - self.oldest > UInt64(self.mask) {
            self.expire(before: .max, upTo: self.nextSequence - UInt64(self.mask), lost)
        }
        let sequence = self.nextSequence
        self.nextSequence += 1
        let position = self.position(sequence)
        self.sequences[position] = sequence
        self.states[position] = State.outstanding.rawValue
        self.departure[position] = departure
        self.outstanding += 1
        self.sent += 1
        return (sequence, position)
    }

    /// Forgets the probe `sequence`, which the kernel did not send.
    func unsend(_ sequence: UInt64) {
        let position = self.position(sequence)
        if self.sequences[position] == sequence && self.states[position] == State.outstanding.rawValue {
            self.states[position] = State.none.rawValue
            self.outstanding -= 1
            self.sent -= 1
        }
    }

    func lookUp(_ sequence: UInt64) -> LookUp {
        guard sequence < self.nextSequence else { return .notYetSent }
        let position = self.position(sequence)
        guard self.sequences[position] == sequence else { return .forgotten }
        switch State(rawValue: self.states[position]) {
        case .outstanding: return .outstanding(position: position)
        case .answered: return .answered(position: position)
        case .lost: return .lost(position: position)
        case .refused: return .refused
        case .some(.none), nil: return .notSent
        }
    }

    /// Whether probe `sequence` is still in the ring (whatever became of it).
    func remembers(_ sequence: UInt64) -> Bool {
        sequence < self.nextSequence && self.sequences[self.position(sequence)] == sequence
    }

    /// Ends probe `sequence` as `state` (answered or refused); an outstanding probe is outstanding no more.
    func resolve(_ sequence: UInt64, as state: State) {
        let position = self.position(sequence)
        guard self.sequences[position] == sequence else { return }
        if self.states[position] == State.outstanding.rawValue { self.outstanding -= 1 }
        self.states[position] = state.rawValue
    }

    /// The full sequence number whose low 32 bits are `low` (STAMP carries 32): the latest one sent so far.
    func sequence(fromLow low: UInt32) -> UInt64 {
        let candidate = (self.nextSequence & ~0xFFFF_FFFF) | UInt64(low)
        return candidate >= self.nextSequence && candidate >= 1 << 32 ? candidate - (1 << 32) : candidate
    }

    /// When the oldest outstanding probe will be lost, if any is outstanding.
    func oldestDeadline(_ timeout: Int64) -> Int64? {
        guard self.outstanding > 0 else { return nil }
        var sequence = self.oldest
        while sequence < self.nextSequence {
            let position = self.position(sequence)
            if self.states[position] == State.outstanding.rawValue { return self.departure[position] + timeout }
            sequence += 1
        }
        return nil
    }

    /// Marks lost, in order, the outstanding probes that left before `limit` (each reported to `lost` with its
    /// position), and steps past resolved ones, up to sequence `end` (exclusive).
    func expire(before limit: Int64, upTo end: UInt64 = .max, _ lost: (UInt64, Int) -> Void) {
        while self.oldest < min(end, self.nextSequence) {
            let position = self.position(self.oldest)
            if self.sequences[position] == self.oldest && self.states[position] == State.outstanding.rawValue {
                guard self.departure[position] < limit else { return }
                self.states[position] = State.lost.rawValue
                self.outstanding -= 1
                lost(self.oldest, position)
            }
            self.oldest += 1
        }
    }
}
