import CUDPEcho

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// A system call that failed: which call, and why (errno).
struct SystemCallError: Error, Equatable, CustomStringConvertible {
    /// The call, as named in its manual page: `sendmmsg`, `bind`...
    var call: String
    var errno: Int32

    var description: String { "\(self.call): \(String(cString: strerror(self.errno)))" }
}

/// The one wrapper for system calls made outside SwiftNIO, as SwiftNIO's `System.swift` is for its own: an
/// interrupted call (EINTR) is made again; a failure becomes a ``SystemCallError`` naming the call; and an errno that
/// only a bug of ours can cause (a closed or wrong descriptor, a bad pointer) stops the program with that call's name
/// instead of being counted as a dropped datagram and going on.
enum SystemCall {
    /// Errnos that no peer, network or operator can cause: only a descriptor or buffer of ours that is wrong.
    static func isImpossible(_ code: Int32) -> Bool { code == EBADF || code == EFAULT || code == ENOTSOCK }

    /// Stops the program if `code` is impossible for `call` (``isImpossible(_:)``).
    @inline(__always)
    static func checkPossible(_ code: Int32, _ call: StaticString) {
        precondition(
            !Self.isImpossible(code),
            "\(call) failed with \(String(cString: strerror(code))): a descriptor or buffer of ours is wrong"
        )
    }

    /// Calls `body`, a system call that returns -1 and sets errno on failure, until it is not interrupted.
    @inline(__always)
    @discardableResult
    static func posix<T: BinaryInteger>(_ call: StaticString, _ body: () -> T) throws(SystemCallError) -> T {
        while true {
            let result = body()
            if result >= 0 { return result }
            let code = errno
            if code == EINTR { continue }
            Self.checkPossible(code, call)
            throw SystemCallError(call: "\(call)", errno: code)
        }
    }

    /// Calls `body`, a function of the C shim that returns -errno on failure, until it is not interrupted.
    @inline(__always)
    @discardableResult
    static func shim(_ call: StaticString, _ body: () -> Int32) throws(SystemCallError) -> Int32 {
        while true {
            let result = body()
            if result >= 0 { return result }
            if result == -EINTR { continue }
            Self.checkPossible(-result, call)
            throw SystemCallError(call: "\(call)", errno: -result)
        }
    }

    /// A UDP socket of `family`, close-on-exec (and non-blocking with `nonBlocking`).
    static func udpSocket(family: Int32, nonBlocking: Bool = false) throws(SystemCallError) -> Int32 {
        let type =
            Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue)
            | (nonBlocking ? Int32(SOCK_NONBLOCK.rawValue) : 0)
        return try Self.posix("socket") { socket(family, type, Int32(IPPROTO_UDP)) }
    }
}
