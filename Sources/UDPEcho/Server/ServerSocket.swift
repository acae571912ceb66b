import CUDPEcho
import NIOCore

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// One bound UDP socket of the server, owned by one worker thread.
struct ServerSocket {
    let descriptor: Int32
    let localAddress: SocketAddress

    struct Options {
        /// Let the server's other sockets share the port (SO_REUSEPORT).
        var reusePort: Bool
        /// The first socket of the server: it binds without SO_REUSEPORT, so that a port someone else serves is
        /// refused (EADDRINUSE) and port 0 gets a port nobody uses (the kernel would otherwise hand out, or let
        /// join, the port of another process's SO_REUSEPORT group of the same user, and the two would share its
        /// traffic), and then allows the others to join.
        var first = false
        var receiveBufferSize: Int?
        var sendBufferSize: Int?
        /// Ask for each datagram's receive timestamp, TTL and TOS (a STAMP reflector needs them).
        var datagramInfo = false
        /// Take runs of datagrams coalesced (UDP_GRO), where the kernel offers it; without it, datagram by datagram.
        var offload = false
        /// Ask for each datagram's TTL and TOS (replies that reflect the marking need them).
        var receiveMarks = false
        /// The TTL (hop limit) of what the socket sends; nil keeps the system's. A TWAMP reflector sends with 255
        /// (RFC 5357 §4.2), so that the sender can count the hops back.
        var hopLimit: Int32?
    }

    /// Opens a UDP socket and binds it to `address`.
    ///
    /// A wildcard IPv6 address gets a dual-stack socket (IPv4 clients too); a wildcard address of either family
    /// asks the kernel for each datagram's destination, so that the reply leaves from the address the client wrote
    /// to on a host with several addresses.
    static func bind(to address: SocketAddress, options: Options) throws(EchoError) -> ServerSocket {
        let family: Int32
        switch address {
        case .v4: family = AF_INET
        case .v6: family = AF_INET6
        case .unixDomainSocket: throw .socket(operation: "bind", address: address.description, errno: EAFNOSUPPORT)
        }
        let fd: Int32
        do {
            fd = try SystemCall.udpSocket(family: family)
        } catch {
            throw .socket(operation: "socket for", address: address.hostPortDescription, errno: error.errno)
        }
        do throws(EchoError) {
            let wildcard = address.isUnspecified
            if options.reusePort && !options.first {
                try Self.setOption(fd, SOL_SOCKET, cudpecho_so_reuseport, 1, "SO_REUSEPORT", address)
            }
            if family == AF_INET6 && wildcard {
                try Self.setOption(fd, Int32(IPPROTO_IPV6), IPV6_V6ONLY, 0, "IPV6_V6ONLY", address)
            }
            try Self.prepare(fd, family: family, address: address, options: options)
            do {
                try SystemCall.posix("bind") { address.withRawAddress { Glibc.bind(fd, $0, $1) } }
            } catch {
                throw .socket(operation: "bind", address: address.hostPortDescription, errno: error.errno)
            }
            if options.reusePort && options.first {
                try Self.setOption(fd, SOL_SOCKET, cudpecho_so_reuseport, 1, "SO_REUSEPORT", address)
            }
            return ServerSocket(descriptor: fd, localAddress: try Self.localAddress(of: fd, asked: address))
        } catch {
            _ = Glibc.close(fd)
            throw error
        }
    }

    /// Takes over a socket that another process opened and bound (socket activation).
    static func adopt(_ fd: Int32, options: Options) throws(EchoError) -> ServerSocket {
        var type: Int32 = 0
        var family: Int32 = 0
        var length = socklen_t(MemoryLayout<Int32>.size)
        let name = "descriptor \(fd)"
        let operation = "adopting (it must be a UDP socket, as ListenDatagram= passes)"
        guard getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &length) == 0 else {
            throw .socket(operation: operation, address: name, errno: errno)
        }
        length = socklen_t(MemoryLayout<Int32>.size)
        guard getsockopt(fd, SOL_SOCKET, SO_DOMAIN, &family, &length) == 0,
            type == Int32(SOCK_DGRAM.rawValue), family == AF_INET || family == AF_INET6
        else {
            throw .socket(operation: operation, address: name, errno: EINVAL)
        }
        let local = try Self.localAddress(of: fd, asked: try! SocketAddress(ipAddress: "0.0.0.0", port: 0))
        var peer = sockaddr_storage()
        var peerLength = socklen_t(MemoryLayout<sockaddr_storage>.size)
        let connected = withUnsafeMutablePointer(to: &peer) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getpeername(fd, $0, &peerLength) == 0 }
        }
        guard !connected else {
            // A connected socket takes datagrams from one peer only, and would send every reply there.
            throw .invalidConfiguration(
                "\(name) is a connected UDP socket (it hears one peer only); the service manager must pass an "
                    + "unconnected one (systemd: ListenDatagram= in the .socket unit)"
            )
        }
        guard local.port != 0 else {
            // Nothing can reach a socket without a port; serving it would only look like serving.
            throw .invalidConfiguration(
                "\(name) is a UDP socket that is not bound to a port, so no datagram could reach it; "
                    + "the service manager must bind it (systemd: ListenDatagram= in the .socket unit)"
            )
        }
        try Self.prepare(
            fd,
            family: family,
            address: local,
            options: Options(
                reusePort: false,
                receiveBufferSize: options.receiveBufferSize,
                sendBufferSize: options.sendBufferSize,
                datagramInfo: options.datagramInfo,
                offload: options.offload,
                receiveMarks: options.receiveMarks,
                hopLimit: options.hopLimit
            )
        )
        return ServerSocket(descriptor: fd, localAddress: local)
    }

    /// Asks for each datagram's destination on a wildcard socket, and sizes the socket's buffers.
    private static func prepare(_ fd: Int32, family: Int32, address: SocketAddress, options: Options) throws(EchoError)
    {
        if address.isUnspecified {
            let result = cudpecho_enable_pktinfo(fd, family)
            if result < 0 {
                throw .socket(operation: "IP_PKTINFO on", address: address.hostPortDescription, errno: -result)
            }
        }
        if options.datagramInfo {
            let result = cudpecho_enable_datagram_info(fd, family)
            if result < 0 {
                throw .socket(operation: "timestamps and TTLs on", address: address.hostPortDescription, errno: -result)
            }
        }
        if options.receiveMarks {
            let result = cudpecho_enable_receive_marks(fd, family)
            if result < 0 {
                throw .socket(operation: "TTLs and TOS bytes on", address: address.hostPortDescription, errno: -result)
            }
        }
        if var hops = options.hopLimit {
            // A dual-stack socket sends IPv4 with IP_TTL and IPv6 with IPV6_UNICAST_HOPS: both are set.
            let size = socklen_t(MemoryLayout<Int32>.size)
            var result = setsockopt(fd, Int32(IPPROTO_IP), IP_TTL, &hops, size)
            if family == AF_INET6 { result = setsockopt(fd, Int32(IPPROTO_IPV6), IPV6_UNICAST_HOPS, &hops, size) }
            if result < 0 { throw .socket(operation: "the TTL on", address: address.hostPortDescription, errno: errno) }
        }
        if options.offload {
            // A kernel without UDP_GRO (before 5.0) refuses it: then every datagram comes alone, as without.
            _ = cudpecho_enable_gro(fd)
        }
        if let size = options.receiveBufferSize { _ = cudpecho_set_buffer_size(fd, SO_RCVBUF, Int32(clamping: size)) }
        if let size = options.sendBufferSize { _ = cudpecho_set_buffer_size(fd, SO_SNDBUF, Int32(clamping: size)) }
    }

    func close() {
        _ = Glibc.close(self.descriptor)
    }

    /// Wakes a thread blocked reading the socket, and makes every later read return at once when nothing is queued.
    /// (On an unconnected UDP socket `shutdown` reports ENOTCONN, but it does take effect.)
    func shutdownReading() {
        _ = Glibc.shutdown(self.descriptor, Int32(SHUT_RD))
    }

    /// The size of a socket buffer as the kernel reports it (which is twice the size asked for, on Linux).
    func bufferSize(_ option: Int32) -> Int {
        var value: Int32 = 0
        var length = socklen_t(MemoryLayout<Int32>.size)
        getsockopt(self.descriptor, SOL_SOCKET, option, &value, &length)
        return Int(value)
    }

    private static func setOption(
        _ fd: Int32,
        _ level: Int32,
        _ name: Int32,
        _ value: Int32,
        _ label: String,
        _ address: SocketAddress
    ) throws(EchoError) {
        var value = value
        guard setsockopt(fd, level, name, &value, socklen_t(MemoryLayout<Int32>.size)) == 0 else {
            throw .socket(operation: "\(label) on", address: address.hostPortDescription, errno: errno)
        }
    }

    private static func localAddress(of fd: Int32, asked: SocketAddress) throws(EchoError) -> SocketAddress {
        guard let address = SocketAddress.local(of: fd) else {
            throw .socket(operation: "getsockname", address: asked.hostPortDescription, errno: errno)
        }
        return address
    }
}
