import NIOCore

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// The process's limit on open files (`RLIMIT_NOFILE`), checked before a command opens anything.
///
/// SwiftNIO stops the process (a trap, not an error) when its event loops cannot open their descriptors, and a
/// prober that cannot open its sockets probes less than it was told; so a command first makes sure it has the
/// descriptors it will need, and otherwise stops with what to raise.
public enum DescriptorLimit {
    /// Descriptors that SwiftNIO's shared event loops take (an epoll, an eventfd and a timer for each core's loop),
    /// with room for the process's standard streams, its printer and the name resolver.
    public static var runtime: Int { 16 + 3 * System.coreCount }

    /// Raises the soft limit to the hard one (as the Go runtime does), then checks that `needed` descriptors can
    /// still be opened.
    ///
    /// - Throws: ``EchoError/descriptorsExhausted(needed:available:limit:)`` when they cannot.
    public static func ensure(_ needed: Int) throws(EchoError) {
        var limit = rlimit()
        guard getrlimit(__rlimit_resource_t(RLIMIT_NOFILE.rawValue), &limit) == 0 else { return }
        if limit.rlim_cur < limit.rlim_max {
            var raised = limit
            raised.rlim_cur = min(limit.rlim_max, 1 << 20)
            if setrlimit(__rlimit_resource_t(RLIMIT_NOFILE.rawValue), &raised) == 0 { limit = raised }
        }
        let soft = limit.rlim_cur > rlim_t(Int.max) ? Int.max : Int(limit.rlim_cur)
        let available = soft - Self.openDescriptors()
        guard available >= needed else {
            throw .descriptorsExhausted(needed: needed, available: available, limit: soft)
        }
    }

    /// Descriptors open now: the entries of /proc/self/fd, less the one that lists them.
    static func openDescriptors() -> Int {
        guard let directory = opendir("/proc/self/fd") else { return 3 }
        defer { closedir(directory) }
        var count = 0
        while let entry = readdir(directory) {
            if entry.pointee.d_name.0 != 0x2E { count += 1 }  // not "." or ".."
        }
        return max(0, count - 1)
    }
}
