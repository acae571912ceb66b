import CUDPEcho

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// Reads a socket's queued datagrams and its error queue in batches (`recvmmsg`), under ``ProbeErrnoPolicy``. The two
/// have buffers of their own, so that reading the error queue in the middle of a batch of replies (a transmit
/// timestamp that came after its reply) leaves the replies still to be read intact.
final class DatagramReceiver {
    static let batchSize = 64
    /// The datagrams, 64 KiB each (an anonymous mapping: a small datagram touches a page).
    let datagrams: OpaquePointer
    /// The error queue's messages: what they quote of a probe (its start says which) and their control messages.
    let errors: OpaquePointer

    init?() {
        guard let datagrams = cudpecho_batch_create(Int32(Self.batchSize), 65536) else { return nil }
        guard let errors = cudpecho_batch_create(Int32(Self.batchSize), 2048) else {
            cudpecho_batch_destroy(datagrams)
            return nil
        }
        self.datagrams = datagrams
        self.errors = errors
    }

    deinit {
        cudpecho_batch_destroy(self.datagrams)
        cudpecho_batch_destroy(self.errors)
    }

    /// Reads what `fd` has queued, a batch at a time, until it has nothing more; `handle` is called with each batch's
    /// size, and reads the slots of ``datagrams``. Returns the datagrams read.
    @discardableResult
    func drain(_ fd: Int32, _ handle: (_ count: Int) -> Void) -> Int {
        var total = 0
        while true {
            let received = cudpecho_batch_recv(fd, self.datagrams, Int32(Self.batchSize), 0)
            if received < 0 {
                if ProbeErrnoPolicy.receiveAgain(after: -received) { continue }
                return total
            }
            handle(Int(received))
            total += Int(received)
            if received < Self.batchSize { return total }
        }
    }

    /// Reads `fd`'s error queue until it is empty: `handle` gets each message that carries an error or a timestamp,
    /// and the start of the datagram it quotes.
    func drainErrors(_ fd: Int32, hardware: Int32, _ handle: (cudpecho_error_info, UnsafeRawBufferPointer) -> Void) {
        var info = cudpecho_error_info()
        while true {
            let received = cudpecho_batch_recv_errors(fd, self.errors, Int32(Self.batchSize))
            guard received > 0 else {
                if received < 0 { SystemCall.checkPossible(-received, "recvmmsg") }
                return
            }
            for slot in 0..<received where cudpecho_batch_error(self.errors, slot, hardware, &info) != 0 {
                handle(info, self.payload(self.errors, Int(slot)))
            }
            if received < Self.batchSize { return }
        }
    }

    /// The datagram in `slot` of `batch`.
    @inline(__always)
    func payload(_ batch: OpaquePointer, _ slot: Int) -> UnsafeRawBufferPointer {
        UnsafeRawBufferPointer(
            start: cudpecho_batch_payload(batch, Int32(slot)),
            count: cudpecho_batch_length(batch, Int32(slot))
        )
    }

    /// The datagram in `slot` of ``datagrams``.
    @inline(__always)
    func datagram(_ slot: Int) -> UnsafeRawBufferPointer { self.payload(self.datagrams, slot) }
}
