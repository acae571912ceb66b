#if canImport(Glibc)
import Glibc
#endif
import NIOCore
@testable import UDPEcho

/// A plain blocking UDP socket for tests: an independent peer that is not built on the code under test.
final class TestSocket: @unchecked Sendable {
    let descriptor: Int32
    let localAddress: SocketAddress

    /// Binds a socket to `host` on an ephemeral port.
    init(host: String = "127.0.0.1", connectTo peer: SocketAddress? = nil) throws {
        let bindAddress = try SocketAddress(ipAddress: host, port: 0)
        let family: Int32 = if case .v6 = bindAddress { AF_INET6 } else { AF_INET }
        let fd = socket(family, Int32(SOCK_DGRAM.rawValue), 0)
        precondition(fd >= 0)
        self.descriptor = fd
        var size: Int32 = 4 << 20
        setsockopt(fd, SOL_SOCKET, SO_RCVBUFFORCE, &size, 4)
        guard bindAddress.withRawAddress({ bind(fd, $0, $1) }) == 0 else {
            Glibc.close(fd)
            throw EchoError.socket(operation: "bind", address: host, errno: errno)
        }
        if let peer {
            guard peer.withRawAddress({ connect(fd, $0, $1) }) == 0 else {
                Glibc.close(fd)
                throw EchoError.socket(operation: "connect", address: "\(peer)", errno: errno)
            }
        }
        var storage = sockaddr_storage()
        var length = socklen_t(MemoryLayout<sockaddr_storage>.size)
        _ = withUnsafeMutablePointer(to: &storage) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &length) }
        }
        self.localAddress = withUnsafePointer(to: &storage) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { SocketAddress(raw: $0, length: length)! }
        }
    }

    deinit { self.close() }

    private var closed = false
    func close() {
        if !self.closed {
            _ = Glibc.close(self.descriptor)
            self.closed = true
        }
    }

    /// Sends `bytes` to `peer` (or to the connected peer); returns 0 or the errno.
    @discardableResult
    func send(_ bytes: [UInt8], to peer: SocketAddress? = nil) -> Int32 {
        let result = bytes.withUnsafeBytes { buffer in
            if let peer {
                return peer.withRawAddress { sendto(self.descriptor, buffer.baseAddress, buffer.count, 0, $0, $1) }
            }
            return Glibc.send(self.descriptor, buffer.baseAddress, buffer.count, 0)
        }
        return result < 0 ? errno : 0
    }

    /// Waits up to `timeoutMilliseconds` for one datagram; returns its bytes and sender, or nil on timeout.
    /// The wait blocks a thread of its own, never one of Swift's few cooperative threads (which run the servers).
    func receive(timeoutMilliseconds: Int32 = 5000) async -> (bytes: [UInt8], from: SocketAddress)? {
        await withCheckedContinuation { continuation in
            WorkerThread.start {
                continuation.resume(returning: self.receiveBlocking(timeoutMilliseconds: timeoutMilliseconds))
            }
        }
    }

    private func receiveBlocking(timeoutMilliseconds: Int32) -> (bytes: [UInt8], from: SocketAddress)? {
        var poller = pollfd(fd: self.descriptor, events: Int16(POLLIN), revents: 0)
        guard poll(&poller, 1, timeoutMilliseconds) == 1 else { return nil }
        var buffer = [UInt8](repeating: 0, count: 65536)
        var storage = sockaddr_storage()
        var length = socklen_t(MemoryLayout<sockaddr_storage>.size)
        let count = buffer.withUnsafeMutableBytes { raw in
            withUnsafeMutablePointer(to: &storage) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                    recvfrom(self.descriptor, raw.baseAddress, raw.count, 0, $0, &length)
                }
            }
        }
        guard count >= 0 else { return nil }
        let from = withUnsafePointer(to: &storage) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { SocketAddress(raw: $0, length: length)! }
        }
        return (Array(buffer[0..<count]), from)
    }
}

/// Deterministic test bytes: `count` bytes that differ with `seed`.
func pattern(_ count: Int, seed: Int = 0) -> [UInt8] {
    (0..<count).map { UInt8(truncatingIfNeeded: ($0 &* 31) &+ seed &* 7 &+ ($0 >> 8)) }
}

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
