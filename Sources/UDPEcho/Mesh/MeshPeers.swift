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
        /// The line as written.
        public var text: String
        /// What is wrong with it.
        public var reason: String
        /// The line's number, its text and what is wrong.
        public var description: String { "line \(self.line) ('\(self.text)'): \(self.reason)" }
    }

    /// Every bad line of a list.
    public struct ListError: Error, Equatable, CustomStringConvertible {
        /// Every line that is wrong, in order.
        public var lines: [LineError]
        /// Every wrong line, separated by semicolons.
        public var description: String { self.lines.map(\.description).joined(separator: "; ") }
    }

    /// The most peers a list may name: a list that names more is a mistake, refused whole.
    public static let maximumPeers = 100_000

    /// The peers of a file's `text`: one `HOST:PORT` (or `[IPV6]:PORT`) a line; blank lines and text after `#` are
    /// ignored; a line without a port takes `defaultPort`. Duplicates count once. Every bad line is reported, with
    /// its number, and none of the list is taken then (a half-read list would stop probing peers by mistake).
    public static func parse(_ text: String, defaultPort: Int) -> Result<[MeshPeer], ListError> {
        var peers: [MeshPeer] = []
        var seen = Set<MeshPeer>()
        var errors: [LineError] = []
        for (index, raw) in text.split(separator: "\n", omittingEmptySubsequences: false).enumerated() {
            let content = raw.split(separator: "#", maxSplits: 1, omittingEmptySubsequences: false).first ?? ""
            let line = content.trimmingWhitespace()
            if line.isEmpty { continue }
            switch Self.peer(line, defaultPort: defaultPort) {
            case .success(let peer):
                if seen.insert(peer).inserted { peers.append(peer) }
            case .failure(let error):
                errors.append(LineError(line: index + 1, text: line, reason: error.description))
            }
        }
        if peers.count > Self.maximumPeers {
            errors.append(
                LineError(line: 0, text: "", reason: "\(peers.count) peers; at most \(Self.maximumPeers) are taken")
            )
        }
        return errors.isEmpty ? .success(peers) : .failure(ListError(lines: errors))
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
