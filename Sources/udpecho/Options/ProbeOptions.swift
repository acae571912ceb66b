import ArgumentParser
import UDPEcho

/// What the probe options say, and default to, in one command: `ping`, `bench` or `mesh`.
protocol ProbeRole {
    static var defaultFlows: Int { get }
    static var flowsHelp: String { get }
    static var defaultTimeout: Duration { get }
    static var timeoutHelp: String { get }
    static var sizeHelp: String { get }
}

/// The options every prober takes: the source ports to probe from (`--flows`), how long a probe waits for its reply
/// before it is lost (`-W/--timeout`; `bench` also reads its earlier name, `--loss-timeout`), and the probes' size
/// (`-s/--size`, whose default each command chooses).
struct ProbeOptions<Role: ProbeRole>: ParsableArguments {
    @Option(
        name: .customLong("flows"),
        parsing: .unconditional,
        help: ArgumentHelp(Role.flowsHelp + " (default: \(Role.defaultFlows))", valueName: "n")
    )
    var flowsOption: Int?

    /// The flows given, or the command's default.
    var flows: Int { self.flowsOption ?? Role.defaultFlows }

    @Option(
        name: [.customShort("W"), .customLong("timeout"), .customLong("loss-timeout")],
        parsing: .unconditional,
        help: ArgumentHelp(Role.timeoutHelp, valueName: "duration"),
        transform: parseDuration
    )
    var timeout = Role.defaultTimeout

    @Option(
        name: [.customShort("s"), .customLong("size")],
        parsing: .unconditional,
        help: ArgumentHelp(Role.sizeHelp, valueName: "bytes")
    )
    var sizeOption: Int?

    /// Throws a usage error unless the flows are 1 to 64 and the timeout more than nothing.
    func validate() throws {
        if !(1...EchoPinger.Configuration.maximumFlows).contains(self.flows) {
            throw ValidationError(
                "--flows \(self.flows): from 1 to \(EchoPinger.Configuration.maximumFlows) source ports"
            )
        }
        if self.timeout <= .zero { throw ValidationError("-W/--timeout must be more than 0") }
    }
}

/// `udpecho ping`: one flow by default.
enum PingRole: ProbeRole {
    static let defaultFlows = 1
    static let flowsHelp =
        "Send the probes in turn from N source ports, 1 to 64: ECMP hashing sends each port over one of the equal-cost paths."
    static let defaultTimeout = Duration.seconds(1)
    static let timeoutHelp = "How long to wait for each reply."
    static let sizeHelp =
        "Payload bytes per probe, 16 to the datagram maximum. (default: 64; with --stamp, the test packet and its TLVs: 44, 112 authenticated)"
}

/// `udpecho bench`: four flows by default.
enum BenchRole: ProbeRole {
    static let defaultFlows = 4
    static let flowsHelp = "Sockets, each its own source port, 1 to 64 (one with --twamp: one session)."
    static let defaultTimeout = Duration.seconds(1)
    static let timeoutHelp = "A request without a reply after this long is lost."
    static let sizeHelp =
        "Payload bytes per request, 16 to the datagram maximum. (default: 64; with --stamp, the test packet and its TLVs: 44, 112 authenticated)"
}

/// `udpecho mesh`: eight source ports by default.
enum MeshRole: ProbeRole {
    static let defaultFlows = 8
    static let flowsHelp = "Source ports to probe from, in turn, 1 to 64."
    static let defaultTimeout = Duration.seconds(1)
    static let timeoutHelp = "A probe without a reply after this long is lost."
    static let sizeHelp = "UDP payload bytes per probe, 32 and more. (default: 64)"
}
