import Logging
import NIOCore
import ServiceLifecycle
import Synchronization
import Testing
import UDPEcho

/// The code of the documentation's getting-started article (Sources/UDPEcho/UDPEcho.docc/GettingStarted.md), run
/// as written, with only the public API (no `@testable`): if the article stops compiling or working, this fails.
@Suite struct GettingStartedTests {
    @Test func theArticlesServerClientAndPingWork() async throws {
        let events = Mutex<[ServerEvent]>([])
        // "Run a server as a service" (the article's signals are replaced by a graceful shutdown the test triggers).
        let server = try EchoServer(
            configuration: .init(address: try HostAndPort(parsing: "127.0.0.1:0"))
        ) { event in
            events.withLock { $0.append(event) }
        }
        let address = server.localAddress.hostPortDescription
        let group = ServiceGroup(services: [server], logger: Logger(label: "echo"))
        let running = Task { try await group.run() }
        // Not in the article: on a loaded machine (the whole suite at once) the task that runs the server has started
        // more than 5 s late, past the client's timeout; the article's reader starts the server long before.
        let deadline = ContinuousClock.now + .seconds(60)
        while !server.isRunning && ContinuousClock.now < deadline { try await Task.sleep(for: .milliseconds(1)) }

        // "Send a datagram".
        let client = try await EchoClient.connect(to: try HostAndPort(parsing: address))
        let reply = try await client.echo(ByteBuffer(string: "hello"), timeout: .seconds(5))
        #expect(reply.payload == ByteBuffer(string: "hello"))
        #expect(reply.from.hostPortDescription == address)
        #expect(reply.roundTripTime > .zero)
        try await client.close()

        // "Ping it".
        let target = try SocketAddress(ipAddress: "127.0.0.1", port: server.localAddress.port!)
        let sequences = Mutex<[UInt64]>([])
        let result = try await EchoPinger.run(.init(target: target, count: 5, interval: .milliseconds(200))) { event in
            if case .reply(let sequence, _, let roundTrip, _, _, _) = event, roundTrip > 0 {
                sequences.withLock { $0.append(sequence) }
            }
        }
        #expect(result.counts.sent == 5 && result.counts.received == 5)
        #expect(result.times.percentile(50) > 0)
        #expect(sequences.withLock { $0 } == [0, 1, 2, 3, 4] || sequences.withLock { $0 } == [1, 2, 3, 4, 5])

        await group.triggerGracefulShutdown()
        try await running.value
        #expect(server.statistics.received == 6 && server.statistics.echoed == 6)
        #expect(events.withLock { $0.contains { if case .echoed = $0 { true } else { false } } })
    }
}
