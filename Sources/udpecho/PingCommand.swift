import ArgumentParser
import FoundationEssentials
import NIOCore
import UDPEcho
import UnixSignals

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

struct PingCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "ping",
        abstract: "Measure a path like ping(8), over UDP echo.",
        discussion: """
            Sends a probe every --interval and prints a line for each reply:
              64 bytes from 127.0.0.1:7: seq=3 time=0.142 ms
            Each probe carries its sequence number, its send time and a pattern that the reply must match, so \
            replies that are lost (no reply within -W), duplicated, out of order, late or corrupted are each \
            shown and counted. Ctrl-C (or -c) ends it with a summary: transmitted, received, loss, duplicates, \
            reordered, corrupt; round-trip min/avg/max/mdev and p50/p90/p99; jitter (IPDV, RFC 3393/5481: the \
            difference of consecutive round trips, its mean and p50/p99; RFC 3550's interarrival jitter); and how \
            late the probes left against their schedule.

            The round trip runs from the moment a probe left to the moment its reply arrived, both as the kernel \
            saw them (--timestamps kernel, the default), so ping's own timer and wake-ups are not counted as \
            network time. The header and the JSON say which clock measured it. A probe answered with ICMP "port \
            unreachable" is shown once, as refused.

            --json prints one JSON object per line: one per event ("type": "reply", "duplicate", "lost", "late", \
            "corrupt", "refused", "send-error"), unless -q, and a final "summary".

            Exit codes: 0 at least one reply came; 1 none did; 2 usage or setup error (bad option, name not \
            resolved).
            """
    )

    @Argument(
        help: ArgumentHelp("The echo server, as HOST:PORT or [IPV6]:PORT.", valueName: "host:port"),
        transform: parseAddress
    )
    var target: HostAndPort

    @Option(name: [.short, .long], help: ArgumentHelp("Stop after N probes. (default: until Ctrl-C)", valueName: "n"))
    var count: Int?

    @Option(
        name: [.short, .long],
        help: ArgumentHelp("Time between probes, e.g. 1s, 200ms, 500us.", valueName: "duration"),
        transform: parseDuration
    )
    var interval: Duration = .seconds(1)

    @Option(
        name: [.short, .long],
        help: ArgumentHelp("Payload bytes per probe, 16 to the datagram maximum.", valueName: "bytes")
    )
    var size = 64

    @Option(
        name: [.customShort("W"), .long],
        help: ArgumentHelp("How long to wait for each reply.", valueName: "duration"),
        transform: parseDuration
    )
    var timeout: Duration = .seconds(1)

    @Option(
        help: ArgumentHelp(
            "What measures the round trips: kernel (SO_TIMESTAMPING: when the probe left and its reply arrived, without the client's own delays), user (clock reads around the system calls), or hardware (the network card's clock, where it has one).",
            valueName: "source"
        )
    )
    var timestamps: TimestampSource = .kernel

    @Flag(name: [.short, .long], help: "Print only the summary.")
    var quiet = false

    @Flag(help: "Print JSON objects, one per line, instead of text.")
    var json = false

    func validate() throws {
        if let count, count < 1 { throw ValidationError("-c/--count must be at least 1") }
        if self.size < 16 {
            throw ValidationError("-s/--size must be at least 16: a probe carries its sequence number and send time")
        }
        if self.interval < .microseconds(1) { throw ValidationError("-i/--interval must be at least 1us") }
    }

    func run() async throws {
        let address: SocketAddress
        do {
            address = try await resolveTarget(self.target)
        } catch {
            Stream.err.line("udpecho: error: \(error)")
            throw ExitCode(2)
        }
        let configuration = EchoPinger.Configuration(
            target: address,
            count: self.count,
            interval: self.interval,
            size: self.size,
            timeout: self.timeout,
            timestamps: self.timestamps
        )
        do { try configuration.validate() } catch {
            Stream.err.line("udpecho: error: \(error)")
            throw ExitCode(2)
        }
        let peer = address.hostPortDescription
        let lines = LineQueue(to: .out)
        let (json, quiet, timeout) = (self.json, self.quiet, self.timeout)
        let header = "PING \(self.target) (\(peer)): \(self.size) bytes of UDP payload"
        let result = try await exitOnSetupError {
            try await runUntilInterrupted {
                try await EchoPinger.run(configuration) { timestamps in
                    if !json && !quiet { lines.enqueue("\(header), \(timestamps.label)") }
                } onEvent: { event in
                    guard !quiet else { return }
                    lines.enqueue(json ? PingJSON.line(for: event) : event.pingLine(peer: peer, timeout: timeout))
                }
            }
        }
        lines.finish(within: .seconds(2))
        if self.json {
            Stream.out.line(PingJSON.summary(result, target: peer))
        } else {
            Stream.out.line("")
            Stream.out.line("--- \(self.target) udpecho ping statistics ---")
            for line in result.pingSummary() { Stream.out.line(line) }
        }
        if result.counts.received == 0 { throw ExitCode(1) }
    }
}

/// Resolves a target name off the cooperative threads, preferring IPv4 as Go does.
func resolveTarget(_ target: HostAndPort) async throws -> SocketAddress {
    try await NameResolver.resolvePreferringIPv4(target)
}

/// Runs `work`; a library error (a socket that cannot be opened, timestamps the interface does not have) is a setup
/// error: said on standard error, exit code 2.
func exitOnSetupError<Result: Sendable>(_ work: () async throws -> Result) async throws -> Result {
    do {
        return try await work()
    } catch let error as EchoError {
        Stream.err.line("udpecho: error: \(error)")
        throw ExitCode(2)
    }
}

/// Runs `work`, cancelling it on Ctrl-C (SIGINT) or SIGTERM, and returns its result either way.
func runUntilInterrupted<Result: Sendable>(_ work: @escaping @Sendable () async throws -> Result) async throws -> Result
{
    let signals = await UnixSignalsSequence(trapping: .sigint, .sigterm)
    let task = Task { try await work() }
    let watcher = Task {
        for await _ in signals {
            task.cancel()
            return
        }
    }
    defer { watcher.cancel() }
    return try await task.value
}

/// Nanoseconds as milliseconds with three decimals: 142000 → "0.142".
func milliseconds(_ nanoseconds: Int64) -> String {
    let microseconds = (max(0, nanoseconds) + 500) / 1000
    let fraction = String(microseconds % 1000)
    return "\(microseconds / 1000).\(String(repeating: "0", count: 3 - fraction.count))\(fraction)"
}

extension ProbeEvent {
    func pingLine(peer: String, timeout: Duration) -> String {
        switch self {
        case .reply(let sequence, let bytes, let roundTrip, _, let outOfOrder):
            return "\(bytes) bytes from \(peer): seq=\(sequence) time=\(milliseconds(roundTrip)) ms"
                + (outOfOrder ? " (out of order)" : "")
        case .duplicate(let sequence, let bytes):
            return "\(bytes) bytes from \(peer): seq=\(sequence) (DUP!)"
        case .lost(let sequence):
            return "no reply from \(peer): seq=\(sequence) within \(timeout.shortDescription)"
        case .late(let sequence, let bytes, let roundTrip):
            let time = roundTrip >= 0 ? " time=\(milliseconds(roundTrip)) ms" : ""
            return "\(bytes) bytes from \(peer): seq=\(sequence)\(time) (late: already counted as lost)"
        case .corrupt(let sequence, let bytes, let reason):
            let which = sequence.map { ": seq=\($0)" } ?? ""
            return "corrupt reply: \(bytes) bytes from \(peer)\(which): \(reason)"
        case .refused(let sequence):
            let which = sequence.map { " seq=\($0):" } ?? ""
            return "refused:\(which) \(peer) answered ICMP port unreachable (nothing listens there)"
        case .sendError(let code):
            return "send failed: \(String(cString: strerror(code)))"
        }
    }
}

extension EchoBenchmark.Result {
    /// ping's summary lines.
    func pingSummary() -> [String] {
        let counts = self.counts
        let loss = counts.sent == 0 ? 0 : Double(counts.sent - counts.received) / Double(counts.sent) * 100
        var lines = [
            "\(counts.sent) transmitted, \(counts.received) received, \(Self.percent(loss)) loss, "
                + "\(counts.duplicate) duplicates, \(counts.reordered) reordered, \(counts.corrupt) corrupt"
                + (counts.late > 0 ? ", \(counts.late) late" : "")
                + (counts.refused > 0 ? ", \(counts.refused) refused" : "")
                + ", time \(Int(self.elapsed.seconds * 1000))ms"
        ]
        let times = self.times
        if times.count > 0 {
            let mean = Int64(times.mean)
            let deviation = Int64(times.deviation)
            lines.append(
                "rtt min/avg/max/mdev = \(milliseconds(times.minimum))/\(milliseconds(mean))/"
                    + "\(milliseconds(times.maximum))/\(milliseconds(deviation)) ms"
            )
            lines.append(
                "rtt p50/p90/p99 = \(milliseconds(times.percentile(50)))/\(milliseconds(times.percentile(90)))/"
                    + "\(milliseconds(times.percentile(99))) ms"
            )
            lines.append(self.jitterLine)
            lines.append(
                "send lateness p50/p99 = \(milliseconds(self.lateness.percentile(50)))/"
                    + "\(milliseconds(self.lateness.percentile(99))) ms (how late probes left against the schedule)"
            )
        }
        return lines
    }

    static func percent(_ value: Double) -> String {
        value == value.rounded() ? "\(Int(value))%" : "\(Double(Int((value * 10).rounded())) / 10)%"
    }
}

/// The JSON lines of `udpecho ping --json`.
enum PingJSON {
    struct Event: Encodable {
        var type: String
        var seq: UInt64?
        var bytes: Int?
        var rtt_ms: Double?
        var late_ms: Double?
        var out_of_order: Bool?
        var reason: String?
    }

    struct Summary: Encodable {
        var type = "summary"
        var target: String
        var transmitted, received, lost, duplicates, reordered, corrupt, late, refused: Int
        var loss_percent: Double
        var timestamps: String
        var timestamp_fallbacks: Int
        var rtt_ms: [String: Double]?
        var send_lateness_ms: [String: Double]?
        var ipdv_ms: [String: Double]?
        var jitter_rfc3550_ms: Double?
    }

    static func line(for event: ProbeEvent) -> String {
        let value: Event
        switch event {
        case .reply(let sequence, let bytes, let roundTrip, let lateness, let outOfOrder):
            value = Event(
                type: "reply",
                seq: sequence,
                bytes: bytes,
                rtt_ms: Double(roundTrip) / 1e6,
                late_ms: Double(lateness) / 1e6,
                out_of_order: outOfOrder
            )
        case .duplicate(let sequence, let bytes):
            value = Event(type: "duplicate", seq: sequence, bytes: bytes)
        case .lost(let sequence):
            value = Event(type: "lost", seq: sequence)
        case .late(let sequence, let bytes, let roundTrip):
            value = Event(
                type: "late",
                seq: sequence,
                bytes: bytes,
                rtt_ms: roundTrip >= 0 ? Double(roundTrip) / 1e6 : nil
            )
        case .corrupt(let sequence, let bytes, let reason):
            value = Event(type: "corrupt", seq: sequence, bytes: bytes, reason: reason)
        case .refused(let sequence):
            value = Event(type: "refused", seq: sequence)
        case .sendError(let code):
            value = Event(type: "send-error", reason: String(cString: strerror(code)))
        }
        return jsonLine(value)
    }

    static func summary(_ result: EchoBenchmark.Result, target: String) -> String {
        let counts = result.counts
        let times = result.times
        let rtt: [String: Double]? =
            times.count == 0
            ? nil
            : [
                "min": Double(times.minimum) / 1e6, "avg": times.mean / 1e6, "max": Double(times.maximum) / 1e6,
                "mdev": times.deviation / 1e6, "p50": Double(times.percentile(50)) / 1e6,
                "p90": Double(times.percentile(90)) / 1e6, "p99": Double(times.percentile(99)) / 1e6,
            ]
        return jsonLine(
            Summary(
                target: target,
                transmitted: counts.sent,
                received: counts.received,
                lost: counts.lost,
                duplicates: counts.duplicate,
                reordered: counts.reordered,
                corrupt: counts.corrupt,
                late: counts.late,
                refused: counts.refused,
                loss_percent: counts.sent == 0 ? 0 : Double(counts.sent - counts.received) / Double(counts.sent) * 100,
                timestamps: result.timestamps.rawValue,
                timestamp_fallbacks: result.timestampFallbacks,
                rtt_ms: rtt,
                send_lateness_ms: times.count == 0 ? nil : result.lateness.milliseconds([50, 99]),
                ipdv_ms: result.jitter.ipdv.count == 0 ? nil : result.jitter.ipdvMilliseconds,
                jitter_rfc3550_ms: result.jitter.ipdv.count == 0 ? nil : result.jitter.rfc3550 / 1e6
            )
        )
    }
}

/// `value` as one line of JSON, keys sorted.
func jsonLine(_ value: some Encodable) -> String {
    let encoder = JSONEncoder()
    encoder.outputFormatting = [.sortedKeys]
    return String(decoding: (try? encoder.encode(value)) ?? Data("{}".utf8), as: UTF8.self)
}
