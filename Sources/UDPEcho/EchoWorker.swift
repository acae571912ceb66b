import Atomics
import CUDPEcho
import NIOCore

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// The echo loop of one socket, on its own thread: receive a batch with one `recvmmsg`, send the replies with one
/// `sendmmsg`, repeat. Nothing on this path allocates, locks, logs or formats, unless an event is to be reported.
final class EchoWorker: @unchecked Sendable {
    struct Settings {
        var batchSize: Int
        var slotSize: Int
        var writeTimeout: Duration
        var reporting: EventReporting
        var eventsPerSecond: Int?
    }

    private let socket: ServerSocket
    private let wakeDescriptor: Int32
    private let stopping: ManagedAtomic<Bool>
    private let settings: Settings
    private let onEvent: (@Sendable (ServerEvent) -> Void)?
    let counters = WorkerCounters()

    // Owned by the worker thread alone once `run()` starts.
    private let batch: OpaquePointer
    private let outcomes: UnsafeMutablePointer<UInt8>  // per slot: 0 echoed, else DropReason index + 1
    private let errnos: UnsafeMutablePointer<Int32>
    private var budget: EventBudget

    init(
        socket: ServerSocket,
        wakeDescriptor: Int32,
        stopping: ManagedAtomic<Bool>,
        settings: Settings,
        onEvent: (@Sendable (ServerEvent) -> Void)?
    ) throws(EchoError) {
        guard let batch = cudpecho_batch_create(Int32(settings.batchSize), settings.slotSize) else {
            throw .socket(
                operation: "allocating buffers for",
                address: socket.localAddress.hostPortDescription,
                errno: ENOMEM
            )
        }
        self.batch = batch
        self.socket = socket
        self.wakeDescriptor = wakeDescriptor
        self.stopping = stopping
        self.settings = settings
        self.onEvent = settings.reporting == .none ? nil : onEvent
        self.outcomes = .allocate(capacity: settings.batchSize)
        self.outcomes.initialize(repeating: 0, count: settings.batchSize)
        self.errnos = .allocate(capacity: settings.batchSize)
        self.errnos.initialize(repeating: 0, count: settings.batchSize)
        self.budget = EventBudget(perWindow: settings.eventsPerSecond ?? .max)
    }

    deinit {
        cudpecho_batch_destroy(self.batch)
        self.outcomes.deallocate()
        self.errnos.deallocate()
    }

    /// Serves until the server stops, then echoes what is already queued (a bounded amount) and returns.
    func run() {
        let batchSize = Int32(self.settings.batchSize)
        serving: while !self.stopping.load(ordering: .relaxed) {
            let count = cudpecho_batch_recv(self.socket.descriptor, self.batch, batchSize)
            if count > 0 {
                self.serve(Int(count))
                continue
            }
            switch -count {
            case EAGAIN, EWOULDBLOCK:
                let now = cudpecho_now_ns()
                self.reportSuppressed(now: now)
                let ready = cudpecho_wait(
                    self.socket.descriptor,
                    cudpecho_pollin,
                    self.wakeDescriptor,
                    self.budget.pollTimeout(now: now)
                )
                if ready == 2 { break serving }
            case EINTR:
                continue
            default:
                self.receiveFailed(errno: -count)
            }
        }
        // Replies in flight go out: whatever the kernel already queued for us is echoed, within a bound, so that a
        // client still sending cannot hold the server open.
        for _ in 0..<8 {
            let count = cudpecho_batch_recv(self.socket.descriptor, self.batch, batchSize)
            guard count > 0 else { break }
            self.serve(Int(count))
        }
        self.reportSuppressed(now: .max)
    }

    private func serve(_ count: Int) {
        var bytes = 0
        var anyTruncated = false
        for index in 0..<count {
            bytes &+= cudpecho_batch_length(self.batch, Int32(index))
            self.outcomes[index] = 0
            if cudpecho_batch_truncated(self.batch, Int32(index)) != 0 {
                anyTruncated = true
            }
        }
        self.counters.add(.received, count)
        self.counters.add(.receivedBytes, bytes)
        cudpecho_batch_prepare_replies(self.batch, Int32(count))

        var dropped = false
        if anyTruncated {
            dropped = true
            for index in 0..<count where cudpecho_batch_truncated(self.batch, Int32(index)) != 0 {
                self.drop(index, .truncated, errno: 0)
            }
            var start = 0
            while start < count {
                while start < count && self.outcomes[start] != 0 { start += 1 }
                var end = start
                while end < count && self.outcomes[end] == 0 { end += 1 }
                if end > start { self.send(start, end) }
                start = end
            }
        } else {
            dropped = self.send(0, count)
        }

        if dropped {
            var echoedBytes = 0
            var echoed = 0
            for index in 0..<count where self.outcomes[index] == 0 {
                echoed += 1
                echoedBytes &+= cudpecho_batch_length(self.batch, Int32(index))
            }
            self.counters.add(.echoed, echoed)
            self.counters.add(.echoedBytes, echoedBytes)
        } else {
            self.counters.add(.echoed, count)
            self.counters.add(.echoedBytes, bytes)
        }
        if self.onEvent != nil {
            self.report(count)
        }
    }

    /// Sends slots start..<end, dropping (and counting) those that fail; returns whether any was dropped.
    @discardableResult
    private func send(_ start: Int, _ end: Int) -> Bool {
        var next = start
        var deadline: Int64? = nil
        var dropped = false
        while next < end {
            let sent = cudpecho_batch_send(self.socket.descriptor, self.batch, Int32(next), Int32(end - next))
            if sent > 0 {
                next += Int(sent)
                continue
            }
            let code = -sent
            switch code {
            case EAGAIN, EWOULDBLOCK:
                // The send buffer is full: wait for room, but no longer than the write deadline.
                let now = cudpecho_now_ns()
                let limit = deadline ?? now + self.settings.writeTimeout.nanoseconds
                deadline = limit
                if now >= limit
                    || cudpecho_wait(self.socket.descriptor, cudpecho_pollout, -1, Self.milliseconds(limit - now)) == 0
                {
                    for index in next..<end { self.drop(index, .writeTimeout, errno: EAGAIN) }
                    return true
                }
            case EINTR:
                continue
            default:
                // This one reply failed (a refused or unreachable peer, a firewall, no memory); the others go on.
                self.drop(next, Self.reason(for: code), errno: code)
                dropped = true
                next += 1
            }
        }
        return dropped
    }

    private func drop(_ index: Int, _ reason: DropReason, errno: Int32) {
        self.outcomes[index] = UInt8(DropReason.allCases.firstIndex(of: reason)! + 1)
        self.errnos[index] = errno
        self.counters.addDrop(reason)
    }

    private func receiveFailed(errno code: Int32) {
        self.counters.add(.receiveErrors, 1)
        if let onEvent = self.onEvent, self.budget.take(now: cudpecho_now_ns()) {
            onEvent(.receiveError(errno: code))
        }
        switch code {
        case ECONNREFUSED, EHOSTUNREACH, ENETUNREACH, ENOBUFS, ENOMEM:
            break
        default:
            // An error that says nothing about one datagram: do not spin on it.
            _ = cudpecho_wait(self.socket.descriptor, cudpecho_pollin, self.wakeDescriptor, 10)
        }
    }

    private func report(_ count: Int) {
        guard let onEvent = self.onEvent else { return }
        let now = cudpecho_now_ns()
        for index in 0..<count {
            let outcome = self.outcomes[index]
            if self.settings.reporting == .errors && outcome == 0 { continue }
            guard self.budget.take(now: now) else { continue }
            var length: socklen_t = 0
            let raw = cudpecho_batch_peer(self.batch, Int32(index), &length)!
            guard let peer = SocketAddress(raw: raw, length: length)?.unmappingIPv4 else { continue }
            let bytes = cudpecho_batch_length(self.batch, Int32(index))
            if outcome == 0 {
                onEvent(.received(bytes: bytes, from: peer))
                onEvent(.echoed(bytes: bytes, to: peer))
            } else {
                let reason = DropReason.allCases[Int(outcome) - 1]
                if self.settings.reporting == .all { onEvent(.received(bytes: bytes, from: peer)) }
                let code = self.errnos[index]
                onEvent(.dropped(bytes: bytes, peer: peer, reason: reason, errno: code == 0 ? nil : code))
            }
        }
        self.reportSuppressed(now: now)
    }

    private func reportSuppressed(now: Int64) {
        guard let onEvent = self.onEvent, let count = self.budget.collectSuppressed(now: now) else { return }
        onEvent(.notShown(datagrams: count, interval: .seconds(1)))
    }

    private static func reason(for code: Int32) -> DropReason {
        switch code {
        case ECONNREFUSED: return .refused
        case EHOSTUNREACH, ENETUNREACH, EHOSTDOWN, ENETDOWN: return .unreachable
        case EMSGSIZE: return .tooLarge
        case ENOBUFS, ENOMEM: return .noBuffers
        case EPERM, EACCES: return .forbidden
        default: return .sendError
        }
    }

    private static func milliseconds(_ nanoseconds: Int64) -> Int32 {
        Int32(clamping: (nanoseconds + 999_999) / 1_000_000)
    }
}
