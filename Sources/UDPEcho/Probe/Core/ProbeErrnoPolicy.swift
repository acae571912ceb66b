#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// What the probe senders (`ping`, `bench`, the STAMP sender, the mesh) do when the kernel refuses a send or a
/// receive: one list, in one place.
enum ProbeErrnoPolicy {
    /// What to do after a send the kernel refused.
    enum SendAction: Equatable {
        /// Interrupted: send again.
        case retry
        /// The kernel (or the device) will not cut segmented runs: send datagram by datagram from now on.
        case stopOffloading
        /// An ICMP error about an earlier datagram, reported on this send, which did not happen: send again, once
        /// (the error queue ties the refusal to its probe).
        case retryOnce
        /// The send buffer is full: wait a little for room.
        case waitForRoom
        /// Not sent (EMSGSIZE: larger than the path's known MTU with DF; EPERM: a firewall; ENETUNREACH: no route):
        /// the probe is counted as a send error, with this errno, and the next one goes.
        case notSent
    }

    /// What a refused send means. An errno only a bug of ours can cause stops the program (``SystemCall``).
    static func afterSend(_ code: Int32, offloading: Bool) -> SendAction {
        SystemCall.checkPossible(code, "sendmmsg")
        // (A `where` clause applies to the last pattern of a case only: the offload check is its own case.)
        if offloading && [EIO, EINVAL, EMSGSIZE, EOPNOTSUPP].contains(code) { return .stopOffloading }
        switch code {
        case EINTR: return .retry
        case ECONNREFUSED: return .retryOnce
        case EAGAIN, EWOULDBLOCK: return .waitForRoom
        default: return .notSent
        }
    }

    /// Whether a receive that failed with `code` is to be made again at once: interrupted, or the report of an ICMP
    /// error about an earlier datagram (the report consumed the error; the error queue says which probe it was
    /// about; datagrams behind it are still to be read). Otherwise (EAGAIN) nothing more is queued.
    static func receiveAgain(after code: Int32) -> Bool {
        SystemCall.checkPossible(code, "recvmmsg")
        switch code {
        case EINTR, ECONNREFUSED, EHOSTUNREACH, ENETUNREACH, EHOSTDOWN, ENETDOWN, EPROTO: return true
        default: return false
        }
    }
}
