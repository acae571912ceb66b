import Foundation
import Testing
@_spi(Fuzzing) import UDPEcho

/// Every seed of every fuzz target (Fuzz/corpus), and every input a fuzzing run ever stopped on (Fuzz/regressions),
/// run through its target: each must run to its end (a crash, or a broken invariant, stops the test process). The
/// seeds must also exist: a target without any would start the fuzzer from nothing.
@Suite struct FuzzCorpusTests {
    static let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .deletingLastPathComponent().appendingPathComponent("Fuzz")

    static func inputs(_ folder: String, _ target: FuzzTarget) -> [URL] {
        let directory = Self.root.appendingPathComponent(folder).appendingPathComponent(target.rawValue)
        let names = (try? FileManager.default.contentsOfDirectory(atPath: directory.path)) ?? []
        return names.filter { !$0.hasPrefix(".") }.sorted().map { directory.appendingPathComponent($0) }
    }

    @Test(arguments: FuzzTarget.allCases.filter { $0 != .xdpProgram })
    func everySeedAndRegressionRuns(_ target: FuzzTarget) throws {
        try Self.runAll(target)
    }

    /// The XDP program's target loads the program into the kernel: root (or CAP_BPF and CAP_NET_ADMIN) only.
    @Test(.enabled(if: geteuid() == 0, "the XDP program's target needs root (BPF_PROG_TEST_RUN)"))
    func everyXDPSeedAndRegressionRuns() throws {
        try Self.runAll(.xdpProgram)
    }

    static func runAll(_ target: FuzzTarget) throws {
        let seeds = Self.inputs("corpus", target)
        #expect(seeds.count >= 2, "Fuzz/corpus/\(target.rawValue) has \(seeds.count) seeds")
        for file in seeds + Self.inputs("regressions", target) {
            let data = try Data(contentsOf: file)
            data.withUnsafeBytes { target.run($0) }
        }
    }

    @Test func theScriptKnowsEveryTarget() throws {
        let script = try String(
            contentsOf: Self.root.deletingLastPathComponent().appendingPathComponent("scripts/fuzz.sh"),
            encoding: .utf8
        )
        // The list may run over several lines, to its closing parenthesis.
        let start = try #require(script.range(of: "\ntargets=("))
        let listed = script[start.upperBound...].prefix { $0 != ")" }
        for target in FuzzTarget.allCases { #expect(listed.contains(target.rawValue), "\(target.rawValue)") }
    }
}
