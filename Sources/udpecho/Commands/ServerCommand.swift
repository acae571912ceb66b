import ArgumentParser
import FoundationEssentials
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

            Guards against echo loops, reflection and floods are on by default, each with its flag below: source \
            ports below 1024, 1337 (other udpecho servers), 2049 and the server's own port; impossible sources \
            (multicast, broadcast, this host's own addresses arriving from outside); the server's own endpoint; \
            the same datagram bouncing back more than --loop-limit times; --allow/--deny lists; --max-size; a \
            token bucket per source and a global budget (loopback exempt from both unless --limit-loopback). \
            Every drop is counted under its reason. Started by systemd with sockets (LISTEN_FDS), it serves those.

            With --xdp IFACE an XDP program on that interface answers echoes (and, with --protocol stamp, \
            unauthenticated STAMP test packets) in the driver, after the same guards run in the kernel; fragments, \
            IP options, bad checksums and what it does not handle go up to the sockets as before. The start line \
            says native or generic mode, the summary counts xdp-echoed, xdp-dropped and xdp-passed. It needs \
            CAP_BPF and CAP_NET_ADMIN, and goes away with the process.

            With --protocol stamp it answers as a STAMP Session-Reflector (RFC 8762, RFC 8972) on port 862: each \
            test packet comes back with the time it arrived (from the kernel) and the time it left, the TTL and \
            DSCP it arrived with, and its TLVs filled in (a Class of Service TLV's DSCP request is honoured only with \
            --reflect-tos), so that `udpecho ping --stamp` (or a router's STAMP or \
            TWAMP-Light sender) gets forward and backward delay apart. Test packets from port 862 (another \
            reflector) and replies of its own coming back are dropped as loops.

            With --protocol twamp it is a TWAMP server (RFC 5357): TWAMP-Control on TCP 862 (SwiftNIO; no thread per \
            connection) negotiates test sessions in unauthenticated, authenticated or encrypted mode (keys from \
            --key-file, perfSONAR's pfstore format), and every session's test packets are reflected on one UDP port \
            (--test-port, 862), answered only for the senders of running sessions. By default a session's sender must \
            be the control client itself (--allow-third-party lifts that); connections, sessions and their duration \
            are capped (the --max-* options), stalled and misbehaving control connections closed, and all of it \
            counted in the summary and the metrics. perfSONAR's twping and routers' TWAMP clients measure it.

            With --protocol owamp it is an OWAMP server (RFC 4656) on TCP 861, as perfSONAR's owampd: each \
            one-way session it accepts gets a UDP socket (--test-ports) that either receives the client's test \
            packets, their records (kernel receive timestamps, TTL, lost ones marked) kept for Fetch-Session \
            (--max-packets each, for 5 minutes after Stop-Sessions), or sends this server's packets to the client on \
            the session's schedule (no gap below --min-interval). The same modes, keys and limits as TWAMP's apply. \
            perfSONAR's owping measures it both ways, as does `udpecho ping --owamp`.

            Examples:
              udpecho server
              udpecho server --protocol stamp --stamp-stateful
              udpecho server --protocol twamp --key-file /etc/udpecho/twamp.pfs
              udpecho server --protocol owamp --test-ports 18760-18960
              udpecho server --address 127.0.0.1:7000 --quiet --metrics 127.0.0.1:9107
              udpecho server --address :7 --rate-limit 100 --allow 192.0.2.0/24
              udpecho server --address 192.0.2.1:1337 --xdp eth0

            Exit codes: 0 stopped by a signal; 1 could not start (name not resolved, address in use, permission \
            denied); 64 usage error.
            """
    )

    @OptionGroup var endpoint: EndpointOptions<ListenRole>

    @OptionGroup(title: "TWAMP and OWAMP server") var twamp: TwampServerOptions

    @Option(
        parsing: .unconditional,
        help: ArgumentHelp(
            "Write deadline: how long a reply may wait for room in the send buffer before it is dropped (e.g. 500ms, 2s, 1m).",
            valueName: "duration"
        ),
        transform: parseDuration
    )
    var timeout: Duration = .seconds(15)

    @Option(
        parsing: .unconditional,
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
        parsing: .unconditional,
        help: ArgumentHelp(
            "Datagrams shown per second before their lines collapse into a count; 0 shows every one.",
            valueName: "n"
        )
    )
    var linesPerSecond = 50

    @Option(
        parsing: .unconditional,
        help: ArgumentHelp("Receive buffer of each socket, in bytes (SO_RCVBUF).", valueName: "bytes")
    )
    var receiveBuffer = 4 << 20

    @Option(
        parsing: .unconditional,
        help: ArgumentHelp("Send buffer of each socket, in bytes (SO_SNDBUF).", valueName: "bytes")
    )
    var sendBuffer = 4 << 20

    @Option(
        parsing: .unconditional,
        help: ArgumentHelp(
            "After each datagram, keep polling the socket this long (e.g. 50us, 1ms) before sleeping until the next: the thread is not woken for a datagram that comes meanwhile, which takes the wake-up out of the round trip, at the cost of a core kept busy while traffic lasts. (default: 0, never poll; at most 1s)",
            valueName: "duration"
        ),
        transform: parseDuration
    )
    var busyPoll: Duration = .zero

    @Flag(
        help:
            "Take every datagram alone. By default the kernel hands over a run of same-sized datagrams from one sender (a client's GSO write) as one buffer (UDP GRO) and the run is answered with one write that the kernel cuts into the same datagrams (UDP GSO); each datagram still counts, is guarded and is shown as one."
    )
    var noOffload = false

    @Flag(
        help:
            "Reply with the DSCP and ECN each datagram arrived with (CE goes back as ECT(0)), and tell a udpecho ping the TTL and marking its probe arrived with; with --protocol stamp, reply with the DSCP a test packet's Class of Service TLV asks for (DSCP1). Off by default, because a forged source could choose the marking of replies sent to a victim (EF, CS7): replies carry the system's default marking, so a client cannot see how the path treats its marking on the way back, nor which way changed it, and a STAMP reflector says in the TLV (RP=1) that the request was not honoured. Echo datagrams are then taken one by one (no offload)."
    )
    var reflectTos = false

    @Option(
        parsing: .unconditional,
        help: ArgumentHelp(
            "Drop datagrams from source ports below N: well-known services, a spoofed loop or a reflection; 0 turns it off.",
            valueName: "n"
        )
    )
    var minSourcePort = 1024

    @Option(
        help: ArgumentHelp(
            "More source ports to drop, comma-separated; an empty list drops none. 1337 is where other udpecho servers listen (an echo loop), 2049 is NFS.",
            valueName: "ports"
        )
    )
    var denySourcePorts = "1337,2049"

    @Flag(
        help:
            "Also answer datagrams whose source port is the server's own port (by default they are dropped: another echo service on the same port, such as another udpecho server, would answer the reply for ever)."
    )
    var allowOwnPort = false

    @Option(
        parsing: .unconditional,
        help: ArgumentHelp(
            "Echo the same datagram from the same address and port at most N times in a row (each within 1s of the one before); the next copies are an echo loop with another echo service, and are dropped. 0 turns it off.",
            valueName: "n"
        )
    )
    var loopLimit = 4

    @Flag(
        help:
            "Also answer multicast, broadcast and unspecified sources, the server's own endpoint, and loopback sources arriving from outside."
    )
    var noAddressChecks = false

    @Option(
        help: ArgumentHelp("Answer only sources in this prefix (repeatable), e.g. 192.0.2.0/24.", valueName: "cidr")
    )
    var allow: [String] = []

    @Option(help: ArgumentHelp("Never answer sources in this prefix (repeatable).", valueName: "cidr"))
    var deny: [String] = []

    @Option(
        parsing: .unconditional,
        help: ArgumentHelp("Drop (never truncate) datagrams larger than this.", valueName: "bytes")
    )
    var maxSize: Int?

    @Option(
        parsing: .unconditional,
        help: ArgumentHelp("Replies per second per source prefix (token bucket); 0 turns it off.", valueName: "pps")
    )
    var rateLimit: Double = 10_000

    @Option(
        parsing: .unconditional,
        help: ArgumentHelp("Burst per source prefix. (default: twice --rate-limit, at least 1)", valueName: "n")
    )
    var rateBurst: Double?

    @Option(parsing: .unconditional, help: ArgumentHelp("Prefix length that makes one IPv4 source.", valueName: "bits"))
    var ratePrefix4 = 32

    @Option(parsing: .unconditional, help: ArgumentHelp("Prefix length that makes one IPv6 source.", valueName: "bits"))
    var ratePrefix6 = 64

    @Option(
        parsing: .unconditional,
        help: ArgumentHelp(
            "Sources remembered by the rate limiter, per thread (its memory, about 40 bytes a source, is taken at start; 4 to 1048576).",
            valueName: "n"
        )
    )
    var rateTable = 16384

    @Option(
        parsing: .unconditional,
        help: ArgumentHelp(
            "Replies per second over all sources, shared out over the threads (each with a burst of at least 1); 0 for no global budget. Loopback sources are outside it unless --limit-loopback.",
            valueName: "pps"
        )
    )
    var globalRate: Double = 1_000_000

    @Flag(
        help:
            "Rate-limit loopback sources and count them against --global-rate too (by default they are not: they cannot be forged from outside, and local tests must not be throttled)."
    )
    var limitLoopback = false

    @Option(
        help: ArgumentHelp(
            "echo: write every datagram back; stamp: answer as a STAMP Session-Reflector (RFC 8762, RFC 8972; TWAMP-Light senders too); twamp: a TWAMP server with its control protocol (RFC 5357); owamp: an OWAMP server (RFC 4656, one-way sessions both ways); stamp and twamp on port 862, owamp on 861, unless --address says otherwise.",
            valueName: "protocol"
        )
    )
    var `protocol`: ServerProtocol = .echo

    @Option(
        help: ArgumentHelp(
            "STAMP authenticated mode (HMAC-SHA-256): the shared key is this file's contents (without a trailing newline). Test packets whose HMAC does not verify are dropped and counted as auth.",
            valueName: "file"
        )
    )
    var stampKeyFile: String?

    @Flag(
        help:
            "STAMP: keep a sequence counter per session (sender address, port and SSID), so that senders can tell forward from backward loss; by default the sender's number is copied (stateless)."
    )
    var stampStateful = false

    @Option(
        help: ArgumentHelp(
            "STAMP: the reflector's timestamp format, ntp or ptp (PTPv2 truncated).",
            valueName: "format"
        )
    )
    var stampTimestamp: StampTimestampFormat = .ntp

    @Option(
        help: ArgumentHelp(
            "Also answer in XDP on this interface: echo datagrams and unauthenticated STAMP test packets are answered in the driver, after the same guards (run in the kernel); fragments, options, TLVs and anything else come up to the sockets. Needs CAP_BPF and CAP_NET_ADMIN.",
            valueName: "interface"
        )
    )
    var xdp: String?

    @Option(
        help: ArgumentHelp(
            "How --xdp attaches: auto (native where the driver has it, else generic), native or generic.",
            valueName: "mode"
        )
    )
    var xdpMode: XDPAttachMode = .auto

    @Option(
        help: ArgumentHelp(
            "Least level shown: trace, debug, info (the per-packet lines), notice (the count of lines not shown), warning (drops and errors), error, critical.",
            valueName: "level"
        )
    )
    var logLevel: Logger.Level = .info

    @Option(
        help: ArgumentHelp(
            "text: the article's lines; json: one JSON object per line, for log collectors.",
            valueName: "format"
        )
    )
    var logFormat: LogFormat = .text

    @Option(
        help: ArgumentHelp(
            "Serve Prometheus metrics at http://HOST:PORT/metrics (off unless given).",
            valueName: "host:port"
        ),
        transform: parseAddress
    )
    var metrics: HostAndPort?

    func validate() throws {
        if self.xdp != nil && (self.protocol == .twamp || self.protocol == .owamp) {
            throw ValidationError("--xdp answers echo and STAMP; TWAMP's and OWAMP's test packets need their sessions")
        }
        if self.xdp == nil && self.xdpMode != .auto { throw ValidationError("--xdp-mode needs --xdp INTERFACE") }
        _ = try self.guards()
        _ = try self.listenAddress()
        _ = try self.stampConfiguration()
        if self.protocol != .twamp && self.protocol != .owamp && self.twamp.isGiven {
            throw ValidationError(
                "--modes, --key-file, --test-port(s), the --max-* limits of TWAMP and OWAMP, --min-interval and "
                    + "--allow-third-party need --protocol twamp or --protocol owamp"
            )
        }
        if self.protocol == .twamp && self.twamp.isOwampOnlyGiven {
            throw ValidationError(
                "--test-ports, --max-packets and --min-interval are OWAMP's: they need --protocol owamp"
            )
        }
        if self.protocol == .owamp && self.twamp.isTwampOnlyGiven {
            throw ValidationError(
                "--test-port is TWAMP's (its reflector's one port); an OWAMP server takes a port per session: give "
                    + "--test-ports LOW-HIGH"
            )
        }
        func check(_ value: Int, _ range: ClosedRange<Int>, _ flag: String, _ why: String = "") throws {
            guard range.contains(value) else {
                throw ValidationError(
                    "\(flag) \(value) is out of range; give \(range.lowerBound) to \(range.upperBound)\(why)"
                )
            }
        }
        typealias Limits = EchoServer.Configuration
        if let threads { try check(threads, Limits.threadRange, "--threads") }
        try check(self.linesPerSecond, 0...1_000_000, "--lines-per-second", " (0 shows every datagram)")
        if self.busyPoll < .zero || self.busyPoll > .seconds(1) {
            throw ValidationError(
                "--busy-poll must be from 0 to 1s: it keeps a core busy that long after each datagram"
            )
        }
        try check(self.receiveBuffer, Limits.bufferSizeRange, "--receive-buffer")
        try check(self.sendBuffer, Limits.bufferSizeRange, "--send-buffer")
        try check(self.rateTable, Limits.tableSizeRange, "--rate-table", ": its memory is taken at start, per thread")
        try check(self.loopLimit, 0...Limits.loopLimitRange.upperBound, "--loop-limit", " (0 turns it off)")
        if let maxSize { try check(maxSize, 0...65535, "--max-size") }
    }

    private func guards() throws -> GuardConfiguration {
        var ports = Set<Int>()
        for text in self.denySourcePorts.split(separator: ",") {
            guard let port = Int(text.filter { $0 != " " }), (1...65535).contains(port) else {
                throw ValidationError("--deny-source-ports: '\(text)' is not a port from 1 to 65535")
            }
            ports.insert(port)
        }
        guard (0...65535).contains(self.minSourcePort) else {
            throw ValidationError("--min-source-port \(self.minSourcePort) is out of range; give 0 to 65535")
        }
        guard (0...32).contains(self.ratePrefix4), (0...128).contains(self.ratePrefix6) else {
            throw ValidationError("--rate-prefix4 goes from 0 to 32 and --rate-prefix6 from 0 to 128")
        }
        for (flag, rate) in [("--rate-limit", self.rateLimit), ("--global-rate", self.globalRate)] {
            guard rate >= 0, rate.isFinite else {
                throw ValidationError("\(flag) \(rate) is out of range: a rate cannot be negative (0 turns it off)")
            }
        }
        if let burst = self.rateBurst, !(burst >= 1 && burst.isFinite) {
            throw ValidationError("--rate-burst \(burst) is out of range: a burst is at least 1")
        }
        func prefixes(_ texts: [String], _ flag: String) throws -> [IPPrefix] {
            try texts.map { text in
                do { return try IPPrefix(parsing: text) } catch { throw ValidationError("\(flag): \(error)") }
            }
        }
        return GuardConfiguration(
            minimumSourcePort: self.minSourcePort,
            deniedSourcePorts: ports,
            denyOwnPort: !self.allowOwnPort,
            addressChecks: !self.noAddressChecks,
            allow: try prefixes(self.allow, "--allow"),
            deny: try prefixes(self.deny, "--deny"),
            maximumSize: self.maxSize,
            loopLimit: self.loopLimit == 0 ? nil : self.loopLimit,
            rateLimit: self.rateLimit == 0
                ? nil
                : RateLimit(
                    perSecond: self.rateLimit,
                    burst: self.rateBurst ?? max(1, 2 * self.rateLimit),
                    ipv4PrefixLength: self.ratePrefix4,
                    ipv6PrefixLength: self.ratePrefix6,
                    tableSize: self.rateTable
                ),
            globalRate: self.globalRate == 0 ? nil : self.globalRate,
            limitLoopback: self.limitLoopback
        )
    }

    private func stampConfiguration() throws -> StampReflectorConfiguration? {
        guard self.protocol == .stamp else {
            if self.stampKeyFile != nil || self.stampStateful {
                throw ValidationError("--stamp-key-file and --stamp-stateful need --protocol stamp")
            }
            return nil
        }
        var key: StampKey?
        if let path = self.stampKeyFile {
            do { key = try StampKey(contentsOfFile: path) } catch { throw ValidationError("\(error)") }
        }
        return StampReflectorConfiguration(
            key: key,
            stateful: self.stampStateful,
            timestampFormat: self.stampTimestamp,
            honourClassOfService: self.reflectTos
        )
    }

    private static func describe(_ stamp: StampReflectorConfiguration) -> String {
        let parts = [
            stamp.key == nil ? "unauthenticated" : "authenticated", stamp.stateful ? "stateful" : "stateless",
            "\(stamp.timestampFormat.rawValue.uppercased()) timestamps",
        ]
        return (parts + (stamp.honourClassOfService ? ["DSCP as the Class of Service TLV asks"] : []))
            .joined(separator: ", ")
    }

    func listenAddress() throws -> HostAndPort {
        let port =
            switch self.protocol {
            case .echo: 1337
            case .owamp: 861
            case .stamp, .twamp: StampReflectorConfiguration.defaultPort
            }
        return try self.endpoint.endpoint() ?? HostAndPort(host: nil, port: port)
    }

    func run() async throws {
        // A closed standard output (`udpecho server | head -n 1`) must not stop serving: writes then fail with EPIPE
        // and are counted, instead of a signal killing the process.
        signal(SIGPIPE, SIG_IGN)
        let (format, level) = (self.logFormat, self.logLevel)
        LoggingSystem.bootstrap { label in
            if format == .json { return JSONLogHandler(logLevel: level, label: label) }
            var handler = StreamLogHandler.standardError(label: label)
            handler.logLevel = level
            return handler
        }
        let render: @Sendable (ServerEvent) -> String? = { event in
            let record = event.record
            guard record.level >= level else { return nil }
            return format == .json ? record.json() : record.text
        }
        let logger = Logger(label: "udpecho")
        if self.protocol == .twamp {
            try await self.runTwamp(format: format, logger: logger)
            return
        }
        if self.protocol == .owamp {
            try await self.runOwamp(format: format, logger: logger)
            return
        }
        // Lines are formatted on the server's event thread and written by a printer thread: never on a serving
        // thread.
        let lines = LineQueue(to: .out)
        var configuration = EchoServer.Configuration(
            address: try self.listenAddress(),
            writeTimeout: self.timeout,
            threads: self.threads ?? EchoServer.defaultThreads,
            receiveBufferSize: self.receiveBuffer,
            sendBufferSize: self.sendBuffer,
            reporting: self.logLevel > .warning ? .none : (self.quiet || self.logLevel > .info ? .errors : .all),
            eventsPerSecond: self.linesPerSecond == 0 ? nil : self.linesPerSecond,
            guards: try self.guards(),
            stamp: try self.stampConfiguration(),
            offload: !self.noOffload,
            busyPoll: self.busyPoll,
            reflectTOS: self.reflectTos
        )
        configuration.xdp = self.xdp.map { XDPConfiguration(interface: $0, mode: self.xdpMode) }
        // Started by systemd with its sockets (ListenDatagram=): serve those instead of binding.
        let activated = SocketActivation.takeDescriptors()
        let server: EchoServer
        do {
            // Each serving thread's socket and event channel, SwiftNIO's loops, and the metrics endpoint's socket and
            // connections: checked first, since SwiftNIO stops the process when it cannot open its own.
            let threads = activated.isEmpty ? configuration.threads : activated.count
            try DescriptorLimit.ensure(DescriptorLimit.runtime + 4 * threads + (self.metrics == nil ? 0 : 80))
            if activated.isEmpty {
                server = try EchoServer(configuration: configuration, logger: logger) { event in
                    if let line = render(event) { lines.enqueue(line) }
                }
            } else {
                server = try EchoServer(configuration: configuration, adopting: activated, logger: logger) { event in
                    if let line = render(event) { lines.enqueue(line) }
                }
            }
        } catch {
            Stream.err.line("udpecho: error: \(error)")
            throw ExitCode.failure
        }
        var services: [ServiceGroupConfiguration.ServiceConfiguration] = [.init(service: server)]
        // Everything is bound before the server says it runs: a metrics address that cannot be bound stops it first.
        let metrics = try await self.metricsService { address in
            let exporter = try await PrometheusExporter(address: address, server: server)
            return (exporter, exporter.url)
        }
        if let metrics { services.append(.init(service: metrics.service)) }
        let metricsURL = metrics?.url
        if !activated.isEmpty && self.endpoint.isGiven {
            Stream.err.line(
                "udpecho: note: serving the sockets the service manager passed (LISTEN_FDS); --address, --host and "
                    + "--port are not used"
            )
        }
        // Each address once: --threads N serves one address with N sockets (SO_REUSEPORT), said as a count.
        var distinct: [String] = []
        for address in server.localAddresses.map(\.hostPortDescription) where !distinct.contains(address) {
            distinct.append(address)
        }
        let addresses = distinct.joined(separator: ", ")
        let sockets = server.localAddresses.count
        let sharing = sockets > distinct.count ? " (\(sockets) threads)" : ""
        let origin =
            activated.isEmpty ? "" : " (socket activation: \(activated.count) socket\(activated.count == 1 ? "" : "s"))"
        let role = configuration.stamp.map { "a STAMP reflector (\(Self.describe($0)))" } ?? "a server"
        let fields =
            [("address", addresses)] + (sharing.isEmpty ? [] : [("threads", "\(sockets)")])
            + (activated.isEmpty ? [] : [("socket-activation", "\(activated.count)")])
        var ready = [self.line(format, "running", "running as \(role) on \(addresses)\(sharing)\(origin)", fields)]
        if let metricsURL {
            ready.append(self.line(format, "metrics", "metrics on \(metricsURL)", [("url", metricsURL)]))
        }
        if let xdp = configuration.xdp, let mode = server.xdpMode {
            let what = configuration.stamp == nil ? "echoes" : "STAMP test packets"
            let how = mode == .native ? "in the driver" : "generic XDP, after the driver: slower than native"
            ready.append(
                self.line(
                    format,
                    "xdp",
                    "xdp: answering \(what) on \(xdp.interface) (\(mode): \(how)); the rest goes to the sockets",
                    [("interface", xdp.interface), ("mode", "\(mode)")]
                )
            )
        }
        // Said once the group traps SIGINT and SIGTERM (it does before it starts its services): a signal sent as soon
        // as a supervisor reads these lines stops the server cleanly, with its summary, instead of killing it.
        services.append(.init(service: ReadyLines(lines: ready)))

        let group = ServiceGroup(
            configuration: .init(services: services, gracefulShutdownSignals: [.sigterm, .sigint], logger: logger)
        )
        // A server that stopped on its own (it could not start a thread it needs) still says what it served.
        var failure: EchoError?
        do { try await group.run() } catch let error as EchoError { failure = error }
        // Stopping never waits long on standard output: a pipe nobody reads gets a bounded wait, and then the last
        // lines go to standard error.
        lines.finish(within: .seconds(1))
        let statistics = server.statistics
        let lostLines = lines.lostLines + statistics.eventsNotDelivered
        let ending =
            (failure == nil ? [self.line(format, "cancelled", "cancelled", [])] : [])
            + [self.line(format, "summary", statistics.summaryLine(lostLines: lostLines), statistics.fields)]
        if !ending.allSatisfy({ Stream.out.line($0, within: .seconds(1)) }) {
            Stream.err.line("udpecho: standard output is not being read; the last lines follow here")
            for line in ending { _ = Stream.err.line(line, within: .seconds(1)) }
        }
        if let failure {
            Stream.err.line("udpecho: error: \(failure)")
            throw ExitCode.failure
        }
    }
}

extension ServerCommand {
    /// A line of the server's own: as text, or as a JSON object with `event` and `fields`.
    func line(_ format: LogFormat, _ event: String, _ text: String, _ fields: [(String, String)]) -> String {
        format == .text ? text : EventRecord(level: .notice, name: event, fields: fields).json()
    }

    func say(_ format: LogFormat, _ event: String, _ text: String, _ fields: [(String, String)]) {
        Stream.out.line(self.line(format, event, text, fields))
    }
}

/// Prints the server's ready lines from inside its service group, then waits for the group's shutdown.
struct ReadyLines: Service {
    let lines: [String]

    func run() async throws {
        for line in self.lines { Stream.out.line(line) }
        try? await gracefulShutdown()
    }
}

/// What `udpecho server` speaks.
enum ServerProtocol: String, ExpressibleByArgument, CaseIterable {
    case echo, stamp, twamp, owamp
}

extension StampTimestampFormat: ExpressibleByArgument {}
extension XDPAttachMode: ExpressibleByArgument {}
