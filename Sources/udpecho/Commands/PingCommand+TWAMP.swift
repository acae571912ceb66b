import ArgumentParser
import NIOCore
import Synchronization
import UDPEcho

extension PingCommand {
    /// `udpecho ping --twamp HOST[:PORT]`: a session set up over TWAMP-Control, pinged as `--stamp` pings.
    func runTwamp() async throws {
        let target = try self.twampOptions.target(self.target.text)
        let address: SocketAddress
        var twamp: TwampClientConfiguration
        do {
            address = try await resolveTarget(target)
            twamp = try self.twampOptions.configuration(server: address)
            // The DSCP the probes are marked with is asked of the replies too (the request's Type-P).
            twamp.dscp = self.markingOptions.marking.trafficClass?.dscp ?? 0
        } catch {
            Stream.err.line("udpecho: error: \(error)")
            throw ExitCode(2)
        }
        let marking = self.markingOptions.marking
        var configuration = EchoPinger.Configuration(
            target: address,
            count: self.count,
            interval: self.interval,
            timeout: self.probe.timeout,
            timestamps: self.timestamps,
            marking: marking
        )
        configuration.size = 16
        do { try configuration.validate() } catch {
            Stream.err.line("udpecho: error: \(error)")
            throw ExitCode(2)
        }
        let probes = configuration
        let size = self.probe.sizeOption
        let session = twamp
        let lines = LineQueue(to: .out)
        let (json, quiet, timeout) = (self.json, self.quiet, self.probe.timeout)
        let peer = Mutex("")
        let result = try await exitOnSetupError {
            try await runUntilInterrupted {
                try await TwampPinger.run(probes, twamp: session, size: size) { session, size in
                    let reflector = session.reflector.hostPortDescription
                    peer.withLock { $0 = reflector }
                    if !json && !quiet {
                        lines.enqueue(
                            "TWAMP \(target) (\(address.hostPortDescription)): \(session.mode) mode, session "
                                + "\(session.sid.map { String($0, radix: 16).leftPadded(2) }.joined()), "
                                + "reflector \(reflector), \(size) bytes of TWAMP test packets"
                        )
                    }
                } onStart: { timestamps in
                    if !json && !quiet { lines.enqueue("PING \(peer.withLock { $0 }): \(timestamps.label)") }
                } onEvent: { event in
                    guard !quiet else { return }
                    lines.enqueue(
                        json
                            ? PingJSON.line(for: event)
                            : event.pingLine(
                                peer: peer.withLock { $0 },
                                timeout: timeout,
                                showClass: marking.trafficClass != nil
                            )
                    )
                }
            }
        }
        lines.finish(within: .seconds(2))
        if self.json {
            Stream.out.line(PingJSON.summary(result, target: peer.withLock { $0 }))
        } else {
            Stream.out.line("")
            Stream.out.line("--- \(target) udpecho ping statistics (TWAMP) ---")
            for line in result.pingSummary(marked: marking.isSet, far: "the reflector") {
                // The same measurements as STAMP's, said of TWAMP.
                Stream.out.line(line.hasPrefix("stamp: ") ? "twamp: " + line.dropFirst(7) : line)
            }
        }
        if result.counts.received == 0 { throw ExitCode(1) }
    }
}

extension String {
    fileprivate func leftPadded(_ width: Int) -> String {
        String(repeating: "0", count: max(0, width - self.count)) + self
    }
}
