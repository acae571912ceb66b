import Foundation
import TestSupport
import Testing

/// Counts a PNG's pixels (Python's zlib, not an image library): prints `total nonwhite red`, red being the loss
/// marks' colour (#d7191c) give or take anti-aliasing.
let pythonPixelCounts = """
    import struct, sys, zlib
    data = open(sys.argv[1], 'rb').read()
    assert data[:8] == b'\\x89PNG\\r\\n\\x1a\\n'
    pos, chunks, header = 8, b'', None
    while pos < len(data):
        length, kind = struct.unpack('>I4s', data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + length]
        if kind == b'IHDR': header = struct.unpack('>IIBBBBB', body)
        if kind == b'IDAT': chunks += body
        pos += 12 + length
    width, height, depth, colour = header[:4]
    assert depth == 8 and colour in (2, 6), header
    size = 4 if colour == 6 else 3
    raw, rows, previous, at = zlib.decompress(chunks), [], bytearray(width * size), 0
    for _ in range(height):
        kind, line = raw[at], bytearray(raw[at + 1:at + 1 + width * size]); at += 1 + width * size
        for i in range(len(line)):
            a = line[i - size] if i >= size else 0
            b = previous[i]
            c = previous[i - size] if i >= size else 0
            if kind == 1: line[i] = (line[i] + a) & 255
            elif kind == 2: line[i] = (line[i] + b) & 255
            elif kind == 3: line[i] = (line[i] + (a + b) // 2) & 255
            elif kind == 4:
                p = a + b - c; pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
        rows.append(line); previous = line
    total = nonwhite = red = 0
    for line in rows:
        for x in range(width):
            r, g, b = line[x * size:x * size + 3]
            total += 1
            if min(r, g, b) < 235: nonwhite += 1
            if r > 180 and g < 80 and b < 80: red += 1
    print(total, nonwhite, red)
    """

/// `udpecho ping --plot`: the smoke graph of a real run, read by an XML parser and drawn by a real browser.
@Suite struct PlotTests {
    static var chromium: String? {
        ["/usr/bin/chromium", "/usr/bin/chromium-browser"].first { FileManager.default.isExecutableFile(atPath: $0) }
    }

    /// Two echo servers on a test host, one behind a firewall rule that drops about 30% of what reaches it: the
    /// drawing of the lossy one marks lost probes and colours its median by loss, the clean one's has no mark and an
    /// all-green median; headless Chromium renders both, neither blank, the lossy one with many red pixels more.
    @Test(
        .enabled(if: FirewalledHost.available, "needs root, ip and nft to make a firewalled network namespace"),
        .enabled(if: Self.chromium != nil, "needs chromium (Debian; .ci/run installs it)")
    )
    func aLossyPathLooksLossy() async throws {
        let browser = try #require(Self.chromium)
        try await withHosts(try await FirewalledHost()) { host in
            let (lossy, _) = try await startServer(["--address", "127.0.0.1:7000", "-q"], inNamespace: host.name)
            let (clean, _) = try await startServer(["--address", "127.0.0.1:7001", "-q"], inNamespace: host.name)
            let drop = try await Spawned.run(
                TestNetwork.ip,
                [
                    "netns", "exec", host.name, "nft", "add", "rule", "inet", "udpecho", "in", "udp", "dport", "7000",
                    "numgen", "random", "mod", "10", "<", "3", "drop",
                ]
            )
            #expect(drop.status == 0, "\(drop.error)")
            let directory = NSTemporaryDirectory() + "udpecho-plot-\(uniqueHostID())"
            try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
            var counts: [String: [Int]] = [:]
            for (name, port) in [("lossy", 7000), ("clean", 7001)] {
                let path = "\(directory)/\(name).svg"
                let ping = try await Spawned.run(
                    TestNetwork.ip,
                    [
                        "netns", "exec", host.name, udpecho, "ping", "127.0.0.1:\(port)", "-c", "300", "-i", "2ms",
                        "-W", "300ms", "-q", "--plot", path,
                    ],
                    timeout: 60
                )
                #expect(ping.status == 0, "\(ping.error)")
                let svg = try String(contentsOfFile: path, encoding: .utf8)
                #expect(svg.utf8.count < 40_000)
                let parsed = try await Spawned.run(
                    "/usr/bin/env",
                    [
                        "python3", "-c",
                        "import sys, xml.etree.ElementTree as E\n"
                            + "r = E.parse(sys.argv[1]).getroot()\n"
                            + "c = [e.get('stroke') for e in r.iter() if e.get('class') == 'median']\n"
                            + "print(len([e for e in r.iter() if e.get('class') == 'lost']), len(c), len([s for s in c if s != '#1a9641']))",
                        path,
                    ]
                )
                let numbers = parsed.lines.first?.split(separator: " ").compactMap { Int($0) } ?? []
                try #require(numbers.count == 3, "\(parsed.error)")
                if name == "lossy" {
                    #expect(numbers[0] > 30 && numbers[2] > 30, "lost marks, medians not green: \(numbers)")
                } else {
                    #expect(numbers[0] == 0 && numbers[1] > 0 && numbers[2] == 0, "\(numbers)")
                }
                let png = "\(directory)/\(name).png"
                let shot = try await Spawned.run(
                    browser,
                    [
                        "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--window-size=800,360",
                        "--screenshot=\(png)", "file://\(path)",
                    ],
                    timeout: 60
                )
                #expect(shot.status == 0, "\(shot.error)")
                let pixels = try await Spawned.run(
                    "/usr/bin/env",
                    ["python3", "-c", pythonPixelCounts, png],
                    timeout: 120
                )
                counts[name] = pixels.lines.first?.split(separator: " ").compactMap { Int($0) }
                try #require(counts[name]?.count == 3, "\(pixels.error)")
            }
            for (name, values) in counts {
                // Not blank: axes, smoke, median and text cover well over 2% of the canvas.
                #expect(Double(values[1]) / Double(values[0]) > 0.02, "\(name): \(values)")
            }
            let lossyRed = counts["lossy"]?[2] ?? 0
            let cleanRed = counts["clean"]?[2] ?? 0
            #expect(lossyRed > cleanRed + 500, "red pixels: lossy \(lossyRed), clean \(cleanRed)")
            lossy.signal(SIGINT)
            clean.signal(SIGINT)
            _ = await lossy.waitForExit()
            _ = await clean.waitForExit()
        }
    }

    /// A --plot path that is a FIFO (or a directory) is refused before anything blocks on it: exit 2, said why.
    @Test func aPlotPathThatIsNoFileIsRefused() async throws {
        let (server, port) = try await startServer(["--address", "127.0.0.1:0", "-q"])
        let fifo = NSTemporaryDirectory() + "udpecho-fifo-\(uniqueHostID())"
        #expect(mkfifo(fifo, 0o600) == 0)
        defer { unlink(fifo) }
        for path in [fifo, NSTemporaryDirectory()] {
            let ping = try await Spawned.run(
                udpecho,
                ["ping", "127.0.0.1:\(port)", "-c", "3", "-i", "10ms", "-q", "--plot", path],
                timeout: 30
            )
            #expect(ping.status == 2 && ping.error.contains("is there and is not a regular file"), "\(ping.error)")
        }
        let owamp = try await Spawned.run(udpecho, ["ping", "--owamp", "127.0.0.1", "--plot", "/tmp/x.svg"])
        #expect(owamp.status == 2 && owamp.error.contains("--plot draws round trips"), "\(owamp.error)")
        server.signal(SIGINT)
        _ = await server.waitForExit()
    }
}

/// The exporter's live page: two continuous targets on a test host, one behind a firewall that drops about 30 %,
/// rendered by headless Chromium.
@Suite struct LivePageTests {
    @Test(
        .enabled(if: FirewalledHost.available, "needs root, ip and nft to make a firewalled network namespace"),
        .enabled(if: PlotTests.chromium != nil, "needs chromium (Debian; .ci/run installs it)")
    )
    func theLivePageShowsALossyTargetApart() async throws {
        let browser = try #require(PlotTests.chromium)
        try await withHosts(try await FirewalledHost()) { host in
            try await withDirectory { directory in
                let (lossy, _) = try await startServer(["--address", "127.0.0.1:7000", "-q"], inNamespace: host.name)
                let (clean, _) = try await startServer(["--address", "127.0.0.1:7001", "-q"], inNamespace: host.name)
                defer { for server in [lossy, clean] { server.signal(SIGTERM) } }
                let drop = try await Spawned.run(
                    TestNetwork.ip,
                    [
                        "netns", "exec", host.name, "nft", "add", "rule", "inet", "udpecho", "in", "udp", "dport",
                        "7000",
                        "numgen", "random", "mod", "10", "<", "3", "drop",
                    ]
                )
                #expect(drop.status == 0, "\(drop.error)")
                let config = directory + "/exporter.yml"
                try """
                modules:
                  quick:
                    protocol: echo
                    count: 100
                    interval: 2ms
                    timeout: 200ms
                targets:
                  - target: 127.0.0.1:7000
                    module: quick
                    every: 1s
                  - target: 127.0.0.1:7001
                    module: quick
                    every: 1s
                """.write(toFile: config, atomically: true, encoding: .utf8)
                let exporter = try Spawned(
                    TestNetwork.ip,
                    ["netns", "exec", host.name, udpecho, "exporter", "--config", config, "--listen", "127.0.0.1:9338"]
                )
                defer { exporter.signal(SIGTERM) }
                #expect(
                    await exporter.waitForLine { $0.contains("udpecho exporter on") } != nil,
                    "\(exporter.errorText)"
                )
                // A mesh agent beside it, probing the same two servers; its page too.
                let agent = try Spawned(
                    TestNetwork.ip,
                    [
                        "netns", "exec", host.name, udpecho, "mesh", "--address", "127.0.0.1:1337", "--peer",
                        "127.0.0.1:7000",
                        "--peer", "127.0.0.1:7001", "-i", "20ms", "-W", "300ms", "--metrics", "127.0.0.1:9337",
                    ]
                )
                defer { agent.signal(SIGTERM) }
                #expect(await agent.waitForLine { $0.hasPrefix("metrics on ") } != nil, "\(agent.errorText)")
                // Three probes of each target (the first within a second, then one a second).
                try await Task.sleep(for: .seconds(4))
                var pages: [(String, String, String)] = []
                for (name, port) in [("exporter", 9338), ("mesh", 9337)] {
                    let page = directory + "/\(name).html"
                    _ = try await inHost(
                        host.name,
                        [
                            "python3", "-c",
                            "import sys, urllib.request\nopen(sys.argv[1], 'wb').write(urllib.request.urlopen(sys.argv[2]).read())",
                            page, "http://127.0.0.1:\(port)/",
                        ]
                    )
                    // The DOM as Chromium built it: two graphs, the lossy one with loss marks, the clean one without.
                    let dom = try await Spawned.run(
                        browser,
                        ["--headless", "--no-sandbox", "--disable-gpu", "--dump-dom", "file://\(page)"],
                        timeout: 60
                    )
                    #expect(dom.status == 0, "\(dom.error)")
                    let text = String(decoding: dom.output, as: UTF8.self)
                    let graphs: [String] = Array(text.components(separatedBy: "<div class=\"target\"").dropFirst())
                    try #require(graphs.count == 2, "\(name): \(text.prefix(2000))")
                    let lossyGraph = try #require(graphs.first { $0.contains("127.0.0.1:7000") })
                    let cleanGraph = try #require(graphs.first { $0.contains("127.0.0.1:7001") })
                    #expect(lossyGraph.contains("<svg") && cleanGraph.contains("<svg"), "\(name)")
                    #expect(lossyGraph.contains("class=\"lost\"") && !cleanGraph.contains("class=\"lost\""), "\(name)")
                    #expect(
                        lossyGraph.contains("class=\"median\"") && cleanGraph.contains("class=\"median\""),
                        "\(name)"
                    )
                    #expect(cleanGraph.contains("stroke=\"#1a9641\""), "\(name): the clean median is green")
                    pages.append((name, lossyGraph, cleanGraph))
                }
                let (_, lossyGraph, cleanGraph) = pages[0]
                // Each graph drawn alone, then counted: neither blank, the lossy one with red loss marks.
                var red: [String: Int] = [:]
                for (name, graph) in [("lossy", lossyGraph), ("clean", cleanGraph)] {
                    let svg = try #require(graph.range(of: "<svg").map { String(graph[$0.lowerBound...]) })
                    let end = try #require(svg.range(of: "</svg>"))
                    let file = "\(directory)/\(name).html"
                    try ("<!DOCTYPE html><html><body style=\"margin:0\">" + svg[..<end.upperBound] + "</body></html>")
                        .write(toFile: file, atomically: true, encoding: .utf8)
                    let png = "\(directory)/\(name).png"
                    let shot = try await Spawned.run(
                        browser,
                        [
                            // The legend (below 260 px) is left out: its red samples are in both drawings.
                            "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--window-size=800,260",
                            "--screenshot=\(png)", "file://\(file)",
                        ],
                        timeout: 60
                    )
                    #expect(shot.status == 0, "\(shot.error)")
                    let pixels = try await Spawned.run(
                        "/usr/bin/env",
                        ["python3", "-c", pythonPixelCounts, png],
                        timeout: 120
                    )
                    let values = pixels.lines.first?.split(separator: " ").compactMap { Int($0) } ?? []
                    try #require(values.count == 3, "\(pixels.error)")
                    #expect(Double(values[1]) / Double(values[0]) > 0.02, "\(name) is blank: \(values)")
                    red[name] = values[2]
                }
                // Without the legend, red is the loss marks', only in the lossy one.
                #expect(
                    (red["clean"] ?? -1) < 5 && (red["lossy"] ?? 0) > (red["clean"] ?? 0) + 10,
                    "red pixels: \(red)"
                )
            }
        }
    }
}
