import ArgumentParser
import FoundationEssentials
import NIOCore
import UDPEcho
import UnixSignals

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// Resolves a target name off the cooperative threads, preferring IPv4 as Go does.
func resolveTarget(_ target: HostAndPort) async throws -> SocketAddress {
    try await NameResolver.resolvePreferringIPv4(target)
}

/// Runs `work`; a library error (a socket that cannot be opened, timestamps the interface does not have) is a setup
/// error: said on standard error, exit code 2.
func exitOnSetupError<Result: Sendable>(_ work: () async throws -> Result) async throws -> Result {
    do {
        return try await work()
    } catch let error as EchoError {
        Stream.err.line("udpecho: error: \(error)")
        throw ExitCode(2)
    }
}

/// Runs `work`, cancelling it on Ctrl-C (SIGINT) or SIGTERM, and returns its result either way.
func runUntilInterrupted<Result: Sendable>(_ work: @escaping @Sendable () async throws -> Result) async throws -> Result
{
    let signals = await UnixSignalsSequence(trapping: .sigint, .sigterm)
    let task = Task { try await work() }
    let watcher = Task {
        for await _ in signals {
            task.cancel()
            return
        }
    }
    defer { watcher.cancel() }
    return try await task.value
}

/// Writes a report the operator asked for (`--plot`, `--histogram`) to `path`, whole or not at all: written beside
/// it and renamed into place. A path that is there and is not a regular file (a FIFO, a device, a directory) is
/// refused, as is one that cannot be written: said on standard error, exit code 2.
func writeReport(_ text: String, to path: String) throws {
    var status = stat()
    if lstat(path, &status) == 0 && (status.st_mode & S_IFMT) != S_IFREG {
        Stream.err.line("udpecho: error: cannot write '\(path)': it is there and is not a regular file")
        throw ExitCode(2)
    }
    do {
        try Data(text.utf8).write(to: URL(fileURLWithPath: path), options: .atomic)
    } catch {
        Stream.err.line("udpecho: error: cannot write '\(path)': \(error)")
        throw ExitCode(2)
    }
}
