import Atomics
import Logging

/// A server's events as an `AsyncSequence`, for code that would rather `for await` them than take a callback on the
/// server's event thread (``EchoServer/init(configuration:logger:onEvent:)``). The sequence ends when the server's
/// ``EchoServer/run()`` returns, after the last event.
///
/// Events wait in a buffer of their own for a consumer that reads slower than they come; past it the newest are
/// dropped and counted (``dropped``): the server never waits for its consumer. (Those its event thread could not
/// hand over are counted in ``EchoServerStatistics/eventsNotDelivered``, as with a callback.)
///
/// ```swift
/// let (server, events) = try EchoServer.withEvents(configuration: configuration)
/// Task { try await server.run() }
/// for await event in events { print(event) }
/// ```
public struct ServerEvents: AsyncSequence, Sendable {
    public typealias Element = ServerEvent

    let stream: AsyncStream<ServerEvent>
    let droppedCount: ManagedAtomic<Int>

    /// Events dropped because the buffer was full.
    public var dropped: Int { self.droppedCount.load(ordering: .relaxed) }

    public func makeAsyncIterator() -> AsyncStream<ServerEvent>.Iterator { self.stream.makeAsyncIterator() }
}

extension EchoServer {
    /// A server, bound as ``init(configuration:logger:onEvent:)`` binds it, and its events as a sequence.
    ///
    /// - Parameters:
    ///   - configuration: Where and how to serve (its ``Configuration/reporting`` chooses which events come).
    ///   - logger: Receives start and stop messages.
    ///   - bufferSize: Events kept for a slow consumer before the newest are dropped.
    /// - Throws: ``EchoError`` when the name does not resolve or a socket cannot be bound.
    public static func withEvents(
        configuration: Configuration = Configuration(),
        logger: Logger = Logger(label: "udpecho.server", factory: { _ in SwiftLogNoOpLogHandler() }),
        bufferSize: Int = 65_536
    ) throws(EchoError) -> (server: EchoServer, events: ServerEvents) {
        let (stream, continuation) = AsyncStream.makeStream(
            of: ServerEvent.self,
            bufferingPolicy: .bufferingOldest(max(1, bufferSize))
        )
        let dropped = ManagedAtomic(0)
        let server = try EchoServer(configuration: configuration, logger: logger) { event in
            if case .dropped = continuation.yield(event) { dropped.wrappingIncrement(ordering: .relaxed) }
        }
        server.whenStopped { continuation.finish() }
        return (server, ServerEvents(stream: stream, droppedCount: dropped))
    }
}
