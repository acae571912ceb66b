import Atomics
public import NIOCore

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// A load generator for echo servers: closed loop (a window of requests in flight per flow) or open loop (a fixed
/// rate, with latency measured from each request's scheduled send time), every reply checked byte for byte.
///
/// ```swift
/// let target = try SocketAddress(ipAddress: "127.0.0.1", port: 1337)
/// let result = try await EchoBenchmark.run(.init(target: target, duration: .seconds(5), flows: 4, load: .window(32)))
/// print(result.echoesPerSecond, result.counts.lost, result.times.percentile(99))
/// ```
public enum EchoBenchmark {
    /// How much load, and for how long.
    public enum Load: Sendable, Equatable {
        /// Closed loop: this many requests in flight per flow; each reply (or loss) releases the next.
        case window(Int)
        /// Open loop: this many requests per second over all flows, on a fixed schedule.
        case rate(Double)
    }

    /// What to load, how, and for how long.
    public struct Configuration: Sendable {
        /// The echo server.
        public var target: SocketAddress
        /// How long to send. Every run ends by itself: at most an hour.
        public var duration: Duration
        /// Payload bytes per request, from 16 (sequence number and timestamp) to the datagram maximum.
        public var size: Int
        /// Sockets, each its own source port (and so its own flow through the kernel and the server).
        public var flows: Int
        /// Closed or open loop, and how much.
        public var load: Load
        /// Stop after this many requests, if that comes before the duration.
        public var count: Int?
        /// A request without a reply after this long is counted as lost.
        public var lossTimeout: Duration
        /// Allow a target that is neither loopback nor this host's.
        public var allowRemote: Bool
        /// Which clock measures the times: the kernel's where it can (the default), the program's, or the network
        /// card's.
        public var timestamps: TimestampSource
        /// Open loop: how long before a request is due the load thread stops sleeping and polls, so that a late
        /// wake-up does not make the request late (it costs that much CPU per request at most). nil chooses
        /// ``automaticSpin(rate:)``.
        public var spin: Duration?
        /// Send STAMP test packets (RFC 8762) instead of echo requests: the target is a STAMP or TWAMP-Light
        /// reflector, and the result carries what its replies said (``Result/stamp``). nil: echo requests.
        public var stamp: StampSenderConfiguration?
        /// Send each flow's batch of requests as one segmented write (UDP GSO) and take the replies coalesced (UDP
        /// GRO), as QUIC stacks do: sending and receiving cost the generator far less per datagram, so that it can
        /// drive a server past what single writes allow. Every reply is still checked on its own. The times are then
        /// the program's clock reads (the kernel timestamps a segmented write once). Echo requests only.
        public var gso: Bool
        /// How requests leave: traffic class (DSCP and ECN), TTL, Don't Fragment; e.g. to load a QoS policy's
        /// class.
        public var marking: PathMarking

        /// The local port of the first flow; nil takes any (a TWAMP session sets it).
        var sourcePort: Int?

        /// A configuration; see each property. The defaults are a closed loop of 4 flows x 32 for 10 s.
        public init(
            target: SocketAddress,
            duration: Duration = .seconds(10),
            size: Int = 64,
            flows: Int = 4,
            load: Load = .window(32),
            count: Int? = nil,
            lossTimeout: Duration = .seconds(1),
            allowRemote: Bool = false,
            timestamps: TimestampSource = .kernel,
            spin: Duration? = nil,
            stamp: StampSenderConfiguration? = nil,
            gso: Bool = false,
            marking: PathMarking = PathMarking()
        ) {
            self.target = target
            self.duration = duration
            self.size = size
            self.flows = flows
            self.load = load
            self.count = count
            self.lossTimeout = lossTimeout
            self.allowRemote = allowRemote
            self.timestamps = timestamps
            self.spin = spin
            self.stamp = stamp
            self.gso = gso
            self.marking = marking
        }

        /// Checks every setting; throws ``EchoError`` naming the one that is out of range.
        public func validate() throws(EchoError) {
            try ProbeEngine.validate(size: self.size, target: self.target)
            guard (1...1024).contains(self.flows) else {
                throw .invalidConfiguration("\(self.flows) flows is out of range: give 1 to 1024")
            }
            switch self.load {
            case .window(let window) where !(1...65536).contains(window):
                throw .invalidConfiguration("a window of \(window) is out of range: give 1 to 65536 requests in flight")
            case .rate(let rate) where !(rate > 0 && rate <= 100_000_000):
                throw .invalidConfiguration("a rate of \(rate) is out of range: give 1 to 100000000 requests a second")
            default:
                break
            }
            guard self.duration > .zero && self.duration <= .seconds(3600) else {
                throw .invalidConfiguration("the duration must be more than 0 and at most 1h, so that every run ends")
            }
            guard self.lossTimeout > .zero else { throw .invalidConfiguration("the loss timeout must be more than 0") }
            if let spin = self.spin, !(spin >= .zero && spin <= .milliseconds(10)) {
                throw .invalidConfiguration("the spin must be from 0 to 10ms")
            }
            if let count = self.count, count < 1 { throw .invalidConfiguration("the count must be at least 1") }
            try self.marking.validate()
            if self.gso && self.stamp != nil {
                throw .invalidConfiguration("GSO sends runs of echo requests; STAMP test packets go one by one")
            }
            try TargetPolicy.check(self.target, allowRemote: self.allowRemote)
        }
    }

    /// How long before each request is due an open-loop run stops sleeping, unless told: as much as keeps the polling
    /// under 5% of a core, and at most 200us. Polling takes a send's lateness from ~25 us to ~3 us here, but at
    /// high rates it would take a whole core from the server under test (BENCHMARKS.md).
    public static func automaticSpin(rate: Double) -> Duration {
        .nanoseconds(Int64(min(200_000, 0.05e9 / max(rate, 1))))
    }

    /// What a run measured.
    public struct Result: Sendable {
        /// What happened to the requests.
        public var counts: ProbeCounts
        /// The round trips of the matched replies: from each request's departure to its reply.
        public var times: RoundTripTimes
        /// Latency from each request's scheduled send time to its reply: the open-loop figure, which includes any
        /// delay in sending.
        public var latencies: RoundTripTimes
        /// How late each answered request left against its schedule.
        public var lateness: RoundTripTimes
        /// The round trips' variation.
        public var jitter: Jitter
        /// The clock that measured the times.
        public var timestamps: TimestampSource
        /// Round trips measured with the program's clock in a kernel-timestamped run because a kernel timestamp was
        /// missing (0 normally).
        public var timestampFallbacks: Int
        /// Every how many requests of a flow the round trip (and lateness, and jitter) was measured: 1, or a sample
        /// where a transmit timestamp for every request would cost the load a notable share (closed loop: every
        /// 16th; open loop past 20000 requests a second). Counts and the latency from the schedule cover every
        /// request.
        public var roundTripSampling: Int
        /// Whether requests left as segmented writes (``Configuration/gso``) to the end of the run.
        public var gso = false
        /// Why the kernel refused segmented writes, if it did (the run went on datagram by datagram).
        public var gsoRefusal: String?
        /// Replies that came coalesced in runs (UDP GRO), each checked on its own.
        public var coalescedReplies = 0
        /// What the reflected packets said, in a STAMP run (`ping --stamp`, `bench --stamp`); nil otherwise.
        public var stamp: StampStatistics?
        /// The replies' markings and hop counts, both ways where the far end says (`ping`); nil otherwise.
        public var marking: MarkingStatistics?
        /// Each flow's loss and round trips, by source port (`ping --flows`); nil otherwise.
        public var flows: [FlowStatistics]?
        /// Why the kernel refused the last request it would not send (errno), when ``ProbeCounts/sendErrors`` > 0.
        public var lastSendError: Int32 = 0
        /// Time from the first request until every request was answered or counted as lost (which includes waiting
        /// a loss timeout for the last lost ones).
        public var elapsed: Duration
        /// The time the load was on: from the first request to the last request sent or the last reply received,
        /// whichever came later. The wait at the end for replies that never come is not in it.
        public var activeTime: Duration
        /// Matched replies per second while the load was on (over ``activeTime``): with loss, dividing by
        /// ``elapsed`` would count the wait for the lost replies as time the server was too slow.
        public var echoesPerSecond: Double { Double(self.counts.received) / max(self.activeTime.seconds, 1e-9) }
    }

    /// Runs the load; returns when the duration (or count) is reached and every request is answered or lost, or when
    /// the task is cancelled (then the requests in flight count as lost).
    ///
    /// - Parameters:
    ///   - configuration: The target, the load and how to measure it.
    ///   - onProgress: Called once a second from the load thread.
    public static func run(
        _ configuration: Configuration,
        onProgress: (@Sendable (ProbeProgress) -> Void)? = nil
    ) async throws -> Result {
        try configuration.validate()
        let pacing: ProbeEngine.Configuration.Pacing
        switch configuration.load {
        case .window(let window): pacing = .window(window)
        case .rate(let rate): pacing = .rate(rate)
        }
        let engine = try ProbeEngine(
            .init(
                target: configuration.target,
                flows: configuration.flows,
                size: configuration.size,
                pacing: pacing,
                duration: configuration.duration,
                count: configuration.count,
                lossTimeout: configuration.lossTimeout,
                timestamps: configuration.timestamps,
                spin: configuration.spin
                    ?? {
                        if case .rate(let rate) = configuration.load { return Self.automaticSpin(rate: rate) }
                        return .zero
                    }(),
                stamp: configuration.stamp,
                sourcePort: configuration.sourcePort,
                offload: configuration.gso,
                marking: configuration.marking
            )
        )
        return try await engine.runOnThread(onEvent: nil, onProgress: onProgress)
    }
}

extension ProbeEngine {
    /// Runs on a thread of its own (the loop blocks in system calls), stopping early if the task is cancelled.
    func runOnThread(
        onEvent: (@Sendable (ProbeEvent) -> Void)?,
        onProgress: (@Sendable (ProbeProgress) -> Void)?
    ) async throws(EchoError) -> EchoBenchmark.Result {
        let stop = ManagedAtomic(false)
        let engine = UnsafeTransfer(self)
        return try await runOnOwnThread("probe engine") {
            let start = ContinuousClock.now
            engine.wrappedValue.run(stop: stop, onEvent: onEvent, onProgress: onProgress)
            let elapsed = ContinuousClock.now - start
            var result = EchoBenchmark.Result(
                counts: engine.wrappedValue.counts,
                times: engine.wrappedValue.times,
                latencies: engine.wrappedValue.latencies,
                lateness: engine.wrappedValue.lateness,
                jitter: engine.wrappedValue.jitter,
                timestamps: engine.wrappedValue.timestamps,
                timestampFallbacks: engine.wrappedValue.timestampFallbacks,
                roundTripSampling: Int(engine.wrappedValue.roundTripStride),
                stamp: engine.wrappedValue.stampStatistics,
                elapsed: elapsed,
                activeTime: engine.wrappedValue.activeTime
            )
            result.gso = engine.wrappedValue.offload
            let refused = engine.wrappedValue.offloadRefused
            result.gsoRefusal = refused == 0 ? nil : String(cString: strerror(refused))
            result.coalescedReplies = engine.wrappedValue.coalescedReplies
            result.marking = engine.wrappedValue.markingStatistics
            result.flows = engine.wrappedValue.flowStatistics
            result.lastSendError = engine.wrappedValue.lastSendError
            return result
        } onCancel: {
            stop.store(true, ordering: .relaxed)
        }
    }
}
