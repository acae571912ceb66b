/// The messages OWAMP-Control adds to those it shares with TWAMP (RFC 4656 §3.5–3.8): the schedule slots after a
/// Request-Session, Stop-Sessions with each sender's next sequence number and skipped ranges, Fetch-Session, its
/// Fetch-Ack, and the 25-byte packet records a receiver keeps and a fetch returns. As in ``SessionRequest``, the
/// HMAC fields are zeros here; ``ControlCipher`` fills and checks them.

/// A slot of a test session's schedule (RFC 4656 §3.5): the gap before a packet, drawn from an exponential
/// distribution of this mean, or fixed.
public struct ScheduleSlot: Sendable, Equatable {
    public enum Kind: UInt8, Sendable {
        /// A pseudo-random gap, exponentially distributed with the parameter as its mean (RFC 4656 §5.1).
        case exponential = 0
        /// The parameter itself.
        case fixed = 1
    }

    public var kind: Kind
    /// The mean or the fixed gap, as an NTP-format duration (32.32 seconds).
    public var parameter: UInt64

    static let size = 16

    public init(kind: Kind, parameter: UInt64) {
        self.kind = kind
        self.parameter = parameter
    }

    /// A slot whose gap is `duration` (fixed) or has `duration` as its mean (exponential).
    public init(kind: Kind, duration: Duration) {
        self.init(kind: kind, parameter: IPPMTime.ntpDuration(nanoseconds: duration.nanoseconds))
    }

    func encoded() -> [UInt8] {
        var bytes = [UInt8](repeating: 0, count: Self.size)
        bytes[0] = self.kind.rawValue
        bytes.put(self.parameter, at: 8)
        return bytes
    }

    init(decoding bytes: ArraySlice<UInt8>) throws(ControlProtocolError) {
        let bytes = Array(bytes)
        guard bytes.count == Self.size else { throw ControlProtocolError("a slot is 16 bytes, not \(bytes.count)") }
        guard let kind = Kind(rawValue: bytes[0]) else {
            throw ControlProtocolError("slot type \(bytes[0]) is neither exponential (0) nor fixed (1)")
        }
        self.kind = kind
        self.parameter = bytes.get(UInt64.self, at: 8)
    }
}

/// A range of sequence numbers a sender skipped (it fell behind its schedule by more than the loss timeout).
public struct OwampSkipRange: Sendable, Equatable {
    public var first: UInt32
    public var last: UInt32

    public init(first: UInt32, last: UInt32) {
        self.first = first
        self.last = last
    }

    public func contains(_ sequence: UInt32) -> Bool { sequence >= self.first && sequence <= self.last }
}

/// What a sender says of one session in Stop-Sessions: how many packets it sent (the next sequence number) and
/// the ranges it skipped.
public struct OwampSessionDescription: Sendable, Equatable {
    public var sid: [UInt8]
    public var nextSequence: UInt32
    public var skips: [OwampSkipRange]

    public init(sid: [UInt8], nextSequence: UInt32, skips: [OwampSkipRange] = []) {
        self.sid = sid
        self.nextSequence = nextSequence
        self.skips = skips
    }

    /// Its size on the wire: the SID, then the next sequence number, the count and the ranges, padded to a block.
    var size: Int { Self.size(skips: self.skips.count) }

    static func size(skips: Int) -> Int { 16 + (8 + 8 * skips + 15) / 16 * 16 }
}

/// OWAMP's Stop-Sessions (command 3, RFC 4656 §3.8): each side sends one when its sessions end, describing the
/// sessions it sent; the other answers with its own.
struct OwampStopSessions: Sendable, Equatable {
    var accept: IPPMAccept
    var sessions: [OwampSessionDescription]

    init(accept: IPPMAccept, sessions: [OwampSessionDescription]) {
        self.accept = accept
        self.sessions = sessions
    }

    /// The message, its HMAC block zeros.
    func encoded() -> [UInt8] {
        var bytes = [UInt8](repeating: 0, count: 16)
        bytes[0] = ControlCommand.stopSessions.rawValue
        bytes[1] = self.accept.rawValue
        bytes.put(UInt32(self.sessions.count), at: 4)
        for session in self.sessions {
            var part = session.sid.padded(to: 16) + [UInt8](repeating: 0, count: session.size - 16)
            part.put(session.nextSequence, at: 16)
            part.put(UInt32(session.skips.count), at: 20)
            for (index, skip) in session.skips.enumerated() {
                part.put(skip.first, at: 24 + 8 * index)
                part.put(skip.last, at: 28 + 8 * index)
            }
            bytes += part
        }
        return bytes + [UInt8](repeating: 0, count: 16)
    }

    /// How long the message whose first bytes are `prefix` is, if `prefix` holds enough to tell (nil: read more).
    /// Throws if it names more sessions or skipped ranges than `maximumSessions` and `maximumSkips` (each).
    static func length(
        of prefix: (Range<Int>) -> ArraySlice<UInt8>?,
        maximumSessions: Int,
        maximumSkips: Int
    ) throws(ControlProtocolError) -> Int? {
        guard let header = prefix(0..<16) else { return nil }
        let count = Array(header).get(UInt32.self, at: 4)
        guard count <= maximumSessions else {
            throw ControlProtocolError("Stop-Sessions describes \(count) sessions; at most \(maximumSessions) can be")
        }
        var offset = 16
        for _ in 0..<count {
            guard let counts = prefix((offset + 16)..<(offset + 24)) else { return nil }
            let skips = Array(counts).get(UInt32.self, at: 4)
            guard skips <= maximumSkips else {
                throw ControlProtocolError("Stop-Sessions names \(skips) skipped ranges; at most \(maximumSkips)")
            }
            offset += OwampSessionDescription.size(skips: Int(skips))
        }
        return offset + 16
    }

    /// Decodes a whole message (its length as ``length(of:maximumSessions:maximumSkips:)`` found).
    init(decoding bytes: [UInt8]) throws(ControlProtocolError) {
        guard bytes.count >= 32, bytes.count % 16 == 0, bytes[0] == ControlCommand.stopSessions.rawValue else {
            throw ControlProtocolError("not an OWAMP Stop-Sessions message")
        }
        guard let accept = IPPMAccept(rawValue: bytes[1]) else {
            throw ControlProtocolError("Stop-Sessions has an unknown Accept value \(bytes[1])")
        }
        self.accept = accept
        let count = Int(bytes.get(UInt32.self, at: 4))
        var offset = 16
        var sessions: [OwampSessionDescription] = []
        for _ in 0..<count {
            guard offset + 32 <= bytes.count - 16 else { throw ControlProtocolError("Stop-Sessions is cut short") }
            let skipCount = Int(bytes.get(UInt32.self, at: offset + 20))
            let size = OwampSessionDescription.size(skips: skipCount)
            guard offset + size <= bytes.count - 16 else { throw ControlProtocolError("Stop-Sessions is cut short") }
            var skips: [OwampSkipRange] = []
            var previous: UInt32?
            for index in 0..<skipCount {
                let skip = OwampSkipRange(
                    first: bytes.get(UInt32.self, at: offset + 24 + 8 * index),
                    last: bytes.get(UInt32.self, at: offset + 28 + 8 * index)
                )
                guard skip.first <= skip.last, previous.map({ skip.first > $0 }) ?? true else {
                    throw ControlProtocolError("Stop-Sessions' skipped ranges are reversed or out of order")
                }
                previous = skip.last
                skips.append(skip)
            }
            sessions.append(
                OwampSessionDescription(
                    sid: Array(bytes[offset..<(offset + 16)]),
                    nextSequence: bytes.get(UInt32.self, at: offset + 16),
                    skips: skips
                )
            )
            offset += size
        }
        guard offset + 16 == bytes.count else { throw ControlProtocolError("Stop-Sessions has bytes left over") }
        self.sessions = sessions
    }
}

/// Fetch-Session (48 bytes, command 4): the records of one session the server received, those with sequence
/// numbers `begin...end` (0 and 0xFFFFFFFF: all of them).
struct FetchSession: Sendable, Equatable {
    var begin: UInt32
    var end: UInt32
    var sid: [UInt8]

    static let size = 48

    func encoded() -> [UInt8] {
        var bytes = [UInt8](repeating: 0, count: Self.size)
        bytes[0] = ControlCommand.fetchSession.rawValue
        bytes.put(self.begin, at: 8)
        bytes.put(self.end, at: 12)
        bytes.replaceSubrange(16..<32, with: self.sid.padded(to: 16))
        return bytes
    }

    init(begin: UInt32 = 0, end: UInt32 = .max, sid: [UInt8]) {
        self.begin = begin
        self.end = end
        self.sid = sid
    }

    init(decoding bytes: [UInt8]) throws(ControlProtocolError) {
        guard bytes.count == Self.size, bytes[0] == ControlCommand.fetchSession.rawValue else {
            throw ControlProtocolError("not a Fetch-Session message")
        }
        self.begin = bytes.get(UInt32.self, at: 8)
        self.end = bytes.get(UInt32.self, at: 12)
        guard self.begin <= self.end else {
            throw ControlProtocolError("Fetch-Session asks for \(self.begin)...\(self.end), an empty range")
        }
        self.sid = Array(bytes[16..<32])
    }
}

/// Fetch-Ack (32 bytes): whether the server has the session, and if so whether it is finished, the sender's next
/// sequence number and skipped ranges, and how many records follow.
struct FetchAck: Sendable, Equatable {
    var accept: IPPMAccept
    var finished: Bool
    var nextSequence: UInt32
    var skipCount: UInt32
    var recordCount: UInt32

    static let size = 32

    func encoded() -> [UInt8] {
        var bytes = [UInt8](repeating: 0, count: Self.size)
        bytes[0] = self.accept.rawValue
        bytes[1] = self.finished ? 1 : 0
        bytes.put(self.nextSequence, at: 4)
        bytes.put(self.skipCount, at: 8)
        bytes.put(self.recordCount, at: 12)
        return bytes
    }

    init(
        accept: IPPMAccept,
        finished: Bool = false,
        nextSequence: UInt32 = 0,
        skipCount: UInt32 = 0,
        recordCount: UInt32 = 0
    ) {
        self.accept = accept
        self.finished = finished
        self.nextSequence = nextSequence
        self.skipCount = skipCount
        self.recordCount = recordCount
    }

    init(decoding bytes: [UInt8]) throws(ControlProtocolError) {
        guard bytes.count == Self.size else {
            throw ControlProtocolError("a Fetch-Ack is 32 bytes, not \(bytes.count)")
        }
        guard let accept = IPPMAccept(rawValue: bytes[0]) else {
            throw ControlProtocolError("Fetch-Ack has an unknown Accept value \(bytes[0])")
        }
        self.accept = accept
        self.finished = bytes[1] != 0
        self.nextSequence = bytes.get(UInt32.self, at: 4)
        self.skipCount = bytes.get(UInt32.self, at: 8)
        self.recordCount = bytes.get(UInt32.self, at: 12)
    }
}

/// One test packet as its receiver saw it (RFC 4656 §3.7's 25-byte record): when it was sent and received, by
/// whose clocks with what error, and the TTL it arrived with. A lost packet's receive time is zero.
public struct OwampRecord: Sendable, Equatable {
    public var sequence: UInt32
    /// NTP timestamps.
    public var sendTime: UInt64
    public var receiveTime: UInt64
    public var sendError: StampErrorEstimate
    public var receiveError: StampErrorEstimate
    /// 255 when unknown.
    public var ttl: UInt8

    static let size = 25

    public var isLost: Bool { self.receiveTime == 0 }

    public init(
        sequence: UInt32,
        sendTime: UInt64,
        receiveTime: UInt64,
        sendError: StampErrorEstimate,
        receiveError: StampErrorEstimate,
        ttl: UInt8
    ) {
        self.sequence = sequence
        self.sendTime = sendTime
        self.receiveTime = receiveTime
        self.sendError = sendError
        self.receiveError = receiveError
        self.ttl = ttl
    }

    func encode(into bytes: inout [UInt8]) {
        let start = bytes.count
        bytes += [UInt8](repeating: 0, count: Self.size)
        bytes.put(self.sequence, at: start)
        bytes.put(self.sendError.raw, at: start + 4)
        bytes.put(self.receiveError.raw, at: start + 6)
        bytes.put(self.sendTime, at: start + 8)
        bytes.put(self.receiveTime, at: start + 16)
        bytes[start + 24] = self.ttl
    }

    init(decoding bytes: [UInt8], at offset: Int) {
        self.sequence = bytes.get(UInt32.self, at: offset)
        self.sendError = StampErrorEstimate(raw: bytes.get(UInt16.self, at: offset + 4))
        self.receiveError = StampErrorEstimate(raw: bytes.get(UInt16.self, at: offset + 6))
        self.sendTime = bytes.get(UInt64.self, at: offset + 8)
        self.receiveTime = bytes.get(UInt64.self, at: offset + 16)
        self.ttl = bytes[offset + 24]
    }

    /// Records packed one after another, zero-padded to whole blocks (as a fetch sends them).
    static func packed(_ records: [OwampRecord]) -> [UInt8] {
        var bytes: [UInt8] = []
        bytes.reserveCapacity((records.count * Self.size + 15) / 16 * 16)
        for record in records { record.encode(into: &bytes) }
        return bytes.padded(to: (bytes.count + 15) / 16 * 16)
    }
}
