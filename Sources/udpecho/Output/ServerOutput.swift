import ArgumentParser
import FoundationEssentials
import Logging
import UDPEcho

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// How the server's lines are written: as the article's text, or as JSON objects for log collectors.
enum LogFormat: String, ExpressibleByArgument, CaseIterable {
    case text, json
}

extension Logger.Level: @retroactive ExpressibleByArgument {}

/// One event's level, name and fields, from which both the text line and the JSON object are made.
struct EventRecord {
    var level: Logger.Level
    var name: String
    var fields: [(String, String)]
    var note = ""

    /// The article's `name: key=value ...` line.
    var text: String {
        "\(self.name): " + self.fields.map { "\($0)=\($1.contains(" ") ? "\"\($1)\"" : $1)" }.joined(separator: " ")
            + self.note
    }

    /// One JSON object: time, level, event and the fields (numbers as numbers).
    func json(now: Date = Date()) -> String {
        var object: [String: JSONValue] = [
            "time": .string(now.formatted(.iso8601)),
            "level": .string(self.level.rawValue),
            "event": .string(self.name),
        ]
        for (key, value) in self.fields {
            object[key] = Int(value).map { .number($0) } ?? .string(value)
        }
        return jsonLine(object)
    }
}

enum JSONValue: Encodable {
    case string(String)
    case number(Int)

    func encode(to encoder: any Encoder) throws {
        var container = encoder.singleValueContainer()
        switch self {
        case .string(let text): try container.encode(text)
        case .number(let value): try container.encode(value)
        }
    }
}

extension ServerEvent {
    /// Per-packet lines are `info`; drops and errors `warning`; the count of lines not shown `notice`.
    var record: EventRecord {
        switch self {
        case .received(let bytes, let from):
            return EventRecord(
                level: .info,
                name: "packet-received",
                fields: [("bytes", "\(bytes)"), ("from", from.hostPortDescription)]
            )
        case .echoed(let bytes, let to):
            return EventRecord(
                level: .info,
                name: "packet-written",
                fields: [("bytes", "\(bytes)"), ("to", to.hostPortDescription)]
            )
        case .dropped(let bytes, let peer, let reason, let code):
            var fields = [("bytes", "\(bytes)"), ("to", peer.hostPortDescription), ("reason", reason.rawValue)]
            if let code { fields.append(("error", String(cString: strerror(code)))) }
            return EventRecord(level: .warning, name: "packet-dropped", fields: fields)
        case .receiveError(let code):
            return EventRecord(
                level: .warning,
                name: "receive-error",
                fields: [("error", String(cString: strerror(code)))],
                note: " (the server goes on)"
            )
        case .notShown(let datagrams, let interval):
            return EventRecord(
                level: .notice,
                name: "packets-not-shown",
                fields: [("count", "\(datagrams)"), ("in", interval.shortDescription)],
                note: " (served and counted; --lines-per-second sets the limit)"
            )
        }
    }
}

/// Writes swift-log records as JSON objects, one per line, to standard error.
struct JSONLogHandler: LogHandler {
    var metadata: Logger.Metadata = [:]
    var logLevel: Logger.Level
    let label: String

    subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { self.metadata[key] }
        set { self.metadata[key] = newValue }
    }

    func log(event: LogEvent) {
        var object: [String: JSONValue] = [
            "time": .string(Date().formatted(.iso8601)),
            "level": .string(event.level.rawValue),
            "label": .string(self.label),
            "message": .string(event.message.description),
        ]
        for (key, value) in self.metadata.merging(event.metadata ?? [:], uniquingKeysWith: { $1 }) {
            object[key] = .string(value.description)
        }
        Stream.err.line(jsonLine(object))
    }
}

extension EchoServerStatistics {
    /// Every counter as a field, for the JSON summary.
    var fields: [(String, String)] {
        var fields = [
            ("received", "\(self.received)"), ("echoed", "\(self.echoed)"), ("dropped", "\(self.dropped)"),
            ("bytes-received", "\(self.receivedBytes)"), ("bytes-echoed", "\(self.echoedBytes)"),
            ("receive-errors", "\(self.receiveErrors)"), ("offload-runs", "\(self.coalescedRuns)"),
            ("offload-fallbacks", "\(self.offloadFallbacks)"),
        ]
        for reason in DropReason.allCases { fields.append(("dropped-\(reason)", "\(self.drops[reason, default: 0])")) }
        if let xdp = self.xdp {
            fields += [
                ("xdp-echoed", "\(xdp.echoed + xdp.reflected)"), ("xdp-dropped", "\(xdp.drops.values.reduce(0, +))"),
            ]
            for reason in XDPPassReason.allCases {
                fields.append(("xdp-passed-\(reason)", "\(xdp.passed[reason, default: 0])"))
            }
        }
        return fields
    }

    /// One line with every counter, printed when the server stops.
    func summaryLine(lostLines: Int) -> String {
        var text = "summary: received=\(self.received) echoed=\(self.echoed) dropped=\(self.dropped)"
        if self.dropped > 0 {
            let reasons = DropReason.allCases.compactMap { reason in
                self.drops[reason].map { "\(reason)=\($0)" }
            }
            text += " (\(reasons.joined(separator: " ")))"
        }
        text += " bytes-received=\(self.receivedBytes) bytes-echoed=\(self.echoedBytes)"
        if self.receiveErrors > 0 { text += " receive-errors=\(self.receiveErrors)" }
        if self.coalescedRuns > 0 { text += " offload-runs=\(self.coalescedRuns)" }
        if self.offloadFallbacks > 0 { text += " offload-fallbacks=\(self.offloadFallbacks)" }
        if let xdp = self.xdp {
            text += " xdp-echoed=\(xdp.echoed + xdp.reflected) xdp-dropped=\(xdp.drops.values.reduce(0, +))"
            let passed = XDPPassReason.allCases.compactMap { reason in xdp.passed[reason].map { "\(reason)=\($0)" } }
            text += " xdp-passed=\(xdp.passed.values.reduce(0, +))"
            if !passed.isEmpty { text += " (\(passed.joined(separator: " ")))" }
        }
        if lostLines > 0 { text += " lines-not-printed=\(lostLines) (standard output was too slow)" }
        return text
    }
}
