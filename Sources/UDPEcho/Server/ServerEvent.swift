public import NIOCore

/// Something the server did with one datagram, reported to the server's event handler as it happens.
///
/// Events are what a per-packet log prints. They are rate-limited (see ``EchoServer/Configuration/eventsPerSecond``):
/// past the limit, datagrams are still served and counted, and a single ``notShown(datagrams:interval:)`` event
/// says how many were not reported.
public enum ServerEvent: Sendable, Equatable {
    /// A datagram of `bytes` bytes arrived from `from`.
    case received(bytes: Int, from: SocketAddress)
    /// The same bytes were written back to `to`.
    case echoed(bytes: Int, to: SocketAddress)
    /// A datagram from `peer` was not echoed, for `reason`; `errno` is the system error where there was one.
    case dropped(bytes: Int, peer: SocketAddress, reason: DropReason, errno: Int32?)
    /// Reading the socket failed with `errno`; the server goes on reading.
    case receiveError(errno: Int32)
    /// `datagrams` datagrams in the last `interval` were served but not reported, to keep the log readable and cheap.
    case notShown(datagrams: Int, interval: Duration)
}

/// Which events the server reports.
public enum EventReporting: Sendable, Equatable {
    /// Every datagram received, echoed or dropped (within the rate limit).
    case all
    /// Only drops and errors (within the rate limit).
    case errors
    /// Nothing: the counters still count everything.
    case none
}

/// A per-worker budget of reported datagrams per one-second window. Past the budget, datagrams are only counted,
/// and when the window ends the worker reports how many it did not show.
struct EventBudget {
    static let window: Int64 = 1_000_000_000

    let perWindow: Int
    private var remaining: Int
    private var windowEnd: Int64 = 0
    private(set) var suppressed = 0

    init(perWindow: Int) {
        self.perWindow = perWindow
        self.remaining = perWindow
    }

    /// Takes one datagram's worth of reporting; false when the window's budget is spent (the datagram is counted as
    /// not shown).
    mutating func take(now: Int64) -> Bool {
        if now >= self.windowEnd {
            self.windowEnd = now + Self.window
            self.remaining = self.perWindow
        }
        guard self.remaining > 0 else {
            self.suppressed += 1
            return false
        }
        self.remaining -= 1
        return true
    }

    /// Takes reporting for up to `count` datagrams at once; returns how many may be reported (the first ones), and
    /// counts the rest as not shown.
    mutating func take(_ count: Int, now: Int64) -> Int {
        if now >= self.windowEnd {
            self.windowEnd = now + Self.window
            self.remaining = self.perWindow
        }
        let allowed = min(count, self.remaining)
        self.remaining -= allowed
        self.suppressed += count - allowed
        return allowed
    }

    /// If the window is over and datagrams went unreported in it, returns their count and starts afresh.
    mutating func collectSuppressed(now: Int64) -> Int? {
        guard self.suppressed > 0, now >= self.windowEnd else { return nil }
        defer { self.suppressed = 0 }
        return self.suppressed
    }

    /// Whether datagrams of the current window await a report of how many were not shown.
    var hasSuppressed: Bool { self.suppressed > 0 }
}
