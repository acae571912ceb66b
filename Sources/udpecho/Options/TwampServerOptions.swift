import ArgumentParser
import UDPEcho

/// `udpecho server --protocol twamp` and `--protocol owamp`'s options: modes, keys and limits of the control
/// protocol.
struct TwampServerOptions: ParsableArguments {
    @Option(
        name: [.customLong("modes"), .customLong("twamp-modes")],
        help: ArgumentHelp(
            "TWAMP, OWAMP: the control modes offered, comma-separated: unauthenticated, authenticated, encrypted (default: unauthenticated, or all three with --key-file).",
            valueName: "modes"
        ),
        transform: parseModes
    )
    var twampModes: IPPMModes?

    @Option(
        help: ArgumentHelp(
            "TWAMP, OWAMP: the shared secrets of authenticated and encrypted modes, in perfSONAR's pfstore format (one 'IDENTITY HEXSECRET' per line).",
            valueName: "file"
        )
    )
    var keyFile: String?

    @Option(
        help: ArgumentHelp(
            "TWAMP: the UDP port of the Session-Reflector, for every session (0: any free port).",
            valueName: "port"
        )
    )
    var testPort: Int = 862

    @Option(
        help: ArgumentHelp(
            "OWAMP: the UDP ports test sessions take, LOW-HIGH, the first free one (default: any free port).",
            valueName: "low-high"
        ),
        transform: parsePortRange
    )
    var testPorts: ClosedRange<Int>?

    @Option(help: ArgumentHelp("TWAMP, OWAMP: control connections at once.", valueName: "n"))
    var maxControlConnections: Int = 64

    @Option(help: ArgumentHelp("TWAMP, OWAMP: control connections at once from one address.", valueName: "n"))
    var maxControlConnectionsPerSource: Int = 8

    @Option(
        help: ArgumentHelp(
            "TWAMP, OWAMP: test sessions one control connection may request (default: 1024 TWAMP, 16 OWAMP).",
            valueName: "n"
        )
    )
    var maxSessionsPerConnection: Int?

    @Option(
        help: ArgumentHelp(
            "TWAMP, OWAMP: test sessions at once, in all (default: 16384 TWAMP, 64 OWAMP: each OWAMP session has a socket and, while it runs, a thread).",
            valueName: "n"
        )
    )
    var maxSessions: Int?

    @Option(
        help: ArgumentHelp(
            "TWAMP: how long a session may run after Start-Sessions; OWAMP: how long a session's schedule may last.",
            valueName: "duration"
        ),
        transform: parseDuration
    )
    var maxSessionDuration: Duration = .seconds(3600)

    @Option(
        help: ArgumentHelp(
            "OWAMP: the most test packets a session may have (the server keeps a record of each it receives until fetched).",
            valueName: "n"
        )
    )
    var maxPackets: Int = 10_000

    @Option(
        help: ArgumentHelp(
            "OWAMP: the shortest gap (fixed, or an exponential slot's mean) between the packets this server is asked to send.",
            valueName: "duration"
        ),
        transform: parseDuration
    )
    var minInterval: Duration = .milliseconds(1)

    @Flag(
        help:
            "TWAMP, OWAMP: allow sessions whose other end is not the control client's own address. Off by default: a control client could otherwise aim this host's packets at anyone."
    )
    var allowThirdParty = false

    /// Whether any of these options differs from its default (they mean nothing without --protocol twamp or owamp).
    var isGiven: Bool {
        self.twampModes != nil || self.keyFile != nil || self.isTwampOnlyGiven || self.isOwampOnlyGiven
            || self.allowThirdParty || self.maxControlConnections != 64 || self.maxControlConnectionsPerSource != 8
            || self.maxSessionsPerConnection != nil || self.maxSessions != nil
            || self.maxSessionDuration != .seconds(3600)
    }

    var isTwampOnlyGiven: Bool { self.testPort != 862 }
    var isOwampOnlyGiven: Bool {
        self.testPorts != nil || self.maxPackets != 10_000 || self.minInterval != .milliseconds(1)
    }

    private func keys() throws -> IPPMKeyFile? {
        try self.keyFile.map { path in
            do { return try IPPMKeyFile(contentsOfFile: path) } catch { throw ValidationError("--key-file: \(error)") }
        }
    }

    /// The TWAMP server's configuration, listening for control connections on `address`.
    func configuration(address: HostAndPort, threads: Int) throws -> TwampServerConfiguration {
        guard (0...65535).contains(self.testPort) else {
            throw ValidationError("--test-port \(self.testPort) is out of range; give 0 to 65535")
        }
        return TwampServerConfiguration(
            controlAddress: address,
            testPort: self.testPort,
            modes: self.twampModes,
            keys: try self.keys(),
            maximumConnections: self.maxControlConnections,
            maximumConnectionsPerSource: self.maxControlConnectionsPerSource,
            maximumSessionsPerConnection: self.maxSessionsPerConnection ?? 1024,
            maximumSessions: self.maxSessions ?? 16384,
            maximumSessionDuration: self.maxSessionDuration,
            allowThirdParty: self.allowThirdParty,
            threads: threads
        )
    }

    /// The OWAMP server's configuration, listening for control connections on `address`.
    func owampConfiguration(address: HostAndPort) throws -> OwampServerConfiguration {
        OwampServerConfiguration(
            controlAddress: address,
            testPorts: self.testPorts,
            modes: self.twampModes,
            keys: try self.keys(),
            maximumConnections: self.maxControlConnections,
            maximumConnectionsPerSource: self.maxControlConnectionsPerSource,
            maximumSessionsPerConnection: self.maxSessionsPerConnection ?? 16,
            maximumSessions: self.maxSessions ?? 64,
            maximumPackets: self.maxPackets,
            minimumInterval: self.minInterval,
            maximumSessionDuration: self.maxSessionDuration,
            allowThirdParty: self.allowThirdParty
        )
    }
}

/// `LOW-HIGH` UDP ports.
func parsePortRange(_ text: String) throws -> ClosedRange<Int> {
    let parts = text.split(separator: "-", omittingEmptySubsequences: false)
    guard parts.count == 2, let low = Int(parts[0]), let high = Int(parts[1]), 1 <= low, low <= high, high <= 65535
    else { throw ValidationError("'\(text)' is not a port range: give LOW-HIGH within 1-65535, LOW <= HIGH") }
    return low...high
}

/// `unauthenticated,authenticated,encrypted` (or their first letters, as perfSONAR's -A takes them: O, A, E).
func parseModes(_ text: String) throws -> IPPMModes {
    var modes: IPPMModes = []
    for word in text.split(separator: ",") {
        switch word.lowercased() {
        case "unauthenticated", "open", "o": modes.insert(.unauthenticated)
        case "authenticated", "a": modes.insert(.authenticated)
        case "encrypted", "e": modes.insert(.encrypted)
        default:
            throw ValidationError("'\(word)' is not a mode: give unauthenticated, authenticated or encrypted")
        }
    }
    guard !modes.isEmpty else { throw ValidationError("give at least one mode") }
    return modes
}
