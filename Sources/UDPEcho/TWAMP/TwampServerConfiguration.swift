/// How a ``TwampServer`` answers: where, in which modes, and within which limits (like twampd's).
public struct TwampServerConfiguration: Sendable {
    /// The TCP address of TWAMP-Control; port 862 by default (RFC 5357 §3.1).
    public var controlAddress: HostAndPort
    /// The UDP port of the Session-Reflector, for every session (the Accept-Session names it); 862 by default. Zero
    /// takes a free port.
    public var testPort: Int
    /// The modes offered. Authenticated and encrypted need ``keys``.
    public var modes: IPPMModes
    /// The shared secrets of the keyed modes.
    public var keys: IPPMKeyFile?
    /// Control connections at once, and at once from one address; past either, a new connection gets a Server
    /// Greeting that offers no mode (RFC 4656 §3.1's way to say no) and is closed.
    public var maximumConnections: Int
    public var maximumConnectionsPerSource: Int
    /// Test sessions one control connection may request, and test sessions at once in all.
    public var maximumSessionsPerConnection: Int
    public var maximumSessions: Int
    /// How long a session may run after Start-Sessions; the reflector stops answering it then.
    public var maximumSessionDuration: Duration
    /// The longest Timeout a request may give (how long after Stop-Sessions the reflector still answers); a longer one
    /// is cut to this.
    public var maximumSessionTimeout: Duration
    /// How far from now a requested start time may be, before or after; further is refused (a start time in the far
    /// past or future is a mistake, or clocks that disagree by more than any measurement can bear).
    public var startTimeWindow: Duration
    /// The most padding a test packet may ask for (the reflector's slot holds 65,535 bytes).
    public var maximumPadding: Int
    /// Answer sessions whose sender or receiver is not the control client's own address (or not this server's
    /// address). Off by default: TWAMP-Control would otherwise let anyone aim this host's replies at a third party.
    public var allowThirdParty: Bool
    /// How long a control message may take to arrive whole once it has begun (and the Set-Up-Response after the
    /// greeting); a connection that stalls longer is closed.
    public var messageTimeout: Duration
    /// How long a connection may stay silent with no session running before it is closed.
    public var idleTimeout: Duration
    /// The PBKDF2 count the greeting asks for (RFC 4656: a power of two, at least 1024).
    public var keyDerivationCount: UInt32
    /// Threads serving the test port.
    public var threads: Int

    /// A configuration; see each property. The defaults offer unauthenticated mode, or all three modes with keys.
    public init(
        controlAddress: HostAndPort = HostAndPort(host: nil, port: 862),
        testPort: Int = 862,
        modes: IPPMModes? = nil,
        keys: IPPMKeyFile? = nil,
        maximumConnections: Int = 64,
        maximumConnectionsPerSource: Int = 8,
        maximumSessionsPerConnection: Int = 1024,
        maximumSessions: Int = 16384,
        maximumSessionDuration: Duration = .seconds(3600),
        maximumSessionTimeout: Duration = .seconds(60),
        startTimeWindow: Duration = .seconds(3600),
        maximumPadding: Int = 65_000,
        allowThirdParty: Bool = false,
        messageTimeout: Duration = .seconds(10),
        idleTimeout: Duration = .seconds(900),
        keyDerivationCount: UInt32 = 2048,
        threads: Int = 1
    ) {
        self.controlAddress = controlAddress
        self.testPort = testPort
        self.modes = modes ?? (keys == nil ? .unauthenticated : [.unauthenticated, .authenticated, .encrypted])
        self.keys = keys
        self.maximumConnections = maximumConnections
        self.maximumConnectionsPerSource = maximumConnectionsPerSource
        self.maximumSessionsPerConnection = maximumSessionsPerConnection
        self.maximumSessions = maximumSessions
        self.maximumSessionDuration = maximumSessionDuration
        self.maximumSessionTimeout = maximumSessionTimeout
        self.startTimeWindow = startTimeWindow
        self.maximumPadding = maximumPadding
        self.allowThirdParty = allowThirdParty
        self.messageTimeout = messageTimeout
        self.idleTimeout = idleTimeout
        self.keyDerivationCount = keyDerivationCount
        self.threads = threads
    }

    /// Checks the settings together.
    func validate() throws(EchoError) {
        try ControlServerLimits.validate(
            name: "TWAMP",
            modes: self.modes,
            keys: self.keys,
            limits: [
                (self.maximumConnections, "maximum control connections"),
                (self.maximumConnectionsPerSource, "maximum control connections per source"),
                (self.maximumSessionsPerConnection, "maximum sessions per connection"),
                (self.maximumSessions, "maximum sessions"),
            ],
            keyDerivationCount: self.keyDerivationCount,
            maximumPadding: self.maximumPadding
        )
    }
}

extension TwampServerConfiguration {
    var limits: ControlServerLimits {
        ControlServerLimits(
            name: "TWAMP",
            maximumConnections: self.maximumConnections,
            maximumConnectionsPerSource: self.maximumConnectionsPerSource,
            messageTimeout: self.messageTimeout,
            idleTimeout: self.idleTimeout
        )
    }
}
