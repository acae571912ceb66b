import CUDPEcho
import Foundation
import NIOCore
import TestSupport
import Testing

@testable import UDPEcho

/// TWAMP (RFC 5357) both ways over real sockets: our Control-Client and Session-Sender against our server, in each
/// mode and family; and the server under the attacks a TCP service that makes a host send UDP must bear.
@Suite struct TwampTests {
    static let keys = IPPMKeyFile(secrets: ["alice": Array("correct horse".utf8)])

    /// A server on a loopback address of its own (or ::1), both ports chosen by the kernel; `body` runs while it
    /// serves.
    @discardableResult
    func withTwampServer<Result>(
        ipv6: Bool = false,
        _ change: (inout TwampServerConfiguration) -> Void = { _ in },
        _ body: (TwampServer) async throws -> Result
    ) async throws -> Result {
        var configuration = TwampServerConfiguration(
            controlAddress: HostAndPort(host: ipv6 ? "::1" : isolatedLoopback(), port: 0),
            testPort: 0,
            keys: Self.keys
        )
        change(&configuration)
        let server = try await TwampServer(configuration: configuration)
        let running = try await serving({ try await server.run() }, isServing: { server.isServing })
        return try await untilDone(running) { try await body(server) }
    }

    func ping(
        _ server: TwampServer,
        mode: IPPMModes,
        secret: String = "correct horse",
        keyID: String = "alice",
        count: Int = 20
    ) async throws -> EchoBenchmark.Result {
        let control = try #require(server.controlAddress)
        let twamp = TwampClientConfiguration(
            server: control,
            mode: mode,
            keyID: mode.usesKey ? keyID : nil,
            secret: mode.usesKey ? Array(secret.utf8) : nil
        )
        return try await TwampPinger.run(
            EchoPinger.Configuration(target: control, count: count, interval: .milliseconds(2)),
            twamp: twamp
        ) { _ in }
    }

    @Test(arguments: [IPPMModes.unauthenticated, .authenticated, .encrypted], [false, true])
    func ourClientMeasuresOurServer(mode: IPPMModes, ipv6: Bool) async throws {
        try await withTwampServer(ipv6: ipv6) { server in
            let result = try await self.ping(server, mode: mode)
            #expect(result.counts.received == 20 && result.counts.lost == 0 && result.counts.corrupt == 0)
            let stamp = try #require(result.stamp)
            // One host, one clock: neither direction is negative, and the reflector answered every packet in order.
            #expect(stamp.forwardDelay.count == 20 && stamp.forwardDelay.percentile(0) >= 0)
            #expect(stamp.backwardDelay.percentile(0) >= 0)
            #expect(stamp.forwardLoss == 0)
            #expect(stamp.ttlAtReflector.keys.allSatisfy { $0 > 0 })
            // A reply can reach the client a moment before the serving thread counts it.
            try await waitUntil { server.reflectorStatistics.echoed == 20 }
            #expect(server.statistics.sessionsAccepted == 1 && server.statistics.authenticationFailures == 0)
        }
    }

    /// The DSCP a request's Type-P descriptor names is the one the replies leave with (RFC 5357 §3.5); without one,
    /// the system's.
    @Test(arguments: [UInt8(46), 0])
    func theRepliesCarryTheDSCPTheRequestAsked(dscp: UInt8) async throws {
        try await withTwampServer { server in
            let control = try #require(server.controlAddress)
            var twamp = TwampClientConfiguration(server: control, mode: .unauthenticated)
            twamp.dscp = dscp
            let result = try await TwampPinger.run(
                EchoPinger.Configuration(target: control, count: 5, interval: .milliseconds(2)),
                twamp: twamp
            ) { _ in }
            #expect(result.counts.received == 5)
            #expect(result.stamp?.tosHere == [dscp << 2: 5], "\(result.stamp?.tosHere ?? [:])")
        }
    }

    /// A wrong secret and an unknown identity get the same refusal (the server is no oracle for identities), both
    /// counted; the client says what happened.
    @Test func aWrongKeyIsRefusedLikeAnUnknownOne() async throws {
        try await withTwampServer { server in
            var messages: [String] = []
            for (keyID, secret) in [("alice", "wrong"), ("mallory", "correct horse")] {
                do {
                    _ = try await self.ping(server, mode: .encrypted, secret: secret, keyID: keyID, count: 1)
                    Issue.record("a wrong key was accepted")
                } catch let error as EchoError {
                    messages.append(
                        "\(error)".replacingOccurrences(of: "\(server.controlAddress!.hostPortDescription)", with: "")
                    )
                }
            }
            #expect(messages.count == 2 && messages[0] == messages[1], "\(messages)")
            #expect(messages.first?.contains("refused the connection (Accept 1, failure") == true, "\(messages)")
            #expect(server.statistics.authenticationFailures == 2 && server.statistics.sessionsAccepted == 0)
        }
    }

    @Test func aModeTheServerDoesNotOfferIsAClearError() async throws {
        let offerOne: (inout TwampServerConfiguration) -> Void = { $0.modes = .unauthenticated }
        try await withTwampServer(offerOne) { server in
            await #expect {
                _ = try await self.ping(server, mode: .authenticated)
            } throws: { error in
                "\(error)".contains("offers unauthenticated mode, not authenticated")
            }
        }
    }
}

/// The server's control protocol under attack, over raw TCP from a client that sends what it likes.
@Suite struct TwampControlAttackTests {
    static let keys = TwampTests.keys

    /// A Request-TW-Session in the clear for a sender on `port` (IPv4, addresses zero: the control connection's).
    static func request(
        port: UInt16,
        senderAddress: [UInt8] = [0, 0, 0, 0],
        startOffset: Int64 = 0,
        timeout: UInt64 = 0
    ) -> [UInt8] {
        SessionRequest(
            ipVersion: 4,
            senderPort: port,
            receiverPort: 862,
            senderAddress: senderAddress,
            receiverAddress: [0, 0, 0, 0],
            paddingLength: 0,
            startTime: StampTimestampFormat.ntp.encode(cudpecho_realtime_ns() + startOffset, taiOffset: 0),
            timeout: timeout
        ).encoded()
    }

    /// An unauthenticated connection set up: the greeting read, the Set-Up-Response sent, the Server-Start read.
    func openUnauthenticated(_ server: TwampServer) async throws -> TestTCPClient {
        let client = try TestTCPClient(connectTo: try #require(server.controlAddress))
        let greeting = try ServerGreeting(decoding: try #require(await client.receive(ServerGreeting.size)))
        #expect(greeting.modes.contains(.unauthenticated))
        client.send(SetUpResponse(mode: .unauthenticated).encoded())
        let start = try ServerStart(decoding: try #require(await client.receive(ServerStart.size)))
        #expect(start.accept == .ok)
        return client
    }

    @discardableResult
    func withServer<Result>(
        _ change: (inout TwampServerConfiguration) -> Void = { _ in },
        _ body: (TwampServer) async throws -> Result
    ) async throws -> Result {
        try await TwampTests().withTwampServer(change, body)
    }

    @Test func messagesOutOfOrderCloseTheConnection() async throws {
        try await withServer { server in
            // Stop-Sessions before any Start-Sessions. Each close's cause is the protocol error the counter checks at
            // the end; the time bound only says it comes (a loaded ThreadSanitizer run once took more than 5 s).
            let client = try await self.openUnauthenticated(server)
            client.send(StopSessions(sessionCount: 0).encoded())
            #expect(await client.closes(withinMilliseconds: 20000))
            // An OWAMP command on a TWAMP server; and a command nobody defined.
            for command: UInt8 in [1, 0x77] {
                let other = try await self.openUnauthenticated(server)
                other.send([command] + [UInt8](repeating: 0, count: 111))
                #expect(await other.closes(withinMilliseconds: 20000))
            }
            try await waitUntil { server.statistics.protocolErrors == 3 }
        }
    }

    /// Past the connection limit a new connection is greeted with no mode (RFC 4656's refusal) and closed.
    @Test func connectionsPastTheLimitAreRefused() async throws {
        let limits: (inout TwampServerConfiguration) -> Void = { $0.maximumConnections = 2 }
        try await withServer(limits) { server in
            let first = try await self.openUnauthenticated(server)
            let second = try await self.openUnauthenticated(server)
            let third = try TestTCPClient(connectTo: try #require(server.controlAddress))
            let refusal = try ServerGreeting(decoding: try #require(await third.receive(ServerGreeting.size)))
            #expect(refusal.modes.isEmpty)
            #expect(await third.closes(withinMilliseconds: 10000))
            #expect(server.statistics.connectionsRefused == 1)
            _ = (first, second)
        }
    }

    /// A client that stops halfway through its Set-Up-Response, or never answers the greeting, loses its connection
    /// after the message timeout; its slot is free again.
    @Test func aStalledClientIsClosedAndItsSlotFreed() async throws {
        // Long enough for a well-behaved client's set-up on a loaded machine (under ThreadSanitizer too).
        let limits: (inout TwampServerConfiguration) -> Void = {
            $0.messageTimeout = .seconds(3)
            $0.maximumConnections = 2
        }
        try await withServer(limits) { server in
            let silent = try TestTCPClient(connectTo: try #require(server.controlAddress))
            let halfway = try TestTCPClient(connectTo: try #require(server.controlAddress))
            _ = try #require(await halfway.receive(ServerGreeting.size))
            halfway.send(Array(SetUpResponse(mode: .unauthenticated).encoded().prefix(100)))
            #expect(await silent.closes(withinMilliseconds: 15000))
            #expect(await halfway.closes(withinMilliseconds: 15000))
            try await waitUntil { server.statistics.stalled == 2 }
            // Both slots are free: a new client is served.
            _ = try await self.openUnauthenticated(server)
            #expect(server.statistics.connectionsRefused == 0)
        }
    }

    /// A client asking for thousands of sessions gets the connection's limit and refusals for the rest (Accept 4),
    /// each answered, none kept.
    @Test func aFloodOfSessionRequestsMeetsTheLimit() async throws {
        let limit: (inout TwampServerConfiguration) -> Void = { $0.maximumSessionsPerConnection = 100 }
        try await withServer(limit) { server in
            let client = try await self.openUnauthenticated(server)
            var accepted = 0
            var refused = 0
            // In batches: the server reads at most two requests ahead of its answers.
            for batch in 0..<50 {
                for index in 0..<2 { client.send(Self.request(port: UInt16(20000 + batch * 2 + index))) }
                for _ in 0..<2 {
                    let answer = try AcceptSession(decoding: try #require(await client.receive(AcceptSession.size)))
                    if answer.accept == .ok {
                        accepted += 1
                    } else if answer.accept == .permanentLimitation {
                        refused += 1
                    }
                }
            }
            for port in 30000..<30400 {
                client.send(Self.request(port: UInt16(port)))
                let answer = try AcceptSession(decoding: try #require(await client.receive(AcceptSession.size)))
                if answer.accept == .ok { accepted += 1 } else if answer.accept == .permanentLimitation { refused += 1 }
            }
            #expect(accepted == 100 && refused == 400)
            #expect(server.statistics.sessionsAccepted == 100 && server.statistics.sessionsRefused == 400)
        }
    }

    /// The server's limit on sessions counts every connection's: past it a request is refused for now (Accept 5),
    /// and a connection that closes gives its sessions' room back.
    @Test func theServersSessionLimitSpansConnections() async throws {
        let limit: (inout TwampServerConfiguration) -> Void = { $0.maximumSessions = 3 }
        try await withServer(limit) { server in
            var first: TestTCPClient? = try await self.openUnauthenticated(server)
            let second = try await self.openUnauthenticated(server)
            func ask(_ client: TestTCPClient, _ port: UInt16) async throws -> IPPMAccept {
                client.send(Self.request(port: port))
                return try AcceptSession(decoding: try #require(await client.receive(AcceptSession.size))).accept
            }
            #expect(try await ask(first!, 40000) == .ok)
            #expect(try await ask(first!, 40001) == .ok)
            #expect(try await ask(second, 40002) == .ok)
            #expect(try await ask(second, 40003) == .temporaryLimitation)
            first = nil
            try await waitUntil { server.openConnections == 1 }
            #expect(try await ask(second, 40004) == .ok)
        }
    }

    /// With `allowThirdParty` a session may name another sender (the operator's choice); without it, refused (above).
    @Test func aThirdPartySenderNeedsTheServersLeave() async throws {
        let open: (inout TwampServerConfiguration) -> Void = { $0.allowThirdParty = true }
        try await withServer(open) { server in
            let client = try await self.openUnauthenticated(server)
            client.send(Self.request(port: 40000, senderAddress: [192, 0, 2, 1]))
            let answer = try AcceptSession(decoding: try #require(await client.receive(AcceptSession.size)))
            #expect(answer.accept == .ok)
        }
    }

    /// A session is answered at most `maximumSessionDuration` after Start-Sessions, whatever its client does.
    @Test func aSessionEndsAtItsLongestDuration() async throws {
        // Long enough for the first packet's answer on a loaded machine.
        let short: (inout TwampServerConfiguration) -> Void = { $0.maximumSessionDuration = .seconds(3) }
        try await withServer(short) { server in
            let client = try await self.openUnauthenticated(server)
            let sender = try TestSocket(host: "127.0.0.1")
            let control = try #require(server.controlAddress)
            let target = try SocketAddress(ipAddress: control.ipAddress!, port: server.testAddress.port!)
            client.send(Self.request(port: UInt16(sender.localAddress.port!)))
            _ = try #require(await client.receive(AcceptSession.size))
            client.send(StartSessions().encoded())
            _ = try #require(await client.receive(StartAck.size))
            sender.send([UInt8](repeating: 0, count: 41), to: target)
            #expect(await sender.receive() != nil, "\(sender.failure)")
            try await Task.sleep(for: .milliseconds(3500))
            sender.send([UInt8](repeating: 0, count: 41), to: target)
            #expect(await sender.receive(timeoutMilliseconds: 300) == nil, "answered past its longest duration")
            try await waitUntil { server.reflectorStatistics.drops[.noSession] == 1 }
        }
    }

    /// Stopped sessions still answered for their timeout count against the limits: stopping and starting again cannot
    /// pile sessions up; past their timeout their room comes back.
    @Test func stoppedSessionsCountUntilTheirTimeoutEnds() async throws {
        let limit: (inout TwampServerConfiguration) -> Void = { $0.maximumSessionsPerConnection = 2 }
        try await withServer(limit) { server in
            let client = try await self.openUnauthenticated(server)
            func ask(_ port: UInt16, timeout: UInt64) async throws -> IPPMAccept {
                client.send(Self.request(port: port, timeout: timeout))
                return try AcceptSession(decoding: try #require(await client.receive(AcceptSession.size))).accept
            }
            #expect(try await ask(40000, timeout: 1 << 32) == .ok)  // answered for 1 s after Stop-Sessions
            #expect(try await ask(40001, timeout: 0) == .ok)
            client.send(StartSessions().encoded())
            #expect(try StartAck(decoding: try #require(await client.receive(StartAck.size))).accept == .ok)
            client.send(StopSessions(sessionCount: 2).encoded())
            // The one stopped without a timeout is gone at once; the other still counts.
            #expect(try await ask(40002, timeout: 0) == .ok)
            #expect(try await ask(40003, timeout: 0) == .permanentLimitation)
            try await Task.sleep(for: .milliseconds(1200))
            #expect(try await ask(40004, timeout: 0) == .ok)
        }
    }

    /// A connection with no session running that stays silent past the idle timeout is closed.
    @Test func anIdleConnectionIsClosed() async throws {
        let idle: (inout TwampServerConfiguration) -> Void = { $0.idleTimeout = .seconds(1) }
        try await withServer(idle) { server in
            let client = try await self.openUnauthenticated(server)
            #expect(await client.closes(withinMilliseconds: 15000))
            #expect(server.statistics.stalled == 0 && server.statistics.protocolErrors == 0)
        }
    }

    /// More bytes ahead of the answers than two requests: a client that does not read, or a flood; closed.
    @Test func aClientFarAheadOfItsAnswersIsClosed() async throws {
        try await withServer { server in
            let client = try await self.openUnauthenticated(server)
            // A request's first block, then garbage that can never be a whole message before the limit.
            client.send(Array(Self.request(port: 40000).prefix(16)) + [UInt8](repeating: 5, count: 4096))
            #expect(await client.closes(withinMilliseconds: 20000))
            try await waitUntil { server.statistics.protocolErrors == 1 }
        }
    }

    /// No third-party sessions by default: a sender that is not the control client, a start time a day away, a
    /// sender port the serving path would drop.
    @Test func requestsOutsideThePolicyAreRefused() async throws {
        try await withServer { server in
            let client = try await self.openUnauthenticated(server)
            let day: Int64 = 86_400_000_000_000
            let cases: [([UInt8], IPPMAccept)] = [
                (Self.request(port: 40000, senderAddress: [192, 0, 2, 1]), .failure),
                (Self.request(port: 40001, startOffset: day), .failure),
                (Self.request(port: 40002, startOffset: -day), .failure),
                (Self.request(port: 53), .notSupported),
                (Self.request(port: 40003), .ok),
                // The same sender port twice.
                (Self.request(port: 40003), .temporaryLimitation),
            ]
            for (request, expected) in cases {
                client.send(request)
                let answer = try AcceptSession(decoding: try #require(await client.receive(AcceptSession.size)))
                #expect(answer.accept == expected)
            }
        }
    }

    /// The reflector answers only the senders of running sessions: before Start-Sessions, from another port, and
    /// after Stop-Sessions (with no timeout) a test packet is dropped and counted; while running it is answered.
    @Test func onlyRunningSessionsAreAnswered() async throws {
        try await withServer { server in
            let client = try await self.openUnauthenticated(server)
            let sender = try TestSocket(host: "127.0.0.1")
            let stranger = try TestSocket(host: "127.0.0.1")
            // The server listens on a loopback address of its own; the session is for the connection's peer address.
            let control = try #require(server.controlAddress)
            let target = try SocketAddress(ipAddress: control.ipAddress!, port: server.testAddress.port!)
            let packet = [UInt8](repeating: 0, count: 41)
            client.send(Self.request(port: UInt16(sender.localAddress.port!)))
            let accept = try AcceptSession(decoding: try #require(await client.receive(AcceptSession.size)))
            #expect(accept.accept == .ok && Int(accept.port) == server.testAddress.port)
            sender.send(packet, to: target)
            #expect(await sender.receive(timeoutMilliseconds: 300) == nil, "answered before Start-Sessions")
            client.send(StartSessions().encoded())
            #expect(try StartAck(decoding: try #require(await client.receive(StartAck.size))).accept == .ok)
            sender.send(packet, to: target)
            let reply = try #require(await sender.receive(), "\(sender.failure)")
            #expect(reply.bytes.count == 41 && reply.bytes[40] > 0)  // the TTL the test packet arrived with
            stranger.send(packet, to: target)
            #expect(await stranger.receive(timeoutMilliseconds: 300) == nil, "a stranger was answered")
            client.send(StopSessions(sessionCount: 1).encoded())
            // The request's timeout was zero: the session ends at once (the table's sweep removes it within 1 s).
            try await waitUntil { server.statistics.runningSessions == 0 }
            sender.send(packet, to: target)
            #expect(await sender.receive(timeoutMilliseconds: 300) == nil, "answered after Stop-Sessions")
            // The serving thread counts a drop a moment after it reads the packet.
            try await waitUntil { server.reflectorStatistics.drops[.noSession] == 3 }
            #expect(server.reflectorStatistics.echoed == 1)
        }
    }

    /// Sessions end with their control connection.
    @Test func closingTheControlConnectionEndsItsSessions() async throws {
        try await withServer { server in
            var client: TestTCPClient? = try await self.openUnauthenticated(server)
            let sender = try TestSocket(host: "127.0.0.1")
            let control = try #require(server.controlAddress)
            let target = try SocketAddress(ipAddress: control.ipAddress!, port: server.testAddress.port!)
            client!.send(Self.request(port: UInt16(sender.localAddress.port!)))
            _ = try #require(await client!.receive(AcceptSession.size))
            client!.send(StartSessions().encoded())
            _ = try #require(await client!.receive(StartAck.size))
            #expect(server.statistics.runningSessions == 1)
            client = nil
            try await waitUntil { server.statistics.runningSessions == 0 }
            sender.send([UInt8](repeating: 0, count: 41), to: target)
            #expect(await sender.receive(timeoutMilliseconds: 300) == nil)
        }
    }

    /// In the keyed modes a message whose HMAC does not verify (one bit flipped) closes the connection.
    @Test func aForgedHMACClosesTheConnection() async throws {
        try await withServer { server in
            let client = try TestTCPClient(connectTo: try #require(server.controlAddress))
            let greeting = try ServerGreeting(decoding: try #require(await client.receive(ServerGreeting.size)))
            var exchange = ClientExchange(
                configuration: TwampClientConfiguration(
                    server: try #require(server.controlAddress),
                    mode: .authenticated,
                    keyID: "alice",
                    secret: Array("correct horse".utf8)
                ),
                peer: "test"
            )
            client.send(try exchange.setUp(greeting))
            try exchange.started(try #require(await client.receive(ServerStart.size)))
            var request = exchange.request(senderPort: 40000, padding: 0, timeout: .seconds(2), dscp: 0)
            request[100] ^= 1
            client.send(request)
            #expect(await client.closes(withinMilliseconds: 20000))
            try await waitUntil { server.statistics.protocolErrors == 1 }
        }
    }
}

/// Waits (at most 10 s) until `condition` holds; fails the test if it never does.
func waitUntil(_ condition: () -> Bool, sourceLocation: SourceLocation = #_sourceLocation) async throws {
    let deadline = ContinuousClock.now + .seconds(10)
    while !condition() {
        guard ContinuousClock.now < deadline else {
            Issue.record("the condition did not come true within 10 s", sourceLocation: sourceLocation)
            return
        }
        try await Task.sleep(for: .milliseconds(10))
    }
}
