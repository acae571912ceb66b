import NIOCore
import Synchronization
import TestSupport
import UDPEcho

/// Runs `body` against a running server, then stops the server and waits for it to finish.
func withServer<Result>(
    _ configuration: EchoServer.Configuration = .init(address: HostAndPort(host: "127.0.0.1", port: 0)),
    onEvent: (@Sendable (ServerEvent) -> Void)? = nil,
    _ body: (EchoServer) async throws -> Result
) async throws -> Result {
    let server = try EchoServer(configuration: configuration, onEvent: onEvent)
    let running = Task { try await server.run() }
    do {
        let result = try await body(server)
        running.cancel()
        try await running.value
        return result
    } catch {
        running.cancel()
        try? await running.value
        throw error
    }
}

/// A loopback address of the server, for clients (the wildcard address itself is not a destination).
func clientAddress(of server: EchoServer, host: String = "127.0.0.1") throws -> SocketAddress {
    try SocketAddress(ipAddress: host, port: server.localAddress.port!)
}

/// Collects a server's events from its threads.
final class EventRecorder: Sendable {
    private let events = Mutex<[ServerEvent]>([])

    func record(_ event: ServerEvent) {
        self.events.withLock { $0.append(event) }
    }

    var all: [ServerEvent] { self.events.withLock { $0 } }
}
