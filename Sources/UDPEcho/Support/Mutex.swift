#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// A value under a lock: the library's `Mutex`, in place of the standard library's.
///
/// The standard library's `Mutex` on Linux takes a contended lock in the kernel (a priority-inheritance futex, in
/// its uninstrumented slow path), where ThreadSanitizer cannot see one thread's release become the next one's
/// acquire: under contention it reports the data the lock protects as raced (the CI run of 2026-12-05 did, on the
/// metrics endpoint's connection table). This one is a `pthread_mutex_t`, which ThreadSanitizer follows, so that its
/// reports stay true. Declared in this module, it is what `Mutex` means here; the interface is the part of the
/// standard library's that the library uses.
struct Mutex<Value>: @unchecked Sendable {
    private final class Storage {
        var value: Value
        let lock: UnsafeMutablePointer<pthread_mutex_t>

        init(_ value: Value) {
            self.value = value
            self.lock = .allocate(capacity: 1)
            self.lock.initialize(to: pthread_mutex_t())
            pthread_mutex_init(self.lock, nil)
        }

        deinit {
            pthread_mutex_destroy(self.lock)
            self.lock.deinitialize(count: 1)
            self.lock.deallocate()
        }
    }

    private let storage: Storage

    init(_ value: Value) { self.storage = Storage(value) }

    /// Runs `body` with the value, the lock held.
    func withLock<Result, E: Error>(_ body: (inout Value) throws(E) -> Result) throws(E) -> Result {
        pthread_mutex_lock(self.storage.lock)
        defer { pthread_mutex_unlock(self.storage.lock) }
        return try body(&self.storage.value)
    }
}
