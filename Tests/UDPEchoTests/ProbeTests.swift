import NIOCore
import Synchronization
import TestSupport
import Testing

@testable import UDPEcho

#if canImport(Glibc)
import Glibc
#endif

@Suite struct EchoBenchmarkTests {
    @Test func closedLoopCountsExactlyWithNoLoss() async throws {
        let server = try await withServer { server in
            let configuration = EchoBenchmark.Configuration(
                target: try clientAddress(of: server),
                duration: .seconds(30),
                size: 100,
                flows: 3,
                load: .window(8),
                count: 20_000,
                lossTimeout: .seconds(10)  // generous: a loaded machine may start the server late
            )
            let result = try await EchoBenchmark.run(configuration)
            #expect(result.counts.sent == 20_000)
            #expect(result.counts.received == 20_000)
            #expect(result.counts.lost == 0 && result.counts.corrupt == 0 && result.counts.duplicate == 0)
            // Every 16th request of each flow has its round trip measured (3 flows of about 6667 requests each).
            #expect(result.roundTripSampling == 16)
            #expect((20_000 / 16 - 3...20_000 / 16 + 3).contains(result.times.count), "\(result.times.count)")
            #expect(result.latencies.count == 20_000)
            #expect(result.times.percentile(50) > 0)
            return server
        }
        #expect(server.statistics.echoed == 20_000)  // final: the server has stopped
    }

    @Test func openLoopKeepsToItsSchedule() async throws {
        try await withServer { server in
            let configuration = EchoBenchmark.Configuration(
                target: try clientAddress(of: server),
                duration: .milliseconds(500),
                flows: 2,
                load: .rate(2000),
                lossTimeout: .seconds(10)
            )
            let result = try await EchoBenchmark.run(configuration)
            // 2000/s for 0.5 s: the probes scheduled at 0, 0.5 ms, ... 499.5 ms.
            #expect(result.counts.sent == 1000)
            #expect(result.counts.received == result.counts.sent)
        }
    }

    @Test func refusesARemoteTargetWithoutSendingAnything() throws {
        let remote = try SocketAddress(ipAddress: "192.0.2.1", port: 7)  // TEST-NET-1: never this host's
        let error = #expect(throws: EchoError.self) {
            try EchoBenchmark.Configuration(target: remote).validate()
        }
        #expect(error?.description.contains("--allow-remote") == true)
        #expect(throws: Never.self) {
            try EchoBenchmark.Configuration(target: remote, allowRemote: true).validate()
        }
    }

    @Test func knowsLocalTargets() throws {
        #expect(TargetPolicy.isLocal(try SocketAddress(ipAddress: "127.0.0.1", port: 7)))
        #expect(TargetPolicy.isLocal(try SocketAddress(ipAddress: "127.9.8.7", port: 7)))
        #expect(TargetPolicy.isLocal(try SocketAddress(ipAddress: "::1", port: 7)))
        #expect(TargetPolicy.isLocal(try SocketAddress(ipAddress: "::ffff:127.0.0.1", port: 7)))
        #expect(!TargetPolicy.isLocal(try SocketAddress(ipAddress: "192.0.2.1", port: 7)))
        #expect(!TargetPolicy.isLocal(try SocketAddress(ipAddress: "2001:db8::1", port: 7)))
    }

    @Test(arguments: [
        (EchoBenchmark.Configuration(target: try! SocketAddress(ipAddress: "127.0.0.1", port: 7), size: 15), "size 15"),
        (.init(target: try! SocketAddress(ipAddress: "127.0.0.1", port: 7), size: 65508), "at most 65507"),
        (.init(target: try! SocketAddress(ipAddress: "127.0.0.1", port: 7), flows: 0), "flows"),
        (.init(target: try! SocketAddress(ipAddress: "127.0.0.1", port: 7), load: .window(0)), "window"),
        (.init(target: try! SocketAddress(ipAddress: "127.0.0.1", port: 7), load: .rate(0)), "rate"),
        (.init(target: try! SocketAddress(ipAddress: "127.0.0.1", port: 7), duration: .seconds(7200)), "at most 1h"),
    ])
    func rejectsSettingsOutOfRange(configuration: EchoBenchmark.Configuration, message: String) {
        let error = #expect(throws: EchoError.self) { try configuration.validate() }
        #expect(error?.description.contains(message) == true, "\(String(describing: error))")
    }

    @Test func percentileDistributionParsesBack() async throws {
        try await withServer { server in
            let result = try await EchoBenchmark.run(
                .init(
                    target: try clientAddress(of: server),
                    flows: 1,
                    load: .window(4),
                    count: 5000,
                    lossTimeout: .seconds(10)
                )
            )
            let rows = result.times.percentileDistribution().split(separator: "\n").compactMap { line -> [Double]? in
                let fields = line.split(separator: " ").compactMap { Double($0) }
                return fields.count >= 3 && !line.hasPrefix("#") ? fields : nil
            }
            #expect(rows.count > 10)
            // Value and percentile never decrease; the last row covers every sample, at percentile 1.
            #expect(zip(rows, rows.dropFirst()).allSatisfy { $0[0] <= $1[0] && $0[1] <= $1[1] })
            #expect(rows.last?[1] == 1.0)
            #expect(rows.last.map { Int($0[2]) } == result.times.count)
            #expect(result.times.count == 5000 / 16 + 1)  // sequences 0, 16, ... 4992
            #expect(abs(rows.last![0] - Double(result.times.maximum) / 1e6) < 0.01 * rows.last![0] + 0.001)
        }
    }
}

@Suite struct EchoPingerTests {
    @Test func reportsEveryReplyInOrder() async throws {
        try await withServer { server in
            let events = Mutex<[ProbeEvent]>([])
            let result = try await EchoPinger.run(
                .init(
                    target: try clientAddress(of: server),
                    count: 5,
                    interval: .milliseconds(5),
                    size: 100,
                    timeout: .seconds(10)
                )
            ) { event in events.withLock { $0.append(event) } }
            let sequences = events.withLock { $0 }.compactMap { event -> UInt64? in
                if case .reply(let sequence, 100, let roundTrip, _, false, _) = event, roundTrip > 0 {
                    sequence
                } else {
                    nil
                }
            }
            #expect(sequences == [0, 1, 2, 3, 4])
            #expect(result.counts.sent == 5 && result.counts.received == 5 && result.counts.lost == 0)
            #expect(result.times.minimum <= result.times.maximum)
            #expect(result.elapsed >= .milliseconds(20))  // 5 probes, 5 ms apart
        }
    }

    /// ICMP "port unreachable" comes back quoting the probe (read from the error queue), so each refused probe is
    /// reported once, as refused, and never again as lost.
    @Test(arguments: ["127.0.0.1", "::1"])
    func eachRefusedProbeIsReportedOnce(host: String) async throws {
        let closed = try TestSocket.refusing(host: host)
        defer { closed.close() }
        let address = closed.localAddress
        let events = Mutex<[ProbeEvent]>([])
        let result = try await EchoPinger.run(
            .init(target: address, count: 3, interval: .milliseconds(20), timeout: .milliseconds(100))
        ) { event in events.withLock { $0.append(event) } }
        #expect(result.counts.received == 0)
        #expect(result.counts.refused == 3)
        #expect(result.counts.lost == 0)
        #expect(events.withLock { $0 } == [.refused(sequence: 0), .refused(sequence: 1), .refused(sequence: 2)])
    }

    /// Over IPv6 the timestamps come back the same way (IPV6_RECVERR's error queue).
    @Test func kernelTimestampsOverIPv6() async throws {
        let configuration = EchoServer.Configuration(
            address: HostAndPort(host: "::1", port: 0),
            guards: ownClientsOnly()
        )
        try await withServer(configuration) { server in
            let result = try await EchoPinger.run(
                .init(target: server.localAddress, count: 5, interval: .milliseconds(10), timeout: .seconds(10))
            ) { _ in }
            #expect(result.counts.received == 5)
            #expect(result.timestamps == .kernel)
            #expect(result.timestampFallbacks == 0)
            #expect(result.times.count == 5)
        }
    }

    /// The round trip runs from the probe's actual departure: a departure that the test holds back 50 ms (as a
    /// late timer would) leaves the round trip as it is, and shows as the probe's lateness instead.
    @Test(arguments: [TimestampSource.kernel, .user])
    func aLateDepartureIsLatenessNotRoundTrip(timestamps: TimestampSource) async throws {
        try await withServer { server in
            let failure = try await firstPassingAttempt {
                let events = Mutex<[ProbeEvent]>([])
                let result = try await EchoPinger.run(
                    .init(
                        target: try clientAddress(of: server),
                        count: 4,
                        interval: .milliseconds(100),
                        timeout: .seconds(2),
                        timestamps: timestamps
                    ),
                    beforeSend: { sequence in if sequence == 2 { usleep(50_000) } }
                ) { event in events.withLock { $0.append(event) } }
                // Bounds no load can break: the held probe left at least 50 ms late, and the run says its clock.
                #expect(result.timestamps == timestamps)
                #expect(result.timestampFallbacks == 0)
                #expect(result.counts.received == 4)
                #expect(result.lateness.maximum >= 50_000_000)
                for event in events.withLock({ $0 }) {
                    guard case .reply(2, _, _, let lateness, _, _) = event else { continue }
                    #expect(lateness >= 50_000_000, "seq 2 left \(lateness) ns late")
                }
                // The held probe's round trip does not contain the 50 ms (measured from the schedule, it would).
                for event in events.withLock({ $0 }) {
                    guard case .reply(let sequence, _, let roundTrip, let lateness, _, _) = event else { continue }
                    if roundTrip >= 20_000_000 { return "seq \(sequence): round trip \(roundTrip) ns" }
                    if sequence != 2 && lateness >= 20_000_000 { return "seq \(sequence) left \(lateness) ns late" }
                }
                return nil
            }
            #expect(failure == nil, "\(failure ?? "")")
        }
    }

    @Test func cancellationEndsAPingWithoutCount() async throws {
        try await withServer { server in
            let replies = Mutex(0)
            let target = try clientAddress(of: server)
            let task = Task {
                try await EchoPinger.run(.init(target: target, interval: .milliseconds(2))) { event in
                    if case .reply = event { replies.withLock { $0 += 1 } }
                }
            }
            defer { task.cancel() }
            // Waits for three replies for at most 10 s: a ping that never answers fails here instead of hanging.
            let deadline = ContinuousClock.now + .seconds(10)
            while replies.withLock({ $0 }) < 3 && ContinuousClock.now < deadline {
                try await Task.sleep(for: .milliseconds(5))
            }
            try #require(replies.withLock { $0 } >= 3, "no three replies within 10 s")
            task.cancel()
            let result = try await task.value
            #expect(result.counts.received >= 3)
            #expect(result.counts.sent >= result.counts.received)
        }
    }
}

/// Path MTU discovery is a blocking loop on its own thread: cancelling the task stops it within a wait slice (50 ms),
/// where it used to wait out every timeout of the search (up to ~40 of them: here at least the 3 tries of 30 s of the
/// first size, 90 s). The bound, 20 s, leaves a loaded machine time to schedule the task's end (a clean-clone CI run
/// once took 4.3 s, with the whole suite starting at once) and is still far below what waiting out would take.
@Suite struct PathMTUDiscoveryCancellationTests {
    @Test func aCancelledSearchStopsAtOnce() async throws {
        let silent = try TestSocket()  // bound, never answers
        let search = Task {
            try await PathMTUDiscovery.run(.init(target: silent.localAddress, probeTimeout: .seconds(30), attempts: 3))
        }
        try await Task.sleep(for: .milliseconds(200))
        let cancelledAt = ContinuousClock.now
        search.cancel()
        let outcome = await search.result
        let took = ContinuousClock.now - cancelledAt
        #expect(took < .seconds(20), "\(took)")
        guard case .failure(let error) = outcome, case .cancelled = error as? EchoError else {
            Issue.record("\(outcome)")
            return
        }
    }
}
