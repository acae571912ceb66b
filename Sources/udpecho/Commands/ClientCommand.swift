import ArgumentParser
import NIOCore
import UDPEcho
import UnixSignals

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

struct ClientCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "client",
        abstract: "Send standard input as one datagram and wait for the echo.",
        discussion: """
            Resolves the server's name, connects a UDP socket to it (so that only the server's replies are \
            accepted and a refusal is seen), sends all of the input as ONE datagram and waits for the reply:
              sending to ADDR
              packet-written: bytes=N
              packet-received: bytes=N from=ADDR
            With --output the echoed bytes themselves go to standard output and these lines to standard error, so \
            the client can sit in a pipe.

            Exit codes:
              0    the reply came back, identical to what was sent
              1    no reply within --timeout
              2    refused: nothing listens on that port (ICMP port unreachable)
              3    a reply came back but differs from what was sent
              4    the host name could not be resolved
              5    the input is larger than one datagram can hold (nothing was sent)
              6    another network or input error
              64   usage error (bad option, address or duration)
              130  cancelled with Ctrl-C
            """
    )

    @OptionGroup var endpoint: EndpointOptions<ServerRole>

    @Option(
        parsing: .unconditional,
        help: ArgumentHelp("How long to wait for the reply (e.g. 500ms, 2s, 1m).", valueName: "duration"),
        transform: parseDuration
    )
    var timeout: Duration = .seconds(15)

    @Option(name: [.short, .long], help: ArgumentHelp("File to send; - is standard input.", valueName: "file"))
    var input = "-"

    @Flag(
        name: [.short, .long],
        help: "Write the echoed bytes to standard output and the status lines to standard error."
    )
    var output = false

    func validate() throws {
        guard try self.serverAddress() != nil else {
            throw ValidationError("give the server with --address HOST:PORT, for example --address 127.0.0.1:1337")
        }
        guard self.timeout > .zero else {
            throw ValidationError("--timeout 0 gives up before any reply can come; give a deadline such as 2s")
        }
    }

    private func serverAddress() throws -> HostAndPort? {
        try self.endpoint.endpoint()
    }

    /// What ended the exchange, with its exit code.
    enum Failure: Error {
        case echo(EchoError)
        case mismatch(String)
        case input(String)
        case other(String)

        var exitCode: Int32 {
            switch self {
            case .echo(.timeout): return 1
            case .echo(.refused): return 2
            case .mismatch: return 3
            case .echo(.nameNotResolved): return 4
            case .echo(.payloadTooLarge): return 5
            case .echo, .input, .other: return 6
            }
        }

        var message: String {
            switch self {
            case .echo(let error): return "\(error)"
            case .mismatch(let text), .input(let text), .other(let text): return text
            }
        }
    }

    func run() async throws {
        let status = self.output ? Stream.err : Stream.out
        // SwiftNIO stops the process when it cannot open its event loops' descriptors: check first.
        do { try DescriptorLimit.ensure(DescriptorLimit.runtime + 4) } catch {
            Stream.err.line("udpecho: error: \(error)")
            throw ExitCode(6)
        }
        // Ctrl-C while waiting (for input, or for the reply): say so and leave with the shell's code for SIGINT.
        let signals = await UnixSignalsSequence(trapping: .sigint, .sigterm)
        Task.detached {
            for await _ in signals {
                status.line("cancelled")
                Glibc.exit(130)
            }
        }
        do {
            try await self.exchange(status: status)
        } catch {
            Stream.err.line("udpecho: error: \(error.message)")
            throw ExitCode(error.exitCode)
        }
    }

    private func exchange(status: Stream) async throws(Failure) {
        let target = try! self.serverAddress()!
        let client: EchoClient
        do {
            client = try await EchoClient.connect(to: target)
        } catch let error as EchoError {
            throw .echo(error)
        } catch {
            throw .other("cannot open a UDP socket to \(target): \(error)")
        }
        defer { Task { try? await client.close() } }
        status.line("sending to \(client.remoteAddress.hostPortDescription)")

        let limit = client.remoteAddress.maximumDatagramPayload
        let (payload, size) = try self.readInput(keepingAtMost: limit)
        guard size <= limit else {
            throw .echo(.payloadTooLarge(size: size, limit: limit, peer: client.remoteAddress))
        }
        let sent = ByteBuffer(bytes: payload)
        let reply: EchoReply
        do {
            // As in the article, the line is printed once the datagram is written, before the wait for the reply.
            reply = try await client.echo(sent, timeout: self.timeout) { status.line("packet-written: bytes=\(size)") }
        } catch let error as EchoError {
            throw .echo(error)
        } catch {
            throw .other("sending to \(client.remoteAddress.hostPortDescription) failed: \(error)")
        }
        status.line("packet-received: bytes=\(reply.payload.readableBytes) from=\(reply.from.hostPortDescription)")
        if self.output {
            _ = reply.payload.withUnsafeReadableBytes { Stream.out.write($0) }
        }
        if let difference = Self.difference(sent: sent, received: reply.payload) {
            throw .mismatch("the reply differs from what was sent: \(difference)")
        }
    }

    /// Reads the whole input, keeping at most `limit + 1` bytes but counting all of them.
    private func readInput(keepingAtMost limit: Int) throws(Failure) -> ([UInt8], Int) {
        let fd: Int32 = self.input == "-" ? 0 : open(self.input, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else {
            throw .input("cannot open the input file '\(self.input)': \(String(cString: strerror(errno)))")
        }
        defer { if fd != 0 { close(fd) } }
        var kept: [UInt8] = []
        var total = 0
        var chunk = [UInt8](repeating: 0, count: 65536)
        while true {
            let count = chunk.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
            if count < 0 {
                if errno == EINTR { continue }
                let name = self.input == "-" ? "standard input" : "'\(self.input)'"
                throw .input("cannot read \(name): \(String(cString: strerror(errno)))")
            }
            if count == 0 { break }
            total += count
            if kept.count <= limit { kept.append(contentsOf: chunk[0..<min(count, limit + 1 - kept.count)]) }
        }
        return (kept, total)
    }

    /// Where two payloads first differ, in words; nil when they are equal.
    static func difference(sent: ByteBuffer, received: ByteBuffer) -> String? {
        if sent == received { return nil }
        let a = sent.readableBytesView
        let b = received.readableBytesView
        let common = zip(a, b).prefix { $0 == $1 }.count
        if a.count != b.count {
            return "sent \(a.count) bytes, received \(b.count) (the first \(common) match)"
        }
        return "\(a.count) bytes each, first difference at byte \(common)"
    }
}
