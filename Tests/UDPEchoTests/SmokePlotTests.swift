import Foundation
import TestSupport
import Testing

@testable import UDPEcho

/// The smoke graph of round trip over time: well-formed, bounded, the loss in the colours, and the text on the canvas.
@Suite struct SmokePlotTests {
    /// Parses `svg` with Python's XML parser (not ours) and returns the elements as `tag attr=value...` lines.
    static func elements(_ svg: String) async throws -> [String] {
        let run = try await Spawned.run(
            "/usr/bin/env",
            [
                "python3", "-c",
                "import sys, xml.etree.ElementTree as E\n"
                    + "for e in E.fromstring(sys.stdin.read()).iter():\n"
                    + "    print(e.tag.split('}')[-1], ' '.join(k + '=' + v for k, v in sorted(e.attrib.items())))",
            ],
            input: Array(svg.utf8)
        )
        try #require(run.status == 0, "not well-formed XML: \(run.error)")
        return run.lines
    }

    /// A run of 1000 probes in five parts with no loss, 1 %, 5 %, 30 % and 80 % lost: the median of each part has
    /// its loss colour, in order; the lost probes are marked along the top; the smoke's bands nest.
    @Test func theLossColoursTheMedian() async throws {
        var plot = SmokePlot(title: "five parts", clock: "kernel timestamps", intervals: 5)
        let losses = [0, 2, 10, 60, 160]  // of 200 each
        for (part, lost) in losses.enumerated() {
            for index in 0..<200 {
                let time = Int64(part * 200 + index) * 1_000_000
                plot.add(time: time, roundTrip: index < lost ? nil : 1_000_000 + Int64(index) * 1000)
            }
        }
        let svg = plot.svg()
        let elements = try await Self.elements(svg)
        let medians = elements.filter { $0.contains("class=median") }
        let colours = medians.compactMap { $0.firstMatch(of: /stroke=(#[0-9a-f]{6})/).map { String($0.1) } }
        #expect(colours == ["#1a9641", "#2b83ba", "#7b3294", "#e66101", "#d7191c"], "\(medians)")
        #expect(elements.filter { $0.contains("class=lost") }.count == 4)
        #expect(svg.contains("lost (232)"))
        // Three bands an interval, the outer ones taller.
        let smoke = elements.filter { $0.contains("class=smoke") }
        #expect(smoke.count == 15)
        let heights = smoke.compactMap { $0.firstMatch(of: /\sheight=([0-9.]+)/).flatMap { Double($0.1) } }
        for part in 0..<5 {
            #expect(heights[3 * part] >= heights[3 * part + 1] && heights[3 * part + 1] >= heights[3 * part + 2])
        }
    }

    /// A clean run has no loss mark and every median green; no probes says so.
    @Test func aCleanRunIsAllGreen() async throws {
        var plot = SmokePlot(title: "clean", clock: "user")
        for index in 0..<500 {
            plot.add(time: Int64(index) * 10_000_000, roundTrip: 200_000 + Int64(index % 7) * 10_000)
        }
        let elements = try await Self.elements(plot.svg())
        #expect(!elements.contains { $0.contains("class=lost") })
        let medians = elements.filter { $0.contains("class=median") }
        #expect(medians.count == 60 && medians.allSatisfy { $0.contains("stroke=#1a9641") })
        let empty = try await Self.elements(SmokePlot(title: "none", clock: "user").svg())
        #expect(empty.contains { $0.hasPrefix("text") } && !empty.contains { $0.contains("class=median") })
    }

    /// A million probes make no bigger a drawing than a hundred intervals' worth: its size is bounded by the
    /// intervals, not the probes.
    @Test func theDrawingsSizeIsBoundedByItsIntervals() {
        var plot = SmokePlot(title: "a million", clock: "kernel")
        for index in 0..<1_000_000 {
            plot.add(time: Int64(index) * 1000, roundTrip: index % 50 == 0 ? nil : 100_000 + Int64(index % 1000))
        }
        let svg = plot.svg()
        #expect(svg.utf8.count < 40_000, "\(svg.utf8.count) bytes")
    }

    /// A title far longer than the canvas is set smaller, and cut with an ellipsis if even that is too long, so that
    /// it stays on the canvas (the bench drawing's once ran off it); the same for the percentile drawing.
    @Test(arguments: [40, 120, 400])
    func titlesStayOnTheCanvas(length: Int) async throws {
        let title = String(repeating: "udpecho-ping-target.example ", count: length / 28 + 1).prefix(length)
        var plot = SmokePlot(title: String(title), clock: "kernel")
        plot.add(time: 0, roundTrip: 1000)
        for svg in [plot.svg(), RoundTripTimes.percentilePlot(title: String(title), curves: [])] {
            let elements = try await Self.elements(svg)
            let heading = try #require(elements.first { $0.hasPrefix("text") && $0.contains("y=22") })
            let size = try #require(heading.firstMatch(of: /font-size=([0-9.]+)/).flatMap { Double($0.1) })
            let text = try #require(svg.firstMatch(of: /y="22"[^>]*>([^<]*)</).map { String($0.1) })
            #expect(SVGText.estimatedWidth(characters: text.count, fontSize: size) <= 800 - 20, "\(size) \(text)")
            #expect(size >= 9)
            #expect(length <= 40 ? text == String(title) : true)
        }
    }
}
