import ArgumentParser

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
        subcommands: [ServerCommand.self, ClientCommand.self]
    )
}
