import ArgumentParser
import UDPEcho

/// `udpecho server --protocol twamp`'s options: modes, keys and limits of TWAMP-Control.
struct TwampServerOptions: ParsableArguments {
    @Option(
        help: ArgumentHelp(
            "TWAMP: the control modes offered, comma-separated: unauthenticated, authenticated, encrypted (default: unauthenticated, or all three with --key-file).",
            valueName: "modes"
        ),
        transform: parseModes
    )
    var twampModes: IPPMModes?

    @Option(
        help: ArgumentHelp(
            "TWAMP: the shared secrets of authenticated and encrypted modes, in perfSONAR's pfstore format (one 'IDENTITY HEXSECRET' per line).",
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

    @Option(help: ArgumentHelp("TWAMP: control connections at once.", valueName: "n"))
    var maxControlConnections: Int = 64

    @Option(help: ArgumentHelp("TWAMP: control connections at once from one address.", valueName: "n"))
    var maxControlConnectionsPerSource: Int = 8

    @Option(help: ArgumentHelp("TWAMP: test sessions one control connection may request.", valueName: "n"))
    var maxSessionsPerConnection: Int = 1024

    @Option(help: ArgumentHelp("TWAMP: test sessions at once, in all.", valueName: "n"))
    var maxSessions: Int = 16384

    @Option(
        help: ArgumentHelp("TWAMP: how long a session may run after Start-Sessions.", valueName: "duration"),
        transform: parseDuration
    )
    var maxSessionDuration: Duration = .seconds(3600)

    @Flag(
        help:
            "TWAMP: answer sessions whose sender is not the control client's own address. Off by default: a control client could otherwise aim this host's replies at anyone."
    )
    var allowThirdParty = false

    /// Whether any of these options differs from its default (they mean nothing without --protocol twamp).
    var isGiven: Bool {
        self.twampModes != nil || self.keyFile != nil || self.testPort != 862 || self.allowThirdParty
            || self.maxControlConnections != 64 || self.maxControlConnectionsPerSource != 8
            || self.maxSessionsPerConnection != 1024 || self.maxSessions != 16384
            || self.maxSessionDuration != .seconds(3600)
    }

    /// The server's configuration, listening for control connections on `address`.
    func configuration(address: HostAndPort, threads: Int) throws -> TwampServerConfiguration {
        let keys = try self.keyFile.map { path in
            do { return try IPPMKeyFile(contentsOfFile: path) } catch { throw ValidationError("--key-file: \(error)") }
        }
        guard (0...65535).contains(self.testPort) else {
            throw ValidationError("--test-port \(self.testPort) is out of range; give 0 to 65535")
        }
        return TwampServerConfiguration(
            controlAddress: address,
            testPort: self.testPort,
            modes: self.twampModes,
            keys: keys,
            maximumConnections: self.maxControlConnections,
            maximumConnectionsPerSource: self.maxControlConnectionsPerSource,
            maximumSessionsPerConnection: self.maxSessionsPerConnection,
            maximumSessions: self.maxSessions,
            maximumSessionDuration: self.maxSessionDuration,
            allowThirdParty: self.allowThirdParty,
            threads: threads
        )
    }
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
