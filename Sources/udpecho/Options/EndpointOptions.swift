import ArgumentParser
import UDPEcho

/// What the endpoint options say in one command's help: where a server listens, or which server a client talks to.
protocol EndpointRole {
    static var addressHelp: String { get }
    static var hostHelp: String { get }
    static var portHelp: String { get }
    /// The host when only `--port` is given: nil for every local address.
    static var defaultHost: String? { get }
}

/// `--address HOST:PORT`, or the article's `--host` and `--port` (which cannot be mixed with it): the server's and the
/// client's way of naming an endpoint.
struct EndpointOptions<Role: EndpointRole>: ParsableArguments {
    @Option(help: ArgumentHelp(Role.addressHelp, valueName: "host:port"), transform: parseAddress)
    var address: HostAndPort?

    @Option(help: ArgumentHelp(Role.hostHelp, valueName: "host"))
    var host: String?

    @Option(parsing: .unconditional, help: ArgumentHelp(Role.portHelp, valueName: "port"))
    var port: Int?

    /// Whether any of the three was given.
    var isGiven: Bool { self.address != nil || self.host != nil || self.port != nil }

    /// The endpoint given, nil when none was (the command's default applies).
    func endpoint() throws -> HostAndPort? {
        try chooseAddress(address: self.address, host: self.host, port: self.port, defaultHost: Role.defaultHost)
    }
}

/// `udpecho server`: where to listen.
enum ListenRole: EndpointRole {
    static let addressHelp =
        "Where to listen. :PORT means every local address, IPv4 and IPv6. (default: :1337; :862 with --protocol stamp)"
    static let hostHelp = "Host to listen on, as the article's -host (instead of --address)."
    static let portHelp = "Port to listen on, as the article's -port (default 1337)."
    static let defaultHost: String? = nil
}

/// `udpecho client`: the server to talk to.
enum ServerRole: EndpointRole {
    static let addressHelp = "The server, as HOST:PORT or [IPV6]:PORT."
    static let hostHelp = "The server's host, as the article's -host (default 127.0.0.1)."
    static let portHelp = "The server's port, as the article's -port (default 1337)."
    static let defaultHost: String? = "127.0.0.1"
}
