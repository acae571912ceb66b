/// How an ``OwampServer`` serves: where, in which modes, and within which limits (like owampd's).
public struct OwampServerConfiguration: Sendable {
    /// The TCP address of OWAMP-Control; port 861 by default (RFC 4656 §3).
    public var controlAddress: HostAndPort
    /// The UDP ports the test sessions' sockets take, the first free one; nil takes any free port.
    public var testPorts: ClosedRange<Int>?
    /// The modes offered. Authenticated and encrypted need ``keys``.
    public var modes: IPPMModes
    /// The shared secrets of the keyed modes.
    public var keys: IPPMKeyFile?
    /// Control connections at once, and at once from one address; past either, a new connection gets a Server
    /// Greeting that offers no mode and is closed.
    public var maximumConnections: Int
    public var maximumConnectionsPerSource: Int
    /// Test sessions one control connection may have, and at once in all (each a socket, and a thread while it runs).
    public var maximumSessionsPerConnection: Int
    public var maximumSessions: Int
    /// The most test packets a session may have (a receiver keeps a record of each until it is fetched).
    public var maximumPackets: Int
    /// The shortest gap (fixed, or the mean of an exponential slot) between the packets this server is asked to send.
    public var minimumInterval: Duration
    /// How long a session's schedule may last.
    public var maximumSessionDuration: Duration
    /// The longest loss timeout a request may give.
    public var maximumLossTimeout: Duration
    /// How far from now a requested start time may be, before or after.
    public var startTimeWindow: Duration
    /// The most padding a test packet may have.
    public var maximumPadding: Int
    /// How long a received session's records are kept for Fetch-Session after it stops.
    public var resultRetention: Duration
    /// Sessions whose sender or receiver is not the control client (or not this server). Off by default: OWAMP-Control
    /// would otherwise let anyone aim this host's test packets at a third party.
    public var allowThirdParty: Bool
    /// How long a control message may take to arrive whole once it has begun.
    public var messageTimeout: Duration
    /// How long a connection may stay silent with no session running before it is closed.
    public var idleTimeout: Duration
    /// The PBKDF2 count the greeting asks for.
    public var keyDerivationCount: UInt32

    /// A configuration; see each property. The defaults offer unauthenticated mode, or all three modes with keys.
    public init(
        controlAddress: HostAndPort = HostAndPort(host: nil, port: 861),
        testPorts: ClosedRange<Int>? = nil,
        modes: IPPMModes? = nil,
        keys: IPPMKeyFile? = nil,
        maximumConnections: Int = 64,
        maximumConnectionsPerSource: Int = 8,
        maximumSessionsPerConnection: Int = 16,
        maximumSessions: Int = 64,
        maximumPackets: Int = 10_000,
        minimumInterval: Duration = .milliseconds(1),
        maximumSessionDuration: Duration = .seconds(3600),
        maximumLossTimeout: Duration = .seconds(600),
        startTimeWindow: Duration = .seconds(3600),
        maximumPadding: Int = 65_000,
        resultRetention: Duration = .seconds(300),
        allowThirdParty: Bool = false,
        messageTimeout: Duration = .seconds(10),
        idleTimeout: Duration = .seconds(900),
        keyDerivationCount: UInt32 = 2048
    ) {
        self.controlAddress = controlAddress
        self.testPorts = testPorts
        self.modes = modes ?? (keys == nil ? .unauthenticated : [.unauthenticated, .authenticated, .encrypted])
        self.keys = keys
        self.maximumConnections = maximumConnections
        self.maximumConnectionsPerSource = maximumConnectionsPerSource
        self.maximumSessionsPerConnection = maximumSessionsPerConnection
        self.maximumSessions = maximumSessions
        self.maximumPackets = maximumPackets
        self.minimumInterval = minimumInterval
        self.maximumSessionDuration = maximumSessionDuration
        self.maximumLossTimeout = maximumLossTimeout
        self.startTimeWindow = startTimeWindow
        self.maximumPadding = maximumPadding
        self.resultRetention = resultRetention
        self.allowThirdParty = allowThirdParty
        self.messageTimeout = messageTimeout
        self.idleTimeout = idleTimeout
        self.keyDerivationCount = keyDerivationCount
    }

    /// The most schedule slots a request may have.
    static let maximumSlots = 1024
    /// The most skipped ranges a Stop-Sessions may name per session.
    static let maximumSkips = 4096

    /// Checks the settings together.
    func validate() throws(EchoError) {
        try ControlServerLimits.validate(
            name: "OWAMP",
            modes: self.modes,
            keys: self.keys,
            limits: [
                (self.maximumConnections, "maximum control connections"),
                (self.maximumConnectionsPerSource, "maximum control connections per source"),
                (self.maximumSessionsPerConnection, "maximum sessions per connection"),
                (self.maximumSessions, "maximum sessions"),
                (self.maximumPackets, "maximum packets per session"),
            ],
            keyDerivationCount: self.keyDerivationCount,
            maximumPadding: self.maximumPadding
        )
        if let ports = self.testPorts, ports.lowerBound < 1 || ports.upperBound > 65_535 {
            throw .invalidConfiguration("the test ports must be within 1...65535, not \(ports)")
        }
    }

    var limits: ControlServerLimits {
        ControlServerLimits(
            name: "OWAMP",
            maximumConnections: self.maximumConnections,
            maximumConnectionsPerSource: self.maximumConnectionsPerSource,
            messageTimeout: self.messageTimeout,
            idleTimeout: self.idleTimeout
        )
    }
}

/// What an ``OwampServer`` has done.
public typealias OwampServerStatistics = IPPMServerStatistics
