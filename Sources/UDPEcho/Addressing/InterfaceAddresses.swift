#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// This host's interface addresses and IPv4 broadcast addresses, as `getifaddrs(3)` reports them at one moment.
struct InterfaceAddresses {
    /// Every IPv4 and IPv6 address of every interface.
    var addresses: [IPKey] = []
    /// The IPv4 broadcast addresses of interfaces that have one.
    var broadcasts: [IPKey] = []

    /// Reads the interfaces now; an empty list when the system will not say.
    static func current() -> InterfaceAddresses {
        var result = InterfaceAddresses()
        var list: UnsafeMutablePointer<ifaddrs>?
        guard getifaddrs(&list) == 0, let first = list else { return result }
        defer { freeifaddrs(first) }
        var candidates: [IPKey] = []
        var entry: UnsafeMutablePointer<ifaddrs>? = first
        while let current = entry {
            entry = current.pointee.ifa_next
            guard let raw = current.pointee.ifa_addr, let key = IPKey(UnsafePointer(raw)) else { continue }
            if !result.addresses.contains(key) { result.addresses.append(key) }
            if key.isIPv4, current.pointee.ifa_flags & UInt32(IFF_BROADCAST) != 0,
                let broadcast = current.pointee.ifa_ifu.ifu_broadaddr,
                let broadcastKey = IPKey(UnsafePointer(broadcast))
            {
                candidates.append(broadcastKey)
            }
        }
        // An address added without a broadcast address (`ip addr add 192.0.2.1/32`, as on cloud hosts) is reported
        // as its own broadcast address: it is a host's address, not a broadcast one.
        result.broadcasts = candidates.filter { !$0.isUnspecified && !result.addresses.contains($0) }
        return result
    }

    /// Whether `key` is one of the addresses.
    func isLocal(_ key: IPKey) -> Bool { self.addresses.contains(key) }
}

/// The range of ports the kernel hands out to sockets that do not choose one (`net.ipv4.ip_local_port_range`, which
/// IPv6 shares): where clients' source ports come from.
enum EphemeralPorts {
    /// The range now; Linux's default (32768...60999) if it cannot be read.
    static func current() -> ClosedRange<Int> {
        let fallback = 32768...60999
        let fd = open("/proc/sys/net/ipv4/ip_local_port_range", O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { return fallback }
        defer { close(fd) }
        var buffer = [UInt8](repeating: 0, count: 64)
        let count = buffer.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
        guard count > 0 else { return fallback }
        let numbers = String(decoding: buffer[0..<count], as: UTF8.self).split(whereSeparator: {
            $0 == " " || $0 == "\t" || $0 == "\n"
        })
        .compactMap { Int($0) }
        guard numbers.count == 2, 0 < numbers[0], numbers[0] <= numbers[1], numbers[1] <= 65535 else { return fallback }
        return numbers[0]...numbers[1]
    }
}
