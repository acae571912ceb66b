/// What a reply is, read against the ring of probes it answers. The matchers are socket-free: they turn a reply's
/// bytes into a verdict, which the engine then counts, times and reports. A protocol is a packet writer and a matcher.
enum ReplyVerdict: Equatable {
    /// The reply to an outstanding probe, kept at `position`.
    case answer(sequence: UInt64, position: Int)
    /// Another reply to a probe already answered.
    case duplicate(sequence: UInt64)
    /// A reply to a probe already counted lost (its times are still known at `position`), or to one the ring has
    /// forgotten or that an ICMP error refused (nil: no times).
    case late(sequence: UInt64, position: Int?)
    /// Not the probe it names (`sequence` nil when which probe cannot be known). `resolves`: it names an outstanding
    /// probe, which it ends: that probe was answered, wrongly, and is not lost.
    case corrupt(sequence: UInt64?, reason: String, resolves: Bool)
}

/// Matches replies to `ping`/`bench` echo probes (``EchoProbeFormat``): by the sequence number, and byte for byte.
enum EchoReplyMatcher {
    /// The verdict on `reply`, from the flow whose probes are in `ring`, written by `format`, due at `scheduled`
    /// (by ring position).
    static func match(
        _ reply: UnsafeRawBufferPointer,
        ring: ProbeRing,
        format: EchoProbeFormat,
        scheduled: UnsafePointer<Int64>
    ) -> ReplyVerdict {
        guard let sequence = EchoProbeFormat.sequence(of: reply) else {
            return .corrupt(sequence: nil, reason: "shorter than a probe's header", resolves: false)
        }
        switch ring.lookUp(sequence) {
        case .notYetSent:
            return .damagedSequence(sequence, "which had not been sent yet")
        case .notSent:
            return .damagedSequence(sequence, "a probe the kernel refused to send")
        case .forgotten, .refused:
            // Refused: a reply after all (the ICMP error was about an earlier datagram, or the server came up).
            return .late(sequence: sequence, position: nil)
        case .outstanding(let position):
            if let difference = format.difference(reply, scheduledAt: scheduled[position]) {
                return .corrupt(sequence: sequence, reason: difference, resolves: true)
            }
            return .answer(sequence: sequence, position: position)
        case .answered:
            return .duplicate(sequence: sequence)
        case .lost(let position):
            guard format.difference(reply, scheduledAt: scheduled[position]) == nil else {
                return .corrupt(sequence: sequence, reason: "it differs from the probe", resolves: false)
            }
            return .late(sequence: sequence, position: position)
        }
    }
}

/// Matches reflected STAMP packets (or, from an echo server, the test packets themselves) to the test packets sent:
/// by the sender sequence number the reflector copied, checked by its copy of T1 (and, authenticated, the HMAC).
enum StampReplyMatcher {
    /// The verdict on `reply`, and its fields when it decodes, against `ring`, whose probes carried the T1 values
    /// `timestamps` (by ring position).
    static func match(
        _ reply: UnsafeRawBufferPointer,
        ring: ProbeRing,
        configuration: StampSenderConfiguration,
        timestamps: UnsafePointer<UInt64>
    ) -> (ReplyVerdict, StampReplyDecoder.Fields?) {
        let fields: StampReplyDecoder.Fields
        switch StampReplyDecoder.decode(reply, configuration) {
        case .failure(let error):
            return (.corrupt(sequence: nil, reason: error.description, resolves: false), nil)
        case .success(let decoded):
            fields = decoded
        }
        let sequence = ring.sequence(fromLow: fields.senderSequence)
        let verdict: ReplyVerdict
        switch ring.lookUp(sequence) {
        case .notYetSent:
            verdict = .damagedSequence(sequence, "which had not been sent yet")
        case .notSent:
            verdict = .damagedSequence(sequence, "a probe the kernel refused to send")
        case .forgotten, .refused:
            verdict = .late(sequence: sequence, position: nil)
        case .answered(let position):
            // A copy of an answered probe's reply is a duplicate only if it carries that probe's T1: an all-zero
            // packet (our sequence number 0, no timestamp) is not.
            verdict =
                fields.senderTimestamp == timestamps[position]
                ? .duplicate(sequence: sequence)
                : .corrupt(sequence: sequence, reason: "its copy of our timestamp differs", resolves: false)
        case .lost(let position):
            verdict =
                fields.senderTimestamp == timestamps[position]
                ? .late(sequence: sequence, position: position)
                : .corrupt(sequence: sequence, reason: "its copy of our timestamp differs", resolves: false)
        case .outstanding(let position):
            verdict =
                fields.senderTimestamp == timestamps[position]
                ? .answer(sequence: sequence, position: position)
                : .corrupt(sequence: sequence, reason: "its copy of our timestamp (T1) differs", resolves: true)
        }
        return (verdict, fields)
    }
}

extension ReplyVerdict {
    /// A reply whose sequence number was damaged (or that is not a reply of ours): which probe it was cannot be known.
    static func damagedSequence(_ sequence: UInt64, _ which: String) -> ReplyVerdict {
        .corrupt(sequence: nil, reason: "its sequence number (bytes 0-7) reads \(sequence), \(which)", resolves: false)
    }
}
