public import NIOCore

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// The errors of udpecho's servers and clients, each with a description a person can act on.
public enum EchoError: Error, CustomStringConvertible {
    /// The resolver could not turn `host` into an address.
    case nameNotResolved(host: String, reason: String)
    /// No reply arrived from `peer` within `timeout`.
    case timeout(Duration, peer: SocketAddress)
    /// The peer's host answered that nothing listens on that port (ICMP port unreachable).
    case refused(peer: SocketAddress)
    /// The payload does not fit one UDP datagram to `peer`.
    case payloadTooLarge(size: Int, limit: Int, peer: SocketAddress)
    /// A socket call failed.
    case socket(operation: String, address: String, errno: Int32)
    /// ``EchoServer/run()`` was called on a server that already ran.
    case alreadyRunning
    /// The client was closed.
    case closed
    /// A load was to be sent to an address that is neither loopback nor this host's, without `allowRemote`.
    case remoteTarget(SocketAddress)
    /// A setting is out of its range; the text says which and why.
    case invalidConfiguration(String)
    /// The server answers, but not with what it was sent: its replies are altered or cut (`reason` says how).
    case badEchoes(peer: SocketAddress, reason: String)
    /// The operation was cancelled.
    case cancelled
    /// Fewer file descriptors can be opened than the command needs: `available` of them under a limit of `limit`.
    case descriptorsExhausted(needed: Int, available: Int, limit: Int)
    /// A TWAMP or OWAMP server refused, or broke, the control protocol (`reason` says how).
    case control(peer: String, reason: String)
    /// The XDP program could not be loaded or attached to `interface` (`reason` says why, and what to do).
    case xdp(interface: String, reason: String)
    /// No thread could be started for `purpose` (pthread_create's `errno`): the process is at its limit of threads.
    case threadsExhausted(purpose: String, errno: Int32)

    /// What went wrong, in words a person can act on.
    public var description: String {
        switch self {
        case .nameNotResolved(let host, let reason):
            return "cannot resolve the host name '\(host)': \(reason)"
        case .timeout(let duration, let peer):
            return
                "no reply from \(peer.hostPortDescription) within \(duration.shortDescription) (the server may be down, "
                + "or the datagram or its reply was lost; --timeout sets how long to wait)"
        case .refused(let peer):
            return "\(peer.hostPortDescription) refused the datagram: nothing listens on that port "
                + "(the host answered ICMP port unreachable)"
        case .payloadTooLarge(let size, let limit, let peer):
            let family = limit == DatagramLimits.ipv6MaximumPayload ? "IPv6" : "IPv4"
            return
                "the input is \(size) bytes, but one UDP datagram to \(peer.hostPortDescription) (\(family)) holds at "
                + "most \(limit) bytes; nothing was sent"
        case .socket(let operation, let address, let code):
            return "\(operation) \(address) failed: \(String(cString: strerror(code)))\(Self.hint(operation, code))"
        case .alreadyRunning:
            return "this server has already run; make a new EchoServer to serve again"
        case .closed:
            return "the client is closed"
        case .remoteTarget(let address):
            return "refusing to send load to \(address.hostPortDescription): it is neither a loopback address nor one "
                + "of this host's, and a load tool pointed at someone else's host by mistake floods it; if you run "
                + "that server, say so with --allow-remote"
        case .invalidConfiguration(let text):
            return text
        case .badEchoes(let peer, let reason):
            return "\(peer.hostPortDescription) answers, but not with the datagram it was sent: \(reason); it is not "
                + "an echo server, or something on the path changes packets, so no size can be measured through it"
        case .cancelled:
            return "cancelled"
        case .control(let peer, let reason):
            return "\(peer): \(reason)"
        case .xdp(let interface, let reason):
            return "XDP on \(interface): \(reason)"
        case .threadsExhausted(let purpose, let code):
            return "cannot start a thread (\(purpose)): \(String(cString: strerror(code))); the process is at its "
                + "limit of threads: ulimit -u (RLIMIT_NPROC) for its user, TasksMax= in its systemd unit, or its "
                + "cgroup's pids.max"
        case .descriptorsExhausted(let needed, let available, let limit):
            return "too few file descriptors: this needs about \(needed), and only \(max(0, available)) more can be "
                + "opened (the limit is \(limit)); raise it: ulimit -n \(needed + limit - available) in the shell, or "
                + "LimitNOFILE= in its systemd unit"
        }
    }

    private static func hint(_ operation: String, _ code: Int32) -> String {
        switch (operation, code) {
        case ("bind", EADDRINUSE):
            return " (another program uses that port; pick another with --address, or stop it)"
        case ("bind", EACCES):
            return " (ports below 1024 need root or CAP_NET_BIND_SERVICE; use a higher port or socket activation)"
        case ("bind", EADDRNOTAVAIL):
            return " (that address is not one of this host's)"
        default:
            return ""
        }
    }
}
