import Foundation
import TestSupport
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// Parses the JSON lines a command printed.
func jsonObjects(_ lines: [String]) throws -> [[String: Any]] {
    try lines.map { line in
        try #require(try JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any], "not JSON: \(line)")
    }
}

@Suite struct PingCommandTests {
    @Test func printsALinePerReplyAndASummary() async throws {
        let (server, port) = try await startServer(["--address", "127.0.0.1:0", "--quiet"])
        let result = try await Spawned.run(udpecho, ["ping", "127.0.0.1:\(port)", "-c", "3", "-i", "20ms"])
        #expect(result.status == 0, "\(result.error)")
        let lines = result.lines
        #expect(
            lines.first
                == "PING 127.0.0.1:\(port) (127.0.0.1:\(port)): 64 bytes of UDP payload, kernel timestamps (SO_TIMESTAMPING, software)"
        )
        for sequence in 0..<3 {
            #expect(
                lines.contains {
                    $0.wholeMatch(
                        of: try! Regex(
                            "64 bytes from 127\\.0\\.0\\.1:\(port): seq=\(sequence) time=\\d+\\.\\d{3} ms ttl=64"
                        )
                    ) != nil
                }
            )
        }
        #expect(lines.contains("--- 127.0.0.1:\(port) udpecho ping statistics ---"))
        #expect(
            lines.contains { $0.hasPrefix("3 transmitted, 3 received, 0% loss, 0 duplicates, 0 reordered, 0 corrupt") }
        )
        #expect(
            lines.contains { $0.wholeMatch(of: /rtt min\/avg\/max\/mdev = [\d.]+\/[\d.]+\/[\d.]+\/[\d.]+ ms/) != nil }
        )
        #expect(lines.contains { $0.wholeMatch(of: /rtt p50\/p90\/p99 = [\d.]+\/[\d.]+\/[\d.]+ ms/) != nil })
        #expect(
            lines.contains {
                $0.wholeMatch(of: /ipdv mean\/p50\/p99 = [\d.]+\/[\d.]+\/[\d.]+ ms, jitter \(RFC 3550\) [\d.]+ ms/)
                    != nil
            }
        )
        #expect(lines.contains { $0.hasPrefix("send lateness p50/p99 = ") })
        server.signal(SIGINT)
        await server.waitForExit()
    }

    @Test func jsonIsOneObjectPerReplyAndASummary() async throws {
        let (server, port) = try await startServer(["--address", "127.0.0.1:0", "--quiet"])
        let result = try await Spawned.run(
            udpecho,
            ["ping", "127.0.0.1:\(port)", "-c", "4", "-i", "5ms", "-s", "200", "--json"]
        )
        #expect(result.status == 0)
        let objects = try jsonObjects(result.lines)
        #expect(objects.count == 5)
        #expect(objects.prefix(4).map { $0["type"] as? String } == Array(repeating: "reply", count: 4))
        #expect(objects.prefix(4).map { $0["seq"] as? Int } == [0, 1, 2, 3])
        #expect(objects.prefix(4).allSatisfy { $0["bytes"] as? Int == 200 })
        #expect(objects.prefix(4).allSatisfy { ($0["rtt_ms"] as? Double ?? -1) > 0 && $0["late_ms"] is Double })
        let summary = try #require(objects.last)
        #expect(summary["type"] as? String == "summary")
        #expect(summary["transmitted"] as? Int == 4 && summary["received"] as? Int == 4)
        #expect(summary["timestamps"] as? String == "kernel")
        #expect(summary["timestamp_fallbacks"] as? Int == 0)
        #expect((summary["ipdv_ms"] as? [String: Double])?["mean"] != nil)
        #expect(summary["jitter_rfc3550_ms"] is Double)
        #expect((summary["send_lateness_ms"] as? [String: Double])?["p99"] != nil)
        let quiet = try await Spawned.run(
            udpecho,
            ["ping", "127.0.0.1:\(port)", "-c", "2", "-i", "5ms", "-q", "--json"]
        )
        #expect(try jsonObjects(quiet.lines).map { $0["type"] as? String } == ["summary"])
        server.signal(SIGINT)
        await server.waitForExit()
    }

    /// `-s` and `--size`, as README and `--help` give them, in ping and in bench.
    @Test func theSizeOptionHasItsDocumentedNames() async throws {
        let (server, port) = try await startServer(["--address", "127.0.0.1:0", "-q"])
        for flag in ["-s", "--size"] {
            let ping = try await Spawned.run(udpecho, ["ping", "127.0.0.1:\(port)", flag, "100", "-c", "1", "--json"])
            #expect(ping.status == 0, "\(ping.error)")
            #expect(try jsonObjects(ping.lines).first?["bytes"] as? Int == 100, "\(ping.lines)")
            let bench = try await Spawned.run(
                udpecho,
                ["bench", "127.0.0.1:\(port)", flag, "100", "-c", "100", "--json"]
            )
            #expect(bench.status == 0, "\(bench.error)")
            #expect(try jsonObjects(bench.lines).first?["size"] as? Int == 100, "\(bench.lines)")
        }
        server.signal(SIGINT)
        #expect(await server.waitForExit() == 0)
    }

    @Test func exitsWith1WhenNoReplyCame() async throws {
        let (silent, port) = try await startPythonServer("silent")
        let result = try await Spawned.run(
            udpecho,
            ["ping", "127.0.0.1:\(port)", "-c", "2", "-i", "10ms", "-W", "100ms"]
        )
        #expect(result.status == 1)
        #expect(result.lines.contains("no reply from 127.0.0.1:\(port): seq=1 within 100ms"))
        #expect(result.lines.contains { $0.hasPrefix("2 transmitted, 0 received, 100% loss") })
        silent.signal(SIGKILL)
    }

    @Test(arguments: [
        ["127.0.0.1"], ["127.0.0.1:7", "-s", "8"], ["127.0.0.1:7", "-i", "fast"],
        ["no-such-host.invalid:7", "-c", "1"],
    ])
    func exitsWith2OnUsageOrSetupErrors(arguments: [String]) async throws {
        let result = try await Spawned.run(udpecho, ["ping"] + arguments)
        #expect(result.status == 2, "\(result.error)")
        #expect(!result.error.isEmpty)
    }

    /// A Python server that holds every reply 50 ms: every round trip is at least 50 ms, and the median adds less
    /// than 5 ms to it.
    @Test func aServerThatHoldsEachReply50msShowsRoundTripsOf50ms() async throws {
        let (peer, port) = try await startPythonServer("hold50")
        let failure = try await firstPassingAttempt {
            let result = try await Spawned.run(
                udpecho,
                ["ping", "127.0.0.1:\(port)", "-c", "10", "-i", "100ms", "--json"]
            )
            #expect(result.status == 0, "\(result.error)")
            let replies = try jsonObjects(result.lines).filter { $0["type"] as? String == "reply" }
            #expect(replies.count == 10)
            let rtts = replies.compactMap { $0["rtt_ms"] as? Double }
            #expect(rtts.allSatisfy { $0 >= 50 }, "\(rtts)")  // never less than the server held it
            // Python's sleep itself can overshoot on a loaded machine: the median, not every one, within 5 ms.
            let median = rtts.sorted()[rtts.count / 2]
            return median < 55 ? nil : "round trips \(rtts) ms"
        }
        #expect(failure == nil, "\(failure ?? "")")
        peer.signal(SIGKILL)
    }

    /// Replies held 0 and 20 ms in turn: consecutive round trips differ by 20 ms, so IPDV's mean is 20 ms.
    @Test func ipdvOfAlternatingDelaysIsTheirDifference() async throws {
        let (peer, port) = try await startPythonServer("alternate20")
        let failure = try await firstPassingAttempt {
            let result = try await Spawned.run(
                udpecho,
                ["ping", "127.0.0.1:\(port)", "-c", "21", "-i", "60ms", "-q", "--json"]
            )
            #expect(result.status == 0, "\(result.error)")
            let summary = try #require(try jsonObjects(result.lines).last)
            let ipdv = try #require(summary["ipdv_ms"] as? [String: Double])
            let jitter = try #require(summary["jitter_rfc3550_ms"] as? Double)
            let mean = try #require(ipdv["mean"])
            let median = try #require(ipdv["p50"])
            return mean > 19 && mean < 22 && median > 19 && jitter > 10 && jitter < 22
                ? nil : "ipdv \(ipdv), RFC 3550 jitter \(jitter) ms"
        }
        #expect(failure == nil, "\(failure ?? "")")
        peer.signal(SIGKILL)
    }

    /// Loopback has no hardware timestamps: asking for them is a setup error that says why, not a silent fallback.
    @Test func hardwareTimestampsOnLoopbackFailClearly() async throws {
        let result = try await Spawned.run(udpecho, ["ping", "127.0.0.1:7", "-c", "1", "--timestamps", "hardware"])
        #expect(result.status == 2)
        #expect(result.error.contains("interface lo cannot timestamp in hardware"), "\(result.error)")
        let bench = try await Spawned.run(udpecho, ["bench", "127.0.0.1:7", "-d", "1s", "--timestamps", "hardware"])
        #expect(bench.status == 2)
        #expect(bench.error.contains("cannot timestamp in hardware"), "\(bench.error)")
    }

    /// A refused probe prints one line, and no "no reply" after it.
    @Test func aRefusedProbeIsShownOnce() async throws {
        let closed = try TestSocket.refusing()
        defer { closed.close() }
        let port = closed.localAddress.port!
        let result = try await Spawned.run(
            udpecho,
            ["ping", "127.0.0.1:\(port)", "-c", "3", "-i", "50ms", "-W", "200ms"]
        )
        #expect(result.status == 1)
        #expect(result.lines.filter { $0.hasPrefix("refused: seq=") }.count == 3, "\(result.lines)")
        #expect(!result.lines.contains { $0.hasPrefix("no reply") }, "\(result.lines)")
        #expect(
            result.lines.contains { $0.hasPrefix("3 transmitted, 0 received, 100% loss") && $0.contains("3 refused") }
        )
    }

    @Test func showsDuplicatesCorruptionAndReordering() async throws {
        for (mode, expected) in [("dup", "(DUP!)"), ("flip-last", "corrupt reply:"), ("reorder", "(out of order)")] {
            let (peer, port) = try await startPythonServer(mode)
            let result = try await Spawned.run(
                udpecho,
                ["ping", "127.0.0.1:\(port)", "-c", "4", "-i", "5ms", "-W", "500ms"]
            )
            #expect(result.lines.contains { $0.contains(expected) }, "\(mode): \(result.lines)")
            peer.signal(SIGKILL)
        }
    }

    /// A damaged sequence number: the line says what the bytes read and that no such probe had been sent (the
    /// first byte flipped turns probe 0 into 255), with one colon after the address.
    @Test func explainsAReplyWhoseSequenceNumberIsDamaged() async throws {
        let (peer, port) = try await startPythonServer("flip")
        let result = try await Spawned.run(udpecho, ["ping", "127.0.0.1:\(port)", "-c", "1", "-W", "300ms"])
        #expect(
            result.lines.contains(
                "corrupt reply: 64 bytes from 127.0.0.1:\(port): its sequence number (bytes 0-7) reads 255, which had not been sent yet"
            ),
            "\(result.lines)"
        )
        peer.signal(SIGKILL)
    }

    @Test func ctrlCEndsWithTheSummary() async throws {
        let (server, port) = try await startServer(["--address", "127.0.0.1:0", "--quiet"])
        let ping = try Spawned(udpecho, ["ping", "127.0.0.1:\(port)", "-i", "10ms"])
        #expect(await ping.waitForLine { $0.contains("seq=2 ") } != nil)
        // The server goes first, so that no reply is on its way to the closed socket of a stopped ping (which another
        // test's server might get the port of).
        server.signal(SIGINT)
        await server.waitForExit()
        ping.signal(SIGINT)
        #expect(await ping.waitForExit() == 0)
        #expect(ping.outputLines.contains { $0.contains("transmitted") && $0.contains("received") })
    }
}

@Suite struct BenchCommandTests {
    @Test func measuresAnIndependentServerExactly() async throws {
        let (peer, port) = try await startPythonServer("echo")
        let result = try await Spawned.run(
            udpecho,
            ["bench", "127.0.0.1:\(port)", "--flows", "2", "--window", "2", "--count", "2000", "--json"]
        )
        #expect(result.status == 0, "\(result.error)")
        let object = try #require(try jsonObjects(result.lines).first)
        #expect(object["sent"] as? Int == 2000)
        #expect(object["received"] as? Int == 2000)
        #expect(object["lost"] as? Int == 0 && object["corrupt"] as? Int == 0 && object["duplicate"] as? Int == 0)
        #expect(result.error.isEmpty, "no progress line when standard error is not a terminal")
        peer.signal(SIGKILL)
    }

    @Test func countsCorruptAndDuplicateRepliesAndExitsWith1() async throws {
        for (mode, field) in [("flip-last", "corrupt"), ("dup", "duplicate")] {
            let (peer, port) = try await startPythonServer(mode)
            let result = try await Spawned.run(
                udpecho,
                ["bench", "127.0.0.1:\(port)", "--flows", "1", "--window", "1", "--count", "200", "--json"]
            )
            #expect(result.status == 1, "\(mode): \(result.error)")
            let object = try #require(try jsonObjects(result.lines).first)
            #expect(object[field] as? Int == 200, "\(mode): \(object)")
            peer.signal(SIGKILL)
        }
    }

    /// With loss, the run waits a loss timeout for the last lost replies; echoes per second are counted over the
    /// time the load was on (1 s here), not over that wait (which used to halve the rate reported here).
    @Test func echoesPerSecondLeaveOutTheWaitForLostReplies() async throws {
        let (peer, port) = try await startPythonServer("lossy")
        let result = try await Spawned.run(
            udpecho,
            [
                "bench", "127.0.0.1:\(port)", "--flows", "1", "--rate", "2000", "--duration", "1s", "--loss-timeout",
                "1s", "--json",
            ]
        )
        #expect(result.status == 0, "\(result.error)")
        let object = try #require(try jsonObjects(result.lines).first)
        let received = Double(try #require(object["received"] as? Int))
        let lost = try #require(object["lost"] as? Int)
        #expect(lost > 500, "\(object)")
        let elapsed = try #require(object["elapsed_s"] as? Double)
        let active = try #require(object["active_s"] as? Double)
        let rate = try #require(object["echoes_per_second"] as? Double)
        #expect(elapsed >= 1.9, "the run waits a loss timeout for the last lost reply: \(object)")
        #expect((0.95...1.1).contains(active), "\(object)")
        #expect(abs(rate * active - received) < 2, "\(object)")
        #expect(rate > received / 1.1, "\(object)")
        peer.signal(SIGKILL)
    }

    /// Open loop: latency counts from each request's scheduled time, so a 300 ms stall of the server shows in p99
    /// (a closed loop would simply send less while the server stalls, and hide it).
    @Test func openLoopLatencyIncludesAServerStall() async throws {
        let (peer, port) = try await startPythonServer("stall")
        let result = try await Spawned.run(
            udpecho,
            ["bench", "127.0.0.1:\(port)", "--flows", "1", "--rate", "1000", "--duration", "2s", "--json"]
        )
        #expect(result.status == 0, "\(result.error)")
        let object = try #require(try jsonObjects(result.lines).first)
        let latency = try #require(object["latency_ms"] as? [String: Double])
        #expect(try #require(latency["p99"]) >= 200)
        #expect(try #require(latency["p50"]) < 100)
        // Requests that left on time and waited in the stalled server: their round trips show it too.
        let rtt = try #require(object["rtt_ms"] as? [String: Double])
        #expect(try #require(rtt["p99"]) >= 200)
        #expect(object["lost"] as? Int == 0)
        #expect(object["timestamps"] as? String == "kernel")
        #expect((object["send_lateness_ms"] as? [String: Double])?["p50"] != nil)
        peer.signal(SIGKILL)
    }

    @Test func writesAHistogramThatParsesBackAndAWellFormedPlot() async throws {
        let (server, port) = try await startServer(["--address", "127.0.0.1:0", "--quiet"])
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("udpecho-bench-\(getpid())")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: directory) }
        let hgrm = directory.appendingPathComponent("latency.hgrm").path
        let rttHgrm = directory.appendingPathComponent("latency-rtt.hgrm").path
        let svg = directory.appendingPathComponent("latency.svg").path
        let result = try await Spawned.run(
            udpecho,
            [
                "bench", "127.0.0.1:\(port)", "--count", "3000", "--rate", "5000", "--histogram", hgrm, "--plot",
                svg,
            ]
        )
        #expect(result.status == 0, "\(result.error)")
        #expect(result.lines.contains { $0.hasPrefix("sent 3000  received 3000  lost 0") })
        #expect(result.lines.first?.hasSuffix("kernel timestamps (SO_TIMESTAMPING, software)") == true)
        #expect(result.lines.contains { $0.hasPrefix("latency ms p50 ") })
        #expect(result.lines.contains { $0.hasPrefix("rtt ms     p50 ") })
        // The open loop's headline (latency from the schedule) and the round trip, each naming what it is and the
        // clock that measured it.
        let comments = try String(contentsOfFile: hgrm, encoding: .utf8).split(separator: "\n").last ?? ""
        #expect(
            comments.contains("latency, from each request's scheduled send time")
                && comments.contains("kernel timestamps")
        )
        let rttComments = try String(contentsOfFile: rttHgrm, encoding: .utf8).split(separator: "\n").last ?? ""
        #expect(rttComments.contains("round trip, from each request's departure") && rttComments.contains("kernel"))
        // Parsed by Python, as HdrHistogram's plotters and browsers would read them.
        let check = try await Spawned.run(
            python,
            [
                "python3", "-c",
                """
                import sys, xml.etree.ElementTree as ET
                rows = [l.split() for l in open(sys.argv[1]) if not l.startswith("#")]
                rows = [[float(x) for x in r] for r in rows if len(r) >= 3 and r[0][0].isdigit()]
                assert all(a[0] <= b[0] and a[1] <= b[1] for a, b in zip(rows, rows[1:]))
                assert rows[-1][1] == 1.0 and rows[-1][2] == 3000, rows[-1]
                root = ET.parse(sys.argv[2]).getroot()
                assert root.tag == "{http://www.w3.org/2000/svg}svg"
                assert len(root.findall("{http://www.w3.org/2000/svg}polyline")) == 2
                rows = [l.split() for l in open(sys.argv[3]) if not l.startswith("#")]
                assert [r for r in rows if len(r) >= 3 and r[0][0].isdigit()][-1][2] == "3000"
                print("ok", len(rows))
                """, hgrm, svg, rttHgrm,
            ]
        )
        #expect(check.status == 0, "\(check.error) \(check.lines)")
        #expect(check.lines.first?.hasPrefix("ok") == true)
        server.signal(SIGINT)
        await server.waitForExit()
    }

    /// On a terminal (a pseudo-terminal made by script(1)), a progress line is rewritten once a second.
    @Test(
        .enabled(if: FileManager.default.isExecutableFile(atPath: "/usr/bin/script"), "needs script(1) for a terminal")
    )
    func showsProgressOnATerminal() async throws {
        let (server, port) = try await startServer(["--address", "127.0.0.1:0", "--quiet"])
        let command = "\(udpecho) bench 127.0.0.1:\(port) --duration 2500ms --rate 1000"
        let result = try await Spawned.run("/usr/bin/script", ["-q", "-e", "-c", command, "/dev/null"])
        #expect(result.status == 0, "\(result.error)")
        let text = String(decoding: result.output, as: UTF8.self)
        #expect(text.contains(/\r1s  \d+ echoes\/s  loss 0%  p99 \d+\.\d{3} ms/), "\(text)")
        #expect(text.contains(/\r2s  \d+ echoes\/s/))
        server.signal(SIGINT)
        await server.waitForExit()
    }

    @Test func refusesARemoteTargetWith2() async throws {
        let result = try await Spawned.run(udpecho, ["bench", "192.0.2.1:7", "--duration", "1s"])
        #expect(result.status == 2)
        #expect(result.error.contains("refusing to send load to 192.0.2.1:7"))
        #expect(result.error.contains("--allow-remote"))
    }

    @Test func rejectsWindowWithRate() async throws {
        let result = try await Spawned.run(udpecho, ["bench", "127.0.0.1:7", "--window", "2", "--rate", "10"])
        #expect(result.status == 2)
        #expect(result.error.contains("not both"))
    }
}
