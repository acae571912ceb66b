import Foundation
import TestSupport
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// What an operator can get wrong at start-up (the second attack review): sizes out of range, negative numbers,
/// too few file descriptors, an address that cannot be bound, a FIFO for a key file. Each is a clear error with its
/// exit code, before anything runs; none aborts or hangs.
@Suite struct StartupTests {
    /// Every size flag has a range, checked before anything is allocated (`--rate-table 1000000000000` used to
    /// allocate 44 TB and abort); negative numbers are read as values (`--threads -1` said "Missing value").
    @Test(arguments: [
        (["server", "--rate-table", "1000000000000"], "--rate-table 1000000000000 is out of range; give 4 to 1048576"),
        (["server", "--threads", "-1"], "--threads -1 is out of range; give 1 to 1024"),
        (["server", "--threads=-1"], "--threads -1 is out of range; give 1 to 1024"),
        (["server", "--rate-limit", "-1"], "--rate-limit -1.0 is out of range: a rate cannot be negative"),
        (["server", "--timeout", "-1s"], "'-1s' is not a duration: it is negative"),
        (["server", "--max-size", "70000"], "--max-size 70000 is out of range; give 0 to 65535"),
        (["server", "--receive-buffer", "0"], "--receive-buffer 0 is out of range; give 1 to 1073741824"),
        (["server", "--lines-per-second", "-5"], "--lines-per-second -5 is out of range"),
        (["server", "--loop-limit", "-2"], "--loop-limit -2 is out of range"),
        (["client", "--address", "127.0.0.1:9", "--timeout", "-1s"], "'-1s' is not a duration: it is negative"),
        // ping, bench and mesh say 2 for a usage error, as ping(8) does.
        (["ping", "127.0.0.1:9", "-c", "-1"], "-c/--count must be at least 1"),
        (["mesh", "--peer", "127.0.0.1:9", "--flows", "-3"], "--flows -3: from 1 to 64 source ports"),
        // The options ping, bench and mesh share say the same, under every name (bench's --loss-timeout too).
        (["bench", "127.0.0.1:9", "--flows", "0"], "--flows 0: from 1 to 64 source ports"),
        (["bench", "127.0.0.1:9", "--loss-timeout", "0s"], "-W/--timeout must be more than 0"),
        (["ping", "127.0.0.1:9", "-W", "0s"], "-W/--timeout must be more than 0"),
    ])
    func sizesAndNegativeNumbersAreUsageErrors(arguments: [String], message: String) async throws {
        let result = try await Spawned.run(udpecho, arguments)
        let usage: Int32 = ["ping", "mesh", "bench"].contains(arguments[0]) ? 2 : 64
        #expect(result.status == usage, "\(arguments): \(result.status) \(result.error)")
        #expect(result.error.contains(message), "\(arguments): \(result.error)")
        #expect(!result.error.contains("Missing value"), "\(result.error)")
    }

    /// With too few descriptors, SwiftNIO trapped (`server --metrics` under `ulimit -n 12`: SIGILL) and the mesh's
    /// prober gave up without a word (`--flows 64` under 16). Now each says what to raise, with exit 1 (the client:
    /// 6, its "other error").
    @Test(arguments: [
        (12, ["server", "--address", "127.0.0.1:0", "--metrics", "127.0.0.1:0"], 1),
        (16, ["mesh", "--address", "127.0.0.1:0", "--flows", "64", "--peer", "127.0.0.1:9"], 1),
        (8, ["client", "--address", "127.0.0.1:9"], 6),
    ])
    func tooFewDescriptorsSayWhatToRaise(limit: Int, arguments: [String], status: Int32) async throws {
        let result = try await Spawned.run(
            "/bin/bash",
            ["-c", "ulimit -n \(limit) && exec \"$0\" \"$@\" </dev/null", udpecho] + arguments,
            timeout: 10
        )
        #expect(result.status == status, "\(arguments): \(result.status) \(result.error)")
        #expect(result.error.contains("too few file descriptors"), "\(result.error)")
        #expect(result.error.contains("raise it: ulimit -n "), "\(result.error)")
        #expect(!result.lines.contains { $0.hasPrefix("running") || $0.hasPrefix("mesh agent") }, "\(result.lines)")
    }

    /// At the limit of threads (a cgroup's pids.max, as a container's or systemd's TasksMax= sets it), a serving
    /// thread that cannot be started trapped the server (`--threads 64` under 10 tasks: SIGILL, a precondition). Now
    /// the threads already started stop, the server says what it served and what to raise, and exits 1.
    @Test(.enabled(if: PidsCgroup.available, "needs root and the cgroup pids controller (/sys/fs/cgroup/pids)"))
    func aThreadLimitStopsTheServerWithItsReason() async throws {
        let cgroup = try PidsCgroup(maximum: 12)
        defer { cgroup.remove() }
        let result = try await Spawned.run(
            "/bin/sh",
            [
                "-c", "echo $$ > \(cgroup.path)/cgroup.procs && exec \"$0\" \"$@\" </dev/null", udpecho, "server",
                "--address", "127.0.0.1:0", "--threads", "64",
            ],
            timeout: 20
        )
        #expect(result.status == 1, "\(result.status) \(result.error)")
        #expect(
            result.error.contains("udpecho: error: cannot start a thread (serving thread ")
                && result.error.contains("of 64): Resource temporarily unavailable")
                && result.error.contains("cgroup's pids.max"),
            "\(result.error)"
        )
        #expect(result.lines.last?.hasPrefix("summary: received=0 ") == true, "\(result.lines)")
    }

    /// A metrics address that cannot be bound (here: a port another program listens on) stops the server before it
    /// says it runs, with the system's reason in words and no stray parenthesis.
    @Test(arguments: [
        ["server", "--address", "127.0.0.1:0"], ["mesh", "--address", "127.0.0.1:0", "--peer", "127.0.0.1:9"],
    ])
    func aMetricsAddressThatCannotBeBoundStopsItFirst(command: [String]) async throws {
        let listener = try Spawned(
            python,
            [
                "python3", "-c",
                "import socket, time; s = socket.socket(); s.bind(('127.0.0.1', 0)); s.listen(); "
                    + "print(s.getsockname()[1], flush=True); time.sleep(30)",
            ]
        )
        defer { listener.signal(SIGKILL) }
        let port = try #require(await listener.waitForLine { Int($0) != nil })
        let result = try await Spawned.run(udpecho, command + ["--metrics", "127.0.0.1:\(port)"], timeout: 10)
        #expect(result.status == 1, "\(result.status) \(result.error)")
        #expect(result.lines.isEmpty, "it said it runs: \(result.lines)")
        #expect(
            result.error.contains(
                "cannot serve metrics on 127.0.0.1:\(port): bind 127.0.0.1:\(port) failed: Address already in use"
            ),
            "\(result.error)"
        )
        let text = result.error
        #expect(text.filter { $0 == "(" }.count == text.filter { $0 == ")" }.count, "\(text)")
    }

    /// A FIFO given as the STAMP key file would hold the start for ever (open blocks until a writer comes): refused
    /// at once. (A start that blocked would be killed at the run's 10 s timeout, without exit status 64; the time
    /// itself is not asserted, since a loaded machine stretches any start.)
    @Test func aKeyFileThatIsAFIFOIsRefused() async throws {
        let directory = try temporaryDirectory("key")
        defer { try? FileManager.default.removeItem(at: directory) }
        let fifo = directory.appendingPathComponent("key")
        #expect(mkfifo(fifo.path, 0o600) == 0)
        let result = try await Spawned.run(
            udpecho,
            ["server", "--protocol", "stamp", "--address", "127.0.0.1:0", "--stamp-key-file", fifo.path],
            timeout: 10
        )
        #expect(result.status == 64, "\(result.status) \(result.error)")
        #expect(result.error.contains("is a FIFO, not a regular file"), "\(result.error)")
    }
}

/// A cgroup (v1 pids controller) of its own with a limit of tasks, for a process the test moves into it.
struct PidsCgroup {
    static let root = "/sys/fs/cgroup/pids"
    static var available: Bool { getuid() == 0 && FileManager.default.fileExists(atPath: root + "/cgroup.procs") }

    let path: String

    init(maximum: Int) throws {
        self.path = Self.root + "/udpecho-test-\(uniqueHostID())"
        try FileManager.default.createDirectory(atPath: self.path, withIntermediateDirectories: false)
        try "\(maximum)\n".write(toFile: self.path + "/pids.max", atomically: false, encoding: .utf8)
    }

    /// Removes the cgroup (its processes have ended).
    func remove() { rmdir(self.path) }
}
