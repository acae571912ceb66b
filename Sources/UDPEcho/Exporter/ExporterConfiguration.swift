public import NIOCore

/// The protocol a probe module speaks.
public enum ProbeProtocol: String, Sendable, CaseIterable, CustomStringConvertible {
    /// Plain UDP echo (a udpecho server, RFC 862's echo, socat, ...): round trips.
    case echo
    /// STAMP test packets (RFC 8762) to a STAMP or TWAMP-Light reflector: round trips, the reflector's time,
    /// forward and backward delay, hops.
    case stamp
    /// A TWAMP session (RFC 5357) set up over TWAMP-Control: what STAMP measures.
    case twamp
    /// OWAMP sessions (RFC 4656): one-way delay and loss, each direction.
    case owamp

    /// The port a target written without one is probed at: STAMP's and TWAMP's 862, OWAMP's 861; echo needs one.
    public var defaultPort: Int? {
        switch self {
        case .echo: nil
        case .stamp, .twamp: 862
        case .owamp: 861
        }
    }

    public var description: String { self.rawValue }
}

/// A module of the exporter: what one probe of a target does (as a blackbox_exporter module), named in the
/// configuration and chosen by the scrape's `module` parameter.
public struct ProbeModule: Sendable, Equatable {
    /// The protocol.
    public var probeProtocol: ProbeProtocol = .echo
    /// Packets a probe sends (OWAMP: each way).
    public var count = 10
    /// Time between packets (OWAMP: the mean of a Poisson schedule).
    public var interval: Duration = .milliseconds(100)
    /// Bytes a packet carries; nil for the protocol's smallest (64 for echo).
    public var size: Int?
    /// How long a packet's reply (OWAMP: the packet) may take before it is lost.
    public var timeout: Duration = .seconds(1)
    /// How the packets leave: DSCP, ECN, TTL.
    public var marking = PathMarking()
    /// Source ports the packets are spread over (echo and STAMP).
    public var flows = 1
    /// TWAMP and OWAMP: the mode; nil for the most protected one the server offers that the key allows.
    public var mode: IPPMModes?
    /// TWAMP and OWAMP: the key identity and its secret, from the module's `key_file`.
    public var keyID: String?
    /// The secret of ``keyID``.
    public var secret: [UInt8]?
    /// OWAMP: the directions measured.
    public var directions: OwampDirections = .both
    /// The probe fails when more than this share of the packets is lost (0 to 1); nil: it fails only when nothing
    /// came back.
    public var failIfLossAbove: Double?
    /// Names resolve to an IPv6 address first (`ip6`) rather than IPv4 (`ip4`, the default).
    public var preferIPv6 = false

    /// A module with the defaults: 10 echo packets 100 ms apart, 1 s timeout.
    public init() {}

    /// The longest a probe of this module takes: its packets, the last one's timeout, and for the protocols with a
    /// control connection their set-up (about a second; OWAMP's start delay and its stop).
    public var expectedDuration: Duration {
        let packets = self.interval * (self.count - 1) + self.timeout
        switch self.probeProtocol {
        case .echo, .stamp: return packets
        case .twamp: return packets + .milliseconds(500)
        case .owamp: return packets + .seconds(2)
        }
    }
}

/// A target the exporter probes on its own, every interval (smokeping_prober's way), rather than when scraped.
public struct ContinuousTarget: Sendable, Equatable {
    /// The target, as a `/probe` URL names it.
    public var target: String
    /// The module's name.
    public var module: String
    /// How often it is probed.
    public var every: Duration
    /// The line of the configuration it is on (0: not from a file).
    var line = 0

    /// A target; see each property.
    public init(target: String, module: String, every: Duration) {
        self.target = target
        self.module = module
        self.every = every
    }

    public static func == (lhs: ContinuousTarget, rhs: ContinuousTarget) -> Bool {
        lhs.target == rhs.target && lhs.module == rhs.module && lhs.every == rhs.every
    }
}

/// Where probes may go: address prefixes and host names. Nothing is allowed that is not listed.
public struct TargetAllowList: Sendable, Equatable {
    /// Prefixes whose addresses may be probed when a target is written as an address.
    public var prefixes: [IPPrefix] = []
    /// Host names that may be probed (lower case), at whatever addresses they resolve to.
    public var names: Set<String> = []

    /// An empty list: nothing may be probed.
    public init() {}

    /// Whether `address` is inside one of the prefixes.
    public func allows(_ address: SocketAddress) -> Bool {
        guard let key = address.withSockAddr({ raw, _ in IPKey(raw) }) else { return false }
        return self.prefixes.contains { $0.contains(key) }
    }

    /// Whether `name` is listed.
    public func allows(name: String) -> Bool { self.names.contains(name.lowercased()) }
}

/// The exporter's limits: how much probing scrapes can ask of it.
public struct ExporterLimits: Sendable, Equatable {
    /// Probes running at once, all targets together; a scrape past it is refused (HTTP 503).
    public var concurrentProbes = 16
    /// Probes running at once against one target address.
    public var concurrentProbesPerTarget = 2
    /// Probes started a second on average, all targets together (a token bucket with as many in reserve).
    public var probesPerSecond = 20.0
    /// Packets sent a second by all running probes together: a module's rate (count over its duration) counts
    /// against it while its probe runs.
    public var packetsPerSecond = 10_000.0

    /// The defaults.
    public init() {}
}

/// What the exporter is configured with: its modules, the allow list, its limits and its continuous targets, read
/// from a YAML file (``parse(_:readKey:)``) that is refused whole when a line is wrong.
///
/// ```yaml
/// modules:
///   echo:
///     protocol: echo
///     count: 10
///     interval: 100ms
///   stamp_ef:
///     protocol: stamp
///     dscp: 46
/// allow:
///   - 192.0.2.0/24
///   - router1.example.net
/// ```
public struct ExporterConfiguration: Sendable, Equatable {
    /// The modules by name.
    public var modules: [String: ProbeModule] = [:]
    /// Where probes may go.
    public var allow = TargetAllowList()
    /// The limits.
    public var limits = ExporterLimits()
    /// Targets probed continuously.
    public var targets: [ContinuousTarget] = []

    /// An empty configuration.
    public init() {}

    /// The most a configuration file may hold.
    public static let maximumFileSize = 1 << 20
    /// The most packets a module's probe may send.
    public static let maximumCount = 10_000
    /// The most continuous targets.
    public static let maximumTargets = 1000

    /// A configuration that is wrong: the line, and what is wrong.
    public struct ParseError: Error, Equatable, CustomStringConvertible {
        /// The line, from 1; 0 for the file as a whole.
        public var line: Int
        /// What is wrong.
        public var reason: String
        /// `line N: reason`.
        public var description: String { self.line > 0 ? "line \(self.line): \(self.reason)" : self.reason }
    }

    /// Reads a configuration; `readKey` reads a module's `key_file` (a file an operator names: ``IPPMKeyFile``).
    public static func parse(
        _ bytes: [UInt8],
        readKey: (String) throws -> IPPMKeyFile = { try IPPMKeyFile(contentsOfFile: $0) }
    ) -> Result<ExporterConfiguration, ParseError> {
        let root: YAMLNode
        switch YAMLReader.read(bytes) {
        case .success(let node): root = node
        case .failure(let error): return .failure(ParseError(line: error.line, reason: error.reason))
        }
        do throws(ParseError) {
            return .success(try Self.configuration(root, readKey: readKey))
        } catch {
            return .failure(error)
        }
    }

    /// Reads the configuration file at `path` (a regular file of at most ``maximumFileSize`` bytes).
    public static func load(path: String) -> Result<ExporterConfiguration, ParseError> {
        let bytes: [UInt8]
        do {
            bytes = try OperatorFile.read(path, limit: Self.maximumFileSize)
        } catch {
            return .failure(ParseError(line: 0, reason: error.description))
        }
        return Self.parse(bytes)
    }

    private static func configuration(
        _ root: YAMLNode,
        readKey: (String) throws -> IPPMKeyFile
    ) throws(ParseError)
        -> ExporterConfiguration
    {
        var configuration = ExporterConfiguration()
        let entries = try Self.mapping(root, "the file", allowed: ["modules", "allow", "limits", "targets"])
        for entry in entries {
            switch entry.key {
            case "modules":
                for module in try Self.mapping(entry.value, "modules", allowed: nil) {
                    guard Self.isName(module.key) else {
                        throw ParseError(
                            line: module.line,
                            reason: "'\(module.key.excerpt())' is not a module name: letters, digits, '_' and '-'"
                        )
                    }
                    configuration.modules[module.key] = try Self.module(module, readKey: readKey)
                }
            case "allow":
                configuration.allow = try Self.allowList(entry.value)
            case "limits":
                configuration.limits = try Self.limits(entry.value)
            case "targets":
                guard case .list(let items, _) = entry.value else {
                    throw ParseError(
                        line: entry.value.line,
                        reason: "targets: expected a list, found \(entry.value.kind)"
                    )
                }
                guard items.count <= Self.maximumTargets else {
                    throw ParseError(line: entry.line, reason: "more than \(Self.maximumTargets) targets")
                }
                configuration.targets = try items.map { item throws(ParseError) in try Self.target(item) }
            default:
                break
            }
        }
        var seen = Set<String>()
        for target in configuration.targets {
            guard seen.insert(target.target + " " + target.module).inserted else {
                throw ParseError(
                    line: target.line,
                    reason: "the target \(target.target.excerpt()) with module '\(target.module)' is listed twice"
                )
            }
            guard let module = configuration.modules[target.module] else {
                throw ParseError(
                    line: target.line,
                    reason:
                        "the target \(target.target.excerpt()) names the module '\(target.module.excerpt())', which is not defined"
                )
            }
            do {
                _ = try ExporterProbe.parseTarget(target.target, protocol: module.probeProtocol, allow: nil)
            } catch {
                throw ParseError(line: target.line, reason: "the target \(target.target.excerpt()): \(error)")
            }
            if target.every < module.expectedDuration {
                throw ParseError(
                    line: target.line,
                    reason:
                        "the target \(target.target.excerpt()) is probed every \(target.every.shortDescription), less than its module '\(target.module)' takes (\(module.expectedDuration.shortDescription))"
                )
            }
        }
        return configuration
    }

    private static let moduleKeys: Set<String> = [
        "protocol", "count", "interval", "size", "timeout", "dscp", "ecn", "ttl", "flows", "mode", "key_file", "key_id",
        "direction", "fail_if_loss_above", "ip_protocol",
    ]

    private static func module(
        _ entry: YAMLEntry,
        readKey: (String) throws -> IPPMKeyFile
    ) throws(ParseError)
        -> ProbeModule
    {
        var module = ProbeModule()
        let fields = try Self.mapping(entry.value, "module \(entry.key)", allowed: Self.moduleKeys)
        var dscp: UInt8?
        var ecn = ECN.notECT
        var keyFile: (String, Int)?
        var keyID: String?
        for field in fields {
            let line = field.line
            switch field.key {
            case "protocol":
                let text = try Self.text(field)
                guard let value = ProbeProtocol(rawValue: text) else {
                    throw ParseError(
                        line: line,
                        reason:
                            "protocol '\(text.excerpt())' is not one of \(ProbeProtocol.allCases.map(\.rawValue).joined(separator: ", "))"
                    )
                }
                module.probeProtocol = value
            case "count": module.count = try Self.integer(field, 1...Self.maximumCount)
            case "interval":
                module.interval = try Self.duration(field, .milliseconds(1)...Duration.seconds(60))
            case "timeout": module.timeout = try Self.duration(field, .milliseconds(1)...Duration.seconds(60))
            case "size": module.size = try Self.integer(field, 16...DatagramLimits.ipv6MaximumPayload)
            case "dscp": dscp = UInt8(try Self.integer(field, 0...63))
            case "ecn":
                let text = try Self.text(field)
                guard let value = ECN(name: text) else {
                    throw ParseError(
                        line: line,
                        reason: "ecn '\(text.excerpt())' is not one of not-ect, ect0, ect1, ce"
                    )
                }
                ecn = value
            case "ttl": module.marking.ttl = try Self.integer(field, 1...255)
            case "flows": module.flows = try Self.integer(field, 1...EchoPinger.Configuration.maximumFlows)
            case "mode":
                switch try Self.text(field) {
                case "unauthenticated": module.mode = .unauthenticated
                case "authenticated": module.mode = .authenticated
                case "encrypted": module.mode = .encrypted
                case let other:
                    throw ParseError(
                        line: line,
                        reason: "mode '\(other.excerpt())' is not one of unauthenticated, authenticated, encrypted"
                    )
                }
            case "key_file": keyFile = (try Self.text(field), line)
            case "key_id": keyID = try Self.text(field)
            case "direction":
                switch try Self.text(field) {
                case "both": module.directions = .both
                case "to": module.directions = .toServer
                case "from": module.directions = .fromServer
                case let other:
                    throw ParseError(line: line, reason: "direction '\(other.excerpt())' is not one of both, to, from")
                }
            case "fail_if_loss_above":
                let text = try Self.text(field)
                guard let value = Double(text), value >= 0, value <= 1 else {
                    throw ParseError(
                        line: line,
                        reason: "fail_if_loss_above '\(text.excerpt())' is not a share from 0 to 1 (0.05 is 5 %)"
                    )
                }
                module.failIfLossAbove = value
            case "ip_protocol":
                switch try Self.text(field) {
                case "ip4": module.preferIPv6 = false
                case "ip6": module.preferIPv6 = true
                case let other:
                    throw ParseError(line: line, reason: "ip_protocol '\(other.excerpt())' is not ip4 or ip6")
                }
            default:
                break
            }
        }
        if dscp != nil || ecn != .notECT { module.marking.trafficClass = TrafficClass(dscp: dscp ?? 0, ecn: ecn) }
        let line = entry.line
        let name = entry.key
        let controlled = module.probeProtocol == .twamp || module.probeProtocol == .owamp
        if !controlled && (module.mode != nil || keyFile != nil || keyID != nil) {
            throw ParseError(line: line, reason: "module \(name): mode, key_file and key_id are for twamp and owamp")
        }
        if module.probeProtocol != .owamp && module.directions != .both {
            throw ParseError(line: line, reason: "module \(name): direction is OWAMP's")
        }
        if controlled && module.flows != 1 {
            throw ParseError(line: line, reason: "module \(name): flows need echo or stamp (a session is one flow)")
        }
        if module.probeProtocol == .owamp && module.size != nil {
            throw ParseError(
                line: line,
                reason: "module \(name): OWAMP's packets have their size from the mode; leave size out"
            )
        }
        if module.probeProtocol == .owamp && module.marking.isSet && module.marking.trafficClass?.ecn != .notECT
            && module.marking.trafficClass != nil
        {
            throw ParseError(line: line, reason: "module \(name): OWAMP sessions take a DSCP, not an ECN mark")
        }
        if module.probeProtocol == .owamp && module.marking.ttl != nil {
            throw ParseError(line: line, reason: "module \(name): OWAMP's packets leave with TTL 255; leave ttl out")
        }
        if !controlled {
            // Sizes and markings as the probe will check them (over IPv4: IPv6 takes 20 bytes more).
            let check = ExporterProbe.pingConfiguration(
                module,
                address: try! SocketAddress(ipAddress: "127.0.0.1", port: 9)
            )
            do {
                try check.validate()
                if let stamp = check.stamp { _ = try StampProbeWriter(stamp, size: check.size, ipv6: false) }
            } catch {
                throw ParseError(line: line, reason: "module \(name): \(error)")
            }
        }
        if let mode = module.mode, mode.usesKey, keyFile == nil {
            throw ParseError(line: line, reason: "module \(name): mode \(mode) needs key_file")
        }
        if keyID != nil && keyFile == nil {
            throw ParseError(line: line, reason: "module \(name): key_id needs key_file")
        }
        if let (path, keyLine) = keyFile {
            let file: IPPMKeyFile
            do {
                file = try readKey(path)
            } catch {
                throw ParseError(line: keyLine, reason: "key_file: \(error)")
            }
            if let keyID {
                guard let secret = file.secrets[keyID] else {
                    throw ParseError(line: keyLine, reason: "key_file \(path) has no key for the identity \(keyID)")
                }
                (module.keyID, module.secret) = (keyID, secret)
            } else {
                guard file.secrets.count == 1, let only = file.secrets.first else {
                    throw ParseError(
                        line: keyLine,
                        reason: "key_file \(path) has \(file.secrets.count) keys: say which with key_id"
                    )
                }
                (module.keyID, module.secret) = (only.key, only.value)
            }
        }
        return module
    }

    private static func allowList(_ node: YAMLNode) throws(ParseError) -> TargetAllowList {
        guard case .list(let items, _) = node else {
            throw ParseError(
                line: node.line,
                reason: "allow: expected a list of prefixes and names, found \(node.kind)"
            )
        }
        var list = TargetAllowList()
        for item in items {
            guard case .scalar(let text, _, let line) = item else {
                throw ParseError(line: item.line, reason: "allow: expected a prefix or a name, found \(item.kind)")
            }
            if text.first?.isNumber == true || text.contains(":") {
                do {
                    list.prefixes.append(try IPPrefix(parsing: text))
                } catch {
                    throw ParseError(line: line, reason: "allow: \(error)")
                }
            } else {
                guard Self.isHostName(text) else {
                    throw ParseError(
                        line: line,
                        reason: "allow: '\(text.excerpt())' is neither an address prefix nor a host name"
                    )
                }
                list.names.insert(text.lowercased())
            }
        }
        return list
    }

    private static func limits(_ node: YAMLNode) throws(ParseError) -> ExporterLimits {
        var limits = ExporterLimits()
        let keys: Set<String> = [
            "concurrent_probes", "concurrent_probes_per_target", "probes_per_second", "packets_per_second",
        ]
        for field in try Self.mapping(node, "limits", allowed: keys) {
            switch field.key {
            case "concurrent_probes": limits.concurrentProbes = try Self.integer(field, 1...1024)
            case "concurrent_probes_per_target": limits.concurrentProbesPerTarget = try Self.integer(field, 1...64)
            case "probes_per_second": limits.probesPerSecond = Double(try Self.integer(field, 1...10_000))
            case "packets_per_second": limits.packetsPerSecond = Double(try Self.integer(field, 1...10_000_000))
            default: break
            }
        }
        return limits
    }

    private static func target(_ node: YAMLNode) throws(ParseError) -> ContinuousTarget {
        let fields = try Self.mapping(node, "a target", allowed: ["target", "module", "every"])
        var target: String?
        var module: String?
        var every: Duration = .seconds(30)
        for field in fields {
            switch field.key {
            case "target": target = try Self.text(field)
            case "module": module = try Self.text(field)
            case "every": every = try Self.duration(field, .seconds(1)...Duration.seconds(3600))
            default: break
            }
        }
        guard let target else { throw ParseError(line: node.line, reason: "a target needs 'target: HOST:PORT'") }
        guard let module else { throw ParseError(line: node.line, reason: "a target needs 'module: NAME'") }
        var continuous = ContinuousTarget(target: target, module: module, every: every)
        continuous.line = node.line
        return continuous
    }

    // MARK: Values

    private static func mapping(
        _ node: YAMLNode,
        _ what: String,
        allowed: Set<String>?
    ) throws(ParseError)
        -> [YAMLEntry]
    {
        if case .null = node { return [] }
        guard case .mapping(let entries, _) = node else {
            throw ParseError(
                line: node.line,
                reason: "\(what): expected a mapping of 'key: value' lines, found \(node.kind)"
            )
        }
        if let allowed {
            for entry in entries where !allowed.contains(entry.key) {
                throw ParseError(
                    line: entry.line,
                    reason:
                        "\(what): unknown key '\(entry.key.excerpt())'; the keys are \(allowed.sorted().joined(separator: ", "))"
                )
            }
        }
        return entries
    }

    private static func text(_ entry: YAMLEntry) throws(ParseError) -> String {
        guard case .scalar(let text, _, _) = entry.value else {
            throw ParseError(line: entry.line, reason: "\(entry.key): expected a value, found \(entry.value.kind)")
        }
        return text
    }

    private static func integer(_ entry: YAMLEntry, _ range: ClosedRange<Int>) throws(ParseError) -> Int {
        let text = try Self.text(entry)
        guard let value = Int(text), range.contains(value) else {
            throw ParseError(
                line: entry.line,
                reason:
                    "\(entry.key) '\(text.excerpt())' is not a whole number from \(range.lowerBound) to \(range.upperBound)"
            )
        }
        return value
    }

    private static func duration(_ entry: YAMLEntry, _ range: ClosedRange<Duration>) throws(ParseError) -> Duration {
        let text = try Self.text(entry)
        let value: Duration
        do {
            value = try Duration(parsing: text)
        } catch {
            throw ParseError(line: entry.line, reason: "\(entry.key): \(error)")
        }
        guard range.contains(value) else {
            throw ParseError(
                line: entry.line,
                reason:
                    "\(entry.key) \(text.excerpt()) is out of range; give \(range.lowerBound.shortDescription) to \(range.upperBound.shortDescription)"
            )
        }
        return value
    }

    static func isName(_ text: String) -> Bool {
        !text.isEmpty && text.utf8.count <= 64
            && text.utf8.allSatisfy { $0 == UInt8(ascii: "_") || $0 == UInt8(ascii: "-") || Self.isAlphanumeric($0) }
    }

    static func isHostName(_ text: String) -> Bool {
        !text.isEmpty && text.utf8.count <= 253
            && text.utf8.allSatisfy { $0 == UInt8(ascii: ".") || $0 == UInt8(ascii: "-") || Self.isAlphanumeric($0) }
    }

    private static func isAlphanumeric(_ byte: UInt8) -> Bool {
        (UInt8(ascii: "a")...UInt8(ascii: "z")).contains(byte) || (UInt8(ascii: "A")...UInt8(ascii: "Z")).contains(byte)
            || (UInt8(ascii: "0")...UInt8(ascii: "9")).contains(byte)
    }
}
