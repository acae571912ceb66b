import Crypto
import NIOCore
import Synchronization
import TestSupport
import Testing
import UDPEcho

#if canImport(Glibc)
import Glibc
#endif

/// Test packets as an attacker would write them: random bytes of any length, well-formed base packets followed by
/// TLVs whose lengths lie, known TLV types at the wrong length, short TWAMP-Light headers, and authenticated packets
/// whose HMAC is one bit off. Bytes 0-3 of each carry its index (the sender's sequence number), which the reflector
/// copies into its reply, so that each reply can be checked against the packet that caused it.
struct StampFuzzer {
    var random: SplitMix64
    let key: [UInt8]?

    /// Whether packet `bytes` carries a base HMAC that verifies (authenticated mode).
    struct Packet {
        var bytes: [UInt8]
        var signed: Bool
    }

    var baseSize: Int { self.key == nil ? 44 : 112 }

    mutating func bytes(_ count: Int) -> [UInt8] {
        (0..<count).map { _ in UInt8.random(in: 0...255, using: &self.random) }
    }

    /// A base packet with a valid HMAC in authenticated mode, sequence number `index`, and zeros where the sender
    /// must leave them (so that it is not taken for a reflected packet).
    mutating func base(_ index: UInt32) -> [UInt8] {
        var packet = [UInt8](repeating: 0, count: self.baseSize)
        withUnsafeBytes(of: index.bigEndian) { packet.replaceSubrange(0..<4, with: $0) }
        let timestamp = self.bytes(8)
        packet.replaceSubrange((self.key == nil ? 4 : 16)..<(self.key == nil ? 12 : 24), with: timestamp)
        if let key = self.key { self.sign(&packet, key: key) }
        return packet
    }

    func sign(_ packet: inout [UInt8], key: [UInt8]) {
        let code = HMAC<SHA256>.authenticationCode(for: packet[0..<96], using: SymmetricKey(data: key))
        packet.replaceSubrange(96..<112, with: Array(code).prefix(16))
    }

    /// TLVs, some honest, most not: random flags, known and unknown types, lengths short, long and past the end.
    mutating func tlvs() -> [UInt8] {
        var tail: [UInt8] = []
        for _ in 0..<Int.random(in: 1...5, using: &self.random) {
            let type: UInt8 = [1, 2, 3, 4, 8, 0, 9, 255].randomElement(using: &self.random)!
            let valueLength = [0, 1, 2, 4, 8, 12, 16, 20, 36, 40, 100].randomElement(using: &self.random)!
            var declared = UInt16(valueLength)
            switch Int.random(in: 0..<4, using: &self.random) {
            case 0: declared = UInt16.random(in: 0...UInt16.max, using: &self.random)  // anything
            case 1: declared &+= UInt16.random(in: 1...8, using: &self.random)  // runs past what follows
            default: break
            }
            let flags: UInt8 = [0, 0x80, 0x40, 0x20, 0xFF].randomElement(using: &self.random)!
            tail += [flags, type, UInt8(declared >> 8), UInt8(declared & 0xFF)]
            tail += self.bytes(valueLength)
        }
        // Sometimes a dangling 1-3 bytes: not even a TLV header.
        if Bool.random(using: &self.random) { tail += self.bytes(Int.random(in: 1...3, using: &self.random)) }
        return tail
    }

    mutating func packet(_ index: UInt32) -> Packet {
        var packet: Packet
        switch Int.random(in: 0..<6, using: &self.random) {
        case 0:  // random bytes of any length
            packet = Packet(bytes: self.bytes(Int.random(in: 0...1600, using: &self.random)), signed: false)
        case 1:  // short: TWAMP-Light headers and less
            packet = Packet(bytes: self.bytes(Int.random(in: 0..<self.baseSize, using: &self.random)), signed: false)
        case 2:  // a base packet with one bit of the HMAC (or of what it covers) flipped
            var bytes = self.base(index)
            let bit = Int.random(in: (self.key == nil ? 4 : 32)..<(bytes.count * 8), using: &self.random)
            bytes[bit / 8] ^= 1 << (bit % 8)
            packet = Packet(bytes: bytes, signed: false)
        default:  // a valid base packet with lying TLVs
            packet = Packet(bytes: self.base(index) + self.tlvs(), signed: self.key != nil)
        }
        if packet.bytes.count >= 4 {
            withUnsafeBytes(of: index.bigEndian) { packet.bytes.replaceSubrange(0..<4, with: $0) }
            // The sequence number is under the HMAC: sign again what was signed.
            if packet.signed, let key = self.key { self.sign(&packet.bytes, key: key) }
        }
        return packet
    }
}

/// The reflector's input path under attack: 10,000 crafted test packets per mode leave it running, with every
/// datagram echoed or dropped and counted, and no reply longer than the test packet (or the 44-byte base packet a
/// short TWAMP-Light header is answered with): a STAMP reflector cannot be made an amplifier.
@Suite struct StampFuzzTests {
    @Test(arguments: [false, true])
    func craftedTestPacketsNeitherCrashNorAmplifyNorVanish(authenticated: Bool) async throws {
        let seed = UInt64.random(in: 0...UInt64.max)
        let key: [UInt8]? = authenticated ? Array("fuzzing key".utf8) : nil
        var fuzzer = StampFuzzer(random: SplitMix64(state: seed), key: key)
        let configuration = EchoServer.Configuration(
            address: HostAndPort(host: isolatedLoopback(), port: 0),
            reporting: .none,
            stamp: StampReflectorConfiguration(key: try key.map { try StampKey(bytes: $0) }, stateful: true)
        )
        try await withServer(configuration) { server in
            let client = try TestSocket()
            let total = 10_000
            let batch = 100
            var sent: [(length: Int, signed: Bool)] = []
            var replies = 0
            for start in stride(from: 0, to: total, by: batch) {
                for index in start..<(start + batch) {
                    let packet = fuzzer.packet(UInt32(index))
                    #expect(client.send(packet.bytes, to: server.localAddress) == 0)
                    sent.append((packet.bytes.count, packet.signed))
                }
                // Every datagram of the batch taken by the server, then every reply it sent read.
                let deadline = ContinuousClock.now + .seconds(20)
                while server.statistics.received < start + batch && ContinuousClock.now < deadline {
                    try await Task.sleep(for: .milliseconds(1))
                }
                try #require(server.statistics.received == start + batch, "seed \(seed)")
                while replies < server.statistics.echoed {
                    let reply = try #require(await client.receive(timeoutMilliseconds: 5000), "seed \(seed)")
                    replies += 1
                    let layoutSequence = authenticated ? 48 : 24
                    try #require(reply.bytes.count >= layoutSequence + 4, "seed \(seed): \(reply.bytes.count) bytes")
                    let index = reply.bytes[layoutSequence..<(layoutSequence + 4)].reduce(0) { $0 << 8 | Int($1) }
                    try #require(index < sent.count, "seed \(seed): a reply to no packet of ours (\(index))")
                    #expect(reply.bytes.count <= max(sent[index].length, 44), "seed \(seed): packet \(index)")
                    if authenticated { #expect(sent[index].signed, "seed \(seed): packet \(index) answered unsigned") }
                }
            }
            let statistics = server.statistics
            // Nothing vanished: each datagram echoed or dropped for a reason, and the client got each echo.
            #expect(statistics.received == total)
            #expect(statistics.echoed + statistics.dropped == total, "\(statistics.drops)")
            #expect(replies == statistics.echoed)
            #expect(await client.receive(timeoutMilliseconds: 100) == nil)
            #expect(statistics.drops[.malformed, default: 0] > 0)
            if authenticated {
                #expect(statistics.drops[.auth, default: 0] > 0)
                #expect(statistics.echoed == sent.filter(\.signed).count, "a signed packet not answered")
            }
            // Still serving.
            let valid = fuzzer.base(UInt32(total))
            #expect(client.send(valid, to: server.localAddress) == 0)
            #expect(await client.receive()?.bytes.count == valid.count)
        }
    }
}
