import Foundation
import NIOCore

#if canImport(Glibc)
import Glibc
#endif

/// A plain blocking TCP client for tests of a TCP service (TWAMP-Control): written on the system calls, not on the
/// code under test, so it can send what no well-behaved client would.
public final class TestTCPClient: @unchecked Sendable {
    public let descriptor: Int32

    /// Connects to `peer`, from `source` (an IPv4 address of this host, any port) if given.
    public init(connectTo peer: SocketAddress, from source: String? = nil) throws {
        let family: Int32 = if case .v6 = peer { AF_INET6 } else { AF_INET }
        let fd = socket(family, Int32(SOCK_STREAM.rawValue), 0)
        precondition(fd >= 0)
        self.descriptor = fd
        if let source, case .v4(let local) = try SocketAddress(ipAddress: source, port: 0) {
            let bound = withUnsafePointer(to: local.address) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                    bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size))
                }
            }
            guard bound == 0 else {
                let code = errno
                Glibc.close(fd)
                throw TestSocketError(operation: "bind \(source)", errno: code)
            }
        }
        let result: Int32 =
            switch peer {
            case .v4(let v4):
                withUnsafePointer(to: v4.address) {
                    $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                        connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size))
                    }
                }
            case .v6(let v6):
                withUnsafePointer(to: v6.address) {
                    $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                        connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in6>.size))
                    }
                }
            default: -1
            }
        guard result == 0 else {
            let code = errno
            Glibc.close(fd)
            throw TestSocketError(operation: "connect \(peer)", errno: code)
        }
    }

    deinit { Glibc.close(self.descriptor) }

    /// Sends all of `bytes`; false if the connection refused them (closed).
    @discardableResult
    public func send(_ bytes: [UInt8]) -> Bool {
        var sent = 0
        while sent < bytes.count {
            let count = bytes.withUnsafeBytes {
                Glibc.send(self.descriptor, $0.baseAddress! + sent, $0.count - sent, Int32(MSG_NOSIGNAL))
            }
            if count < 0 && errno == EINTR { continue }
            guard count > 0 else { return false }
            sent += count
        }
        return true
    }

    /// Reads exactly `count` bytes within the timeout; nil if the connection closed or the time ran out first.
    public func receive(_ count: Int, timeoutMilliseconds: Int32 = 5000) async -> [UInt8]? {
        await onThread { self.receiveBlocking(count, timeoutMilliseconds: timeoutMilliseconds) }
    }

    private func receiveBlocking(_ count: Int, timeoutMilliseconds: Int32) -> [UInt8]? {
        var bytes: [UInt8] = []
        let deadline = ContinuousClock.now + .milliseconds(Int(timeoutMilliseconds))
        while bytes.count < count {
            guard let chunk = self.read(upTo: count - bytes.count, until: deadline), !chunk.isEmpty else { return nil }
            bytes += chunk
        }
        return bytes
    }

    /// Everything the server sends until it closes the connection; nil if it is still open when the time runs out.
    public func receiveUntilClosed(timeoutMilliseconds: Int32 = 10000) async -> [UInt8]? {
        await onThread {
            let deadline = ContinuousClock.now + .milliseconds(Int(timeoutMilliseconds))
            var bytes: [UInt8] = []
            while true {
                guard let chunk = self.read(upTo: 65536, until: deadline) else { return nil }
                if chunk.isEmpty { return bytes }
                bytes += chunk
            }
        }
    }

    /// Whether the server closes the connection within the timeout (whatever it sends first is read and dropped).
    public func closes(withinMilliseconds timeout: Int32) async -> Bool {
        await onThread {
            let deadline = ContinuousClock.now + .milliseconds(Int(timeout))
            while true {
                guard let chunk = self.read(upTo: 65536, until: deadline) else { return false }
                if chunk.isEmpty { return true }
            }
        }
    }

    /// Up to `limit` bytes; empty at end of stream (or a reset), nil on timeout.
    private func read(upTo limit: Int, until deadline: ContinuousClock.Instant) -> [UInt8]? {
        var poller = pollfd(fd: self.descriptor, events: Int16(POLLIN), revents: 0)
        while true {
            let left = deadline - ContinuousClock.now
            let milliseconds = Int32(
                max(0, left.components.seconds * 1000 + left.components.attoseconds / 1_000_000_000_000_000)
            )
            let ready = poll(&poller, 1, milliseconds)
            if ready < 0 && errno == EINTR { continue }
            guard ready == 1 else { return nil }
            var buffer = [UInt8](repeating: 0, count: limit)
            let count = buffer.withUnsafeMutableBytes { recv(self.descriptor, $0.baseAddress, $0.count, 0) }
            if count < 0 && errno == EINTR { continue }
            return count <= 0 ? [] : Array(buffer[0..<count])
        }
    }
}
