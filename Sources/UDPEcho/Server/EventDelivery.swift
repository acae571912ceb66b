import Atomics
import CUDPEcho
import NIOCore

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// Carries events from the serving threads to the event handler, so that the handler never runs on a serving thread
/// and a slow handler cannot slow serving.
///
/// Each serving thread writes fixed-size records into a ring of its own (no allocation, no lock, no formatting);
/// one event thread per server reads the rings, makes ``ServerEvent`` values and calls the handler. It sleeps while
/// the rings are empty, and a serving thread wakes it (one system call) only when it sleeps. When a ring is full,
/// the event is counted in ``EchoServerStatistics/eventsNotDelivered`` and dropped: serving never waits for the
/// handler.
final class EventDelivery: @unchecked Sendable {
    /// Events a serving thread may have waiting before new ones are dropped.
    static let ringCapacity: UInt32 = 1024

    private let rings: [OpaquePointer]
    private let notifier: OpaquePointer
    private let reporting: EventReporting
    private let handler: @Sendable (ServerEvent) -> Void
    private let finishing = ManagedAtomic(false)

    init(workers: Int, reporting: EventReporting, handler: @escaping @Sendable (ServerEvent) -> Void) throws(EchoError)
    {
        var rings: [OpaquePointer] = []
        for _ in 0..<workers {
            guard let ring = cudpecho_ring_create(Self.ringCapacity) else {
                for ring in rings { cudpecho_ring_destroy(ring) }
                throw .invalidConfiguration("out of memory for the server's event rings")
            }
            rings.append(ring)
        }
        guard let notifier = cudpecho_notifier_create() else {
            for ring in rings { cudpecho_ring_destroy(ring) }
            throw .invalidConfiguration("out of memory for the server's event rings")
        }
        self.rings = rings
        self.notifier = notifier
        self.reporting = reporting
        self.handler = handler
    }

    deinit {
        for ring in self.rings { cudpecho_ring_destroy(ring) }
        cudpecho_notifier_destroy(self.notifier)
    }

    /// The ring and wake-up of serving thread `index`.
    func channel(_ index: Int) -> EventChannel {
        EventChannel(ring: self.rings[index], notifier: self.notifier)
    }

    /// Delivers events until ``finish()`` has been called and the rings are empty; runs on the event thread.
    func run() {
        var event = cudpecho_event()
        while true {
            var delivered = 0
            for ring in self.rings {
                while cudpecho_ring_pop(ring, &event) != 0 {
                    self.deliver(event)
                    delivered += 1
                }
            }
            if delivered > 0 { continue }
            // The serving threads have stopped before `finish()`, so empty rings now stay empty.
            if self.finishing.load(ordering: .acquiring) { return }
            let sequence = cudpecho_notifier_prepare(self.notifier)
            if self.finishing.load(ordering: .acquiring)
                || self.rings.contains(where: { cudpecho_ring_is_empty($0) == 0 })
            {
                cudpecho_notifier_cancel(self.notifier)
                continue
            }
            cudpecho_notifier_wait(self.notifier, sequence, 1000)
        }
    }

    /// Asks the event thread to deliver what is left and return; call once the serving threads have stopped.
    func finish() {
        self.finishing.store(true, ordering: .releasing)
        cudpecho_notifier_wake(self.notifier)
    }

    private func deliver(_ record: cudpecho_event) {
        switch Int32(record.kind) {
        case Int32(CUDPECHO_EVENT_ECHOED):
            guard let peer = Self.peer(record) else { return }
            let bytes = Int(record.value)
            self.handler(.received(bytes: bytes, from: peer))
            self.handler(.echoed(bytes: bytes, to: peer))
        case Int32(CUDPECHO_EVENT_DROPPED):
            guard let peer = Self.peer(record) else { return }
            let bytes = Int(record.value)
            if self.reporting == .all { self.handler(.received(bytes: bytes, from: peer)) }
            let reason = DropReason.ordered[Int(record.reason)]
            self.handler(
                .dropped(bytes: bytes, peer: peer, reason: reason, errno: record.error == 0 ? nil : record.error)
            )
        case Int32(CUDPECHO_EVENT_RECEIVE_ERROR):
            self.handler(.receiveError(errno: record.error))
        case Int32(CUDPECHO_EVENT_NOT_SHOWN):
            self.handler(.notShown(datagrams: Int(record.value), interval: .seconds(1)))
        default:
            break
        }
    }

    private static func peer(_ record: cudpecho_event) -> SocketAddress? {
        var record = record
        return withUnsafePointer(to: &record.peer) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                SocketAddress(raw: $0, length: socklen_t(record.peer_length))?.unmappingIPv4
            }
        }
    }
}

/// One serving thread's end of an ``EventDelivery``: its ring, and the wake-up it shares with the others.
struct EventChannel: @unchecked Sendable {
    let ring: OpaquePointer
    let notifier: OpaquePointer

    /// Appends an event; false when the ring is full.
    func push(_ event: inout cudpecho_event) -> Bool {
        cudpecho_ring_push(self.ring, &event) != 0
    }

    /// Wakes the event thread if it sleeps; once per batch that pushed events.
    func wake() {
        cudpecho_notifier_wake(self.notifier)
    }
}
