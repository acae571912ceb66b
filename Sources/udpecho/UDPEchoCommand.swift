import ArgumentParser
import UDPEcho

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

@main
struct UDPEchoCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "udpecho",
        abstract: "A UDP echo server and client (RFC 862), after \"A UDP server and client in Go\".",
        discussion: """
            The server writes every datagram back to its sender, byte for byte; the client sends its input as one \
            datagram and waits for the echo.

            Try it in two terminals:
              udpecho server --address 127.0.0.1:1337
              echo hello | udpecho client --address 127.0.0.1:1337
            """,
        version: "0.1.0",
        subcommands: [
            ServerCommand.self, ClientCommand.self, PingCommand.self, BenchCommand.self, MTUCommand.self,
            MeshCommand.self, ExporterCommand.self,
        ]
    )

    /// As every Swift command line tool, but `ping`, `bench` and `mtu` end a usage error with 2, as ping(8) does.
    static func main() async {
        do {
            var command = try parseAsRoot()
            if var command = command as? AsyncParsableCommand {
                try await command.run()
            } else {
                try command.run()
            }
        } catch let error as EchoError {
            // One the library raised past the command (a service that stopped the group, as a thread that could
            // not be started): said as the commands say theirs.
            Stream.err.line("udpecho: error: \(error)")
            Glibc.exit(1)
        } catch {
            let subcommand = CommandLine.arguments.dropFirst().first ?? ""
            if exitCode(for: error) == .validationFailure && ["ping", "bench", "mtu", "mesh"].contains(subcommand) {
                Stream.err.line(fullMessage(for: error))
                Glibc.exit(2)
            }
            exit(withError: error)
        }
    }
}
