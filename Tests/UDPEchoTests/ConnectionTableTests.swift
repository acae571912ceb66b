import NIOCore
import NIOEmbedded
import Synchronization
import Testing

@testable import UDPEcho

/// The metrics endpoint's table of connections, on embedded channels whose loops run only when told: the order of
/// events that a busy loop on a loaded machine makes (a CI run once reset 3 of 5 scrapes during a slowloris).
@Suite struct ConnectionTableTests {
    /// A connection past its grace whose complete request its loop reads before it gets to the eviction is answered,
    /// not closed with the request unread (the kernel then resets the scraper's connection); it is closed once it
    /// waits again past the grace, and the queued connection takes its slot.
    @Test func aRequestReadBeforeTheEvictionKeepsTheConnection() {
        let table = ConnectionTable(
            .init(
                maximumConnections: 1,
                maximumConnectionsPerSource: 1,
                maximumQueuedConnections: 4,
                requestGrace: .zero
            )
        )
        let started = Mutex<[Int]>([])
        let first = EmbeddedChannel()
        let second = EmbeddedChannel()
        #expect(table.admit(first, refuse: {}) { slot in started.withLock { $0.append(slot) } })
        #expect(started.withLock { $0 } == [0] && table.count == 1)
        // Being set up, it cannot be evicted: the queued connection waits without asking.
        #expect(table.admit(second, refuse: {}) { slot in started.withLock { $0.append(slot) } })
        #expect(table.queuedCount == 1)
        first.embeddedEventLoop.run()
        #expect(table.count == 1 && table.queuedCount == 1)
        // Active on its loop: its grace (none here) begins, and the queued connection asks its loop to close it.
        table.waiting(0)
        table.serveQueue()
        #expect(started.withLock { $0 } == [0], "nothing closed or started before the first's loop runs")
        // That loop reads a complete request first, then runs the eviction: the connection is being answered.
        table.answering(0)
        first.embeddedEventLoop.run()
        let closed = Mutex(false)
        first.closeFuture.whenComplete { _ in closed.withLock { $0 = true } }
        first.embeddedEventLoop.run()
        #expect(!closed.withLock { $0 } && table.count == 1 && table.queuedCount == 1 && started.withLock { $0 } == [0])
        // Answered, it waits again past the grace: now its loop closes it and the queued connection gets the slot.
        table.waiting(0)
        table.serveQueue()
        first.embeddedEventLoop.run()
        #expect(closed.withLock { $0 })
        #expect(started.withLock { $0 } == [0, 1] && table.queuedCount == 0 && table.count == 1)
        // An embedded channel left open keeps its pipeline (a leak at exit, to AddressSanitizer).
        second.close(promise: nil)
        second.embeddedEventLoop.run()
    }
}
