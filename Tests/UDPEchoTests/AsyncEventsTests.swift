import Atomics
import NIOCore
import TestSupport
import Testing

@testable import UDPEcho

/// The events as `AsyncSequence`s, beside the callbacks: a server's, and a ping run's.
@Suite struct AsyncEventsTests {
    @Test func aServersEventsComeInOrderAndEndWithTheServer() async throws {
        var configuration = EchoServer.Configuration(address: HostAndPort(host: isolatedLoopback(), port: 0))
        configuration.threads = 1
        let (server, events) = try EchoServer.withEvents(configuration: configuration)
        // Only once it serves: under ThreadSanitizer, with the whole suite starting at once, the task that runs the
        // server once started more than 5 s late, and the first reply came after the client had stopped waiting.
        let running = try await startServing(server)
        let client = try TestSocket(connectTo: try clientAddress(of: server))
        for index in 0..<3 {
            #expect(client.send(Array("event \(index)".utf8)) == 0)
            let reply = await client.receive()
            #expect(reply?.bytes == Array("event \(index)".utf8), "\(client.failure)")
        }
        var seen: [String] = []
        for await event in events {
            switch event {
            case .received(let bytes, _): seen.append("received \(bytes)")
            case .echoed(let bytes, _): seen.append("echoed \(bytes)")
            default: seen.append("\(event)")
            }
            if seen.count == 6 { running.cancel() }
        }
        // The loop ended: the server stopped, and the sequence with it.
        try await running.value
        #expect(seen == Array(repeating: ["received 7", "echoed 7"], count: 3).flatMap { $0 })
        #expect(events.dropped == 0)
    }

    @Test func aPingRunsEventsEndWithItsSummary() async throws {
        try await withServer { server in
            let run = EchoPinger.events(
                EchoPinger.Configuration(target: try clientAddress(of: server), count: 4, interval: .milliseconds(5))
            )
            var sequences: [UInt64] = []
            for await event in run {
                if case .reply(let sequence, _, _, _, _, _) = event { sequences.append(sequence) }
            }
            #expect(sequences == [0, 1, 2, 3])
            let result = try await run.result
            #expect(result.counts.received == 4 && result.counts.lost == 0)
        }
    }

    @Test func cancellingTheConsumerStopsThePingRun() async throws {
        try await withServer { server in
            // Without a count the run goes on until stopped.
            let run = EchoPinger.events(
                EchoPinger.Configuration(target: try clientAddress(of: server), interval: .milliseconds(5))
            )
            // The consumer counts the replies it has seen; it is cancelled once it has seen two (however long a
            // loaded machine takes to get there).
            let seen = ManagedAtomic(0)
            let consumer = Task {
                var replies = 0
                for await event in run {
                    if case .reply = event {
                        replies += 1
                        seen.store(replies, ordering: .relaxed)
                    }
                }
                return replies
            }
            let deadline = ContinuousClock.now + .seconds(30)
            while seen.load(ordering: .relaxed) < 2 && ContinuousClock.now < deadline {
                try await Task.sleep(for: .milliseconds(5))
            }
            consumer.cancel()
            let replies = await consumer.value
            // A run that went on would never end: the watchdog says so, and stops it.
            let watchdog = Task {
                try await Task.sleep(for: .seconds(5))
                Issue.record("the run went on after its consumer was cancelled")
                run.cancel()
            }
            defer { watchdog.cancel() }
            let result = try await run.result
            // Stopped soon after the cancellation: within 20 probes (100 ms at one every 5 ms, room for a loaded
            // machine), where without it the run would go on for ever.
            #expect(replies >= 2 && result.counts.received <= replies + 20, "\(replies) \(result.counts)")
        }
    }
}
