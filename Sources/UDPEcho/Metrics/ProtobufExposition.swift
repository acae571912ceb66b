public import NIOCore

/// Prometheus' protobuf exposition format (`io.prometheus.client.MetricFamily` messages, each preceded by its length
/// as a varint), the one format that carries native histograms. Written by hand from the message definitions (a
/// dozen fields), without a protobuf library: the package stays as quick to build, and Prometheus itself (a test
/// scrapes it) and `protoc --decode` (another) check the bytes.
public enum ProtobufExposition {
    /// The Content-Type of an answer in this format.
    public static let contentType =
        "application/vnd.google.protobuf; proto=io.prometheus.client.MetricFamily; encoding=delimited"

    /// Whether a scrape's `Accept` header asks for this format (Prometheus asks for it first when its native
    /// histograms are on).
    public static func accepts(_ accept: String?) -> Bool {
        guard let accept else { return false }
        return accept.split(separator: ",").contains { part in
            part.contains("application/vnd.google.protobuf") && part.contains("io.prometheus.client.MetricFamily")
                && !part.contains("encoding=text") && !part.contains("q=0,") && !part.hasSuffix("q=0")
        }
    }

    /// A metric family's type.
    public enum Kind: Int, Sendable {
        case counter = 0, gauge = 1, summary = 2, untyped = 3, histogram = 4
    }

    /// One metric of a family: its labels and its value.
    public struct Metric: Sendable {
        /// Label names and values.
        public var labels: [(String, String)]
        /// A counter's, gauge's or untyped metric's value.
        public var value: Double = 0
        /// A histogram kept by udpecho (classic and native buckets).
        public var histogram: LatencyHistogram?
        /// A classic histogram read from text: cumulative counts by upper bound, the sum and the count.
        public var classicBuckets: [(bound: Double, cumulative: UInt64)] = []
        /// A summary's quantiles.
        public var quantiles: [(quantile: Double, value: Double)] = []
        /// A summary's or text histogram's sum and count.
        public var sum: Double = 0
        public var count: UInt64 = 0

        /// A metric with `labels`.
        public init(labels: [(String, String)], value: Double = 0) {
            self.labels = labels
            self.value = value
        }
    }

    /// A metric family: name, help, type and metrics.
    public struct Family: Sendable {
        public var name: String
        public var help: String
        public var kind: Kind
        public var metrics: [Metric]

        /// A family; see each property.
        public init(name: String, help: String, kind: Kind, metrics: [Metric] = []) {
            self.name = name
            self.help = help
            self.kind = kind
            self.metrics = metrics
        }
    }

    /// Appends `family` as one length-delimited message.
    public static func write(_ family: Family, into buffer: inout ByteBuffer) {
        var message = Message()
        message.string(1, family.name)
        if !family.help.isEmpty { message.string(2, family.help) }
        message.varint(3, UInt64(family.kind.rawValue))
        for metric in family.metrics { message.message(4, Self.metric(metric, kind: family.kind)) }
        var length = Message()
        length.rawVarint(UInt64(message.bytes.count))
        buffer.writeBytes(length.bytes)
        buffer.writeBytes(message.bytes)
    }

    private static func metric(_ metric: Metric, kind: Kind) -> Message {
        var message = Message()
        for (name, value) in metric.labels {
            var pair = Message()
            pair.string(1, name)
            pair.string(2, value)
            message.message(1, pair)
        }
        var inner = Message()
        switch kind {
        case .gauge, .counter, .untyped:
            inner.double(1, metric.value)
            message.message(kind == .gauge ? 2 : kind == .counter ? 3 : 5, inner)
        case .summary:
            inner.varint(1, metric.count)
            inner.double(2, metric.sum)
            for (quantile, value) in metric.quantiles {
                var entry = Message()
                entry.double(1, quantile)
                entry.double(2, value)
                inner.message(3, entry)
            }
            message.message(4, inner)
        case .histogram:
            if let histogram = metric.histogram {
                inner.varint(1, histogram.count)
                inner.double(2, histogram.sum)
                var cumulative: UInt64 = 0
                for (index, bound) in LatencyHistogram.classicBounds.enumerated() {
                    cumulative += histogram.classicCount(index)
                    var bucket = Message()
                    bucket.varint(1, cumulative)
                    bucket.double(2, bound)
                    inner.message(3, bucket)
                }
                inner.signed32(5, LatencyHistogram.schema)
                inner.double(6, LatencyHistogram.zeroThreshold)
                inner.varint(7, histogram.zeroCount)
                let (spans, deltas) = histogram.nativeSpans()
                if spans.isEmpty {
                    // An empty native histogram: a no-op span tells it from a classic one.
                    var span = Message()
                    span.signed32(1, 0)
                    span.varint(2, 0)
                    inner.message(12, span)
                }
                for (offset, length) in spans {
                    var span = Message()
                    span.signed32(1, offset)
                    span.varint(2, UInt64(length))
                    inner.message(12, span)
                }
                for delta in deltas { inner.signed64(13, delta) }
            } else {
                inner.varint(1, metric.count)
                inner.double(2, metric.sum)
                for (bound, cumulative) in metric.classicBuckets where bound.isFinite {
                    var bucket = Message()
                    bucket.varint(1, cumulative)
                    bucket.double(2, bound)
                    inner.message(3, bucket)
                }
            }
            message.message(7, inner)
        }
        return message
    }

    /// A message being written: fields as tag and value.
    struct Message {
        var bytes: [UInt8] = []

        mutating func rawVarint(_ value: UInt64) {
            var value = value
            while value >= 0x80 {
                self.bytes.append(UInt8(value & 0x7F) | 0x80)
                value >>= 7
            }
            self.bytes.append(UInt8(value))
        }

        mutating func key(_ field: Int, _ wireType: UInt64) { self.rawVarint(UInt64(field) << 3 | wireType) }

        mutating func varint(_ field: Int, _ value: UInt64) {
            self.key(field, 0)
            self.rawVarint(value)
        }

        mutating func signed32(_ field: Int, _ value: Int32) {
            self.key(field, 0)
            self.rawVarint(UInt64(UInt32(bitPattern: (value << 1) ^ (value >> 31))))
        }

        mutating func signed64(_ field: Int, _ value: Int64) {
            self.key(field, 0)
            self.rawVarint(UInt64(bitPattern: (value << 1) ^ (value >> 63)))
        }

        mutating func double(_ field: Int, _ value: Double) {
            self.key(field, 1)
            withUnsafeBytes(of: value.bitPattern.littleEndian) { self.bytes.append(contentsOf: $0) }
        }

        mutating func string(_ field: Int, _ value: String) {
            self.key(field, 2)
            self.rawVarint(UInt64(value.utf8.count))
            self.bytes.append(contentsOf: value.utf8)
        }

        mutating func message(_ field: Int, _ value: Message) {
            self.key(field, 2)
            self.rawVarint(UInt64(value.bytes.count))
            self.bytes.append(contentsOf: value.bytes)
        }
    }

    /// `family` in the text format (a histogram's classic buckets; its native ones have no text form).
    public static func text(_ family: Family) -> String {
        let type =
            switch family.kind {
            case .counter: "counter"
            case .gauge: "gauge"
            case .summary: "summary"
            case .histogram: "histogram"
            case .untyped: "untyped"
            }
        var writer = ProbeMetrics.Writer()
        writer.text = "# HELP \(family.name) \(family.help)\n# TYPE \(family.name) \(type)\n"
        for metric in family.metrics {
            switch family.kind {
            case .histogram:
                if let histogram = metric.histogram {
                    var cumulative: UInt64 = 0
                    for (index, bound) in LatencyHistogram.classicBounds.enumerated() {
                        cumulative += histogram.classicCount(index)
                        writer.sample(
                            family.name + "_bucket",
                            metric.labels + [("le", MeshMetrics.number(bound))],
                            Double(cumulative)
                        )
                    }
                    writer.sample(family.name + "_bucket", metric.labels + [("le", "+Inf")], Double(histogram.count))
                    writer.sample(family.name + "_sum", metric.labels, histogram.sum)
                    writer.sample(family.name + "_count", metric.labels, Double(histogram.count))
                }
            case .summary:
                for (quantile, value) in metric.quantiles {
                    writer.sample(family.name, metric.labels + [("quantile", MeshMetrics.number(quantile))], value)
                }
                writer.sample(family.name + "_sum", metric.labels, metric.sum)
                writer.sample(family.name + "_count", metric.labels, Double(metric.count))
            default:
                writer.sample(family.name, metric.labels, metric.value)
            }
        }
        return writer.text
    }

    // MARK: From the text format

    /// The families of a text exposition that udpecho wrote (its server's counters, the exporter's own): HELP and
    /// TYPE lines, samples with labels; histograms and summaries gathered from their `_bucket`, `_sum`, `_count`
    /// and `quantile` samples. Lines it cannot read are left out.
    public static func families(fromText text: String) -> [Family] {
        var families: [Family] = []
        var byName: [String: Int] = [:]
        var helps: [String: String] = [:]
        // Per histogram or summary family, its metrics by their labels (without le and quantile).
        var grouped: [Int: [String: Int]] = [:]
        func family(_ name: String) -> Int {
            if let index = byName[name] { return index }
            families.append(Family(name: name, help: helps[name] ?? "", kind: .untyped))
            byName[name] = families.count - 1
            return families.count - 1
        }
        for line in text.split(whereSeparator: \.isLineEnd) {
            if line.hasPrefix("# HELP ") {
                let rest = line.dropFirst(7)
                let name = String(rest.prefix { $0 != " " })
                helps[name] = String(rest.dropFirst(name.count + 1))
                if let index = byName[name] { families[index].help = helps[name]! }
                continue
            }
            if line.hasPrefix("# TYPE ") {
                let parts = line.dropFirst(7).split(separator: " ")
                guard parts.count == 2 else { continue }
                let index = family(String(parts[0]))
                switch parts[1] {
                case "counter": families[index].kind = .counter
                case "gauge": families[index].kind = .gauge
                case "summary": families[index].kind = .summary
                case "histogram": families[index].kind = .histogram
                default: families[index].kind = .untyped
                }
                continue
            }
            if line.hasPrefix("#") { continue }
            guard let sample = Self.sample(line) else { continue }
            // The family: a histogram's or summary's by its suffixes, else the sample's own name.
            var owner: Int?
            var suffix = ""
            for candidate in ["_bucket", "_sum", "_count", ""] where sample.name.hasSuffix(candidate) {
                let base = String(sample.name.dropLast(candidate.count))
                if let index = byName[base],
                    candidate.isEmpty || families[index].kind == .histogram || families[index].kind == .summary
                {
                    owner = index
                    suffix = candidate
                    break
                }
            }
            let index = owner ?? family(sample.name)
            let kind = families[index].kind
            if kind == .histogram || kind == .summary {
                let special = kind == .histogram ? "le" : "quantile"
                let labels = sample.labels.filter { $0.0 != special }
                let key = labels.map { "\($0.0)=\($0.1)" }.joined(separator: ",")
                let position: Int
                if let known = grouped[index]?[key] {
                    position = known
                } else {
                    families[index].metrics.append(Metric(labels: labels))
                    position = families[index].metrics.count - 1
                    grouped[index, default: [:]][key] = position
                }
                switch suffix {
                case "_sum": families[index].metrics[position].sum = sample.value
                case "_count": families[index].metrics[position].count = UInt64(max(0, sample.value))
                case "_bucket":
                    if let bound = sample.labels.first(where: { $0.0 == "le" }).flatMap({ Self.double($0.1) }) {
                        families[index].metrics[position].classicBuckets.append(
                            (bound, UInt64(max(0, sample.value)))
                        )
                    }
                default:
                    if let quantile = sample.labels.first(where: { $0.0 == "quantile" }).flatMap({ Self.double($0.1) })
                    {
                        families[index].metrics[position].quantiles.append((quantile, sample.value))
                    }
                }
            } else {
                families[index].metrics.append(Metric(labels: sample.labels, value: sample.value))
            }
        }
        return families.filter { !$0.metrics.isEmpty }
    }

    private static func double(_ text: String) -> Double? {
        switch text {
        case "+Inf": .infinity
        case "-Inf": -.infinity
        case "NaN": .nan
        default: Double(text)
        }
    }

    /// `name{label="value",...} value`.
    private static func sample(_ line: Substring) -> (name: String, labels: [(String, String)], value: Double)? {
        var rest = line[...]
        let name = rest.prefix { $0 != "{" && $0 != " " }
        guard !name.isEmpty else { return nil }
        rest = rest.dropFirst(name.count)
        var labels: [(String, String)] = []
        if rest.first == "{" {
            rest = rest.dropFirst()
            while rest.first != "}" {
                let labelName = rest.prefix { $0 != "=" }
                rest = rest.dropFirst(labelName.count)
                guard rest.hasPrefix("=\"") else { return nil }
                rest = rest.dropFirst(2)
                var value = ""
                while let character = rest.first, character != "\"" {
                    rest = rest.dropFirst()
                    if character == "\\", let escaped = rest.first {
                        rest = rest.dropFirst()
                        value.append(escaped == "n" ? "\n" : escaped)
                    } else {
                        value.append(character)
                    }
                }
                guard rest.first == "\"" else { return nil }
                rest = rest.dropFirst()
                labels.append((String(labelName), value))
                if rest.first == "," { rest = rest.dropFirst() }
                guard !rest.isEmpty else { return nil }
            }
            rest = rest.dropFirst()
        }
        let fields = rest.split(separator: " ")
        guard let first = fields.first, let value = Self.double(String(first)) else { return nil }
        return (String(name), labels, value)
    }
}
