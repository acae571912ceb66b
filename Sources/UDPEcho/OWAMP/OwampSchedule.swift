import Crypto
import _CryptoExtras

/// When each test packet of an OWAMP session is sent (RFC 4656 §3.5 and §5): packet *i* leaves at the session's
/// start plus the gaps of slots 0…*i* (slot *k* mod the slot count), where an exponential slot's gap is drawn from
/// RFC 4656 §5.1's generator: AES-128 in counter mode keyed with the SID, and Knuth's algorithm S for the
/// exponential distribution, in 32.32 fixed point, bit for bit as perfSONAR's `schedule.c`. Sender and receiver
/// compute the same times: the receiver needs them for the send times of lost packets.
///
/// ```swift
/// var schedule = OwampSchedule(sid: sid, slots: [ScheduleSlot(kind: .exponential, duration: .milliseconds(100))])
/// let first = schedule.next()  // the first packet's offset from the start, NTP 32.32 seconds
/// ```
public struct OwampSchedule: Sendable {
    public let slots: [ScheduleSlot]
    private let key: SymmetricKey
    private var counter = [UInt8](repeating: 0, count: 16)
    private var random = [UInt8](repeating: 0, count: 16)
    /// How many gaps have been drawn, and their sum (NTP 32.32 seconds).
    public private(set) var index = 0
    public private(set) var offset: UInt64 = 0

    /// The schedule of the session `sid` (16 bytes) with `slots` (at least one).
    public init(sid: [UInt8], slots: [ScheduleSlot]) {
        precondition(!slots.isEmpty, "a schedule has at least one slot")
        self.slots = slots
        self.key = SymmetricKey(data: sid.padded(to: 16))
    }

    /// The next packet's offset from the session's start (NTP 32.32 seconds).
    public mutating func next() -> UInt64 {
        let slot = self.slots[self.index % self.slots.count]
        self.index += 1
        let gap =
            switch slot.kind {
            case .exponential: Self.multiply(self.exponential(), slot.parameter)
            case .fixed: slot.parameter
            }
        self.offset &+= gap
        return self.offset
    }

    /// 32.32 × 32.32, as perfSONAR's `OWPNum64Mult`: the middle 64 bits of the product.
    static func multiply(_ x: UInt64, _ y: UInt64) -> UInt64 {
        let (high, low) = x.multipliedFullWidth(by: y)
        return high << 32 | low >> 32
    }

    /// A uniform 32-bit fraction: each AES block of the counter gives four, and the counter counts every draw.
    private mutating func uniform() -> UInt64 {
        let quarter = Int(self.counter[15] & 3)
        if quarter == 0 {
            var block = self.counter
            try! AES.permute(&block, key: self.key)
            self.random = block
        }
        for index in stride(from: 15, through: 0, by: -1) {
            self.counter[index] &+= 1
            if self.counter[index] != 0 { break }
        }
        var value: UInt64 = 0
        for byte in self.random[(4 * quarter)..<(4 * quarter + 4)] { value = value << 8 | UInt64(byte) }
        return value
    }

    /// The table of algorithm S: Q[k] = ln 2 + (ln 2)²/2! + … + (ln 2)^k/k!, as 32-bit fractions.
    private static let q: [UInt64] = [
        0, 0xB172_17F8, 0xEEF1_93F7, 0xFD27_1862, 0xFF9D_6DD0, 0xFFF4_CFD0, 0xFFFE_E819, 0xFFFF_E7FF, 0xFFFF_FE2B,
        0xFFFF_FFE0, 0xFFFF_FFFE, 0xFFFF_FFFF,
    ]

    /// An exponentially distributed number of mean 1, in 32.32 (RFC 4656 §5.1, Knuth's algorithm S).
    private mutating func exponential() -> UInt64 {
        let ln2 = Self.q[1]
        var u = self.uniform()
        var j: UInt64 = 0
        while u & 0x8000_0000 != 0 && j < 32 {
            u <<= 1
            j += 1
        }
        u = (u << 1) & 0xFFFF_FFFF
        if u < ln2 { return Self.multiply(j << 32, ln2) &+ u }
        var k = 2
        while k < Self.q.count && u >= Self.q[k] { k += 1 }
        var v = self.uniform()
        if k >= 2 {
            for _ in 2...k {
                let next = self.uniform()
                if next < v { v = next }
            }
        }
        return Self.multiply((j << 32) &+ v, ln2)
    }
}
