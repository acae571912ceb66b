import Foundation
import NIOCore
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// A plain blocking UDP socket for tests: an independent peer written on the system calls, not on the code under
/// test.
public final class TestSocket: @unchecked Sendable {
    public let descriptor: Int32
    public let localAddress: SocketAddress
    private var closed = false
    private let lastFailure = Mutex("")

    /// Binds a socket to `host` on `port` (by default an ephemeral one), and connects it to `peer` if given.
    public init(host: String = "127.0.0.1", port: Int = 0, connectTo peer: SocketAddress? = nil) throws {
        let bindAddress = try SocketAddress(ipAddress: host, port: port)
        let family: Int32 = if case .v6 = bindAddress { AF_INET6 } else { AF_INET }
        let fd = socket(family, Int32(SOCK_DGRAM.rawValue), 0)
        precondition(fd >= 0)
        self.descriptor = fd
        var size: Int32 = 4 << 20
        setsockopt(fd, SOL_SOCKET, SO_RCVBUFFORCE, &size, 4)
        guard withRaw(bindAddress, { bind(fd, $0, $1) }) == 0 else {
            let code = errno
            Glibc.close(fd)
            throw TestSocketError(operation: "bind \(host)", errno: code)
        }
        if let peer {
            guard withRaw(peer, { connect(fd, $0, $1) }) == 0 else {
                let code = errno
                Glibc.close(fd)
                throw TestSocketError(operation: "connect \(peer)", errno: code)
            }
        }
        var storage = sockaddr_storage()
        var length = socklen_t(MemoryLayout<sockaddr_storage>.size)
        _ = withUnsafeMutablePointer(to: &storage) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &length) }
        }
        self.localAddress = socketAddress(storage)
    }

    /// A socket that holds an ephemeral port on `host` where nothing answers and the kernel refuses: the socket is
    /// connected to its own address, so no datagram from anyone else matches it, and each is answered with ICMP port
    /// unreachable, as at a port nothing is bound to. Unlike a port found free and let go, it cannot be taken by
    /// another test's server while this socket lives: keep it until the test is done with the port.
    public static func refusing(host: String = "127.0.0.1") throws -> TestSocket {
        let holder = try TestSocket(host: host)
        guard withRaw(holder.localAddress, { connect(holder.descriptor, $0, $1) }) == 0 else {
            throw TestSocketError(operation: "connect \(holder.localAddress) to itself", errno: errno)
        }
        return holder
    }

    deinit { self.close() }

    public func close() {
        if !self.closed {
            _ = Glibc.close(self.descriptor)
            self.closed = true
        }
    }

    /// Sends `bytes` to `peer` (or to the connected peer); returns 0 or the errno.
    @discardableResult
    public func send(_ bytes: [UInt8], to peer: SocketAddress? = nil) -> Int32 {
        let result = bytes.withUnsafeBytes { buffer in
            if let peer {
                return withRaw(peer) { sendto(self.descriptor, buffer.baseAddress, buffer.count, 0, $0, $1) }
            }
            return Glibc.send(self.descriptor, buffer.baseAddress, buffer.count, 0)
        }
        return result < 0 ? errno : 0
    }

    /// Waits up to `timeoutMilliseconds` for one datagram; returns its bytes and sender, or nil on timeout.
    /// The wait blocks a thread of its own, never one of Swift's few cooperative threads (which run the servers).
    public func receive(timeoutMilliseconds: Int32 = 5000) async -> (bytes: [UInt8], from: SocketAddress)? {
        await onThread { self.receiveBlocking(timeoutMilliseconds: timeoutMilliseconds) }
    }

    private func receiveBlocking(timeoutMilliseconds: Int32) -> (bytes: [UInt8], from: SocketAddress)? {
        // A signal handled on this thread ends poll early with EINTR (poll is never restarted): wait out the rest.
        let deadline = ContinuousClock.now + .milliseconds(Int(timeoutMilliseconds))
        var poller = pollfd(fd: self.descriptor, events: Int16(POLLIN), revents: 0)
        while true {
            let left = deadline - ContinuousClock.now
            let milliseconds = max(
                0,
                Int32(left.components.seconds * 1000 + left.components.attoseconds / 1_000_000_000_000_000)
            )
            let ready = poll(&poller, 1, milliseconds)
            if ready == 1 { break }
            if ready < 0 && errno == EINTR { continue }
            self.lastFailure.withLock {
                $0 =
                    ready == 0
                    ? "no datagram in \(timeoutMilliseconds) ms" : "poll: \(String(cString: strerror(errno)))"
            }
            return nil
        }
        var buffer = [UInt8](repeating: 0, count: 65536)
        var storage = sockaddr_storage()
        var length = socklen_t(MemoryLayout<sockaddr_storage>.size)
        var count = 0
        repeat {
            count = buffer.withUnsafeMutableBytes { raw in
                withUnsafeMutablePointer(to: &storage) {
                    $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                        recvfrom(self.descriptor, raw.baseAddress, raw.count, 0, $0, &length)
                    }
                }
            }
        } while count < 0 && errno == EINTR
        guard count >= 0 else {
            self.lastFailure.withLock { $0 = "recvfrom: \(String(cString: strerror(errno)))" }
            return nil
        }
        return (Array(buffer[0..<count]), socketAddress(storage))
    }

    /// Why the last ``receive(timeoutMilliseconds:)`` that returned nil did (a timeout, or the socket's error, such
    /// as a refusal by ICMP), for a test's failure message.
    public var failure: String { self.lastFailure.withLock { $0 } }
}

public struct TestSocketError: Error, CustomStringConvertible {
    public var operation: String
    public var errno: Int32
    public var description: String { "\(self.operation): \(String(cString: strerror(self.errno)))" }
}

/// Runs blocking `work` on a thread of its own and returns its result.
public func onThread<Result: Sendable>(_ work: @escaping @Sendable () -> Result) async -> Result {
    await withCheckedContinuation { continuation in
        Thread.detachNewThread { continuation.resume(returning: work()) }
    }
}

/// Deterministic test bytes: `count` bytes that differ with `seed`.
public func pattern(_ count: Int, seed: Int = 0) -> [UInt8] {
    (0..<count).map { UInt8(truncatingIfNeeded: ($0 &* 31) &+ seed &* 7 &+ ($0 >> 8)) }
}

private func withRaw<Result>(_ address: SocketAddress, _ body: (UnsafePointer<sockaddr>, socklen_t) -> Result) -> Result
{
    switch address {
    case .v4(let v4):
        var raw = v4.address
        return withUnsafePointer(to: &raw) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { body($0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
    case .v6(let v6):
        var raw = v6.address
        return withUnsafePointer(to: &raw) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                body($0, socklen_t(MemoryLayout<sockaddr_in6>.size))
            }
        }
    case .unixDomainSocket:
        fatalError("UDP tests use IP addresses")
    }
}

private func socketAddress(_ storage: sockaddr_storage) -> SocketAddress {
    var storage = storage
    let family = storage.ss_family
    return withUnsafePointer(to: &storage) { pointer in
        if family == sa_family_t(AF_INET6) {
            return pointer.withMemoryRebound(to: sockaddr_in6.self, capacity: 1) { SocketAddress($0.pointee) }
        }
        return pointer.withMemoryRebound(to: sockaddr_in.self, capacity: 1) { SocketAddress($0.pointee) }
    }
}

/// A small, seedable generator (SplitMix64), so that a failing run can be replayed from the seed it prints.
public struct SplitMix64: RandomNumberGenerator {
    public var state: UInt64
    public init(state: UInt64) { self.state = state }
    public mutating func next() -> UInt64 {
        self.state &+= 0x9E37_79B9_7F4A_7C15
        var z = self.state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}
