/// What a ``TwampServer`` or an ``OwampServer`` has done, for its metrics and its tests.
public struct IPPMServerStatistics: Sendable, Equatable {
    /// Control connections served, and refused for a limit (total or per source).
    public var connections = 0
    public var connectionsRefused = 0
    /// Set-Up-Responses refused: a mode not offered, or a key identity or token that did not verify (counted
    /// together: the client learns nothing of which).
    public var modeRefused = 0
    public var authenticationFailures = 0
    /// Sessions accepted, and refused (a policy or a limit).
    public var sessionsAccepted = 0
    public var sessionsRefused = 0
    /// Connections closed for a malformed or out-of-order message, a bad HMAC, or stalling.
    public var protocolErrors = 0
    public var stalled = 0
    /// Sessions running now (answered by the reflector, or sending and receiving).
    public var runningSessions = 0
    /// OWAMP's Fetch-Sessions answered with records, and refused (no finished session of that SID for the client).
    public var fetches = 0
    public var fetchesRefused = 0
}

/// What a ``TwampServer`` has done.
public typealias TwampServerStatistics = IPPMServerStatistics
