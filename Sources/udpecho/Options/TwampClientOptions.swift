import ArgumentParser
import NIOCore
import UDPEcho

/// The TWAMP Control-Client's options, for `ping` and `bench`.
struct TwampClientOptions: ParsableArguments {
    @Flag(
        help:
            "Measure through a TWAMP server (RFC 5357: a router's, or perfSONAR's twampd): set up a test session over TWAMP-Control (TCP, port 862 if the target names none), send its test packets, stop it. Reports what --stamp reports."
    )
    var twamp = false

    @Option(
        help: ArgumentHelp(
            "TWAMP: the mode, unauthenticated, authenticated or encrypted (default: encrypted or authenticated with --key-file, whichever the server offers; else unauthenticated).",
            valueName: "mode"
        ),
        transform: parseModes
    )
    var twampMode: IPPMModes?

    @Option(
        help: ArgumentHelp(
            "TWAMP: the key file of the keyed modes, in perfSONAR's pfstore format ('IDENTITY HEXSECRET' lines); with --key-id, that identity's secret, else the file's only one.",
            valueName: "file"
        )
    )
    var keyFile: String?

    @Option(help: ArgumentHelp("TWAMP: the key identity to use from --key-file.", valueName: "identity"))
    var keyId: String?

    func validate() throws {
        if !self.twamp && (self.twampMode != nil || self.keyFile != nil || self.keyId != nil) {
            throw ValidationError("--twamp-mode, --key-file and --key-id need --twamp")
        }
        if let mode = self.twampMode, mode.rawValue.nonzeroBitCount != 1 {
            throw ValidationError("--twamp-mode takes one mode")
        }
        if self.keyId != nil && self.keyFile == nil { throw ValidationError("--key-id needs --key-file") }
        if let mode = self.twampMode, mode.usesKey, self.keyFile == nil {
            throw ValidationError("--twamp-mode \(mode) needs --key-file")
        }
    }

    /// `text` as the control address; a host alone means port 862.
    func target(_ text: String) throws -> HostAndPort {
        if let parsed = try? HostAndPort(parsing: text) { return parsed }
        var host = Substring(text)
        if host.hasPrefix("[") && host.hasSuffix("]") { host = host.dropFirst().dropLast() }
        guard !host.isEmpty, !host.contains("[") else { return try parseAddress(text) }
        return HostAndPort(host: String(host), port: 862)
    }

    /// The client's configuration for the server at `address`.
    func configuration(server address: SocketAddress) throws -> TwampClientConfiguration {
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
        return TwampClientConfiguration(server: address, mode: self.twampMode, keyID: keyID, secret: secret)
    }
}
