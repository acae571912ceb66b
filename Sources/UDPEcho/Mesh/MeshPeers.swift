public import NIOCore

/// A peer of a mesh agent as it was given: a name (or address) and port. A name may stand for several addresses
/// (a Kubernetes headless Service returns one per pod): each is probed as its own target, under the peer's name.
public struct MeshPeer: Sendable, Hashable, CustomStringConvertible {
    /// The host and port as given.
    public var endpoint: HostAndPort
    /// Labels from the peers file (`zone=eu-1 rack=r12`): each of the peer's series carries them, and the agent can
    /// aggregate its metrics by them (``MeshMetrics``).
    public var labels: [String: String]

    /// A peer.
    public init(_ endpoint: HostAndPort, labels: [String: String] = [:]) {
        self.endpoint = endpoint
        self.labels = labels
    }

    /// `HOST:PORT` as given (the `peer` label of the metrics).
    public var description: String { self.endpoint.description }
}

/// One address of a peer: what is probed. Its metrics carry the labels `peer` (the name as given) and `address`.
public struct MeshTarget: Sendable, Hashable {
    /// The peer as given.
    public var peer: MeshPeer
    /// One address the peer's name resolved to, with the peer's port.
    public var address: SocketAddress

    /// The target `address` of `peer`.
    public init(peer: MeshPeer, address: SocketAddress) {
        self.peer = peer
        self.address = address
    }

    public static func == (lhs: MeshTarget, rhs: MeshTarget) -> Bool {
        lhs.peer == rhs.peer && lhs.address.hostPortDescription == rhs.address.hostPortDescription
    }

    public func hash(into hasher: inout Hasher) {
        hasher.combine(self.peer)
        hasher.combine(self.address.hostPortDescription)
    }
}

/// Reading peer lists: `--peer HOST:PORT` options and `--peers FILE`, one peer a line.
public enum MeshPeerList {
    /// A line that is not a peer.
    public struct LineError: Error, Equatable, CustomStringConvertible {
        /// The line's number, from 1.
        public var line: Int
        /// The line as written, up to 60 characters, control characters escaped.
        public var text: String
        /// What is wrong with it.
        public var reason: String
        /// The line's number, its text and what is wrong.
        public var description: String { "line \(self.line) ('\(self.text)'): \(self.reason)" }
    }

    /// The bad lines of a list: the first ``ListError/linesShown``, and how many more.
    public struct ListError: Error, Equatable, CustomStringConvertible {
        /// The first lines that are wrong, in order (at most ``linesShown``).
        public var lines: [LineError]
        /// Wrong lines after those.
        public var more = 0
        /// How many wrong lines are described: a binary file put in place of the list has thousands of them, and
        /// its error must stay a line a person reads.
        public static let linesShown = 10
        /// The wrong lines shown, separated by semicolons, and the count of the others.
        public var description: String {
            self.lines.map(\.description).joined(separator: "; ")
                + (self.more > 0 ? "; and \(self.more) more bad line\(self.more == 1 ? "" : "s")" : "")
        }
    }

    /// The most peers a list may name: a list that names more is a mistake, refused whole.
    public static let maximumPeers = 100_000
    /// The largest peers file read (16 MiB, room for the most peers with long names and comments); a larger one is
    /// refused whole, with its size.
    public static let maximumFileSize = 16 << 20

    /// The peers of a file's bytes: UTF-8 text without NUL bytes (a binary file is refused whole, naming the first
    /// line that is not text), then as ``parse(_:defaultPort:)``.
    public static func parse(bytes: [UInt8], defaultPort: Int) -> Result<[MeshPeer], ListError> {
        let text = String(decoding: bytes, as: UTF8.self)
        if bytes.contains(0) || String(validating: bytes, as: UTF8.self) == nil {
            let lines = text.split(omittingEmptySubsequences: false, whereSeparator: \.isLineEnd)
            let index = lines.firstIndex { $0.unicodeScalars.contains { $0 == "\u{FFFD}" || $0 == "\0" } } ?? 0
            let reason = "not UTF-8 text (a binary file?); none of the file is taken"
            return .failure(
                ListError(lines: [LineError(line: index + 1, text: String(lines[index]).excerpt(), reason: reason)])
            )
        }
        return Self.parse(text, defaultPort: defaultPort)
    }

    /// The peers of a file's `text`: one `HOST:PORT` (or `[IPV6]:PORT`) a line; blank lines and text after `#` are
    /// ignored; a line without a port takes `defaultPort`. Duplicates count once. Every bad line is reported, with
    /// its number, and none of the list is taken then (a half-read list would stop probing peers by mistake).
    public static func parse(_ text: String, defaultPort: Int) -> Result<[MeshPeer], ListError> {
        var peers: [MeshPeer] = []
        var seen = Set<MeshPeer>()
        var errors = ListError(lines: [])
        func refuse(_ line: Int, _ text: String, _ reason: String) {
            if errors.lines.count < ListError.linesShown {
                errors.lines.append(LineError(line: line, text: text.excerpt(), reason: reason))
            } else {
                errors.more += 1
            }
        }
        // A CRLF line end is one Character ("\r\n"), which a split on "\n" alone would not cut: a file written on
        // Windows would be one line.
        for (index, raw) in text.split(omittingEmptySubsequences: false, whereSeparator: \.isLineEnd).enumerated() {
            let content = raw.split(separator: "#", maxSplits: 1, omittingEmptySubsequences: false).first ?? ""
            let line = content.trimmingWhitespace()
            if line.isEmpty { continue }
            // The peer, then its labels: `192.0.2.1:1337 zone=eu-1 rack=r12`.
            let words = line.split(whereSeparator: { $0 == " " || $0 == "\t" })
            let labels: [String: String]
            switch Self.labels(words.dropFirst()) {
            case .success(let parsed): labels = parsed
            case .failure(let reason):
                refuse(index + 1, line, reason.text)
                continue
            }
            switch Self.peer(String(words[0]), defaultPort: defaultPort) {
            case .success(var peer):
                peer.labels = labels
                if seen.insert(peer).inserted { peers.append(peer) }
            case .failure(let error):
                refuse(index + 1, line, error.problem)
            }
        }
        if peers.count > Self.maximumPeers {
            refuse(0, "", "\(peers.count) peers; at most \(Self.maximumPeers) are taken")
        }
        return errors.lines.isEmpty ? .success(peers) : .failure(errors)
    }

    /// The most labels a peer may carry.
    public static let maximumLabels = 8
    /// Label names a peer may not carry: the agent's own, and Prometheus'.
    static let reservedLabels: Set<String> = ["peer", "address", "flow", "le", "quantile", "instance", "job"]

    struct LabelProblem: Error { var text: String }

    /// What is wrong with `name` as a peer's label name, or nil: letters, digits and _, not first a digit, not `__`
    /// first (Prometheus' own), not one of the agent's labels (`peer`, `address`, `flow`) or Prometheus'.
    public static func labelNameProblem(_ name: String) -> String? {
        guard let first = name.utf8.first, name.utf8.count <= 64,
            !(UInt8(ascii: "0")...UInt8(ascii: "9")).contains(first), !name.hasPrefix("__"),
            name.utf8.allSatisfy({
                $0 == UInt8(ascii: "_") || (UInt8(ascii: "a")...UInt8(ascii: "z")).contains($0)
                    || (UInt8(ascii: "A")...UInt8(ascii: "Z")).contains($0)
                    || (UInt8(ascii: "0")...UInt8(ascii: "9")).contains($0)
            })
        else {
            return "is not a label name: letters, digits and _, at most 64, not first a digit or __"
        }
        if Self.reservedLabels.contains(name) { return "is the agent's or Prometheus' own label" }
        return nil
    }

    /// `name=value` words: names as Prometheus takes them (not reserved, not `__`), values of printable characters
    /// without quotes or backslashes, at most 64 bytes.
    static func labels(_ words: ArraySlice<Substring>) -> Result<[String: String], LabelProblem> {
        var labels: [String: String] = [:]
        guard words.count <= Self.maximumLabels else {
            return .failure(LabelProblem(text: "\(words.count) labels; at most \(Self.maximumLabels) are taken"))
        }
        for word in words {
            let parts = word.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false)
            guard parts.count == 2 else {
                return .failure(
                    LabelProblem(text: "'\(String(word).excerpt(40))' is not a label: write name=value after the peer")
                )
            }
            let name = String(parts[0])
            let value = String(parts[1])
            if let problem = Self.labelNameProblem(name) {
                return .failure(LabelProblem(text: "'\(name.excerpt(40))' \(problem)"))
            }
            guard !value.isEmpty, value.utf8.count <= 64,
                value.unicodeScalars.allSatisfy({ $0.value > 0x20 && $0.value != 0x7F && $0 != "\"" && $0 != "\\" })
            else {
                return .failure(
                    LabelProblem(
                        text:
                            "the value of '\(name)' must be 1 to 64 printable characters, without quotes or backslashes"
                    )
                )
            }
            guard labels.updateValue(value, forKey: name) == nil else {
                return .failure(LabelProblem(text: "the label '\(name)' is given twice"))
            }
        }
        return .success(labels)
    }

    /// One peer: `HOST:PORT`, `[IPV6]:PORT`, or a host alone (an IPv6 address alone in brackets), with
    /// `defaultPort`.
    public static func peer(_ text: String, defaultPort: Int) -> Result<MeshPeer, AddressError> {
        if let parsed = try? HostAndPort(parsing: text), parsed.host != nil {
            return .success(MeshPeer(parsed))
        }
        var host = Substring(text)
        if host.hasPrefix("[") && host.hasSuffix("]") { host = host.dropFirst().dropLast() }
        // A host alone: no colon (a name or IPv4 address), or an IPv6 address that was in brackets.
        if !host.isEmpty && !host.contains("[") && !host.contains("]") && !host.contains(" ")
            && (!host.contains(":") || text.hasPrefix("["))
        {
            return .success(MeshPeer(HostAndPort(host: String(host), port: defaultPort)))
        }
        do {
            _ = try HostAndPort(parsing: text)
            return .failure(.missingPort(text))
        } catch {
            return .failure(error)
        }
    }
}

extension Substring {
    func trimmingWhitespace() -> String {
        var view = self[...]
        while let first = view.first, first.isWhitespace { view = view.dropFirst() }
        while let last = view.last, last.isWhitespace { view = view.dropLast() }
        return String(view)
    }
}

extension Character {
    /// A line end as files have them: "\n", or "\r\n" (one Character in Swift).
    var isLineEnd: Bool { self == "\n" || self == "\r\n" }
}
