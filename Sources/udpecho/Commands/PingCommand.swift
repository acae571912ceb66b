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

            With --stamp it sends STAMP test packets (RFC 8762) to a STAMP or TWAMP-Light reflector (port 862 if \
            none is given) and each reply line adds the reflector's time, the forward and backward delay, and the \
            TTL (and with --stamp-cos, the DSCP) the test packet arrived with:
              udpecho ping --stamp 192.0.2.1 -c 10 --stamp-cos 46
            One-way delays need synchronized clocks: the summary says whether the reflector claims it and what \
            offset the delays imply. A stateful reflector's counter splits the losses into forward and backward.

            With --twamp it measures through a TWAMP server (RFC 5357: a router's, perfSONAR's twampd): it sets up \
            a session over TWAMP-Control (TCP, port 862 if none is given) in the most protected mode the server \
            offers that it can speak (--mode to choose; --key-file for authenticated and encrypted), pings \
            it as --stamp does, and stops it:
              udpecho ping --twamp 192.0.2.1 --key-file alice.pfs -c 100 -i 10ms

            With --owamp it measures one-way through an OWAMP server (RFC 4656: perfSONAR's owampd, or udpecho \
            server --protocol owamp; TCP port 861 if none is given), as owping: a session each way (--direction), \
            -c packets (100) on a Poisson schedule of mean -i (100ms; --schedule fixed), each direction's one-way \
            delay min/median/p95/max, jitter (p95 - median), loss, duplicates, skipped packets and hops, with \
            whether the clocks are synchronized and their error bound:
              udpecho ping --owamp 192.0.2.1 -c 100 -i 10ms --loss-timeout 2s

            --dscp, --ecn (or --tos), --ttl and --df mark the probes. Each reply line ends with the TTL it \
            arrived with (ttl=63) and, when a marking was asked, its DSCP and ECN; against `udpecho server \
            --reflect-tos` (or a STAMP reflector, with --stamp) also what the probe arrived with there, and the \
            summary names the direction that changed a marking and counts CE marks each way:
              udpecho ping 192.0.2.1:1337 -c 10 --dscp 46 --ecn ect0

            --json prints one JSON object per line: one per event ("type": "reply", "duplicate", "lost", "late", \
            "corrupt", "refused", "send-error"), unless -q, and a final "summary".

            Exit codes: 0 at least one reply came; 1 none did; 2 usage or setup error (bad option, name not \
            resolved).
            """
    )

    @OptionGroup var target: TargetArgument

    @Option(
        name: [.short, .long],
        parsing: .unconditional,
        help: ArgumentHelp("Stop after N probes. (default: until Ctrl-C)", valueName: "n")
    )
    var count: Int?

    @Option(
        name: [.short, .customLong("interval")],
        parsing: .unconditional,
        help: ArgumentHelp(
            "Time between probes, e.g. 1s, 200ms, 500us. (default: 1s; with --owamp the mean gap, 100ms)",
            valueName: "duration"
        ),
        transform: parseDuration
    )
    var intervalOption: Duration?

    var interval: Duration { self.intervalOption ?? (self.twampOptions.owamp ? .milliseconds(100) : .seconds(1)) }

    @OptionGroup var stampOptions: StampSenderOptions

    @OptionGroup(title: "TWAMP and OWAMP") var twampOptions: TwampClientOptions

    @OptionGroup(title: "Marking and hops") var markingOptions: MarkingOptions

    @OptionGroup(title: "Flows and loss") var probe: ProbeOptions<PingRole>

    @Flag(
        help:
            "With --flows: per source port, loss and round-trip percentiles, and the ports whose loss or latency stands apart from the rest (a statistical test: see README)."
    )
    var flowStats = false

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

    @Option(
        help: ArgumentHelp(
            "Also draw the round trip over time into FILE (SVG), as smokeping does: each interval's median coloured by its loss, the spread of its round trips as grey smoke, lost probes marked along the top.",
            valueName: "file.svg"
        )
    )
    var plot: String?

    func validate() throws {
        if let count, count < 1 { throw ValidationError("-c/--count must be at least 1") }
        if self.twampOptions.controlled {
            _ = try self.twampOptions.target(self.target.text)
        } else {
            _ = try self.stampOptions.target(self.target.text)
        }
        if self.twampOptions.controlled && self.stampOptions.stamp {
            throw ValidationError("--twamp or --owamp, and --stamp, are two ways to measure: give one")
        }
        if self.twampOptions.controlled && self.probe.flows > 1 {
            throw ValidationError("--twamp and --owamp measure one session: --flows needs --stamp or plain echoes")
        }
        if let size = self.probe.sizeOption, size < 16 {
            throw ValidationError("-s/--size must be at least 16: a probe carries its sequence number and send time")
        }
        if self.interval < .microseconds(1) { throw ValidationError("-i/--interval must be at least 1us") }
        if self.plot != nil && self.twampOptions.owamp {
            throw ValidationError(
                "--plot draws round trips: --owamp measures one way (its summary has the percentiles)"
            )
        }
        if self.flowStats && self.probe.flows < 3 {
            throw ValidationError("--flow-stats compares the flows with each other: give --flows 3 or more")
        }
    }

    func run() async throws {
        if self.twampOptions.twamp {
            try await self.runTwamp()
            return
        }
        if self.twampOptions.owamp {
            try await self.runOwamp()
            return
        }
        let address: SocketAddress
        let target = try self.stampOptions.target(self.target.text)
        var stamp = try self.stampOptions.configuration()
        let marking = self.markingOptions.marking
        if stamp != nil && stamp?.classOfService == nil, let marked = marking.trafficClass {
            // Ask the reflector to send back the DSCP we send, and to say what arrived (a Class of Service TLV).
            stamp?.classOfService = marked.dscp
        }
        do {
            address = try await resolveTarget(target)
        } catch {
            Stream.err.line("udpecho: error: \(error)")
            throw ExitCode(2)
        }
        let size = probeSize(self.probe.sizeOption, stamp: stamp, target: address)
        let configuration = EchoPinger.Configuration(
            target: address,
            count: self.count,
            interval: self.interval,
            size: size,
            timeout: self.probe.timeout,
            timestamps: self.timestamps,
            stamp: stamp,
            marking: marking,
            flows: self.probe.flows
        )
        do { try configuration.validate() } catch {
            Stream.err.line("udpecho: error: \(error)")
            throw ExitCode(2)
        }
        let peer = address.hostPortDescription
        let lines = LineQueue(to: .out)
        let (json, quiet, timeout) = (self.json, self.quiet, self.probe.timeout)
        let what = stamp != nil ? "STAMP test packets" : "UDP payload"
        let header = "PING \(target) (\(peer)): \(size) bytes of \(what)"
        let plot = PlotRecorder(self.plot.map { _ in "udpecho ping \(target) (\(peer)): \(size) bytes of \(what)" })
        let interval = self.interval
        let result = try await exitOnSetupError {
            try await runUntilInterrupted {
                try await EchoPinger.run(configuration) { timestamps in
                    plot.start(clock: timestamps.label)
                    if !json && !quiet { lines.enqueue("\(header), \(timestamps.label)") }
                } onEvent: { event in
                    plot.add(event, interval: interval)
                    guard !quiet else { return }
                    lines.enqueue(
                        json
                            ? PingJSON.line(for: event)
                            : event.pingLine(peer: peer, timeout: timeout, showClass: marking.trafficClass != nil)
                    )
                }
            }
        }
        lines.finish(within: .seconds(2))
        if let path = self.plot { try writeReport(plot.svg(), to: path) }
        if self.json {
            Stream.out.line(PingJSON.summary(result, target: peer))
        } else {
            Stream.out.line("")
            Stream.out.line("--- \(target) udpecho ping statistics ---")
            for line in result.pingSummary(marked: marking.isSet, far: stamp == nil ? "the server" : "the reflector") {
                Stream.out.line(line)
            }
            if self.flowStats, let flows = result.flows {
                for line in flowStatisticsLines(flows) { Stream.out.line(line) }
            }
        }
        if result.counts.received == 0 { throw ExitCode(1) }
    }
}
