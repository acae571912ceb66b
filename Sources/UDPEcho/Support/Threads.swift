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

    static func start(_ body: @escaping @Sendable () -> Void) {
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
        precondition(status == 0, "pthread_create failed: \(status)")
        pthread_detach(thread)
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
func runOnOwnThread<Result: Sendable>(
    _ body: @escaping @Sendable () -> Result,
    onCancel: @escaping @Sendable () -> Void
) async -> Result {
    await withTaskCancellationHandler {
        await withCheckedContinuation { continuation in
            WorkerThread.start { continuation.resume(returning: body()) }
        }
    } onCancel: {
        onCancel()
    }
}
