/// Matches replies to mesh probes (``MeshProbe``), socket-free: by the sequence number the ring remembers, the
/// address the reply came from (the probed target's, and no other), and byte for byte.
enum MeshReplyMatcher {
    /// What a reply is, and whose.
    enum Verdict: Equatable {
        /// The reply to the outstanding probe at `position`, of target `target`.
        case answer(target: Int, position: Int)
        /// Another reply to a probe already answered, or one after its loss timeout (the probe is counted lost, and
        /// not again).
        case duplicate(target: Int)
        /// From the target's address, naming one of its probes, but not that probe's bytes (or a sequence number not
        /// sent yet).
        case corrupt(target: Int)
        /// Not a reply to a probe the ring remembers, or not from the target it names: nobody's to count.
        case ignored
    }

    /// The verdict on `reply` from `source`, against the probes in `ring` (each one's target and flow at its
    /// position in `targetOf` and `flowOf`), the targets' addresses `keys` (nil for a target no longer probed), and
    /// the probe size `size`.
    static func match(
        _ reply: UnsafeRawBufferPointer,
        from source: EndpointKey?,
        ring: ProbeRing,
        targetOf: [Int32],
        flowOf: [UInt16],
        keys: [EndpointKey?],
        size: Int
    ) -> Verdict {
        guard reply.count >= MeshProbe.headerSize, let source else { return .ignored }
        let sequence = UInt64(littleEndian: reply.loadUnaligned(as: UInt64.self))
        let claimed = Int(UInt32(littleEndian: reply.loadUnaligned(fromByteOffset: 8, as: UInt32.self)))
        let position: Int
        let outstanding: Bool
        switch ring.lookUp(sequence) {
        case .notYetSent:
            // Counted against the target it names only if it came from that target's address.
            return claimed < keys.count && keys[claimed] == source ? .corrupt(target: claimed) : .ignored
        case .forgotten, .notSent, .refused:
            return .ignored
        case .outstanding(let at):
            (position, outstanding) = (at, true)
        case .answered(let at), .lost(let at):
            (position, outstanding) = (at, false)
        }
        let target = Int(targetOf[position])
        guard target >= 0, target < keys.count, keys[target] == source else { return .ignored }
        guard
            MeshProbe.matches(
                reply,
                size: size,
                sequence: sequence,
                target: UInt32(target),
                flow: flowOf[position]
            )
        else { return .corrupt(target: target) }
        return outstanding ? .answer(target: target, position: position) : .duplicate(target: target)
    }
}
