import Atomics

/// A ping run's events as an `AsyncSequence` (``EchoPinger/events(_:bufferSize:)``), in the order the probes' fates
/// were known; the sequence ends when the run does, and ``result`` then holds its summary. Cancelling the task that
/// iterates it, or ``cancel()``, stops the run.
///
/// ```swift
/// let run = EchoPinger.events(configuration)
/// for await event in run { print(event) }
/// let summary = try await run.result
/// ```
public struct ProbeEvents: AsyncSequence, Sendable {
    public typealias Element = ProbeEvent

    let stream: AsyncStream<ProbeEvent>
    let task: Task<EchoBenchmark.Result, any Error>
    let droppedCount: ManagedAtomic<Int>

    /// The run's summary, once it has ended.
    ///
    /// - Throws: ``EchoError`` when the run could not start (a socket, a configuration out of range).
    public var result: EchoBenchmark.Result {
        get async throws { try await self.task.value }
    }

    /// Events dropped because the buffer was full (the summary counts every probe all the same).
    public var dropped: Int { self.droppedCount.load(ordering: .relaxed) }

    /// Stops the run: the probe in flight counts as lost, and the sequence ends.
    public func cancel() { self.task.cancel() }

    public func makeAsyncIterator() -> AsyncStream<ProbeEvent>.Iterator { self.stream.makeAsyncIterator() }
}

extension EchoPinger {
    /// Starts pinging, as ``run(_:onStart:onEvent:)`` does, and returns the probes' outcomes as a sequence.
    ///
    /// - Parameters:
    ///   - configuration: What to ping, how often and how long to wait.
    ///   - bufferSize: Events kept for a slow consumer before the newest are dropped (and counted).
    public static func events(_ configuration: Configuration, bufferSize: Int = 65_536) -> ProbeEvents {
        let (stream, continuation) = AsyncStream.makeStream(
            of: ProbeEvent.self,
            bufferingPolicy: .bufferingOldest(max(1, bufferSize))
        )
        let dropped = ManagedAtomic(0)
        let task = Task {
            defer { continuation.finish() }
            return try await Self.run(configuration) { event in
                if case .dropped = continuation.yield(event) { dropped.wrappingIncrement(ordering: .relaxed) }
            }
        }
        continuation.onTermination = { termination in
            if case .cancelled = termination { task.cancel() }
        }
        return ProbeEvents(stream: stream, task: task, droppedCount: dropped)
    }
}
