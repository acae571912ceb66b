import NIOCore
import Synchronization
import TestSupport

@testable import UDPEcho

/// A loopback address of its own for one test's server (127.0.0.0/8 is all loopback on Linux): tests run in
/// parallel, and a datagram another test sends to a port it has just closed must not reach this server if the
/// kernel hands the same port number out again.
func isolatedLoopback() -> String {
    "127.\(UInt8.random(in: 1...254)).\(UInt8.random(in: 0...255)).\(UInt8.random(in: 1...254))"
}

/// Runs `body` against a running server, then stops the server and waits for it to finish.
func withServer<Result>(
    _ configuration: EchoServer.Configuration = .init(address: HostAndPort(host: isolatedLoopback(), port: 0)),
    onEvent: (@Sendable (ServerEvent) -> Void)? = nil,
    _ body: (EchoServer) async throws -> Result
) async throws -> Result {
    let server = try EchoServer(configuration: configuration, onEvent: onEvent)
    let running = try await startServing(server)
    return try await untilDone(running) { try await body(server) }
}

/// Runs `body`, then cancels `running` (a server's run) and waits for it to end, whether `body` threw or not.
func untilDone<Result>(_ running: Task<Void, any Error>, _ body: () async throws -> Result) async throws -> Result {
    do {
        let result = try await body()
        running.cancel()
        try await running.value
        return result
    } catch {
        running.cancel()
        try? await running.value
        throw error
    }
}

/// Starts `run` (a server's) in a task and waits until `isServing` says it serves: on a loaded machine (the whole
/// suite starting at once) the task has started more than 10 s late, past a client's control timeout.
func serving(
    _ run: @escaping @Sendable () async throws -> Void,
    isServing: () -> Bool
) async throws -> Task<Void, any Error> {
    let running = Task { try await run() }
    let deadline = ContinuousClock.now + .seconds(60)
    while !isServing() && ContinuousClock.now < deadline { try await Task.sleep(for: .milliseconds(1)) }
    return running
}

/// The server's address for clients: its own, or, for a wildcard server (the wildcard itself is not a destination),
/// `host`.
func clientAddress(of server: EchoServer, host: String = "127.0.0.1") throws -> SocketAddress {
    if case .v4(let v4) = server.localAddress, v4.address.sin_addr.s_addr != 0 { return server.localAddress }
    if case .v6 = server.localAddress, server.localAddress.ipAddress != "::" { return server.localAddress }
    return try SocketAddress(ipAddress: host, port: server.localAddress.port!)
}

/// Collects a server's events from its threads.
final class EventRecorder: Sendable {
    private let events = Mutex<[ServerEvent]>([])

    func record(_ event: ServerEvent) {
        self.events.withLock { $0.append(event) }
    }

    var all: [ServerEvent] { self.events.withLock { $0 } }
}

/// Guards for a test server on the wildcard address, which every loopback address reaches: only the test's own
/// clients (on 127.0.0.1 and ::1) are answered. Otherwise a reply that another test's server sends to a client that has
/// just closed could land here, if this server got the same port, and the two servers would echo it to each other
/// forever: the loop of CVE-1999-0103, between two ephemeral ports that no guard can tell from clients.
func ownClientsOnly() -> GuardConfiguration {
    var guards = GuardConfiguration()
    guards.allow = [try! IPPrefix(parsing: "127.0.0.1"), try! IPPrefix(parsing: "::1")]
    return guards
}

/// Runs `server` in a task, and returns once it serves: under the suite's load a task can wait seconds for a
/// thread, and a test that times its probes would count that wait as loss.
func startServing(_ server: EchoServer) async throws -> Task<Void, any Error> {
    let running = Task { try await server.run() }
    let deadline = ContinuousClock.now + .seconds(30)
    while !server.isRunning && ContinuousClock.now < deadline { try await Task.sleep(for: .milliseconds(1)) }
    return running
}
