import Foundation

#if canImport(Glibc)
import Glibc
#endif

/// How tests start Python peers: `Spawned(python, ["python3", "-c", script, ...])`.
public let python = "/usr/bin/env"

/// A process started by a test, with its output collected as it comes, so that a test can wait for a line.
public final class Spawned: @unchecked Sendable {
    public let process = Process()
    private let input = Pipe()
    private let condition = NSCondition()
    private var outBytes = Data()
    private var errBytes = Data()
    private var outClosed = false
    private var errClosed = false

    /// Starts `executable` with `arguments`; standard input stays open until ``closeInput()``.
    public init(_ executable: String, _ arguments: [String]) throws {
        self.process.executableURL = URL(fileURLWithPath: executable)
        self.process.arguments = arguments
        self.process.standardInput = self.input
        let out = Pipe()
        let err = Pipe()
        self.process.standardOutput = out
        self.process.standardError = err
        try self.process.run()
        // One reading thread per stream, holding the object until its stream ends.
        for (pipe, isError) in [(out, false), (err, true)] {
            Thread.detachNewThread { self.collect(pipe.fileHandleForReading.fileDescriptor, isError: isError) }
        }
    }

    deinit {
        if self.process.isRunning { self.process.terminate() }
    }

    private func collect(_ descriptor: Int32, isError: Bool) {
        var buffer = [UInt8](repeating: 0, count: 65536)
        while true {
            let count = buffer.withUnsafeMutableBytes { read(descriptor, $0.baseAddress, $0.count) }
            if count < 0 && errno == EINTR { continue }
            self.condition.lock()
            if count <= 0 {
                if isError { self.errClosed = true } else { self.outClosed = true }
            } else if isError {
                self.errBytes.append(contentsOf: buffer[0..<count])
            } else {
                self.outBytes.append(contentsOf: buffer[0..<count])
            }
            self.condition.broadcast()
            self.condition.unlock()
            if count <= 0 { return }
        }
    }

    /// Writes `bytes` to the process's standard input.
    public func write(_ bytes: [UInt8]) {
        self.input.fileHandleForWriting.write(Data(bytes))
    }

    public func closeInput() {
        try? self.input.fileHandleForWriting.close()
    }

    public func signal(_ number: Int32) {
        kill(self.process.processIdentifier, number)
    }

    /// Everything printed so far on standard output.
    public var output: Data { self.condition.withLock { self.outBytes } }
    public var outputLines: [String] { Self.lines(self.output) }
    public var errorText: String { String(decoding: self.condition.withLock { self.errBytes }, as: UTF8.self) }

    /// Waits until a line of standard output satisfies `predicate`; returns it, or nil after `timeout` or when the
    /// output ends without one.
    public func waitForLine(
        timeout: TimeInterval = 10,
        _ predicate: @escaping @Sendable (String) -> Bool
    ) async -> String? {
        await onThread {
            let deadline = Date(timeIntervalSinceNow: timeout)
            self.condition.lock()
            defer { self.condition.unlock() }
            while true {
                if let line = Self.lines(self.outBytes).first(where: predicate) { return line }
                if self.outClosed || !self.condition.wait(until: deadline) { return nil }
            }
        }
    }

    /// Waits until standard error contains `text`; false after `timeout` or when it ends without it.
    public func waitForError(_ text: String, timeout: TimeInterval = 10) async -> Bool {
        await onThread {
            let deadline = Date(timeIntervalSinceNow: timeout)
            self.condition.lock()
            defer { self.condition.unlock() }
            while true {
                if String(decoding: self.errBytes, as: UTF8.self).contains(text) { return true }
                if self.errClosed || !self.condition.wait(until: deadline) { return false }
            }
        }
    }

    /// Waits up to `timeout` for the process to exit and its output to end; kills it past that. Returns the exit
    /// status (128 + signal number if killed by a signal).
    @discardableResult
    public func waitForExit(timeout: TimeInterval = 20) async -> Int32 {
        await onThread {
            let deadline = Date(timeIntervalSinceNow: timeout)
            self.condition.lock()
            while !(self.outClosed && self.errClosed) {
                if !self.condition.wait(until: deadline) {
                    self.process.interrupt()
                    kill(self.process.processIdentifier, SIGKILL)
                    break
                }
            }
            self.condition.unlock()
            self.process.waitUntilExit()
            return self.process.terminationReason == .uncaughtSignal
                ? 128 + self.process.terminationStatus : self.process.terminationStatus
        }
    }

    static func lines(_ data: Data) -> [String] {
        String(decoding: data, as: UTF8.self).split(separator: "\n", omittingEmptySubsequences: false).dropLast()
            .map(String.init)
    }

    /// Runs a process to completion on this thread (for clean-up in a `defer`, where nothing can be awaited): its
    /// exit status (-1 if it could not start) and standard output; standard error is discarded.
    public static func runBlocking(_ executable: String, _ arguments: [String]) -> (status: Int32, output: String) {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: executable)
        process.arguments = arguments
        let output = Pipe()
        process.standardOutput = output
        process.standardError = FileHandle.nullDevice
        guard (try? process.run()) != nil else { return (-1, "") }
        let data = output.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        return (process.terminationStatus, String(decoding: data, as: UTF8.self))
    }

    /// Runs a process to completion with `input` on its standard input.
    public static func run(
        _ executable: String,
        _ arguments: [String],
        input: [UInt8] = [],
        timeout: TimeInterval = 20
    ) async throws -> (status: Int32, output: Data, lines: [String], error: String) {
        let spawned = try Spawned(executable, arguments)
        spawned.write(input)
        spawned.closeInput()
        let status = await spawned.waitForExit(timeout: timeout)
        return (status, spawned.output, spawned.outputLines, spawned.errorText)
    }
}

/// Runs a measurement whose upper bounds a loaded machine can spoil (the test suite runs in parallel on 2 cores):
/// `attempt` returns nil when every bound held, or what did not. Up to `times` attempts, with a pause growing from
/// half a second between them so that a later attempt falls outside the burst of load in which the suite starts; the
/// last failure is returned (nil: one attempt passed). A measurement that is wrong fails every attempt.
public func firstPassingAttempt(_ times: Int = 4, _ attempt: () async throws -> String?) async rethrows -> String? {
    var failure: String?
    for index in 0..<times {
        if index > 0 { try? await Task.sleep(for: .milliseconds(500 << (index - 1))) }
        failure = try await attempt()
        if failure == nil { return nil }
    }
    return failure
}
