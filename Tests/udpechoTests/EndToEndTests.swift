import Foundation
import NIOCore
import TestSupport
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// The built `udpecho` executable, spawned as a user runs it, with its output lines checked.
@Suite struct ServerCommandTests {
    /// A signal sent the moment the ready line is read (as a supervisor or a script does) stops the server cleanly,
    /// with its summary: the line is printed only once the server traps SIGINT and SIGTERM. Before, it was printed
    /// first, and a signal in between killed the process (it happened to a test of the XDP path). Ten times each.
    @Test(arguments: [SIGINT, SIGTERM])
    func aSignalRightAfterTheReadyLineStopsCleanly(_ signal: Int32) async throws {
        for _ in 0..<10 {
            let (server, _) = try await startServer(["--address", "127.0.0.1:0"])
            server.signal(signal)
            #expect(await server.waitForExit() == 0, "\(server.errorText)")
            #expect(server.outputLines.last?.hasPrefix("summary: received=0") == true, "\(server.outputLines)")
        }
    }

    @Test func printsTheArticlesLinesAndASummaryOnCtrlC() async throws {
        let (server, port) = try await startServer(["--address", "127.0.0.1:0"])
        #expect(server.outputLines.first == "running as a server on 127.0.0.1:\(port)")
        let client = try await Spawned.run(
            udpecho,
            ["client", "--address", "127.0.0.1:\(port)"],
            input: Array("hello\n".utf8)
        )
        #expect(client.status == 0)
        #expect(
            client.lines == [
                "sending to 127.0.0.1:\(port)",
                "packet-written: bytes=6",
                "packet-received: bytes=6 from=127.0.0.1:\(port)",
            ]
        )
        let written = try #require(await server.waitForLine { $0.hasPrefix("packet-written:") })
        #expect(written.wholeMatch(of: /packet-written: bytes=6 to=127\.0\.0\.1:\d+/) != nil)
        #expect(
            server.outputLines.contains { $0.wholeMatch(of: /packet-received: bytes=6 from=127\.0\.0\.1:\d+/) != nil }
        )

        server.signal(SIGINT)
        #expect(await server.waitForExit() == 0)
        let lines = server.outputLines
        #expect(lines.suffix(2).first == "cancelled")
        #expect(lines.last?.hasPrefix("summary: received=1 echoed=1 dropped=0 bytes-received=6 bytes-echoed=6") == true)
    }

    @Test func defaultFormListensOnEveryAddressAndPrintsIPv4ClientsPlainly() async throws {
        // Only this test's clients are answered, and every line is shown: the wildcard address is reached by every
        // loopback address, so strays from other tests must neither be echoed nor crowd out the lines checked here.
        let (server, port) = try await startServer([
            "--address", ":0", "--allow", "127.0.0.1", "--allow", "::1", "--lines-per-second", "0",
        ])
        #expect(server.outputLines.first == "running as a server on [::]:\(port)")
        let socket = try TestSocket(host: "127.0.0.1")
        socket.send([7, 7, 7], to: try SocketAddress(ipAddress: "127.0.0.1", port: port))
        #expect(await socket.receive()?.bytes == [7, 7, 7])
        let v6 = try TestSocket(host: "::1")
        v6.send([6], to: try SocketAddress(ipAddress: "::1", port: port))
        #expect(await v6.receive()?.bytes == [6])
        let expected = "packet-received: bytes=3 from=127.0.0.1:\(socket.localAddress.port!)"
        #expect(await server.waitForLine { $0 == expected } != nil)
        #expect(await server.waitForLine { $0 == "packet-written: bytes=1 to=[::1]:\(v6.localAddress.port!)" } != nil)
        #expect(!server.outputLines.contains { $0.contains("::ffff:") })
        server.signal(SIGTERM)
        #expect(await server.waitForExit() == 0)
        #expect(server.outputLines.contains("cancelled"))
    }

    @Test func acceptsTheArticlesHostAndPortFlags() async throws {
        let (server, port) = try await startServer(["--host", "127.0.0.1", "--port", "0"])
        let client = try await Spawned.run(
            udpecho,
            ["client", "--host", "127.0.0.1", "--port", "\(port)", "--timeout", "5s"],
            input: Array("hi".utf8)
        )
        #expect(client.status == 0)
        #expect(client.lines.last == "packet-received: bytes=2 from=127.0.0.1:\(port)")
        server.signal(SIGINT)
        #expect(await server.waitForExit() == 0)
    }

    @Test func collapsesLinesPastTheLimitButCountsEveryDatagram() async throws {
        let (server, port) = try await startServer([
            "--address", "127.0.0.1:0", "--lines-per-second", "3", "--threads", "1",
        ])
        let client = try TestSocket(host: "127.0.0.1", connectTo: try SocketAddress(ipAddress: "127.0.0.1", port: port))
        for index in 0..<200 {
            client.send(pattern(10, seed: index))
            #expect(await client.receive() != nil)
        }
        server.signal(SIGINT)
        #expect(await server.waitForExit() == 0)
        let lines = server.outputLines
        let shown = lines.filter { $0.hasPrefix("packet-received:") }.count
        let notShown = lines.compactMap { line -> Int? in
            guard let match = line.firstMatch(of: /packets-not-shown: count=(\d+)/) else { return nil }
            return Int(match.1)
        }
        #expect(shown >= 3 && shown < 200)
        #expect(shown + notShown.reduce(0, +) == 200)
        #expect(lines.last?.hasPrefix("summary: received=200 echoed=200 dropped=0") == true)
    }

    @Test func quietPrintsNoPerPacketLines() async throws {
        let (server, port) = try await startServer(["--address", "127.0.0.1:0", "--quiet"])
        let client = try await Spawned.run(udpecho, ["client", "--address", "127.0.0.1:\(port)"], input: [1, 2, 3])
        #expect(client.status == 0)
        server.signal(SIGINT)
        #expect(await server.waitForExit() == 0)
        #expect(!server.outputLines.contains { $0.hasPrefix("packet-") })
        #expect(server.outputLines.last?.hasPrefix("summary: received=1 echoed=1") == true)
    }

    @Test func failsClearlyWhenThePortIsTaken() async throws {
        let taken = try TestSocket(host: "127.0.0.1")
        let result = try await Spawned.run(udpecho, ["server", "--address", "127.0.0.1:\(taken.localAddress.port!)"])
        #expect(result.status == 1)
        #expect(result.error.contains("bind 127.0.0.1:\(taken.localAddress.port!) failed: Address already in use"))
    }

    /// `--busy-poll`: the server polls between datagrams, answers every one, and still stops on SIGINT (the poll
    /// watches for stopping); a poll longer than a second is refused.
    @Test func busyPollServesAndStops() async throws {
        let (server, port) = try await startServer(["--address", "127.0.0.1:0", "-q", "--busy-poll", "500us"])
        let ping = try await Spawned.run(udpecho, ["ping", "127.0.0.1:\(port)", "-c", "20", "-i", "5ms", "-q"])
        #expect(
            ping.status == 0 && ping.lines.contains { $0.hasPrefix("20 transmitted, 20 received") },
            "\(ping.lines)"
        )
        // A poll that missed the stop would spin or block for ever: the server would be killed at the timeout (exit
        // 137). It stops in a few ms here; the bound is wide because a loaded CI machine once took 2 s to run the exit.
        server.signal(SIGINT)
        #expect(await server.waitForExit(timeout: 10) == 0)
        #expect(try summaryCounts(server)["echoed"] == 20)
        let refused = try await Spawned.run(udpecho, ["server", "--address", "127.0.0.1:0", "--busy-poll", "2s"])
        #expect(refused.status == 64 && refused.error.contains("--busy-poll must be from 0 to 1s"), "\(refused.error)")
    }

    /// A second server on a port a first one serves with several threads (SO_REUSEPORT) is refused, not let in to
    /// share the first one's traffic; and servers asking for port 0 never get the same port. The first says its
    /// address once, with its threads.
    @Test func aSecondServerCannotJoinAServedPort() async throws {
        let (first, port) = try await startServer(["--address", "127.0.0.1:0", "--threads", "2", "-q"])
        // The address once, its sockets as a count (it was the address once a socket).
        #expect(first.outputLines.first == "running as a server on 127.0.0.1:\(port) (2 threads)")
        let second = try await Spawned.run(
            udpecho,
            ["server", "--address", "127.0.0.1:\(port)", "--threads", "2", "-q"]
        )
        #expect(second.status == 1)
        #expect(second.error.contains("bind 127.0.0.1:\(port) failed: Address already in use"), "\(second.error)")
        var others: [(Spawned, Int)] = []
        for _ in 0..<6 { others.append(try await startServer(["--address", "127.0.0.1:0", "--threads", "2", "-q"])) }
        #expect(Set(others.map(\.1) + [port]).count == 7)
        for (server, _) in others + [(first, port)] {
            server.signal(SIGINT)
            #expect(await server.waitForExit() == 0)
        }
    }

    @Test(arguments: [
        (["--address", "127.0.0.1"], "has no port"),
        (["--address", "::1:7"], "needs brackets"),
        (["--timeout", "15"], "has no unit"),
        (["--address", ":1", "--port", "2"], "not both"),
        (["--threads", "0"], "out of range"),
        (["--address", "[::1]"], "for example [::1]:1337"),
        (["--address", "localhost:"], "for example localhost:1337"),
        (["--timeout", "2562048h"], "longer than 2562047h47m16.854775807s"),
        (["--loop-limit=-1"], "--loop-limit -1 is out of range; give 0 to 1000000 (0 turns it off)"),
    ])
    func rejectsBadArguments(arguments: [String], message: String) async throws {
        let result = try await Spawned.run(udpecho, ["server"] + arguments)
        #expect(result.status == 64)
        #expect(result.error.contains(message), "stderr: \(result.error)")
    }

    /// Limits below one reply per thread used to make a bucket that never held a whole token, so the server
    /// answered nothing at all; each bucket now holds at least one, and the first datagram is answered.
    @Test(arguments: [
        ["--global-rate", "1", "--threads", "2"], ["--global-rate", "3", "--threads", "4"], ["--global-rate", "0.5"],
        ["--rate-limit", "0.4"],
    ])
    func limitsBelowOneAReplyPerThreadStillAnswer(limits: [String]) async throws {
        let (server, port) = try await startServer(["--address", "127.0.0.1:0", "-q", "--limit-loopback"] + limits)
        let client = try await Spawned.run(
            udpecho,
            ["client", "--address", "127.0.0.1:\(port)", "--timeout", "2s"],
            input: [1, 2, 3]
        )
        #expect(client.status == 0, "\(client.error)")
        server.signal(SIGINT)
        #expect(await server.waitForExit() == 0)
    }

    @Test func helpTeachesTheOptionsAndExitCodes() async throws {
        let server = try await Spawned.run(udpecho, ["server", "--help"])
        #expect(server.status == 0)
        let text = String(decoding: server.output, as: UTF8.self)
        for word in ["--address", "--timeout", "--quiet", "--threads", "Exit codes", "packet-received"] {
            #expect(text.contains(word), "server --help lacks \(word)")
        }
        let client = try await Spawned.run(udpecho, ["client", "--help"])
        let clientText = String(decoding: client.output, as: UTF8.self)
        for word in ["--address", "--output", "--input", "Exit codes", "130"] {
            #expect(clientText.contains(word), "client --help lacks \(word)")
        }
    }
}

@Suite struct ClientCommandTests {
    @Test func outputModeWritesTheEchoedBytesToStandardOutput() async throws {
        let (server, port) = try await startServer(["--address", "127.0.0.1:0"])
        let payload = pattern(5000, seed: 3)
        let result = try await Spawned.run(
            udpecho,
            ["client", "--address", "127.0.0.1:\(port)", "--output"],
            input: payload
        )
        #expect(result.status == 0)
        #expect(Array(result.output) == payload)
        #expect(result.error.contains("packet-received: bytes=5000 from=127.0.0.1:\(port)"))
        server.signal(SIGINT)
        await server.waitForExit()
    }

    @Test func sendsAFileGivenWithInput() async throws {
        let (server, port) = try await startServer(["--address", "127.0.0.1:0"])
        let file = FileManager.default.temporaryDirectory.appendingPathComponent("udpecho-input-\(getpid())")
        try Data(pattern(4097)).write(to: file)
        defer { try? FileManager.default.removeItem(at: file) }
        let result = try await Spawned.run(udpecho, ["client", "--address", "127.0.0.1:\(port)", "--input", file.path])
        #expect(result.status == 0)
        #expect(result.lines.last == "packet-received: bytes=4097 from=127.0.0.1:\(port)")
        server.signal(SIGINT)
        await server.waitForExit()
    }

    @Test func timesOutWithExitCode1() async throws {
        let (silent, port) = try await startPythonServer("silent")
        let result = try await Spawned.run(
            udpecho,
            ["client", "--address", "127.0.0.1:\(port)", "--timeout", "300ms"],
            input: [1]
        )
        #expect(result.status == 1)
        #expect(result.lines.last == "packet-written: bytes=1")
        #expect(result.error.contains("no reply from 127.0.0.1:\(port) within 300ms"))
        silent.signal(SIGKILL)
    }

    @Test func isRefusedWithExitCode2() async throws {
        let closed = try TestSocket.refusing()
        defer { closed.close() }
        let port = closed.localAddress.port!
        let result = try await Spawned.run(udpecho, ["client", "--address", "127.0.0.1:\(port)"], input: [1])
        #expect(result.status == 2)
        #expect(result.error.contains("nothing listens on that port"))
    }

    @Test func reportsAReplyThatDiffersWithExitCode3() async throws {
        let (flipping, port) = try await startPythonServer("flip")
        let result = try await Spawned.run(
            udpecho,
            ["client", "--address", "127.0.0.1:\(port)"],
            input: Array("hello".utf8)
        )
        #expect(result.status == 3)
        #expect(result.lines.last == "packet-received: bytes=5 from=127.0.0.1:\(port)")
        #expect(result.error.contains("differs from what was sent: 5 bytes each, first difference at byte 0"))
        flipping.signal(SIGKILL)
    }

    @Test func namesTheHostItCannotResolveWithExitCode4() async throws {
        let result = try await Spawned.run(udpecho, ["client", "--address", "no-such-host.invalid:7"], input: [1])
        #expect(result.status == 4)
        #expect(result.error.contains("cannot resolve the host name 'no-such-host.invalid'"))
    }

    @Test func refusesInputLargerThanADatagramWithExitCode5() async throws {
        let listener = try TestSocket(host: "127.0.0.1")
        let result = try await Spawned.run(
            udpecho,
            ["client", "--address", "127.0.0.1:\(listener.localAddress.port!)"],
            input: pattern(70000)
        )
        #expect(result.status == 5)
        #expect(result.error.contains("the input is 70000 bytes"))
        #expect(result.error.contains("at most 65507 bytes; nothing was sent"))
        #expect(await listener.receive(timeoutMilliseconds: 100) == nil)
    }

    @Test func missingInputFileIsExitCode6() async throws {
        let result = try await Spawned.run(
            udpecho,
            ["client", "--address", "127.0.0.1:9", "--input", "/nonexistent/file"]
        )
        #expect(result.status == 6)
        #expect(result.error.contains("cannot open the input file '/nonexistent/file'"))
    }

    @Test(arguments: [
        (["--address", "localhost"], "has no port"),
        (["--address", "[::1:7"], "unbalanced brackets"),
        (["--address", "127.0.0.1:99999"], "out of range"),
        (["--address", "127.0.0.1:7", "--timeout", "soon"], "expected a number"),
        (["--address", "127.0.0.1:7", "--timeout", "0"], "gives up before any reply can come"),
        ([], "give the server with --address"),
    ])
    func rejectsBadArgumentsWithExitCode64(arguments: [String], message: String) async throws {
        let result = try await Spawned.run(udpecho, ["client"] + arguments)
        #expect(result.status == 64)
        #expect(result.error.contains(message), "stderr: \(result.error)")
    }

    @Test func ctrlCPrintsCancelledAndExits130() async throws {
        let (silent, port) = try await startPythonServer("silent")
        let client = try Spawned(udpecho, ["client", "--address", "127.0.0.1:\(port)"])
        // The client is waiting for the rest of its input when the user gives up.
        #expect(await client.waitForLine { $0.hasPrefix("sending to") } != nil)
        client.signal(SIGINT)
        #expect(await client.waitForExit() == 130)
        #expect(client.outputLines.last == "cancelled")
        silent.signal(SIGKILL)
    }
}

/// Our programs against peers that are not ours, so that we do not only test ourselves against ourselves.
@Suite struct InteropTests {
    @Test func ourServerEchoesAPythonClient() async throws {
        let (server, port) = try await startServer(["--address", "127.0.0.1:0", "--quiet"])
        let sizes = ["0", "1", "1024", "1025", "4097", "65507"]
        let result = try await Spawned.run(python, ["python3", "-c", pythonEchoClient, "\(port)"] + sizes)
        #expect(result.status == 0, "python: \(result.lines) \(result.error)")
        #expect(result.lines == ["all echoed"])
        server.signal(SIGINT)
        await server.waitForExit()
        #expect(server.outputLines.last?.hasPrefix("summary: received=6 echoed=6") == true)
    }

    @Test(
        .enabled(
            if: FileManager.default.isExecutableFile(atPath: "/usr/bin/socat"),
            "needs socat (apt-get install socat)"
        )
    )
    func ourServerEchoesSocat() async throws {
        let (server, port) = try await startServer(["--address", "127.0.0.1:0"])
        let result = try await Spawned.run(
            "/usr/bin/socat",
            ["-T", "5", "-", "UDP:127.0.0.1:\(port)"],
            input: Array("ping from socat\n".utf8)
        )
        #expect(String(decoding: result.output, as: UTF8.self) == "ping from socat\n")
        server.signal(SIGINT)
        await server.waitForExit()
    }

    @Test func ourClientWorksWithAPythonEchoServer() async throws {
        let (peer, port) = try await startPythonServer("echo")
        let payload = pattern(65507, seed: 9)
        let result = try await Spawned.run(
            udpecho,
            ["client", "--address", "127.0.0.1:\(port)", "--output"],
            input: payload
        )
        #expect(result.status == 0, "\(result.error)")
        #expect(Array(result.output) == payload)
        peer.signal(SIGKILL)
    }
}
