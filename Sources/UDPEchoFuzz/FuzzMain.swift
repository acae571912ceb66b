// The fuzzer's driver: `udpecho-fuzz TARGET [libFuzzer options] [CORPUS...]`.
//
// Built by scripts/fuzz.sh with `-sanitize=fuzzer,address -DFUZZING`, it hands the run to libFuzzer's driver
// (LLVMFuzzerRunDriver) with TARGET's entry point. Built plainly (as `swift build` builds every target), it runs each
// file given, or each file in each folder given, through TARGET once: a crash an earlier run found can be replayed
// without the fuzzer.
@_spi(Fuzzing) import UDPEcho

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// The target of this run; libFuzzer calls back through a C function, which cannot capture it.
nonisolated(unsafe) private var selected = FuzzTarget.arguments

/// Writes `text` to standard error.
private func complain(_ text: String) {
    var bytes = Array(text.utf8)
    _ = write(2, &bytes, bytes.count)
}

private func runOne(_ data: UnsafePointer<UInt8>?, _ count: Int) -> CInt {
    selected.run(UnsafeRawBufferPointer(start: count == 0 ? nil : data, count: count))
    return 0
}

#if FUZZING
@_silgen_name("LLVMFuzzerRunDriver")
private func LLVMFuzzerRunDriver(
    _ argc: UnsafeMutablePointer<CInt>,
    _ argv: UnsafeMutablePointer<UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?>,
    _ callback: @convention(c) (UnsafePointer<UInt8>?, Int) -> CInt
) -> CInt

// libFuzzer's own main is not linked in (SwiftPM makes this file's main the program's); the driver is called here.
@_cdecl("LLVMFuzzerTestOneInput")
public func LLVMFuzzerTestOneInput(_ data: UnsafePointer<UInt8>?, _ count: Int) -> CInt { runOne(data, count) }
#endif

@main
struct FuzzMain {
    static func main() {
        let arguments = CommandLine.arguments
        guard arguments.count >= 2, let target = FuzzTarget(rawValue: arguments[1]) else {
            let names = FuzzTarget.allCases.map(\.rawValue).joined(separator: ", ")
            complain("usage: udpecho-fuzz TARGET [libFuzzer options] [CORPUS...]\ntargets: \(names)\n")
            exit(64)
        }
        selected = target
        #if FUZZING
        // libFuzzer reads argv[0] and its options; TARGET is taken out.
        let argv = CommandLine.unsafeArgv
        argv[1] = argv[0]
        var rest: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>? = argv + 1
        var count = CommandLine.argc - 1
        exit(LLVMFuzzerRunDriver(&count, &rest) { runOne($0, $1) })
        #else
        var ran = 0
        for path in arguments.dropFirst(2) {
            for file in files(at: path) {
                guard let bytes = contents(of: file) else {
                    complain("udpecho-fuzz: cannot read \(file)\n")
                    exit(66)
                }
                _ = bytes.withUnsafeBufferPointer { runOne($0.baseAddress, $0.count) }
                ran += 1
            }
        }
        print("\(target.rawValue): ran \(ran) inputs")
        #endif
    }
}

#if !FUZZING
/// `path` itself, or the files in it when it is a folder (sorted).
private func files(at path: String) -> [String] {
    guard let directory = opendir(path) else { return [path] }
    defer { closedir(directory) }
    var names: [String] = []
    while let entry = readdir(directory) {
        let name = withUnsafeBytes(of: entry.pointee.d_name) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
        if !name.hasPrefix(".") { names.append("\(path)/\(name)") }
    }
    return names.sorted()
}

private func contents(of path: String) -> [UInt8]? {
    guard let file = fopen(path, "rb") else { return nil }
    defer { fclose(file) }
    var bytes: [UInt8] = []
    var chunk = [UInt8](repeating: 0, count: 65536)
    while true {
        let read = fread(&chunk, 1, chunk.count, file)
        bytes += chunk[0..<read]
        if read < chunk.count { return ferror(file) == 0 ? bytes : nil }
    }
}
#endif
