import ArgumentParser
import NIOCore
import UDPEcho

/// The STAMP sender's options, shared by `ping` and `bench`.
struct StampSenderOptions: ParsableArguments {
    @Flag(
        help:
            "Send STAMP test packets (RFC 8762) to a STAMP or TWAMP-Light reflector: besides the round trip, the reflector's time, forward and backward delay, TTL at the reflector, and loss by direction when the reflector is stateful."
    )
    var stamp = false

    @Option(
        help: ArgumentHelp(
            "STAMP authenticated mode (HMAC-SHA-256): the shared key is this file's contents (without a trailing newline).",
            valueName: "file"
        )
    )
    var stampKeyFile: String?

    @Flag(help: "STAMP: ask the reflector for the addresses and ports it saw (a Location TLV; NAT on the way shows).")
    var stampLocation = false

    @Option(
        parsing: .unconditional,
        help: ArgumentHelp(
            "STAMP: ask the reflector to reply with this DSCP, and to say which DSCP and ECN the test packets arrived with (a Class of Service TLV).",
            valueName: "dscp"
        )
    )
    var stampCos: UInt8?

    @Option(help: ArgumentHelp("STAMP: our timestamps' format, ntp or ptp.", valueName: "format"))
    var stampTimestamp: StampTimestampFormat = .ntp

    func validate() throws {
        if !self.stamp && (self.stampKeyFile != nil || self.stampLocation || self.stampCos != nil) {
            throw ValidationError("--stamp-key-file, --stamp-location and --stamp-cos need --stamp")
        }
        if let dscp = self.stampCos, dscp > 63 { throw ValidationError("--stamp-cos: a DSCP goes from 0 to 63") }
    }

    /// `text` as the target; with --stamp a host alone means STAMP's port 862.
    func target(_ text: String) throws -> HostAndPort {
        guard self.stamp, (try? HostAndPort(parsing: text)) == nil else { return try parseAddress(text) }
        var host = Substring(text)
        if host.hasPrefix("[") && host.hasSuffix("]") { host = host.dropFirst().dropLast() }
        guard !host.isEmpty, !host.contains("[") else { return try parseAddress(text) }
        return HostAndPort(host: String(host), port: StampReflectorConfiguration.defaultPort)
    }

    /// The sender's configuration (nil without --stamp); a key file that cannot be read is a setup error (exit 2).
    func configuration() throws -> StampSenderConfiguration? {
        guard self.stamp else { return nil }
        do {
            var stamp = StampSenderConfiguration(
                key: try self.stampKeyFile.map { path throws(EchoError) in try StampKey(contentsOfFile: path) },
                classOfService: self.stampCos,
                timestampFormat: self.stampTimestamp
            )
            stamp.location = self.stampLocation
            return stamp
        } catch {
            Stream.err.line("udpecho: error: \(error)")
            throw ExitCode(2)
        }
    }
}

/// The size of each probe: as given, or the STAMP test packet's own (its TLVs' size depends on the family), or
/// `plain` for echoes.
func probeSize(_ given: Int?, stamp: StampSenderConfiguration?, target: SocketAddress, plain: Int = 64) -> Int {
    given ?? stamp.map { $0.minimumSize(ipv6: target.protocol == .inet6) } ?? plain
}
