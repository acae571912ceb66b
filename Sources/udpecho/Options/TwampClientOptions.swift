import ArgumentParser
import NIOCore
import UDPEcho

/// The TWAMP and OWAMP Control-Client's options, for `ping` and `bench`.
struct TwampClientOptions: ParsableArguments {
    @Flag(
        help:
            "Measure through a TWAMP server (RFC 5357: a router's, or perfSONAR's twampd): set up a test session over TWAMP-Control (TCP, port 862 if the target names none), send its test packets, stop it. Reports what --stamp reports."
    )
    var twamp = false

    @Flag(
        help:
            "Measure one-way through an OWAMP server (RFC 4656: perfSONAR's owampd, or udpecho server --protocol owamp; TCP port 861 if the target names none), as owping does: a session each way (--direction), -c packets (default 100) at -i apart on average (default 100ms; --schedule fixed for a constant gap); then one-way delay, its percentiles and jitter, loss and duplicates, per direction."
    )
    var owamp = false

    @Option(
        help: ArgumentHelp(
            "OWAMP: both, to (this host sends to the server) or from (the server sends).",
            valueName: "direction"
        )
    )
    var direction: OwampDirectionOption = .both

    @Option(
        help: ArgumentHelp(
            "OWAMP: exponential (a Poisson stream with -i as its mean gap, as owping sends) or fixed (-i apart).",
            valueName: "schedule"
        )
    )
    var schedule: OwampScheduleOption = .exponential

    @Option(
        help: ArgumentHelp("OWAMP: bytes of padding after each test packet's fields.", valueName: "bytes")
    )
    var padding: Int = 0

    @Option(
        name: [.customLong("mode"), .customLong("twamp-mode")],
        help: ArgumentHelp(
            "TWAMP, OWAMP: the mode, unauthenticated, authenticated or encrypted (default: encrypted or authenticated with --key-file, whichever the server offers; else unauthenticated).",
            valueName: "mode"
        ),
        transform: parseModes
    )
    var twampMode: IPPMModes?

    @Option(
        help: ArgumentHelp(
            "TWAMP, OWAMP: the key file of the keyed modes, in perfSONAR's pfstore format ('IDENTITY HEXSECRET' lines); with --key-id, that identity's secret, else the file's only one.",
            valueName: "file"
        )
    )
    var keyFile: String?

    @Option(help: ArgumentHelp("TWAMP, OWAMP: the key identity to use from --key-file.", valueName: "identity"))
    var keyId: String?

    /// Whether a control protocol measures: --twamp or --owamp.
    var controlled: Bool { self.twamp || self.owamp }

    func validate() throws {
        if !self.controlled && (self.twampMode != nil || self.keyFile != nil || self.keyId != nil) {
            throw ValidationError("--mode, --key-file and --key-id need --twamp or --owamp")
        }
        if self.twamp && self.owamp { throw ValidationError("--twamp and --owamp are two protocols: give one") }
        if !self.owamp
            && (self.direction != .both || self.schedule != .exponential || self.padding != 0)
        {
            throw ValidationError("--direction, --schedule and --padding are OWAMP's: they need --owamp")
        }
        if !(0...65_000).contains(self.padding) {
            throw ValidationError("--padding \(self.padding) is out of range; give 0 to 65000")
        }
        if let mode = self.twampMode, mode.rawValue.nonzeroBitCount != 1 {
            throw ValidationError("--mode takes one mode")
        }
        if self.keyId != nil && self.keyFile == nil { throw ValidationError("--key-id needs --key-file") }
        if let mode = self.twampMode, mode.usesKey, self.keyFile == nil {
            throw ValidationError("--mode \(mode) needs --key-file")
        }
    }

    /// `text` as the control address; a host alone means port 862 (TWAMP) or 861 (OWAMP).
    func target(_ text: String) throws -> HostAndPort {
        if let parsed = try? HostAndPort(parsing: text) { return parsed }
        var host = Substring(text)
        if host.hasPrefix("[") && host.hasSuffix("]") { host = host.dropFirst().dropLast() }
        guard !host.isEmpty, !host.contains("[") else { return try parseAddress(text) }
        return HostAndPort(host: String(host), port: self.owamp ? 861 : 862)
    }

    /// The key identity and secret --key-file and --key-id name.
    private func key() throws -> (id: String?, secret: [UInt8]?) {
        var keyID: String?
        var secret: [UInt8]?
        if let path = self.keyFile {
            let file = try IPPMKeyFile(contentsOfFile: path)
            if let wanted = self.keyId {
                guard let found = file.secrets[wanted] else {
                    throw EchoError.invalidConfiguration("\(path) has no key for the identity \(wanted)")
                }
                (keyID, secret) = (wanted, found)
            } else {
                guard file.secrets.count == 1, let only = file.secrets.first else {
                    throw EchoError.invalidConfiguration(
                        "\(path) has \(file.secrets.count) keys: say which with --key-id"
                    )
                }
                (keyID, secret) = (only.key, only.value)
            }
        }
        return (keyID, secret)
    }

    /// The TWAMP client's configuration for the server at `address`.
    func configuration(server address: SocketAddress) throws -> TwampClientConfiguration {
        let key = try self.key()
        return TwampClientConfiguration(server: address, mode: self.twampMode, keyID: key.id, secret: key.secret)
    }

    /// The OWAMP client's configuration for the server at `address`.
    func owampConfiguration(
        server address: SocketAddress,
        count: Int,
        interval: Duration,
        lossTimeout: Duration
    ) throws
        -> OwampClientConfiguration
    {
        let key = try self.key()
        return OwampClientConfiguration(
            server: address,
            mode: self.twampMode,
            keyID: key.id,
            secret: key.secret,
            directions: self.direction.directions,
            count: count,
            interval: interval,
            exponential: self.schedule == .exponential,
            padding: self.padding,
            lossTimeout: lossTimeout
        )
    }
}

/// `--direction`.
enum OwampDirectionOption: String, ExpressibleByArgument, CaseIterable {
    case both, to, from

    var directions: OwampDirections {
        switch self {
        case .both: .both
        case .to: .toServer
        case .from: .fromServer
        }
    }
}

/// `--schedule`.
enum OwampScheduleOption: String, ExpressibleByArgument, CaseIterable {
    case exponential, fixed
}
