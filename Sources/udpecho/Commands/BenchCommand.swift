import ArgumentParser
import FoundationEssentials
import NIOCore
import Synchronization
import UDPEcho

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

struct BenchCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "bench",
        abstract: "Load an echo server and measure its throughput and latency.",
        discussion: """
            Sends requests over --flows sockets (each its own source port) for --duration, with batched system \
            calls, and checks every reply byte for byte. Two ways to load:
              --window W   closed loop: W requests in flight per flow; each reply releases the next (throughput)
              --rate PPS   open loop: PPS requests a second on a fixed schedule, whatever the server does; latency \
            is measured from each request's scheduled send time, so a server that stalls cannot hide the stall \
            (the coordinated-omission correction that wrk2 made known); beside it, the round trip from each \
            request's actual departure (the service time), and how late the requests left
            Times come from the kernel's timestamps (--timestamps kernel, the default) where it has them, so the \
            load thread's own delays are not counted; the output says which clock measured them.
            It reports sent, received, lost (no reply within --loss-timeout), duplicate, corrupt and late replies, \
            and round-trip percentiles from an HdrHistogram. Echoes per second are counted over the time the load \
            was on (from the first request to the last request sent or reply received), not over the wait at the \
            end for replies that never come. On a terminal a progress line is updated once a second.

            With --stamp it loads a STAMP reflector with STAMP test packets and adds the reflector's time and \
            the forward and backward delay to the result.

            Every run ends by itself. Targets must be loopback or this host's own addresses unless --allow-remote \
            is given: a load tool pointed at someone else's host by mistake floods it.

            Exit codes: 0 every reply was correct; 1 corrupt or duplicate replies were seen; 2 usage or setup error \
            (including a remote target without --allow-remote); 3 no reply came at all.
            """
    )

    @OptionGroup var target: TargetArgument

    @Option(
        name: [.short, .long],
        parsing: .unconditional,
        help: ArgumentHelp("How long to send (at most 1h).", valueName: "duration"),
        transform: parseDuration
    )
    var duration: Duration = .seconds(10)

    @OptionGroup(title: "Flows and loss") var probe: ProbeOptions<BenchRole>

    @Option(
        parsing: .unconditional,
        help: ArgumentHelp("Closed loop: requests in flight per flow. (default: 32, unless --rate)", valueName: "w")
    )
    var window: Int?

    @Option(
        parsing: .unconditional,
        help: ArgumentHelp("Open loop: requests per second over all flows.", valueName: "pps")
    )
    var rate: Double?

    @Option(
        name: [.short, .long],
        parsing: .unconditional,
        help: ArgumentHelp("Stop after this many requests, if before --duration.", valueName: "n")
    )
    var count: Int?

    @Option(
        help: ArgumentHelp(
            "Write the percentile distribution (HdrHistogram .hgrm text) to FILE: the round trip in closed loop; in open loop the latency from the schedule, and the round trip to FILE with -rtt before its extension.",
            valueName: "file"
        )
    )
    var histogram: String?

    @Option(
        help: ArgumentHelp(
            "Draw the times by percentile (log percentile axis) as an SVG to FILE: the round trip, and in open loop the latency from the schedule beside it.",
            valueName: "file.svg"
        )
    )
    var plot: String?

    @Option(
        help: ArgumentHelp(
            "What measures the times: kernel (SO_TIMESTAMPING, the default), user (clock reads around the system calls) or hardware (the network card's clock).",
            valueName: "source"
        )
    )
    var timestamps: TimestampSource = .kernel

    @Option(
        parsing: .unconditional,
        help: ArgumentHelp(
            "Open loop: stop sleeping this long before each request is due and poll instead, so that a late wake-up does not delay it (costs up to that much CPU per request). (default: what keeps polling under 5% of a core, at most 200us)",
            valueName: "duration"
        ),
        transform: parseDuration
    )
    var spin: Duration?

    @Flag(
        help:
            "Send each flow's batch of requests as one segmented write (UDP GSO) and take replies coalesced (UDP GRO), as QUIC stacks do: the generator then costs far less per datagram and can load a server past what single writes allow. Every reply is still checked; times are the program's clock reads."
    )
    var gso = false

    @OptionGroup var stampOptions: StampSenderOptions

    @OptionGroup(title: "TWAMP") var twampOptions: TwampClientOptions

    @OptionGroup(title: "Marking") var markingOptions: MarkingOptions

    @Flag(help: "Print the result as one JSON object.")
    var json = false

    @Flag(help: "Allow a target that is neither loopback nor this host's own address.")
    var allowRemote = false

    func validate() throws {
        if self.window != nil && self.rate != nil {
            throw ValidationError("give either --window (closed loop) or --rate (open loop), not both")
        }
        if self.twampOptions.owamp {
            throw ValidationError(
                "--owamp measures one-way delay on a schedule, not a load: use udpecho ping --owamp (bench loads STAMP "
                    + "and TWAMP sessions)"
            )
        }
        if self.twampOptions.twamp {
            _ = try self.twampOptions.target(self.target.text)
            if self.stampOptions.stamp {
                throw ValidationError("--twamp and --stamp are two ways to measure: give one")
            }
            if (self.probe.flowsOption ?? 1) != 1 {
                throw ValidationError("--twamp loads one session from one port: --flows must be 1")
            }
            if self.gso { throw ValidationError("--gso and --twamp cannot go together: test packets go one by one") }
        } else {
            _ = try self.stampOptions.target(self.target.text)
        }
    }

    func run() async throws {
        let load: EchoBenchmark.Load = self.rate.map { .rate($0) } ?? .window(self.window ?? 32)
        let twamping = self.twampOptions.twamp
        let target =
            twamping ? try self.twampOptions.target(self.target.text) : try self.stampOptions.target(self.target.text)
        let stamp = try self.stampOptions.configuration()
        var configuration: EchoBenchmark.Configuration
        var twamp: TwampClientConfiguration?
        do {
            let address = try await resolveTarget(target)
            if twamping {
                twamp = try self.twampOptions.configuration(server: address)
                twamp?.dscp = self.markingOptions.marking.trafficClass?.dscp ?? 0
            }
            configuration = EchoBenchmark.Configuration(
                target: address,
                duration: self.duration,
                size: twamping ? 64 : probeSize(self.probe.sizeOption, stamp: stamp, target: address),
                flows: self.probe.flows,
                load: load,
                count: self.count,
                lossTimeout: self.probe.timeout,
                allowRemote: self.allowRemote,
                timestamps: self.timestamps,
                spin: self.spin,
                stamp: stamp,
                gso: self.gso,
                marking: self.markingOptions.marking
            )
            try configuration.validate()
        } catch {
            Stream.err.line("udpecho: error: \(error)")
            throw ExitCode(2)
        }
        let showProgress = isatty(2) == 1 && !self.json
        let progress: @Sendable (ProbeProgress) -> Void = { progress in
            if showProgress { Stream.err.write("\r\(progress.line)   ") }
        }
        // A TWAMP session decides where the test packets go and how large they are.
        let negotiated = Mutex<(reflector: SocketAddress, size: Int)?>(nil)
        let plan = configuration
        let askedSize = self.probe.sizeOption
        let session = twamp
        let result = try await exitOnSetupError {
            try await runUntilInterrupted {
                if let session {
                    try await TwampPinger.bench(
                        plan,
                        twamp: session,
                        size: askedSize,
                        onSession: { session, size in
                            negotiated.withLock { $0 = (session.reflector, size) }
                        },
                        onProgress: progress
                    )
                } else {
                    try await EchoBenchmark.run(plan, onProgress: progress)
                }
            }
        }
        if showProgress { Stream.err.write("\n") }
        if let (reflector, size) = negotiated.withLock({ $0 }) {
            configuration.target = reflector
            configuration.size = size
            configuration.flows = 1
            configuration.stamp = StampSenderConfiguration(ssid: 0)
        }

        let peer = configuration.target.hostPortDescription
        let openLoop = self.rate != nil
        let clock = result.timestamps.label
        let size = configuration.size
        let what = twamping ? "-byte TWAMP test packets" : stamp != nil ? "-byte STAMP test packets" : "-byte requests"
        if let path = self.histogram {
            let roundTrip = "udpecho bench: round trip, from each request's departure to its reply; \(clock)"
            if openLoop {
                let latency = "udpecho bench: latency, from each request's scheduled send time to its reply; \(clock)"
                try writeReport(result.latencies.percentileDistribution(comment: latency), to: path)
                try writeReport(result.times.percentileDistribution(comment: roundTrip), to: Self.rttPath(path))
            } else {
                try writeReport(result.times.percentileDistribution(comment: roundTrip), to: path)
            }
            if let stamp = result.stamp, stamp.reflectorTime.count > 0 {
                let comment = "udpecho bench: STAMP reflector time, T3 - T2 of each reply; the reflector's clock"
                try writeReport(
                    stamp.reflectorTime.percentileDistribution(comment: comment),
                    to: Self.suffixed(path, "-reflector")
                )
            }
        }
        if let path = self.plot {
            let title = "udpecho bench \(peer): \(configuration.flows) flows, \(self.describe(load)), \(size)\(what)"
            var curves: [(label: String, times: RoundTripTimes)] = []
            if openLoop { curves.append(("latency from the schedule", result.latencies)) }
            curves.append(("round trip from the departure (\(result.timestamps) timestamps)", result.times))
            try writeReport(RoundTripTimes.percentilePlot(title: title, curves: curves), to: path)
        }
        if self.json {
            Stream.out.line(BenchJSON.encode(result, target: peer, configuration: configuration))
        } else {
            Stream.out.line(
                "bench \(target) (\(peer)): \(configuration.flows) flows, \(self.describe(load)), \(size)\(what), "
                    + clock
                    + (self.gso ? ", \(Self.describeGSO(result))" : "")
            )
            for line in result.benchSummary(size: size, openLoop: openLoop) { Stream.out.line(line) }
            if let stamp = result.stamp {
                for line in stamp.summaryLines(sent: result.counts.sent, lost: result.counts.lost) {
                    Stream.out.line(line)
                }
            }
        }
        if result.counts.corrupt > 0 || result.counts.duplicate > 0 { throw ExitCode(1) }
        if result.counts.received == 0 { throw ExitCode(3) }
    }

    /// What became of --gso.
    static func describeGSO(_ result: EchoBenchmark.Result) -> String {
        if let refusal = result.gsoRefusal {
            return "GSO refused by the kernel (\(refusal)): requests sent one by one"
        }
        return
            "GSO: requests sent as runs, \(result.coalescedReplies) of \(result.counts.received) replies came coalesced"
    }

    private func describe(_ load: EchoBenchmark.Load) -> String {
        switch load {
        case .window(let window): return "\(window) in flight each (closed loop)"
        case .rate(let rate): return "\(Int(rate)) requests/s (open loop, latency from scheduled send times)"
        }
    }

    /// `out.hgrm` -> `out-rtt.hgrm`, `out` -> `out-rtt`.
    static func rttPath(_ path: String) -> String { Self.suffixed(path, "-rtt") }

    /// `path` with `suffix` before its extension.
    static func suffixed(_ path: String, _ suffix: String) -> String {
        let slash = path.lastIndex(of: "/")
        if let dot = path.lastIndex(of: "."), dot > (slash ?? path.startIndex), dot != path.startIndex {
            return String(path[..<dot]) + suffix + String(path[dot...])
        }
        return path + suffix
    }
}

extension ProbeProgress {
    /// The live line: elapsed seconds, echoes in the last second, loss so far, p99 so far.
    var line: String {
        let loss = self.counts.sent == 0 ? 0 : Double(self.counts.lost) / Double(self.counts.sent) * 100
        return "\(Int(self.elapsed.seconds.rounded()))s  \(Int(self.echoesPerSecond)) echoes/s  "
            + "loss \(EchoBenchmark.Result.percent(loss))  p99 \(milliseconds(self.p99)) ms"
    }
}

extension EchoBenchmark.Result {
    func benchSummary(size: Int, openLoop: Bool) -> [String] {
        let counts = self.counts
        let seconds = self.activeTime.seconds
        let rate = self.echoesPerSecond
        let megabits = rate * Double(size) * 8 / 1e6
        let times = self.times
        func row(_ name: String, _ times: RoundTripTimes, _ note: String) -> String {
            name + "p50 \(milliseconds(times.percentile(50)))  p90 \(milliseconds(times.percentile(90)))  "
                + "p99 \(milliseconds(times.percentile(99)))  p99.9 \(milliseconds(times.percentile(99.9)))  "
                + "max \(milliseconds(times.count == 0 ? 0 : times.maximum))" + note
        }
        var lines = [
            "echoes     \(counts.received) in \(milliseconds(Int64(seconds * 1e6))) s = \(Int(rate))/s "
                + "(\(Double(Int(megabits * 10)) / 10) Mbit/s payload)",
            "sent \(counts.sent)  received \(counts.received)  lost \(counts.lost)  duplicate \(counts.duplicate)  "
                + "corrupt \(counts.corrupt)  late \(counts.late)  reordered \(counts.reordered)"
                + (counts.sendErrors > 0 ? "  send-errors \(counts.sendErrors)" : "")
                + (counts.refused > 0 ? "  refused \(counts.refused)" : "")
                + (counts.impossible > 0 ? "  impossible \(counts.impossible)" : ""),
        ]
        if openLoop {
            lines.append(row("latency ms ", self.latencies, "  (from each request's scheduled send time)"))
        }
        let sample = self.roundTripSampling > 1 ? "; 1 request in \(self.roundTripSampling) measured" : ""
        lines.append(row("rtt ms     ", times, "  (from each request's departure\(sample))"))
        let ipdv = self.jitter.ipdv
        lines.append(
            "jitter ms  ipdv mean \(milliseconds(Int64(ipdv.mean)))  p50 \(milliseconds(ipdv.percentile(50)))  "
                + "p99 \(milliseconds(ipdv.percentile(99)))  rfc3550 \(milliseconds(Int64(self.jitter.rfc3550)))"
        )
        if openLoop {
            lines.append(
                "lateness ms p50 \(milliseconds(self.lateness.percentile(50)))  p99 "
                    + "\(milliseconds(self.lateness.percentile(99)))  (how late requests left against the schedule)"
            )
        }
        return lines
    }
}

/// The JSON object of `udpecho bench --json`.
enum BenchJSON {
    struct Output: Encodable {
        var target: String
        var flows: Int
        var size: Int
        var window: Int?
        var rate: Double?
        var duration_s: Double
        var elapsed_s: Double
        var active_s: Double
        var echoes_per_second: Double
        var sent, received, lost, duplicate, corrupt, late, reordered, send_errors, refused, impossible: Int
        var timestamps: String
        var timestamp_fallbacks: Int
        var rtt_sampling: Int
        var rtt_ms: [String: Double]
        var latency_ms: [String: Double]?
        var send_lateness_ms: [String: Double]?
        var ipdv_ms: [String: Double]
        var jitter_rfc3550_ms: Double
        var stamp: StampSummary?
        var gso: Bool
        var gso_refusal: String?
        var coalesced_replies: Int
    }

    static func encode(
        _ result: EchoBenchmark.Result,
        target: String,
        configuration: EchoBenchmark.Configuration
    ) -> String {
        let counts = result.counts
        let times = result.times
        var window: Int?
        var rate: Double?
        switch configuration.load {
        case .window(let value): window = value
        case .rate(let value): rate = value
        }
        func percentiles(_ times: RoundTripTimes) -> [String: Double] {
            var values = times.milliseconds([50, 90, 99, 99.9])
            values["max"] = times.count == 0 ? 0 : Double(times.maximum) / 1e6
            return values
        }
        let rtt = percentiles(times)
        return jsonLine(
            Output(
                target: target,
                flows: configuration.flows,
                size: configuration.size,
                window: window,
                rate: rate,
                duration_s: configuration.duration.seconds,
                elapsed_s: result.elapsed.seconds,
                active_s: result.activeTime.seconds,
                echoes_per_second: result.echoesPerSecond,
                sent: counts.sent,
                received: counts.received,
                lost: counts.lost,
                duplicate: counts.duplicate,
                corrupt: counts.corrupt,
                late: counts.late,
                reordered: counts.reordered,
                send_errors: counts.sendErrors,
                refused: counts.refused,
                impossible: counts.impossible,
                timestamps: result.timestamps.rawValue,
                timestamp_fallbacks: result.timestampFallbacks,
                rtt_sampling: result.roundTripSampling,
                rtt_ms: rtt,
                latency_ms: rate == nil ? nil : percentiles(result.latencies),
                send_lateness_ms: rate == nil ? nil : result.lateness.milliseconds([50, 99]),
                ipdv_ms: result.jitter.ipdvMilliseconds,
                jitter_rfc3550_ms: result.jitter.rfc3550 / 1e6,
                stamp: result.stamp.map { StampSummary($0, sent: counts.sent, lost: counts.lost) },
                gso: result.gso,
                gso_refusal: result.gsoRefusal,
                coalesced_replies: result.coalescedReplies
            )
        )
    }
}
