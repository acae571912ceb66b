#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// systemd's socket activation protocol (`sd_listen_fds(3)`): the service manager binds the sockets (a privileged
/// port such as 7, with `ListenDatagram=`) and starts the service with them open from descriptor 3 on, saying so in
/// `LISTEN_PID` and `LISTEN_FDS`.
public enum SocketActivation {
    /// The first descriptor passed.
    public static let firstDescriptor: Int32 = 3

    /// The descriptors passed to this process, or an empty list when it was not socket-activated. The variables are
    /// removed, so that programs this one starts do not take the sockets for theirs.
    public static func takeDescriptors() -> [Int32] {
        defer {
            unsetenv("LISTEN_PID")
            unsetenv("LISTEN_FDS")
            unsetenv("LISTEN_FDNAMES")
        }
        guard let pidText = getenv("LISTEN_PID").map({ String(cString: $0) }), let pid = Int32(pidText),
            pid == getpid(),
            let countText = getenv("LISTEN_FDS").map({ String(cString: $0) }), let count = Int32(countText), count > 0
        else {
            return []
        }
        return (0..<count).map { Self.firstDescriptor + $0 }
    }
}
