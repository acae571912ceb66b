import Synchronization
import Testing

@testable import UDPEcho

#if canImport(Glibc)
import Glibc
#endif

/// The threads that blocking loops run on (serving, probing, path MTU discovery, OWAMP sessions): at the limit of
/// threads, a clear error instead of a trap.
@Suite struct WorkerThreadTests {
    /// A thread runs its body and returns its result to the task.
    @Test func aLoopRunsOnAThreadOfItsOwn() async throws {
        let caller = pthread_self()
        let ran = try await runOnOwnThread("test") {
            pthread_equal(pthread_self(), caller) == 0
        } onCancel: {
        }
        #expect(ran)
    }

    /// When no thread can be started (pthread_create's EAGAIN), the caller gets ``EchoError/threadsExhausted`` with
    /// what to raise, and the body never runs.
    @Test func noThreadIsAClearErrorAndTheBodyNeverRuns() async throws {
        let ran = Atomic(false)
        await #expect {
            try await runOnOwnThread("path MTU discovery", startThread: { _ in EAGAIN }) {
                ran.store(true, ordering: .relaxed)
            } onCancel: {
            }
        } throws: { error in
            guard case .threadsExhausted(let purpose, let code) = error as? EchoError else { return false }
            let text = "\(error)"
            return purpose == "path MTU discovery" && code == EAGAIN
                && text.hasPrefix("cannot start a thread (path MTU discovery): Resource temporarily unavailable")
                && text.contains("ulimit -u") && text.contains("TasksMax=") && text.contains("pids.max")
        }
        let bodyRan = ran.load(ordering: .relaxed)
        #expect(!bodyRan)
    }
}
