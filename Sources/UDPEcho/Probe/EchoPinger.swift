public import NIOCore

/// `ping(8)` over UDP echo: one probe per interval, each with a sequence number, a send timestamp and a pattern the
/// reply must match, and an event for every reply, loss, duplicate, reordering and corruption.
///
/// ```swift
/// let target = try SocketAddress(ipAddress: "127.0.0.1", port: 7)
/// let result = try await EchoPinger.run(.init(target: target, count: 5)) { event in print(event) }
/// print(result.counts.received, "of", result.counts.sent)
/// ```
public enum EchoPinger {
    /// How long before each probe is due the pinging thread stops sleeping and polls.
    static let spin: Duration = .microseconds(200)

    /// What to ping, how often and how long to wait.
    public struct Configuration: Sendable {
        /// The echo server.
        public var target: SocketAddress
        /// Probes to send; `nil` sends until the task is cancelled.
        public var count: Int?
        /// Time between probes.
        public var interval: Duration
        /// Payload bytes per probe, from 16 (sequence number and timestamp) to the datagram maximum.
        public var size: Int
        /// How long to wait for each reply before counting the probe as lost.
        public var timeout: Duration
        /// Which clock measures the round trips: the kernel's where it can (the default), the program's, or the
        /// network card's.
        public var timestamps: TimestampSource
        /// Send STAMP test packets to a STAMP reflector (RFC 8762) instead of echo probes; `size` is then the test
        /// packet's size (the base packet, its TLVs, and Extra Padding past them).
        public var stamp: StampSenderConfiguration?
        /// How probes leave: traffic class (DSCP and ECN), TTL, Don't Fragment. Each reply says what it arrived
        /// with here, and a udpecho server with `--reflect-tos` (or a STAMP reflector) what the probe arrived with
        /// there (``ArrivalMarks``, ``EchoBenchmark/Result/marking``).
        public var marking: PathMarking
        /// Probes go out over this many flows, each from its own source port, in turn (1 to ``maximumFlows``):
        /// ECMP hashing sends each port over one of the equal-cost paths, and the result has each flow's loss and
        /// round trips (``EchoBenchmark/Result/flows``) when there is more than one.
        public var flows: Int
        /// The local port of the first flow; nil takes any (a TWAMP session sets it).
        var sourcePort: Int?
        /// The most flows a run can spread its probes over.
        public static let maximumFlows = 64

        /// A configuration; the defaults are ping's: a probe a second of 64 bytes, until cancelled.
        public init(
            target: SocketAddress,
            count: Int? = nil,
            interval: Duration = .seconds(1),
            size: Int = 64,
            timeout: Duration = .seconds(1),
            timestamps: TimestampSource = .kernel,
            stamp: StampSenderConfiguration? = nil,
            marking: PathMarking = PathMarking(),
            flows: Int = 1
        ) {
            self.target = target
            self.count = count
            self.interval = interval
            self.size = size
            self.timeout = timeout
            self.timestamps = timestamps
            self.stamp = stamp
            self.marking = marking
            self.flows = flows
        }

        /// Checks every setting; throws ``EchoError`` naming the one that is out of range.
        public func validate() throws(EchoError) {
            try ProbeEngine.validate(size: self.size, target: self.target)
            guard self.interval >= .microseconds(1) else {
                throw .invalidConfiguration("the interval must be at least 1us")
            }
            guard self.timeout > .zero else { throw .invalidConfiguration("the timeout must be more than 0") }
            if let count = self.count, count < 1 { throw .invalidConfiguration("the count must be at least 1") }
            try self.marking.validate()
            guard (1...Self.maximumFlows).contains(self.flows) else {
                throw .invalidConfiguration("the flows must be from 1 to \(Self.maximumFlows)")
            }
        }
    }

    /// Pings until `count` probes are answered or lost, or until the task is cancelled (the probe then in flight
    /// counts as lost, as ping's does).
    ///
    /// - Parameters:
    ///   - configuration: What to ping, how often and how long to wait.
    ///   - onStart: Called once, before the first probe, with the clock that measures the run (the kernel's unless
    ///     it could not be had).
    ///   - onEvent: Called for each probe's outcome, from the pinging thread.
    public static func run(
        _ configuration: Configuration,
        onStart: (@Sendable (TimestampSource) -> Void)? = nil,
        onEvent: @escaping @Sendable (ProbeEvent) -> Void
    ) async throws -> EchoBenchmark.Result {
        try await self.run(configuration, beforeSend: nil, onStart: onStart, onEvent: onEvent)
    }

    /// ``run(_:onStart:onEvent:)`` with a hook called just before each probe is sent (tests delay a departure with
    /// it).
    static func run(
        _ configuration: Configuration,
        beforeSend: ((UInt64) -> Void)?,
        onStart: (@Sendable (TimestampSource) -> Void)? = nil,
        onEvent: @escaping @Sendable (ProbeEvent) -> Void
    ) async throws -> EchoBenchmark.Result {
        try configuration.validate()
        let engine = try ProbeEngine(
            .init(
                target: configuration.target,
                flows: configuration.flows,
                size: configuration.size,
                pacing: .rate(1e9 / Double(configuration.interval.nanoseconds)),
                duration: nil,
                count: configuration.count,
                lossTimeout: configuration.timeout,
                timestamps: configuration.timestamps,
                // The last stretch before each probe is polled rather than slept, so that a late wake-up does not
                // make the probe late: 200us takes the send lateness here from ~0.1-0.2 ms to ~5 us (BENCHMARKS.md),
                // at a cost of at most 200us of CPU per probe.
                spin: min(Self.spin, configuration.interval / 2),
                beforeSend: beforeSend,
                stamp: configuration.stamp,
                sourcePort: configuration.sourcePort,
                marking: configuration.marking,
                arrivalMarks: true,
                markingReport: configuration.stamp == nil,
                flowStatistics: configuration.flows > 1
            )
        )
        onStart?(engine.timestamps)
        return try await engine.runOnThread(onEvent: onEvent, onProgress: nil)
    }
}
