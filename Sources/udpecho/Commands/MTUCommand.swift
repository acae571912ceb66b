import ArgumentParser
import FoundationEssentials
import NIOCore
import UDPEcho

struct MTUCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "mtu",
        abstract: "Find the largest datagram that makes the round trip to an echo server whole (path MTU discovery).",
        discussion: """
            Packetization-layer path MTU discovery (RFC 8899) over UDP echo: probes that may not be fragmented \
            (DF set over IPv4), of sizes searched by halves between the base size every path should carry (1200 \
            bytes of IP packet) and the largest the local interface sends; a size counts when its echo comes back \
            whole. An ICMP "fragmentation needed" (IPv4) or "packet too big" (IPv6) from a router is used when it \
            comes: its MTU is tried next. It is not relied on: a size that gets neither an echo nor an ICMP message \
            in --attempts tries is too big too, so a path that drops large packets silently (a black hole, or \
            filtered ICMP) is measured all the same. The result is confirmed by one more probe.

              udpecho mtu 198.51.100.2:1337

            It prints each probe, then the largest UDP payload that came back, the IP MTU it implies (payload + 28 \
            bytes of IPv4 and UDP headers, + 48 over IPv6), the probes it took and how long. Run it against an echo \
            server whose own link and path back carry the size too: an echo measures the round trip.

            On a lossy path a size that goes unanswered may only have been lost: once a try is lost at a size that \
            came back later, sizes get more tries (up to 12, enough that loss alone calls a size too big less than \
            once in a thousand), and the result says how lossy the path is and how sure it is.

            Exit codes: 0 found; 1 no size came back whole at all (no answer, or the server answers with something \
            other than the probe: it cuts or changes every echo); 2 usage or setup error.
            """
    )

    @Argument(help: ArgumentHelp("The echo server, as HOST:PORT or [IPV6]:PORT.", valueName: "host:port"))
    var targetText: String

    @Option(
        name: [.customShort("W"), .customLong("timeout")],
        parsing: .unconditional,
        help: ArgumentHelp("How long to wait for each probe's echo.", valueName: "duration"),
        transform: parseDuration
    )
    var timeout: Duration = .milliseconds(300)

    @Option(
        parsing: .unconditional,
        help: ArgumentHelp("Tries per size before a size without an answer counts as too big, 1 to 10.", valueName: "n")
    )
    var attempts = 3

    @Flag(help: "Print one JSON object with the result and every probe, instead of text.")
    var json = false

    func validate() throws {
        _ = try parseAddress(self.targetText)
        if !(1...10).contains(self.attempts) { throw ValidationError("--attempts \(self.attempts): from 1 to 10") }
        if self.timeout <= .zero { throw ValidationError("--timeout must be more than 0") }
    }

    func run() async throws {
        let address: SocketAddress
        do {
            address = try await resolveTarget(try parseAddress(self.targetText))
        } catch {
            Stream.err.line("udpecho: error: \(error)")
            throw ExitCode(2)
        }
        let peer = address.hostPortDescription
        let json = self.json
        if !json { Stream.out.line("MTU \(peer): probing with DF set, sizes of UDP payload") }
        let print = !json
        let result: PathMTUDiscovery.Result
        do {
            result = try await PathMTUDiscovery.run(
                .init(target: address, probeTimeout: self.timeout, attempts: self.attempts)
            ) { probe in
                if print { Stream.out.line(probe.line) }
            }
        } catch {
            // No answer at any size, or nothing listening: the measurement failed (1); anything else is setup (2).
            switch error {
            case .timeout, .refused, .badEchoes:
                if json {
                    Stream.out.line(jsonLine(MTUJSON.Failure(target: peer, error: "\(error)")))
                } else {
                    Stream.err.line("udpecho: \(error)")
                }
                throw ExitCode(1)
            default:
                Stream.err.line("udpecho: error: \(error)")
                throw ExitCode(2)
            }
        }
        if json {
            Stream.out.line(jsonLine(MTUJSON(result, target: peer)))
            return
        }
        let family = result.headers == 48 ? "IPv6" : "IPv4"
        Stream.out.line("")
        Stream.out.line(
            "\(result.largestPayload) bytes of UDP payload make the round trip whole: IP MTU \(result.ipMTU) "
                + "(\(result.largestPayload) + \(result.headers) bytes of \(family) and UDP headers)"
        )
        let took = result.elapsed.nanoseconds
        var how =
            "\(result.probes.count) probes in "
            + (took < 1_000_000_000 ? "\(milliseconds(took)) ms" : "\(Double(took / 10_000_000) / 100) s")
        if !result.icmpMTUs.isEmpty {
            how += "; ICMP said MTU " + Array(Set(result.icmpMTUs)).sorted().map(String.init).joined(separator: ", ")
        } else if let bytes = result.truncatedAt {
            how += "; larger echoes came back cut to \(bytes) bytes: the limit is the echo server's, not the path's"
        } else if result.blackHole {
            how += "; no ICMP message came for the sizes above: they vanish without a word (a black hole)"
        }
        if let local = result.localMTU { how += "; the local interface sends at most \(local) bytes" }
        if !result.confirmed { how += "; not confirmed (the probe limit was reached)" }
        Stream.out.line(how)
        if result.lossRate > 0 {
            var lossy =
                "the path is lossy: \(Int((result.lossRate * 100).rounded()))% of tries at sizes that came back were "
                + "lost first, so each size got up to 12 tries before it counted as too big"
            if let chance = result.tooBigByChance {
                lossy += "; the chance that the next size up was lost, not too big, is \(Self.percent(chance))"
            }
            Stream.out.line(lossy)
        }
    }

    static func percent(_ value: Double) -> String {
        value >= 0.01 ? "\(Int((value * 100).rounded()))%" : "\(Double(Int(value * 100_000)) / 1000)%"
    }
}

extension PathMTUDiscovery.Probe {
    /// `probe 1472 bytes (try 1): too big: ICMP says MTU 1400`.
    var line: String {
        let text: String
        switch self.outcome {
        case .echoed(let roundTrip): text = "echoed in \(milliseconds(roundTrip)) ms"
        case .fragmentationNeeded(let mtu): text = "too big: ICMP says the MTU on the way is \(mtu)"
        case .tooBigToSend(let mtu): text = "too big for the local interface (MTU \(mtu))"
        case .truncated(let bytes): text = "echoed cut to \(bytes) bytes"
        case .damaged(let bytes): text = "answered with \(bytes) bytes that are not the probe"
        case .noAnswer: text = "no answer"
        case .refused: text = "refused: nothing listens there"
        }
        return "probe \(self.size) bytes (try \(self.attempt)): \(text)"
    }
}

/// `udpecho mtu --json`.
struct MTUJSON: Encodable {
    struct Probe: Encodable {
        var size, attempt: Int
        var outcome: String
        var rtt_ms: Double?
        var mtu: Int?
        var echoed_bytes: Int?
    }

    struct Failure: Encodable {
        var type = "mtu"
        var target: String
        var error: String
    }

    var type = "mtu"
    var target: String
    var largest_payload, ip_mtu, headers: Int
    var probes: Int
    var elapsed_ms: Double
    var icmp_mtus: [Int]
    var black_hole, confirmed: Bool
    var local_mtu: Int?
    var truncated_at: Int?
    var loss_rate: Double
    var too_big_by_chance: Double?
    var steps: [Probe]

    init(_ result: PathMTUDiscovery.Result, target: String) {
        self.target = target
        self.largest_payload = result.largestPayload
        self.ip_mtu = result.ipMTU
        self.headers = result.headers
        self.probes = result.probes.count
        self.elapsed_ms = Double(result.elapsed.nanoseconds) / 1e6
        self.icmp_mtus = result.icmpMTUs
        self.black_hole = result.blackHole
        self.confirmed = result.confirmed
        self.local_mtu = result.localMTU
        self.truncated_at = result.truncatedAt
        self.loss_rate = result.lossRate
        self.too_big_by_chance = result.tooBigByChance
        self.steps = result.probes.map { probe in
            switch probe.outcome {
            case .echoed(let roundTrip):
                Probe(size: probe.size, attempt: probe.attempt, outcome: "echoed", rtt_ms: Double(roundTrip) / 1e6)
            case .fragmentationNeeded(let mtu):
                Probe(size: probe.size, attempt: probe.attempt, outcome: "fragmentation-needed", mtu: mtu)
            case .tooBigToSend(let mtu):
                Probe(size: probe.size, attempt: probe.attempt, outcome: "too-big-to-send", mtu: mtu)
            case .truncated(let bytes):
                Probe(size: probe.size, attempt: probe.attempt, outcome: "truncated", echoed_bytes: bytes)
            case .damaged(let bytes):
                Probe(size: probe.size, attempt: probe.attempt, outcome: "damaged", echoed_bytes: bytes)
            case .noAnswer: Probe(size: probe.size, attempt: probe.attempt, outcome: "no-answer")
            case .refused: Probe(size: probe.size, attempt: probe.attempt, outcome: "refused")
            }
        }
    }
}
