/// A `HOST:PORT` pair as a user writes it, before any name resolution.
///
/// The accepted forms are those of Go's `net.SplitHostPort`, which the article's program uses:
/// `127.0.0.1:1337`, `[::1]:1337`, `localhost:1337`, `example.org:7`, and `:1337`, which has no host and means
/// "every local address" to a server.
public struct HostAndPort: Sendable, Hashable, CustomStringConvertible {
    /// The host: an IPv4 address, an IPv6 address (without brackets) or a name; `nil` for "every local address".
    public var host: String?
    /// The UDP port, 0...65535 (0 asks a server for an ephemeral port).
    public var port: Int

    /// Creates a pair from its parts.
    public init(host: String?, port: Int) {
        self.host = host
        self.port = port
    }

    /// Parses `HOST:PORT`, `[IPV6]:PORT` or `:PORT`.
    ///
    /// - Throws: ``AddressError`` naming what is wrong with the text and how to write it.
    public init(parsing text: String) throws(AddressError) {
        guard !text.isEmpty else { throw .empty }
        let hostPart: Substring
        let portPart: Substring
        if text.hasPrefix("[") {
            guard let close = text.firstIndex(of: "]") else { throw .unclosedBracket(text) }
            hostPart = text[text.index(after: text.startIndex)..<close]
            let rest = text[text.index(after: close)...]
            guard rest.hasPrefix(":") else { throw .missingPort(text) }
            portPart = rest.dropFirst()
            guard !hostPart.isEmpty else { throw .emptyHost(text) }
        } else {
            guard let colon = text.lastIndex(of: ":") else { throw .missingPort(text) }
            hostPart = text[..<colon]
            portPart = text[text.index(after: colon)...]
            if hostPart.contains(":") { throw .unbracketedIPv6(text) }
        }
        if hostPart.contains("[") || hostPart.contains("]") || portPart.contains("]") {
            throw .unclosedBracket(text)
        }
        guard !portPart.isEmpty else { throw .missingPort(text) }
        guard portPart.allSatisfy({ $0.isASCII && $0.isNumber }), let port = Int(portPart) else {
            throw .badPort(text, String(portPart))
        }
        guard (0...65535).contains(port) else { throw .portOutOfRange(text, port) }
        self.host = hostPart.isEmpty ? nil : String(hostPart)
        self.port = port
    }

    /// The pair written back in the form ``init(parsing:)`` reads: IPv6 addresses in brackets.
    public var description: String {
        guard let host else { return ":\(self.port)" }
        return host.contains(":") ? "[\(host)]:\(self.port)" : "\(host):\(self.port)"
    }
}

/// What is wrong with an address that a user wrote.
public enum AddressError: Error, Equatable, CustomStringConvertible {
    /// Nothing was written.
    case empty
    /// The text has no `:PORT`.
    case missingPort(String)
    /// The port (the second value) is not a number.
    case badPort(String, String)
    /// The port (the second value) is not from 0 to 65535.
    case portOutOfRange(String, Int)
    /// A `[` without its `]`, or the other way round.
    case unclosedBracket(String)
    /// An IPv6 address without brackets, whose last colon could be the port's.
    case unbracketedIPv6(String)
    /// `[]:PORT`: brackets with no address in them.
    case emptyHost(String)

    /// What is wrong with the address, and how to write it.
    public var description: String {
        switch self {
        case .empty:
            return "the address is empty; write HOST:PORT, for example 127.0.0.1:1337"
        case .missingPort(let text):
            return "'\(text)' has no port; write HOST:PORT, for example \(Self.example(for: text))"
        case .badPort(let text, let port):
            return "'\(text)': the port '\(port)' is not a number; write HOST:PORT with a port from 0 to 65535"
        case .portOutOfRange(let text, let port):
            return "'\(text)': the port \(port) is out of range; UDP ports go from 0 to 65535"
        case .unclosedBracket(let text):
            return "'\(text)' has unbalanced brackets; write an IPv6 address as [ADDRESS]:PORT, for example [::1]:1337"
        case .unbracketedIPv6(let text):
            return "'\(text)' is ambiguous: an IPv6 address needs brackets around it, as in [::1]:1337"
        case .emptyHost(let text):
            return "'\(text)' has empty brackets; write [ADDRESS]:PORT, or :PORT for every local address"
        }
    }

    /// What is wrong, without the text itself (for a message that quotes it already, as a peers file's).
    public var problem: String {
        switch self {
        case .empty: "nothing is written; write HOST:PORT"
        case .missingPort: "there is no port; write HOST:PORT"
        case .badPort(_, let port): "the port '\(port.excerpt(12))' is not a number; write a port from 0 to 65535"
        case .portOutOfRange(_, let port): "the port \(port) is out of range; UDP ports go from 0 to 65535"
        case .unclosedBracket: "unbalanced brackets; write an IPv6 address as [ADDRESS]:PORT, for example [::1]:1337"
        case .unbracketedIPv6: "ambiguous: an IPv6 address needs brackets around it, as in [::1]:1337"
        case .emptyHost: "empty brackets; write [ADDRESS]:PORT"
        }
    }

    /// `text` completed with a port, as the user most likely meant it: `[::1]` -> `[::1]:1337`, `host:` ->
    /// `host:1337`, `::1` -> `[::1]:1337`, `host` -> `host:1337`.
    private static func example(for text: String) -> String {
        if text.hasPrefix("[") && text.hasSuffix("]") { return "\(text):1337" }
        if text.hasSuffix(":") && (text.hasPrefix("[") || text.dropLast().allSatisfy { $0 != ":" }) {
            return "\(text)1337"
        }
        if text.contains(":") { return "[\(text)]:1337" }
        return "\(text):1337"
    }
}
