import NIOCore
import TestSupport
import Testing

@testable import UDPEcho

#if canImport(Glibc)
import Glibc
#endif

@Suite struct EchoClientTests {
    @Test func echoesAndMeasuresTheRoundTrip() async throws {
        try await withServer(.init(address: HostAndPort(host: "127.0.0.1", port: 0))) { server in
            let client = try await EchoClient.connect(
                to: HostAndPort(host: "localhost", port: server.localAddress.port!)
            )
            let payload = ByteBuffer(bytes: pattern(1000))
            let reply = try await client.echo(payload, timeout: .seconds(5))
            #expect(reply.payload == payload)
            #expect(reply.from == (try clientAddress(of: server)))  // localhost: IPv4 first, as Go resolves it
            #expect(reply.roundTripTime > .zero)
            #expect(reply.roundTripTime < .seconds(5))
            try await client.close()
        }
    }

    @Test func echoesTheLargestIPv6Datagram() async throws {
        try await withServer(.init(address: HostAndPort(host: "::1", port: 0))) { server in
            let client = try await EchoClient.connect(to: server.localAddress)
            let payload = ByteBuffer(bytes: pattern(65527))
            #expect(try await client.echo(payload, timeout: .seconds(5)).payload == payload)
            try await client.close()
        }
    }

    @Test func timesOutAgainstASocketThatNeverAnswers() async throws {
        let silent = try TestSocket(host: "127.0.0.1")
        let client = try await EchoClient.connect(to: silent.localAddress)
        let started = ContinuousClock.now
        let error = await #expect(throws: EchoError.self) {
            try await client.echo(ByteBuffer(string: "anyone?"), timeout: .milliseconds(200))
        }
        #expect(ContinuousClock.now - started >= .milliseconds(200))
        guard case .timeout(let waited, let peer) = error else {
            Issue.record("expected a timeout, got \(String(describing: error))")
            return
        }
        #expect(waited == .milliseconds(200))
        #expect(peer == silent.localAddress)
        #expect(error?.description.contains("within 200ms") == true)
        #expect(await silent.receive()?.bytes == Array("anyone?".utf8))  // it was sent, just never answered
        try await client.close()
    }

    @Test func isRefusedByAClosedPort() async throws {
        let closed = try TestSocket.refusing()
        defer { closed.close() }
        let address = closed.localAddress
        let client = try await EchoClient.connect(to: address)
        let error = await #expect(throws: EchoError.self) {
            try await client.echo(ByteBuffer(string: "hello?"), timeout: .seconds(5))
        }
        guard case .refused(let peer) = error else {
            Issue.record("expected refused, got \(String(describing: error))")
            return
        }
        #expect(peer == address)
        try await client.close()
    }

    @Test func refusesOversizeInputBeforeSendingAnything() async throws {
        try await withServer { server in
            let client = try await EchoClient.connect(to: try clientAddress(of: server))
            let error = await #expect(throws: EchoError.self) {
                try await client.echo(ByteBuffer(bytes: pattern(65508)), timeout: .seconds(5))
            }
            guard case .payloadTooLarge(let size, let limit, _) = error else {
                Issue.record("expected payloadTooLarge, got \(String(describing: error))")
                return
            }
            #expect(size == 65508)
            #expect(limit == 65507)
            #expect(error?.description.contains("65508") == true && error?.description.contains("65507") == true)
            // Nothing reached the server: the next datagram is the first it sees.
            _ = try await client.echo(ByteBuffer(string: "small"), timeout: .seconds(5))
            #expect(server.statistics.received == 1)
            try await client.close()
        }
    }

    @Test func cancellationEndsTheWait() async throws {
        let silent = try TestSocket(host: "127.0.0.1")
        let client = try await EchoClient.connect(to: silent.localAddress)
        let waiting = Task { try await client.echo(ByteBuffer(string: "x"), timeout: .seconds(60)) }
        _ = await silent.receive()  // the request is out; now give up on it
        waiting.cancel()
        await #expect(throws: CancellationError.self) { try await waiting.value }
        try await client.close()
    }

    @Test func failsToResolveAnUnknownName() async throws {
        let error = await #expect(throws: EchoError.self) {
            try await EchoClient.connect(to: HostAndPort(host: "no-such-host.invalid", port: 7))
        }
        #expect(error?.description.contains("no-such-host.invalid") == true)
    }
}
