import ArgumentParser
import Logging
import NIOCore
import ServiceLifecycle
import UDPEcho

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

struct ServerCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "server",
        abstract: "Echo every datagram back to its sender.",
        discussion: """
            Prints where it listens, then for each datagram the article's two lines:
              packet-received: bytes=N from=ADDR
              packet-written: bytes=N to=ADDR
            Past --lines-per-second datagrams a second, their lines collapse into one line a second that says how \
            many were not shown; every datagram is still served and counted. Datagrams of any size up to the UDP \
            maximum (65507 bytes over IPv4, 65527 over IPv6) are echoed whole.

            A reply that cannot be sent (the send buffer stays full past --timeout, the peer is unreachable, a \
            firewall refuses it) is dropped, printed as packet-dropped with the reason, and counted; the server \
            goes on serving everyone else.

            Ctrl-C (SIGINT) or SIGTERM stops reading, lets the replies in flight go out, and prints "cancelled" \
            and a summary of what was received, echoed and dropped.

            Exit codes: 0 stopped by a signal; 1 could not start (name not resolved, address in use, permission \
            denied); 64 usage error.
            """
    )

    @Option(
        name: .long,
        help: ArgumentHelp(
            "Where to listen. :PORT means every local address, IPv4 and IPv6. (default: :1337)",
            valueName: "host:port"
        ),
        transform: parseAddress
    )
    var address: HostAndPort?

    @Option(help: ArgumentHelp("Host to listen on, as the article's -host (instead of --address).", valueName: "host"))
    var host: String?

    @Option(help: ArgumentHelp("Port to listen on, as the article's -port (default 1337).", valueName: "port"))
    var port: Int?

    @Option(
        help: ArgumentHelp(
            "Write deadline: how long a reply may wait for room in the send buffer before it is dropped (e.g. 500ms, 2s, 1m).",
            valueName: "duration"
        ),
        transform: parseDuration
    )
    var timeout: Duration = .seconds(15)

    @Option(
        help: ArgumentHelp(
            "Sockets and threads serving the port (SO_REUSEPORT); more spread clients over more cores. (default: half the CPU cores, at least 1)"
        )
    )
    var threads: Int?

    @Flag(
        name: [.short, .long],
        help: "No per-packet lines; drops and errors are still shown, and the summary counts everything."
    )
    var quiet = false

    @Option(
        help: ArgumentHelp(
            "Datagrams shown per second before their lines collapse into a count; 0 shows every one.",
            valueName: "n"
        )
    )
    var linesPerSecond = 50

    @Option(help: ArgumentHelp("Receive buffer of each socket, in bytes (SO_RCVBUF).", valueName: "bytes"))
    var receiveBuffer = 4 << 20

    @Option(help: ArgumentHelp("Send buffer of each socket, in bytes (SO_SNDBUF).", valueName: "bytes"))
    var sendBuffer = 4 << 20

    func validate() throws {
        _ = try self.listenAddress()
        if let threads, !(1...1024).contains(threads) {
            throw ValidationError("--threads \(threads) is out of range; give 1 to 1024")
        }
        if self.linesPerSecond < 0 { throw ValidationError("--lines-per-second cannot be negative") }
        if self.receiveBuffer <= 0 || self.sendBuffer <= 0 {
            throw ValidationError("socket buffer sizes must be positive")
        }
    }

    private func listenAddress() throws -> HostAndPort {
        try chooseAddress(address: self.address, host: self.host, port: self.port, defaultHost: nil)
            ?? HostAndPort(host: nil, port: 1337)
    }

    func run() async throws {
        LoggingSystem.bootstrap { label in
            var handler = StreamLogHandler.standardError(label: label)
            handler.logLevel = .warning
            return handler
        }
        let logger = Logger(label: "udpecho")
        let lines = LineQueue()
        let configuration = EchoServer.Configuration(
            address: try self.listenAddress(),
            writeTimeout: self.timeout,
            threads: self.threads ?? EchoServer.defaultThreads,
            receiveBufferSize: self.receiveBuffer,
            sendBufferSize: self.sendBuffer,
            reporting: self.quiet ? .errors : .all,
            eventsPerSecond: self.linesPerSecond == 0 ? nil : self.linesPerSecond
        )
        let server: EchoServer
        do {
            server = try EchoServer(configuration: configuration, logger: logger) { event in
                lines.enqueue(event.line)
            }
        } catch {
            Stream.err.line("udpecho: error: \(error)")
            throw ExitCode.failure
        }
        Stream.out.line("running as a server on \(server.localAddress.hostPortDescription)")

        let printer = Task { await lines.drain(to: .out) }
        let group = ServiceGroup(
            configuration: .init(
                services: [.init(service: server)],
                gracefulShutdownSignals: [.sigterm, .sigint],
                logger: logger
            )
        )
        try await group.run()
        lines.finish()
        await printer.value
        Stream.out.line("cancelled")
        Stream.out.line(server.statistics.summaryLine(lostLines: lines.lostLines))
    }
}

extension ServerEvent {
    /// The line printed for the event, in the article's `name: key=value` form.
    var line: String {
        switch self {
        case .received(let bytes, let from):
            return "packet-received: bytes=\(bytes) from=\(from.hostPortDescription)"
        case .echoed(let bytes, let to):
            return "packet-written: bytes=\(bytes) to=\(to.hostPortDescription)"
        case .dropped(let bytes, let peer, let reason, let code):
            let cause = code.map { " error=\"\(String(cString: strerror($0)))\"" } ?? ""
            return "packet-dropped: bytes=\(bytes) to=\(peer.hostPortDescription) reason=\(reason)\(cause)"
        case .receiveError(let code):
            return "receive-error: error=\"\(String(cString: strerror(code)))\" (the server goes on)"
        case .notShown(let datagrams, let interval):
            return
                "packets-not-shown: count=\(datagrams) in=\(interval.shortDescription) (served and counted; --lines-per-second sets the limit)"
        }
    }
}

extension EchoServerStatistics {
    /// One line with every counter, printed when the server stops.
    func summaryLine(lostLines: Int) -> String {
        var text = "summary: received=\(self.received) echoed=\(self.echoed) dropped=\(self.dropped)"
        if self.dropped > 0 {
            let reasons = DropReason.allCases.compactMap { reason in
                self.drops[reason].map { "\(reason)=\($0)" }
            }
            text += " (\(reasons.joined(separator: " ")))"
        }
        text += " bytes-received=\(self.receivedBytes) bytes-echoed=\(self.echoedBytes)"
        if self.receiveErrors > 0 { text += " receive-errors=\(self.receiveErrors)" }
        if lostLines > 0 { text += " lines-not-printed=\(lostLines) (standard output was too slow)" }
        return text
    }
}
