import Foundation
import TestSupport
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// Inside a host of its own: starts `COMMAND...` as systemd's socket unit would (`systemd-socket-activate` with a
/// datagram socket on PORT, every address), echoes a line through it over IPv4 and IPv6 with the installed client,
/// stops it with SIGTERM as systemd does and prints its output and exit status.
/// `bash -c SCRIPT bash PORT COMMAND...`
let socketActivationRun = """
    port=$1; shift
    output=$(mktemp)
    systemd-socket-activate --datagram --listen "$port" "$@" > "$output" 2>&1 &
    server=$!
    for _ in $(seq 200); do grep -q '^Listening on' "$output" && break; sleep 0.05; done
    for address in 127.0.0.1 '[::1]'; do
      printf 'through the package\\n' | /usr/bin/udpecho client --address "$address:$port" --timeout 5s
      echo "client-status $?"
    done
    kill -TERM "$server"
    wait "$server"
    echo "server-status $?"
    cat "$output"
    rm -f "$output"
    """

/// What the Debian package holds besides directories: the program, a manual per command, completions, the units and
/// the documents Debian asks for.
let packagedFiles =
    [
        "/usr/bin/udpecho",
        "/usr/share/bash-completion/completions/udpecho",
        "/usr/share/zsh/vendor-completions/_udpecho",
        "/usr/share/fish/vendor_completions.d/udpecho.fish",
        "/lib/systemd/system/udpecho.service",
        "/lib/systemd/system/udpecho.socket",
        "/lib/systemd/system/udpecho-mesh.service",
        "/usr/share/doc/udpecho/copyright",
        "/usr/share/doc/udpecho/changelog.Debian.gz",
        "/usr/share/lintian/overrides/udpecho",
    ]
    + ["udpecho", "udpecho-server", "udpecho-client", "udpecho-ping", "udpecho-bench", "udpecho-mtu", "udpecho-mesh"]
    .map {
        "/usr/share/man/man1/\($0).1.gz"
    }

/// The Swift toolchain's `swift`, where CI and the README put it.
let swiftDriver = ["/opt/swift/usr/bin/swift", "/usr/bin/swift"].first {
    FileManager.default.isExecutableFile(atPath: $0)
}

/// What ships: the Debian package and the library's documentation. Both build in `.build-static` (the package's
/// release build folder, not `.build`, which `swift test` holds), one after the other, at the lowest CPU priority so
/// that the rest of the suite runs meanwhile.
@Suite(.serialized) struct PackageTests {
    static var available: Bool {
        let executable = { FileManager.default.isExecutableFile(atPath: $0) }
        return TestNetwork.available && executable("/usr/bin/dpkg-deb") && executable("/usr/bin/dpkg")
            && executable("/usr/bin/systemd-socket-activate")
    }

    /// scripts/package-deb.sh builds the package (at the lowest CPU priority: the rest of the suite runs meanwhile);
    /// it holds every file it should and lintian (where installed) finds no error and no warning but the one
    /// overridden with its reason; `dpkg -i` installs it, the installed binary runs without the Swift toolchain's
    /// libraries and says its version, and echoes when started as its socket unit starts it (systemd-socket-activate
    /// with the unit's port and the service's command line, in a namespace of its own); `dpkg -r` leaves nothing.
    @Test(.enabled(if: available, "needs root, dpkg and systemd-socket-activate"), .timeLimit(.minutes(20)))
    func theDebianPackageInstallsEchoesAndRemovesCleanly() async throws {
        let output = FileManager.default.temporaryDirectory.appendingPathComponent("udpecho-deb-\(getpid())")
        defer { try? FileManager.default.removeItem(at: output) }
        // UDPECHO_TEST_DEB names a package built already (to work on this test without building again).
        let deb: String
        if let built = ProcessInfo.processInfo.environment["UDPECHO_TEST_DEB"] {
            deb = built
        } else {
            let build = try await Spawned.run(
                "/usr/bin/nice",
                ["-n", "19", "bash", packageRoot.appendingPathComponent("scripts/package-deb.sh").path, output.path],
                timeout: 1100
            )
            try #require(build.status == 0, "package-deb.sh failed: \(build.error.suffix(3000))")
            deb = try #require(build.lines.last, "package-deb.sh named no package")
        }
        #expect(deb.hasSuffix(".deb"), "\(deb)")

        let listing = try await Spawned.run("/usr/bin/dpkg-deb", ["--contents", deb])
        let contents = Set(listing.lines.compactMap { $0.split(separator: " ").last.map { String($0.dropFirst()) } })
        for file in packagedFiles { #expect(contents.contains(file), "\(file) is not in the package") }
        #expect(!contents.contains { $0.contains("udpecho-help") }, "argument-parser's help command has no manual")

        // .ci/run installs lintian: a missing one is a failure, not a check skipped without a word.
        try #require(
            FileManager.default.isExecutableFile(atPath: "/usr/bin/lintian"),
            "lintian is not installed (apt-get install lintian; .ci/run does)"
        )
        let lint = try await Spawned.run("/usr/bin/lintian", [deb], timeout: 300)
        #expect(lint.status == 0 || !lint.lines.isEmpty, "lintian did not run: \(lint.error)")
        let findings = lint.lines.filter { $0.hasPrefix("E:") || $0.hasPrefix("W:") }
        #expect(findings.isEmpty, "lintian: \(findings)")

        let install = try await Spawned.run("/usr/bin/dpkg", ["-i", deb], timeout: 120)
        try #require(install.status == 0, "dpkg -i: \(install.error)")
        var removed = false
        defer { if !removed { _ = Spawned.runBlocking("/usr/bin/dpkg", ["-r", "udpecho"]) } }

        let libraries = try await Spawned.run("/usr/bin/ldd", ["/usr/bin/udpecho"])
        #expect(!libraries.lines.contains { $0.contains("libswift") || $0.contains("libFoundation") }, "\(libraries)")
        let installed = try await Spawned.run("/usr/bin/udpecho", ["--version"])
        let built = try await Spawned.run(udpecho, ["--version"])
        #expect(installed.status == 0 && installed.lines == built.lines && !built.lines.isEmpty)

        // Started as udpecho.socket starts udpecho.service: the unit's datagram socket, the service's command line.
        let socketUnit = try String(contentsOfFile: "/lib/systemd/system/udpecho.socket", encoding: .utf8)
        let serviceUnit = try String(contentsOfFile: "/lib/systemd/system/udpecho.service", encoding: .utf8)
        let port = try #require(socketUnit.firstMatch(of: /\nListenDatagram=(\d+)\n/).map { String($0.1) })
        let command = try #require(
            serviceUnit.firstMatch(of: /\nExecStart=(.+)\n/).map { $0.1.split(separator: " ").map(String.init) }
        )
        #expect(command.first == "/usr/bin/udpecho")
        try await withHosts(try await LoopbackHost()) { host in
            let run = try await Spawned.run(
                TestNetwork.ip,
                ["netns", "exec", host.name, "bash", "-c", socketActivationRun, "bash", port] + command,
                timeout: 60
            )
            let lines = run.lines
            #expect(run.status == 0, "\(lines) \(run.error)")
            for address in ["127.0.0.1", "[::1]"] {
                #expect(lines.contains("packet-received: bytes=20 from=\(address):\(port)"), "\(lines) \(run.error)")
            }
            #expect(lines.filter { $0 == "client-status 0" }.count == 2, "\(lines)")
            // (systemd-socket-activate starts the program when the first datagram arrives, as systemd does.)
            #expect(lines.contains { $0.contains("\"event\":\"running\"") && $0.contains("\"socket-activation\":1") })
            #expect(lines.contains { $0.contains("\"event\":\"cancelled\"") }, "\(lines)")
            #expect(
                lines.contains { $0.contains("\"event\":\"summary\"") && $0.contains("\"echoed\":2") },
                "\(lines)"
            )
            #expect(lines.contains("server-status 0"), "\(lines) \(run.error)")
            for pid in host.processes() { kill(pid, SIGKILL) }
        }

        let removal = try await Spawned.run("/usr/bin/dpkg", ["-r", "udpecho"], timeout: 120)
        #expect(removal.status == 0, "dpkg -r: \(removal.error)")
        removed = true
        let status = try await Spawned.run("/usr/bin/dpkg-query", ["--show", "--showformat=${Status}", "udpecho"])
        // Unknown to dpkg, or known as not installed: no config-files state left either.
        let state = status.lines.joined()
        #expect(state.isEmpty || state.hasSuffix("not-installed"), "\(state)")
        for file in contents where !file.hasSuffix("/") {
            #expect(!FileManager.default.fileExists(atPath: file), "\(file) is left after dpkg -r")
        }
        #expect(!FileManager.default.fileExists(atPath: "/usr/share/doc/udpecho"))
    }

    /// The library's DocC catalog (Sources/UDPEcho/UDPEcho.docc) builds with swift-docc-plugin without a warning:
    /// every symbol link resolves, every documented parameter exists, the articles are found.
    @Test(.enabled(if: swiftDriver != nil, "needs the swift driver"), .timeLimit(.minutes(15)))
    func theLibraryDocumentationBuildsWithoutWarnings() async throws {
        let run = try await Spawned.run(
            "/usr/bin/nice",
            [
                "-n", "19", swiftDriver!, "package", "--package-path", packageRoot.path, "--scratch-path",
                packageRoot.appendingPathComponent(".build-static").path, "-c", "release", "-Xswiftc", "-static-stdlib",
                "generate-documentation",
                "--target", "UDPEcho",
            ],
            timeout: 840
        )
        let everything = run.lines + run.error.split(separator: "\n").map(String.init)
        #expect(run.status == 0, "\(everything.suffix(20))")
        // DocC's own diagnostics start their lines (the linker's, about Foundation's static library, do not).
        let warnings = everything.filter { $0.hasPrefix("warning:") || $0.hasPrefix("error:") }
        #expect(warnings.isEmpty, "\(warnings)")
        let archive = packageRoot.appendingPathComponent(
            ".build-static/plugins/Swift-DocC/outputs/UDPEcho.doccarchive/data/documentation/udpecho"
        )
        for page in ["gettingstarted.json", "echoserver.json", "echoclient.json", "echopinger.json"] {
            #expect(FileManager.default.fileExists(atPath: archive.appendingPathComponent(page).path), "\(page)")
        }
    }
}
