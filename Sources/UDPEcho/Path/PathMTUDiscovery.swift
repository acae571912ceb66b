import Atomics
import CUDPEcho
public import NIOCore

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// Packetization-layer path MTU discovery over UDP echo (RFC 8899, DPLPMTUD): the largest datagram that makes the
/// round trip to an echo server whole, found with probes that may not be fragmented.
///
/// Probes carry DF (IPv4) or may not be fragmented (IPv6) and ignore what the kernel learnt of the path before
/// (IP_PMTUDISC_PROBE), so each size is tried for itself. A probe counts as through when its echo comes back whole.
/// An ICMP "fragmentation needed" or "packet too big" is used when it arrives (its MTU bounds the search and is
/// tried next), and not relied on: a probe that gets neither an echo nor an ICMP message in `attempts` tries is
/// too big as well (a black hole, or a router whose ICMP is filtered). The search starts at the largest datagram the
/// local interface can send, confirms the base size (1200 bytes of IP packet, RFC 8899's BASE_PLPMTU), searches
/// between them by halves, and confirms the result once more at the end.
///
/// ```swift
/// let target = try SocketAddress(ipAddress: "198.51.100.2", port: 1337)
/// let result = try await PathMTUDiscovery.run(.init(target: target))
/// print(result.largestPayload, result.ipMTU)
/// ```
public enum PathMTUDiscovery {
    /// What to probe and how patiently.
    public struct Configuration: Sendable {
        /// The echo server.
        public var target: SocketAddress
        /// How long to wait for each probe's echo.
        public var probeTimeout: Duration
        /// Tries per size before a size without an answer counts as too big (RFC 8899's MAX_PROBES is 3).
        public var attempts: Int
        /// A bound on the probes of a whole search.
        public var maximumProbes: Int

        /// A configuration: 3 tries of 300 ms per size, at most 100 probes.
        public init(
            target: SocketAddress,
            probeTimeout: Duration = .milliseconds(300),
            attempts: Int = 3,
            maximumProbes: Int = 100
        ) {
            self.target = target
            self.probeTimeout = probeTimeout
            self.attempts = attempts
            self.maximumProbes = maximumProbes
        }
    }

    /// What one probe found.
    public enum Outcome: Sendable, Equatable {
        /// The echo came back whole after this many nanoseconds.
        case echoed(roundTrip: Int64)
        /// An ICMP message said the probe was too big for a link on the way: that link's MTU (0 if not given).
        case fragmentationNeeded(mtu: Int)
        /// The local interface cannot send it: its MTU.
        case tooBigToSend(mtu: Int)
        /// The echo came back cut to this many bytes: the echo server (or something on the way) holds no more.
        case truncated(bytes: Int)
        /// A reply to this probe (its sequence number) that is not its echo: this many bytes, altered.
        case damaged(bytes: Int)
        /// No echo and no ICMP message within the timeout.
        case noAnswer
        /// ICMP port unreachable: nothing listens at the target.
        case refused
    }

    /// One probe of the search.
    public struct Probe: Sendable, Equatable {
        /// UDP payload bytes.
        public var size: Int
        /// Which try at this size (1...attempts).
        public var attempt: Int
        /// What came of it: an echo, an ICMP message or a local refusal saying it was too big, a cut echo, or nothing.
        public var outcome: Outcome
    }

    /// What the search found.
    public struct Result: Sendable {
        /// The largest UDP payload whose echo came back whole.
        public var largestPayload: Int
        /// The IP MTU that payload implies: it plus the IP and UDP headers (28 bytes over IPv4, 48 over IPv6).
        public var ipMTU: Int
        /// The IP and UDP headers' bytes.
        public var headers: Int
        /// Every probe sent, in order.
        public var probes: [Probe]
        /// How long the search took.
        public var elapsed: Duration
        /// The MTUs that ICMP messages reported, in the order they came.
        public var icmpMTUs: [Int]
        /// Sizes above the result got neither an echo nor an ICMP message: a black hole for them (ICMP filtered),
        /// found without ICMP's help.
        public var blackHole: Bool
        /// The size the echo server cut a larger probe's echo to, when one came back cut: the limit is the server's
        /// buffer, not the path.
        public var truncatedAt: Int?
        /// The local interface's limit, when the search met it.
        public var localMTU: Int?
        /// Whether the size was confirmed by a last probe after the search.
        public var confirmed: Bool
        /// The share of tries lost at sizes that were echoed in the end (a try unanswered, then a later one echoed):
        /// loss on the path that has nothing to do with size. 0 on a clean path.
        public var lossRate: Double
        /// On a lossy path, the chance that the size just above the result was called too big by loss alone (it
        /// went unanswered in every try it got): the result is that sure. nil where no size was called too big for
        /// want of an answer, or nothing was lost.
        public var tooBigByChance: Double?
    }

    /// The IP packet size RFC 8899 takes as the base that every path is expected to carry.
    public static let basePacket = 1200

    /// Searches; returns once the largest size is found and confirmed, or throws ``EchoError/timeout(_:peer:)``
    /// when no size at all is answered, ``EchoError/refused(peer:)`` when nothing listens,
    /// ``EchoError/badEchoes(peer:reason:)`` when the server answers but never with the probe itself, and
    /// ``EchoError/cancelled`` when the task is cancelled (within 50 ms).
    ///
    /// On a lossy path a size that goes unanswered may only have been lost: once a try has been lost at a size
    /// that came back later, each size gets as many tries as make its "too big" wrong by chance less than once in a
    /// thousand (up to 12), and a size called too big with fewer is tried again before the result stands.
    ///
    /// - Parameters:
    ///   - configuration: The target, how long to wait for each probe and how many probes to send at most.
    ///   - onProbe: Called after each probe, from the probing thread.
    public static func run(
        _ configuration: Configuration,
        onProbe: (@Sendable (Probe) -> Void)? = nil
    ) async throws(EchoError) -> Result {
        guard configuration.attempts >= 1, configuration.maximumProbes >= 1, configuration.probeTimeout > .zero else {
            throw .invalidConfiguration("the attempts, the probe limit and the timeout must be more than 0")
        }
        let fd = configuration.target.withRawAddress { cudpecho_mtu_socket($0, $1) }
        guard fd >= 0 else {
            throw .socket(operation: "connect to", address: configuration.target.hostPortDescription, errno: -fd)
        }
        let cancelled = ManagedAtomic(false)
        let outcome: Swift.Result<Result, EchoError>
        do {
            outcome = try await runOnOwnThread("path MTU discovery") {
                var search = Search(configuration, descriptor: fd, cancelled: cancelled, onProbe: onProbe)
                let result = search.run()
                close(fd)
                return result
            } onCancel: {
                cancelled.store(true, ordering: .relaxed)
            }
        } catch {
            close(fd)  // the search never ran
            throw error
        }
        return try outcome.get()
    }

    /// The search's state, on the probing thread.
    struct Search {
        let configuration: Configuration
        let fd: Int32
        let cancelled: ManagedAtomic<Bool>
        let onProbe: (@Sendable (Probe) -> Void)?
        let headers: Int
        /// Tries at sizes that were echoed in the end, and how many of them went unanswered first.
        var triesAtEchoedSizes = 0
        var lostAtEchoedSizes = 0
        /// Sizes called too big for want of an answer, with the tries each got.
        var unanswered: [Int: Int] = [:]
        /// Replies to a probe that were not its echo (altered, or cut again below a size already cut).
        var damaged = 0
        var lastDamage: String?
        var probes: [Probe] = []
        var icmpMTUs: [Int] = []
        var localMTU: Int?
        var truncatedAt: Int?
        var sequence: UInt64 = 0
        var buffer = [UInt8](repeating: 0, count: 65536)

        init(
            _ configuration: Configuration,
            descriptor: Int32,
            cancelled: ManagedAtomic<Bool>,
            onProbe: (@Sendable (Probe) -> Void)?
        ) {
            self.configuration = configuration
            self.fd = descriptor
            self.cancelled = cancelled
            self.onProbe = onProbe
            self.headers = configuration.target.maximumDatagramPayload == DatagramLimits.ipv6MaximumPayload ? 48 : 28
        }

        mutating func run() -> Swift.Result<Result, EchoError> {
            let start = ContinuousClock.now
            let maximum = self.configuration.target.maximumDatagramPayload
            // Known: `low` came back whole (0: nothing yet); `high` is too big (one past the largest possible).
            var low = 0
            var high = maximum + 1
            // What an ICMP message (or a cut echo) says is too big: a bound to search below, proven only when that size
            // itself fails.
            var hintedHigh = Int.max
            var hint: Int? = nil
            var candidate = maximum
            var checkedBase = false
            var confirmed = false
            while self.probes.count < self.configuration.maximumProbes {
                if self.cancelled.load(ordering: .relaxed) { return .failure(.cancelled) }
                let outcome = self.probe(candidate)
                switch outcome {
                case .echoed:
                    low = max(low, candidate)
                    if high <= low { high = self.smallestUnanswered(above: low) ?? maximum + 1 }
                case .refused:
                    return .failure(.refused(peer: self.configuration.target))
                case .damaged:
                    // The server answered, but not with the probe: it says nothing of the size.
                    break
                case .tooBigToSend(let mtu):
                    high = min(high, candidate)
                    if mtu > self.headers { hint = mtu - self.headers }
                case .fragmentationNeeded(let mtu):
                    high = min(high, candidate)
                    // RFC 8899 §4.6: a reported MTU is used only if it is smaller than the probe and not below the
                    // minimum; it bounds the search and is tried next, and the size just above it is probed before
                    // the result stands (an ICMP message is a hint, not a proof).
                    if mtu - self.headers < candidate && mtu >= 68 {
                        hint = mtu - self.headers
                        hintedHigh = min(hintedHigh, mtu - self.headers + 1)
                    }
                case .noAnswer:
                    high = min(high, candidate)
                case .truncated(let bytes):
                    // The path carried it; the echo that came back held only `bytes`: that size is tried next. A
                    // server whose buffer is the limit echoes that size whole; one that cuts it again cuts every
                    // echo, and no size can be measured through it.
                    if let before = self.truncatedAt, candidate <= before {
                        self.damaged += 1
                        self.lastDamage =
                            "\(candidate) bytes sent came back as \(bytes), after \(before + 1) or more "
                            + "came back as \(before): it cuts every echo"
                        return .failure(self.badEchoes())
                    }
                    high = min(high, candidate)
                    if bytes > low {
                        hint = bytes
                        hintedHigh = min(hintedHigh, bytes + 1)
                    }
                    self.truncatedAt = bytes
                }
                if low > 0 && min(high, hintedHigh) - low <= 1 && hintedHigh < high {
                    // The search ends at a hint's word (ICMP's, or a cut echo's): probe the size just above, once
                    // (a fast answer if it is right).
                    candidate = hintedHigh
                    hintedHigh = Int.max
                    continue
                }
                if low > 0 && high - low <= 1, let tries = self.unanswered[high], tries < self.attemptsNeeded {
                    // Called too big with fewer tries than the loss seen since asks for: try it again first.
                    candidate = high
                    self.unanswered[high] = nil
                    high = self.smallestUnanswered(above: low) ?? maximum + 1
                    continue
                }
                if low > 0 && high - low <= 1 {
                    // Found: confirm once more, as RFC 8899 does before it uses a size.
                    if confirmed { break }
                    if case .echoed = self.probe(low) {
                        confirmed = true
                        break
                    }
                    // The size that came back before does not now: search below it again.
                    high = low
                    low = 0
                    hint = nil
                    hintedHigh = Int.max
                }
                let base = Self.basePayload(headers: self.headers)
                let bound = min(high, hintedHigh)
                if let next = hint, next > low, next < bound {
                    candidate = next
                    hint = nil
                } else if low == 0 && !checkedBase && base < bound {
                    candidate = base
                    checkedBase = true
                } else if low == 0 {
                    // Nothing came back yet, not even the base: halve towards the smallest probe.
                    candidate = max(16, min(bound - 1, candidate) / 2)
                    if candidate >= bound || (candidate == 16 && self.probes.last?.size == 16) {
                        return .failure(self.nothingCameBack())
                    }
                } else {
                    candidate = (low + bound) / 2
                }
            }
            guard low > 0 else { return .failure(self.nothingCameBack()) }
            let loss = self.lossRate
            let above = self.unanswered[high]
            let chance = loss > 0 && above != nil ? pow(loss, Double(above!)) : nil
            return .success(
                Result(
                    largestPayload: low,
                    ipMTU: low + self.headers,
                    headers: self.headers,
                    probes: self.probes,
                    elapsed: ContinuousClock.now - start,
                    icmpMTUs: self.icmpMTUs,
                    blackHole: self.unanswered[high] != nil && self.icmpMTUs.isEmpty,
                    truncatedAt: self.truncatedAt,
                    localMTU: self.localMTU,
                    confirmed: confirmed,
                    lossRate: loss,
                    tooBigByChance: chance
                )
            )
        }

        /// The loss seen so far at sizes that came back: tries lost for no reason of size.
        var lossRate: Double {
            self.triesAtEchoedSizes == 0 ? 0 : Double(self.lostAtEchoedSizes) / Double(self.triesAtEchoedSizes)
        }

        /// Tries a size needs before it counts as too big: those configured on a clean path; on a lossy one, enough
        /// that loss alone leaves it unanswered less than once in a thousand (at most 12).
        var attemptsNeeded: Int {
            let loss = self.lossRate
            guard loss > 0 else { return self.configuration.attempts }
            let needed = loss >= 1 ? 12 : Int((log(0.001) / log(loss)).rounded(.up))
            return min(12, max(self.configuration.attempts, needed))
        }

        /// The smallest size above `size` called too big for want of an answer.
        func smallestUnanswered(above size: Int) -> Int? {
            self.unanswered.keys.filter { $0 > size }.min()
        }

        /// Why nothing came back: the server answered with something else, or it did not answer at all.
        func nothingCameBack() -> EchoError {
            self.damaged > 0
                ? self.badEchoes() : .timeout(self.configuration.probeTimeout, peer: self.configuration.target)
        }

        func badEchoes() -> EchoError {
            .badEchoes(
                peer: self.configuration.target,
                reason: "\(self.damaged) of \(self.probes.count) probes were answered with something other than "
                    + "the probe (last: \(self.lastDamage ?? "?"))"
            )
        }

        static func basePayload(headers: Int) -> Int { PathMTUDiscovery.basePacket - headers }

        /// Probes `size` up to ``attemptsNeeded`` times: an echo or an explicit answer (ICMP, a local refusal) ends
        /// it.
        mutating func probe(_ size: Int) -> Outcome {
            var outcome = Outcome.noAnswer
            var attempt = 0
            while attempt < self.attemptsNeeded {
                attempt += 1
                guard self.probes.count < self.configuration.maximumProbes, !self.cancelled.load(ordering: .relaxed)
                else { break }
                outcome = self.once(size)
                let probe = Probe(size: size, attempt: attempt, outcome: outcome)
                self.probes.append(probe)
                self.onProbe?(probe)
                if case .damaged = outcome { continue }
                if outcome != .noAnswer { break }
            }
            switch outcome {
            case .echoed:
                self.triesAtEchoedSizes += attempt
                self.lostAtEchoedSizes += attempt - 1
            case .noAnswer, .damaged:
                self.unanswered[size] = max(self.unanswered[size] ?? 0, attempt)
                outcome = .noAnswer
            default:
                break
            }
            return outcome
        }

        /// One probe of `size` bytes: its sequence number, then a pattern; waits for its echo or an error.
        private mutating func once(_ size: Int) -> Outcome {
            self.drainErrors()
            self.sequence += 1
            let sequence = self.sequence
            var probe = [UInt8](repeating: 0, count: size)
            for index in 0..<size { probe[index] = UInt8(truncatingIfNeeded: index &* 31 &+ Int(sequence)) }
            withUnsafeBytes(of: sequence.littleEndian) { bytes in
                for (index, byte) in bytes.prefix(min(8, size)).enumerated() { probe[index] = byte }
            }
            let sentAt = cudpecho_now_ns()
            let sent = probe.withUnsafeBytes { send(self.fd, $0.baseAddress, size, 0) }
            if sent < 0 {
                let code = errno
                if code == EMSGSIZE {
                    let mtu = self.drainErrors().local ?? 0
                    self.localMTU = mtu
                    return .tooBigToSend(mtu: mtu)
                }
                if code == ECONNREFUSED { return .refused }
                return .noAnswer
            }
            let deadline = sentAt + self.configuration.probeTimeout.nanoseconds
            while case let now = cudpecho_now_ns(), now < deadline {
                // At most 50 ms a wait, so that a cancelled search stops soon.
                if self.cancelled.load(ordering: .relaxed) { return .noAnswer }
                let ready = cudpecho_wait(
                    self.fd,
                    cudpecho_pollin,
                    Int32(clamping: min(50, (deadline - now + 999_999) / 1_000_000))
                )
                if ready <= 0 { continue }
                let errors = self.drainErrors()
                if errors.refused { return .refused }
                if let mtu = errors.icmp { return .fragmentationNeeded(mtu: mtu) }
                while true {
                    let length = self.buffer.withUnsafeMutableBytes {
                        recv(self.fd, $0.baseAddress, 65536, Int32(MSG_DONTWAIT))
                    }
                    if length < 0 { break }
                    if length == size && self.buffer.prefix(size).elementsEqual(probe) {
                        return .echoed(roundTrip: cudpecho_now_ns() - sentAt)
                    }
                    if length >= 8 && length < size && self.buffer.prefix(length).elementsEqual(probe.prefix(length)) {
                        return .truncated(bytes: length)
                    }
                    if length >= min(8, size) && self.buffer.prefix(min(8, size)).elementsEqual(probe.prefix(8)) {
                        // This probe's number, but not its bytes.
                        self.damaged += 1
                        let first = zip(self.buffer.prefix(length), probe).enumerated().first {
                            $0.element.0 != $0.element.1
                        }
                        self.lastDamage =
                            length != size
                            ? "\(size) bytes sent came back as \(length)"
                            : "\(size) bytes came back with byte \(first?.offset ?? 0) changed"
                        return .damaged(bytes: length)
                    }
                    // An older probe's late echo, or something else: not this probe's answer.
                }
            }
            return .noAnswer
        }

        /// Reads the error queue: the MTU an ICMP message or the local stack reported, and whether a refusal came.
        @discardableResult
        private mutating func drainErrors() -> (icmp: Int?, local: Int?, refused: Bool) {
            var found: (icmp: Int?, local: Int?, refused: Bool) = (nil, nil, false)
            var error: Int32 = 0
            var origin: Int32 = 0
            var type: Int32 = 0
            var code: Int32 = 0
            var info: UInt32 = 0
            while cudpecho_read_socket_error(self.fd, &error, &origin, &type, &code, &info) == 1 {
                if error == EMSGSIZE {
                    if origin == cudpecho_ee_origin_local {
                        found.local = Int(info)
                    } else {
                        found.icmp = Int(info)
                        self.icmpMTUs.append(Int(info))
                    }
                } else if error == ECONNREFUSED {
                    found.refused = true
                }
            }
            return found
        }
    }
}
