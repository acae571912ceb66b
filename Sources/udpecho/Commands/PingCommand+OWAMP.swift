import ArgumentParser
import NIOCore
import UDPEcho

extension PingCommand {
    /// `udpecho ping --owamp HOST[:PORT]`: one-way sessions each way through OWAMP-Control, then their statistics.
    func runOwamp() async throws {
        let target = try self.twampOptions.target(self.target.text)
        let address: SocketAddress
        var configuration: OwampClientConfiguration
        do {
            address = try await resolveTarget(target)
            configuration = try self.twampOptions.owampConfiguration(
                server: address,
                count: self.count ?? 100,
                interval: self.interval,
                lossTimeout: self.probe.timeout
            )
            configuration.dscp = self.markingOptions.marking.trafficClass?.dscp ?? 0
            try configuration.validate()
        } catch {
            Stream.err.line("udpecho: error: \(error)")
            throw ExitCode(2)
        }
        let session = configuration
        if !self.json && !self.quiet {
            let gap =
                "\(self.twampOptions.schedule == .exponential ? "mean gap" : "gap") \(session.interval.shortDescription)"
            Stream.out.line(
                "OWAMP \(target) (\(address.hostPortDescription)): \(session.count) packets "
                    + "\(self.twampOptions.direction == .both ? "each way" : self.twampOptions.direction.rawValue + " the server"), "
                    + "\(gap), loss timeout \(session.lossTimeout.shortDescription)"
            )
        }
        let results = try await exitOnSetupError {
            try await runUntilInterrupted { try await OwampPinger.run(session) }
        }
        let directions: [(String, String, OwampDirectionResult?)] = [
            ("to", "from this host to \(address.hostPortDescription)", results.toServer),
            ("from", "from \(address.hostPortDescription) to this host", results.fromServer),
        ]
        if self.json {
            var fields = ["\"type\":\"summary\"", "\"protocol\":\"owamp\"", "\"mode\":\"\(results.mode)\""]
            for (key, _, result) in directions {
                if let result { fields.append("\"\(key)\":\(result.json)") }
            }
            Stream.out.line("{" + fields.joined(separator: ",") + "}")
        } else {
            for (_, title, result) in directions {
                guard let result else { continue }
                Stream.out.line("")
                Stream.out.line("--- \(target) udpecho ping statistics (OWAMP, \(results.mode), \(title)) ---")
                for line in result.summaryLines { Stream.out.line(line) }
            }
        }
        let received = (results.toServer?.received ?? 0) + (results.fromServer?.received ?? 0)
        if received == 0 { throw ExitCode(1) }
    }
}

extension OwampDirectionResult {

    /// owping's summary, with the percentiles and the clocks' state spelled out.
    var summaryLines: [String] {
        var lines = ["SID: \(self.sid)"]
        let loss = milliseconds(Int64((self.lossRatio * 100 * 1e6).rounded()))
        lines.append(
            "\(self.sent) sent, \(self.lost) lost (\(loss)%), \(self.duplicates) duplicates"
                + (self.skipped > 0 ? ", \(self.skipped) skipped by the sender" : "")
        )
        if !self.delays.isEmpty {
            let figures = [0, 50, 95, 100].map { signedMilliseconds(self.delay(atPercentile: Double($0))) }
            let clocks =
                self.synchronized
                ? "clocks synchronized, error up to \(milliseconds(Int64(self.maximumError * 1e9))) ms"
                : "clocks not synchronized: their offset is in these figures"
            lines.append("one-way delay min/median/p95/max = \(figures.joined(separator: "/")) ms (\(clocks))")
            lines.append("one-way jitter = \(signedMilliseconds(self.jitter)) ms (p95 - median)")
        }
        if let hops = self.hops {
            lines.append(
                hops.lowerBound == hops.upperBound
                    ? "hops = \(hops.lowerBound) (consistently)" : "hops = \(hops.lowerBound)...\(hops.upperBound)"
            )
        }
        return lines
    }

    /// The direction's figures as a JSON object (delays in ms).
    var json: String {
        var fields = [
            "\"sid\":\"\(self.sid)\"", "\"sent\":\(self.sent)", "\"received\":\(self.received)",
            "\"lost\":\(self.lost)",
            "\"duplicates\":\(self.duplicates)", "\"skipped\":\(self.skipped)", "\"synchronized\":\(self.synchronized)",
            "\"max_error_ms\":\(self.maximumError * 1000)",
        ]
        if !self.delays.isEmpty {
            for (name, percentile) in [("min", 0.0), ("median", 50), ("p95", 95), ("max", 100)] {
                fields.append("\"delay_\(name)_ms\":\(signedMilliseconds(self.delay(atPercentile: percentile)))")
            }
            fields.append("\"jitter_ms\":\(signedMilliseconds(self.jitter))")
        }
        if let hops = self.hops { fields.append("\"hops_min\":\(hops.lowerBound),\"hops_max\":\(hops.upperBound)") }
        return "{" + fields.joined(separator: ",") + "}"
    }
}
