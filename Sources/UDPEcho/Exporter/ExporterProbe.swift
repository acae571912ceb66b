public import NIOCore
import NIOPosix
import Synchronization

/// What one probe of a target measured: its outcome and the results of its protocol, as the exporter answers them
/// (``ProbeMetrics``).
public struct ProbeReport: Sendable {
    /// The module that ran.
    public var module: ProbeModule
    /// Whether the probe succeeded: something came back (each direction, for OWAMP) and the loss is within the
    /// module's `fail_if_loss_above`.
    public var success = false
    /// From the scrape's start to the probe's end.
    public var duration: Duration = .zero
    /// The address probed, once resolved.
    public var address: SocketAddress?
    /// Why it failed, when it did: a sentence for the log and for the answer's comment line.
    public var failure: String?
    /// Things worth saying that are not a failure (the count cut to fit the scrape's timeout).
    public var notes: [String] = []
    /// The packets the probe planned to send: the module's count, or fewer to fit the scrape's timeout.
    public var plannedCount = 0
    /// Echo, STAMP and TWAMP: the run's result.
    public var roundTrip: EchoBenchmark.Result?
    /// OWAMP: each direction's result.
    public var oneWay: OwampResults?

    /// A report of a probe of `module` that has not run.
    public init(module: ProbeModule) { self.module = module }
}

/// Why a scrape's target was refused before anything was sent.
public enum ProbeRefusal: Error, Equatable, CustomStringConvertible {
    /// The text is not `HOST:PORT` (or `HOST` where the protocol has a port).
    case badTarget(String)
    /// The target is not on the allow list.
    case notAllowed(String)

    public var description: String {
        switch self {
        case .badTarget(let reason): reason
        case .notAllowed(let reason): reason
        }
    }
}

/// Runs one probe of a module against a target, within a deadline: what `/probe` does for a scrape.
public enum ExporterProbe {
    /// The longest target text taken.
    public static let maximumTargetLength = 300

    /// The target's host and port as a URL gives them, checked against the allow list (nil: not checked, for the
    /// configuration's own targets); names are only resolved when they are listed (an unlisted name is refused
    /// without a DNS query).
    public static func parseTarget(
        _ text: String,
        protocol probeProtocol: ProbeProtocol,
        allow: TargetAllowList?
    ) throws(ProbeRefusal) -> HostAndPort {
        guard !text.isEmpty else { throw .badTarget("target= is empty; give HOST:PORT") }
        guard text.utf8.count <= Self.maximumTargetLength else {
            throw .badTarget(
                "the target is \(text.utf8.count) bytes long; at most \(Self.maximumTargetLength) are taken"
            )
        }
        guard text.unicodeScalars.allSatisfy({ $0.value > 0x20 && $0.value < 0x7F }) else {
            throw .badTarget("the target '\(text.excerpt())' has spaces, control or non-ASCII characters")
        }
        let endpoint: HostAndPort
        if let parsed = try? HostAndPort(parsing: text) {
            endpoint = parsed
        } else if let port = probeProtocol.defaultPort {
            var host = Substring(text)
            if host.hasPrefix("[") && host.hasSuffix("]") { host = host.dropFirst().dropLast() }
            guard !host.contains("[") && !host.contains("]") && !host.isEmpty else {
                throw .badTarget("'\(text.excerpt())' is not HOST, HOST:PORT or [IPV6]:PORT")
            }
            endpoint = HostAndPort(host: String(host), port: port)
        } else {
            do {
                _ = try HostAndPort(parsing: text)
            } catch {
                throw .badTarget("\(error)")
            }
            throw .badTarget("'\(text.excerpt())' is not HOST:PORT")
        }
        guard let host = endpoint.host else { throw .badTarget("'\(text.excerpt())' has no host") }
        guard (1...65535).contains(endpoint.port) else { throw .badTarget("port \(endpoint.port) cannot be probed") }
        if let literal = try? SocketAddress(ipAddress: host, port: endpoint.port) {
            guard let allow else { return endpoint }
            guard allow.allows(literal) else {
                throw .notAllowed("\(host) is not inside a prefix of the allow list")
            }
        } else {
            guard ExporterConfiguration.isHostName(host) else {
                throw .badTarget("'\(host.excerpt())' is neither an address nor a host name")
            }
            guard let allow else { return endpoint }
            guard allow.allows(name: host) else { throw .notAllowed("the name \(host) is not on the allow list") }
        }
        return endpoint
    }

    /// Resolves `endpoint` (a listed name or an address), preferring the module's IP version.
    static func resolve(_ endpoint: HostAndPort, preferIPv6: Bool) async throws -> SocketAddress {
        let addresses = try await NIOThreadPool.singleton.runIfActive { try NameResolver.resolve(endpoint) }
        let preferred = addresses.first { address in
            if case .v6 = address { preferIPv6 } else { !preferIPv6 }
        }
        return preferred ?? addresses[0]
    }

    /// The packets of `module` that fit in `available`: all of them when they do; fewer (at least one), or none
    /// when not even one packet and its timeout fit.
    public static func countThatFits(_ module: ProbeModule, within available: Duration) -> Int {
        let overhead = module.expectedDuration - module.interval * (module.count - 1)
        guard available >= overhead else { return 0 }
        let room = available - overhead
        let more = Int(room.nanoseconds / max(module.interval.nanoseconds, 1))
        return min(module.count, 1 + more)
    }

    /// Runs `module` against `endpoint` (already allowed), finishing by `deadline`; `onPacket` hears of each packet's
    /// round trip as it comes (nil: lost; OWAMP: each one-way delay, to the server's first, at the end).
    public static func run(
        _ module: ProbeModule,
        endpoint: HostAndPort,
        started: ContinuousClock.Instant = .now,
        deadline: ContinuousClock.Instant,
        onPacket: (@Sendable (Int64?) -> Void)? = nil
    ) async -> ProbeReport {
        var report = ProbeReport(module: module)
        let address: SocketAddress
        do {
            address = try await Self.resolve(endpoint, preferIPv6: module.preferIPv6)
        } catch {
            report.failure = "\(error)"
            report.duration = .now - started
            return report
        }
        report.address = address
        var module = module
        let count = Self.countThatFits(module, within: deadline - ContinuousClock.now)
        guard count > 0 else {
            report.failure =
                "the scrape's timeout leaves \((deadline - ContinuousClock.now).shortDescription), less than one packet of module takes (\((module.expectedDuration - module.interval * (module.count - 1)).shortDescription)); raise scrape_timeout or lower the module's timeout"
            report.duration = .now - started
            return report
        }
        if count < module.count {
            report.notes.append(
                "\(count) of the module's \(module.count) packets sent: the rest would not fit in the scrape's timeout"
            )
            module.count = count
        }
        report.plannedCount = count
        let probe = module
        do {
            let outcome = try await Self.within(deadline) { () async throws -> Outcome in
                try await Self.measure(probe, address: address, onPacket: onPacket)
            }
            switch outcome {
            case .roundTrip(let result): report.roundTrip = result
            case .oneWay(let result): report.oneWay = result
            }
            report.success = Self.succeeded(report, module: probe)
            if !report.success && report.failure == nil { report.failure = Self.failureReason(report, module: probe) }
        } catch {
            report.failure = "\(error)"
        }
        report.duration = .now - started
        return report
    }

    private enum Outcome: Sendable {
        case roundTrip(EchoBenchmark.Result)
        case oneWay(OwampResults)
    }

    /// The echo or STAMP run of `module` against `address`.
    static func pingConfiguration(_ module: ProbeModule, address: SocketAddress) -> EchoPinger.Configuration {
        var stamp: StampSenderConfiguration?
        if module.probeProtocol == .stamp {
            stamp = StampSenderConfiguration()
            // Ask the reflector to send back the DSCP sent, and to say what arrived (a Class of Service TLV).
            stamp?.classOfService = module.marking.trafficClass?.dscp
        }
        let size = module.size ?? stamp.map { $0.minimumSize(ipv6: address.protocol == .inet6) } ?? 64
        return EchoPinger.Configuration(
            target: address,
            count: module.count,
            interval: module.interval,
            size: size,
            timeout: module.timeout,
            stamp: stamp,
            marking: module.marking,
            flows: module.flows
        )
    }

    private static func measure(
        _ module: ProbeModule,
        address: SocketAddress,
        onPacket: (@Sendable (Int64?) -> Void)?
    ) async throws -> Outcome {
        let onEvent: @Sendable (ProbeEvent) -> Void = { event in
            guard let onPacket else { return }
            switch event {
            case .reply(_, _, let roundTrip, _, _, _): onPacket(roundTrip)
            case .stampReply(let reply): onPacket(reply.roundTrip)
            case .lost, .refused: onPacket(nil)
            default: break
            }
        }
        switch module.probeProtocol {
        case .echo, .stamp:
            let configuration = Self.pingConfiguration(module, address: address)
            return .roundTrip(try await EchoPinger.run(configuration, onEvent: onEvent))
        case .twamp:
            var configuration = EchoPinger.Configuration(
                target: address,
                count: module.count,
                interval: module.interval,
                timeout: module.timeout,
                marking: module.marking
            )
            configuration.size = 16
            let twamp = TwampClientConfiguration(
                server: address,
                mode: module.mode,
                keyID: module.keyID,
                secret: module.secret,
                controlTimeout: .seconds(5),
                dscp: module.marking.trafficClass?.dscp ?? 0
            )
            return .roundTrip(
                try await TwampPinger.run(configuration, twamp: twamp, size: module.size, onEvent: onEvent)
            )
        case .owamp:
            let configuration = OwampClientConfiguration(
                server: address,
                mode: module.mode,
                keyID: module.keyID,
                secret: module.secret,
                controlTimeout: .seconds(5),
                directions: module.directions,
                count: module.count,
                interval: module.interval,
                exponential: true,
                lossTimeout: module.timeout,
                dscp: module.marking.trafficClass?.dscp ?? 0,
                startDelay: .milliseconds(500)
            )
            let result = try await OwampPinger.run(configuration)
            if let onPacket {
                for direction in [result.toServer, result.fromServer].compactMap({ $0 }) {
                    for delay in direction.delays { onPacket(delay) }
                    for _ in 0..<direction.lost { onPacket(nil) }
                }
            }
            return .oneWay(result)
        }
    }

    /// Runs `work`, cancelling it at `deadline`, and returns by then whether or not it has ended: a probe thread
    /// that is slow to see the cancellation (a loaded machine) must not make the scrape's answer late. It ends on its
    /// own soon after, its result dropped.
    private static func within<T: Sendable>(
        _ deadline: ContinuousClock.Instant,
        _ work: @escaping @Sendable () async throws -> T
    ) async throws -> T {
        let outcome = Mutex<CheckedContinuation<T, any Error>?>(nil)
        let worker = Mutex<Task<Void, Never>?>(nil)
        return try await withTaskCancellationHandler {
            try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<T, any Error>) in
                outcome.withLock { $0 = continuation }
                let finish: @Sendable (Result<T, any Error>) -> Void = { result in
                    outcome.withLock { continuation in
                        continuation?.resume(with: result)
                        continuation = nil
                    }
                }
                let task = Task {
                    do { finish(.success(try await work())) } catch { finish(.failure(error)) }
                }
                worker.withLock { $0 = task }
                Task {
                    try? await Task.sleep(until: deadline, clock: .continuous)
                    task.cancel()
                    finish(.failure(ProbeTimeout()))
                }
            }
        } onCancel: {
            worker.withLock { $0?.cancel() }
        }
    }

    private struct ProbeTimeout: Error, CustomStringConvertible {
        var description: String { "the probe did not finish within the scrape's timeout" }
    }

    private static func lossRatio(_ report: ProbeReport) -> Double? {
        if let result = report.roundTrip {
            return result.counts.sent == 0 ? nil : result.counts.lossPercent / 100
        }
        if let result = report.oneWay {
            return [result.toServer, result.fromServer].compactMap { $0?.lossRatio }.max()
        }
        return nil
    }

    private static func succeeded(_ report: ProbeReport, module: ProbeModule) -> Bool {
        if let result = report.roundTrip, result.counts.received == 0 { return false }
        if let result = report.oneWay {
            let directions = [result.toServer, result.fromServer].compactMap { $0 }
            if directions.isEmpty || directions.contains(where: { $0.received == 0 }) { return false }
        }
        if let limit = module.failIfLossAbove, let loss = Self.lossRatio(report), loss > limit { return false }
        return report.roundTrip != nil || report.oneWay != nil
    }

    private static func failureReason(_ report: ProbeReport, module: ProbeModule) -> String {
        if let result = report.roundTrip, result.counts.received == 0 {
            return result.counts.refused > 0
                ? "no packet came back (\(result.counts.refused) refused: ICMP port unreachable, nothing listens there)"
                : "no packet came back"
        }
        if let limit = module.failIfLossAbove, let loss = Self.lossRatio(report), loss > limit {
            return
                "loss \(String(format3: loss * 100)) % is above fail_if_loss_above (\(String(format3: limit * 100)) %)"
        }
        return "no packet came back"
    }
}
