public import NIOCore

/// A peer of a mesh agent as it was given: a name (or address) and port. A name may stand for several addresses
/// (a Kubernetes headless Service returns one per pod): each is probed as its own target, under the peer's name.
public struct MeshPeer: Sendable, Hashable, CustomStringConvertible {
    /// The host and port as given.
    public var endpoint: HostAndPort

    /// A peer.
    public init(_ endpoint: HostAndPort) { self.endpoint = endpoint }

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
            switch Self.peer(line, defaultPort: defaultPort) {
            case .success(let peer):
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
