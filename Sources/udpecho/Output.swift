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

    func line(_ text: String) {
        self.write(text + "\n")
    }

    func write(_ text: String) {
        var text = text
        text.withUTF8 { self.write(UnsafeRawBufferPointer($0)) }
    }

    func write(_ bytes: UnsafeRawBufferPointer) {
        var offset = 0
        while offset < bytes.count {
            let written = Glibc.write(self.descriptor, bytes.baseAddress! + offset, bytes.count - offset)
            if written < 0 {
                if errno == EINTR { continue }
                return  // a closed stdout must not kill the program
            }
            offset += written
        }
    }
}

/// Hands lines from the server's threads to one writer, so that a slow terminal or a full pipe never stalls serving:
/// past `capacity` queued lines, new ones are counted and dropped instead of waiting.
final class LineQueue: Sendable {
    private let continuation: AsyncStream<String>.Continuation
    private let stream: AsyncStream<String>
    private let lost = Atomic<Int>(0)

    init(capacity: Int = 4096) {
        (self.stream, self.continuation) = AsyncStream.makeStream(
            of: String.self,
            bufferingPolicy: .bufferingOldest(capacity)
        )
    }

    func enqueue(_ line: String) {
        if case .dropped = self.continuation.yield(line) {
            self.lost.add(1, ordering: .relaxed)
        }
    }

    /// Lines dropped because the queue was full.
    var lostLines: Int { self.lost.load(ordering: .relaxed) }

    /// Writes lines to `output` until ``finish()`` has been called and the queue is empty.
    func drain(to output: Stream) async {
        for await line in self.stream { output.line(line) }
    }

    func finish() {
        self.continuation.finish()
    }
}
