import CUDPEcho
import NIOCore
import Testing

@testable import UDPEcho

/// What the server writes into the XDP program's configuration, checked without a kernel (the namespace tests in
/// udpechoTests/XDPTests run the program itself).
@Suite struct XDPConfigurationTests {
    static let local = try! SocketAddress(ipAddress: "198.51.100.1", port: 7000)
    static let coarse = UInt32(UDPECHO_XDP_COARSE_CLOCK.rawValue)

    /// The guards' clock is the coarse one only where every token bucket holds at least 50 ms of refill (a tick late
    /// then loses nothing), and never for STAMP, whose T2 comes from it.
    @Test func theCoarseClockOnlyWhereEveryBucketHoldsFiftyMilliseconds() {
        func flags(_ guards: GuardConfiguration, stamp: StampReflectorConfiguration? = nil) -> UInt32 {
            XDPPath.configuration(local: Self.local, guards: guards, stamp: stamp, reflectTOS: false).flags
        }
        #expect(flags(GuardConfiguration()) & Self.coarse != 0)
        #expect(flags(.none) & Self.coarse != 0)
        let tight = GuardConfiguration(rateLimit: RateLimit(perSecond: 1000, burst: 1))
        #expect(flags(tight) & Self.coarse == 0)
        let fifty = GuardConfiguration(rateLimit: RateLimit(perSecond: 1000, burst: 50))
        #expect(flags(fifty) & Self.coarse != 0)
        let budget = GuardConfiguration(rateLimit: nil, globalRate: 1e9)
        #expect(flags(budget) & Self.coarse != 0)
        #expect(flags(GuardConfiguration(), stamp: StampReflectorConfiguration()) & Self.coarse == 0)
    }

    /// The rate limiter's prefix masks, as the address's two 64-bit words are in memory.
    @Test func prefixMasksCoverTheirBits() {
        #expect(XDPPath.prefixMask(bits: 0) == (0, 0))
        #expect(XDPPath.prefixMask(bits: 4) == (UInt64(0xF0).littleEndian, 0))
        #expect(XDPPath.prefixMask(bits: 64) == (UInt64.max, 0))
        // An IPv4 /24, mapped: the first 15 bytes.
        #expect(XDPPath.prefixMask(bits: 120) == (UInt64.max, UInt64(0x00FF_FFFF_FFFF_FFFF).littleEndian))
        #expect(XDPPath.prefixMask(bits: 128) == (UInt64.max, UInt64.max))
    }
}
