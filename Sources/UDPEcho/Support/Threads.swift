import Synchronization

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// Starts detached threads for loops that block in system calls (serving, probing): they must not hold a thread of
/// Swift's cooperative pool.
enum WorkerThread {
    private final class Box {
        let body: () -> Void
        init(_ body: @escaping () -> Void) { self.body = body }
    }

    /// Starts `body` on a detached thread of its own.
    ///
    /// - Returns: 0, or pthread_create's error (EAGAIN at the limit of threads: RLIMIT_NPROC, a cgroup's pids.max);
    ///   then `body` never runs.
    static func start(_ body: @escaping @Sendable () -> Void) -> Int32 {
        let box = Unmanaged.passRetained(Box(body)).toOpaque()
        var thread = pthread_t()
        let status = pthread_create(
            &thread,
            nil,
            { raw in
                let box = Unmanaged<Box>.fromOpaque(raw!).takeRetainedValue()
                box.body()
                return nil
            },
            box
        )
        guard status == 0 else {
            Unmanaged<Box>.fromOpaque(box).release()
            return status
        }
        pthread_detach(thread)
        return 0
    }
}

/// A value that crosses to another thread once, its owner touching it no more meanwhile (as SwiftNIO's
/// `UnsafeTransfer`): the one place where a value that is not `Sendable` is handed to a thread of its own.
struct UnsafeTransfer<Value>: @unchecked Sendable {
    var wrappedValue: Value
    init(_ wrappedValue: Value) { self.wrappedValue = wrappedValue }
}

/// Runs `body`, a loop that blocks in system calls, on a thread of its own, and returns its result to the calling
/// task. If that task is cancelled meanwhile, `onCancel` is called (on whatever thread cancels): it must make `body`
/// return soon, by a flag it checks or by waking what it blocks in.
///
/// - Throws: ``EchoError/threadsExhausted(purpose:errno:)`` if no thread can be started (`body` has not run).
///   `startThread` starts it (tests stand in for the limit of threads with theirs).
func runOnOwnThread<Result: Sendable>(
    _ purpose: String,
    startThread: (@escaping @Sendable () -> Void) -> Int32 = WorkerThread.start,
    _ body: @escaping @Sendable () -> Result,
    onCancel: @escaping @Sendable () -> Void
) async throws(EchoError) -> Result {
    let outcome: Swift.Result<Result, EchoError> = await withTaskCancellationHandler {
        await withCheckedContinuation { continuation in
            let status = startThread { continuation.resume(returning: .success(body())) }
            if status != 0 {
                continuation.resume(returning: .failure(.threadsExhausted(purpose: purpose, errno: status)))
            }
        }
    } onCancel: {
        onCancel()
    }
    return try outcome.get()
}
