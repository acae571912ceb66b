#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// Why a file an operator named (a peers list, a key) was not read.
public enum OperatorFileError: Error, Equatable, CustomStringConvertible {
    /// It could not be opened or read: the call's errno.
    case unreadable(path: String, errno: Int32)
    /// It is not a regular file (a FIFO, a device, a directory, a socket), which could block a reader for ever or
    /// never end.
    case notRegular(path: String, kind: String)
    /// It is larger than the limit: refused whole, never cut (a cut could fall inside a line and change it).
    case tooLarge(path: String, size: Int, limit: Int)

    /// What is wrong, with the path.
    public var description: String {
        switch self {
        case .unreadable(let path, let code):
            return "\(path): cannot be read: \(String(cString: strerror(code)))"
        case .notRegular(let path, let kind):
            return "\(path): is a \(kind), not a regular file; give a file"
        case .tooLarge(let path, let size, let limit):
            return "\(path): is \(size) bytes, more than the \(limit) bytes taken; nothing of it is read"
        }
    }
}

/// Reading a small file that an operator names: only a regular file, whole, up to a limit.
///
/// It is opened without blocking, so a FIFO (or a device) put where the file was expected is refused at once instead
/// of holding the reader (and a shutdown that waits for it) for ever; a file over the limit is refused with its size,
/// never read in part.
enum OperatorFile {
    /// The bytes of the regular file at `path`, which may hold at most `limit` bytes.
    static func read(_ path: String, limit: Int) throws(OperatorFileError) -> [UInt8] {
        let fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK | O_NOCTTY)
        guard fd >= 0 else { throw .unreadable(path: path, errno: errno) }
        defer { close(fd) }
        var info = stat()
        guard fstat(fd, &info) == 0 else { throw .unreadable(path: path, errno: errno) }
        let type = info.st_mode & S_IFMT
        guard type == S_IFREG else { throw .notRegular(path: path, kind: Self.kind(type)) }
        guard Int(info.st_size) <= limit else { throw .tooLarge(path: path, size: Int(info.st_size), limit: limit) }
        // The file may grow while it is read: one byte past the limit is enough to know.
        var bytes = [UInt8](repeating: 0, count: Int(info.st_size) + 1)
        var filled = 0
        while filled < bytes.count {
            let count = bytes.withUnsafeMutableBytes { Glibc.read(fd, $0.baseAddress! + filled, $0.count - filled) }
            if count < 0 && errno == EINTR { continue }
            guard count >= 0 else { throw .unreadable(path: path, errno: errno) }
            if count == 0 { break }
            filled += count
            if filled > limit { throw .tooLarge(path: path, size: filled, limit: limit) }
            if filled == bytes.count { bytes += [UInt8](repeating: 0, count: min(65536, limit + 1 - filled)) }
        }
        bytes.removeSubrange(filled...)
        return bytes
    }

    private static func kind(_ type: mode_t) -> String {
        switch type {
        case S_IFIFO: "FIFO"
        case S_IFDIR: "directory"
        case S_IFCHR: "character device"
        case S_IFBLK: "block device"
        case S_IFSOCK: "socket"
        case S_IFLNK: "symbolic link"
        default: "special file"
        }
    }
}

extension String {
    /// At most `limit` characters of the text, as a person can read them in a message: control characters escaped,
    /// invalid bytes (U+FFFD) as "?", and "…" where it was cut.
    func excerpt(_ limit: Int = 60) -> String {
        var out = ""
        var count = 0
        for scalar in self.unicodeScalars {
            if count == limit { return out + "…" }
            if scalar == "\u{FFFD}" {
                out += "?"
            } else if scalar.value < 0x20 || scalar.value == 0x7F {
                out += scalar.escaped(asASCII: true)
            } else {
                out.unicodeScalars.append(scalar)
            }
            count += 1
        }
        return out
    }
}
