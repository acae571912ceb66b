import Dispatch
import Synchronization

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// Writes whole lines to a standard stream, flushed at once so that a reader on a pipe sees each line as it happens.
struct Stream: Sendable {
    let descriptor: Int32

    static let out = Stream(descriptor: 1)
    static let err = Stream(descriptor: 2)

    /// At most this much is written at once when a deadline applies: a pipe that says it has room takes this much
    /// without blocking (PIPE_BUF).
    private static let atomicWrite = 4096

    func line(_ text: String) {
        self.write(text + "\n")
    }

    @discardableResult
    func write(_ text: String) -> Bool {
        var text = text
        return text.withUTF8 { self.write(UnsafeRawBufferPointer($0)) }
    }

    /// Writes all of `bytes`, waiting as long as the reader needs. Returns false if the stream is closed (nobody
    /// reads the pipe any more: EPIPE, with SIGPIPE ignored) or fails; a closed stream must not kill the program.
    @discardableResult
    func write(_ bytes: UnsafeRawBufferPointer) -> Bool {
        self.write(bytes, deadline: nil)
    }

    /// Writes `text` and a newline, giving up after `timeout` if the reader does not take it (a pipe nobody reads).
    /// Returns whether all of it was written.
    func line(_ text: String, within timeout: Duration) -> Bool {
        var text = text + "\n"
        let deadline =
            Self.now() + Int64(timeout.components.seconds) * 1_000_000_000
            + timeout.components.attoseconds / 1_000_000_000
        return text.withUTF8 { self.write(UnsafeRawBufferPointer($0), deadline: deadline) }
    }

    private func write(_ bytes: UnsafeRawBufferPointer, deadline: Int64?) -> Bool {
        var offset = 0
        while offset < bytes.count {
            if let deadline {
                // Wait for room first, and then write no more than a pipe takes without blocking.
                let remaining = deadline - Self.now()
                guard remaining > 0, self.waitWritable(milliseconds: Int32(clamping: remaining / 1_000_000)) else {
                    return false
                }
            }
            let length = deadline == nil ? bytes.count - offset : min(bytes.count - offset, Self.atomicWrite)
            let written = Glibc.write(self.descriptor, bytes.baseAddress! + offset, length)
            if written < 0 {
                switch errno {
                case EINTR: continue
                case EAGAIN, EWOULDBLOCK:
                    // Someone made the descriptor non-blocking: wait for room instead.
                    if deadline == nil && !self.waitWritable(milliseconds: -1) { return false }
                    continue
                default: return false
                }
            }
            offset += written
        }
        return true
    }

    private func waitWritable(milliseconds: Int32) -> Bool {
        var poller = pollfd(fd: self.descriptor, events: Int16(POLLOUT), revents: 0)
        while true {
            let ready = poll(&poller, 1, milliseconds)
            if ready < 0 && errno == EINTR { continue }
            return ready > 0 && poller.revents & Int16(POLLOUT) != 0
        }
    }

    private static func now() -> Int64 {
        var time = timespec()
        clock_gettime(CLOCK_MONOTONIC, &time)
        return Int64(time.tv_sec) * 1_000_000_000 + Int64(time.tv_nsec)
    }
}

/// Hands lines to a printer thread of their own, so that a slow terminal or a full pipe never holds up the program:
/// past `capacity` queued lines, new ones are counted and dropped instead of waiting, and ``finish(within:)`` waits
/// for the printer no longer than it is told.
final class LineQueue: Sendable {
    private struct State {
        var lines: [String] = []
        var finished = false
    }

    private let state = Mutex(State())
    private let ready = DispatchSemaphore(value: 0)
    private let done = DispatchSemaphore(value: 0)
    private let lost = Atomic<Int>(0)
    private let capacity: Int

    /// Starts the printer, writing to `output`.
    init(to output: Stream, capacity: Int = 4096) {
        self.capacity = capacity
        DispatchQueue(label: "udpecho.printer").async { self.print(to: output) }
    }

    func enqueue(_ line: String) {
        let wasEmpty = self.state.withLock { state -> Bool? in
            guard state.lines.count < self.capacity else { return nil }
            state.lines.append(line)
            return state.lines.count == 1
        }
        switch wasEmpty {
        case nil: self.lost.add(1, ordering: .relaxed)
        case true?: self.ready.signal()
        case false?: break
        }
    }

    /// Lines dropped because the queue was full, the output closed, or ``finish(within:)`` gave up on them.
    var lostLines: Int { self.lost.load(ordering: .relaxed) }

    /// Lets the printer write what is queued, waiting for it at most `timeout`; what it has not written by then is
    /// counted as lost. Returns whether everything was written.
    @discardableResult
    func finish(within timeout: Duration) -> Bool {
        self.state.withLock { $0.finished = true }
        self.ready.signal()
        let nanoseconds =
            Int(timeout.components.seconds) * 1_000_000_000
            + Int(timeout.components.attoseconds / 1_000_000_000)
        if self.done.wait(timeout: .now() + .nanoseconds(nanoseconds)) == .success { return true }
        let left = self.state.withLock { state in
            defer { state.lines.removeAll() }
            return state.lines.count
        }
        self.lost.add(left + 1, ordering: .relaxed)  // and the line the printer is stuck on
        return false
    }

    private func print(to output: Stream) {
        var open = true
        while true {
            let (lines, finished) = self.state.withLock { state in
                defer { state.lines.removeAll(keepingCapacity: true) }
                return (state.lines, state.finished)
            }
            for line in lines {
                // Once nobody reads the output, lines are only counted.
                if open { open = output.write(line + "\n") }
                if !open { self.lost.add(1, ordering: .relaxed) }
            }
            if lines.isEmpty {
                if finished { break }
                self.ready.wait()
            }
        }
        self.done.signal()
    }
}
