/// A node of a YAML document as ``YAMLReader`` reads it: scalars stay text (the reader of a configuration gives them
/// their types and says which line a bad one is on), and every node knows its line.
public indirect enum YAMLNode: Sendable, Equatable {
    /// A scalar: its text (quotes removed, escapes resolved), whether it was quoted, its line.
    case scalar(String, quoted: Bool, line: Int)
    /// A list, in order.
    case list([YAMLNode], line: Int)
    /// A mapping, in the order written; keys are unique.
    case mapping([YAMLEntry], line: Int)
    /// Nothing: `key:` with no value, `~` or `null`.
    case null(line: Int)

    /// The line the node starts on, from 1.
    public var line: Int {
        switch self {
        case .scalar(_, _, let line), .list(_, let line), .mapping(_, let line), .null(let line): line
        }
    }

    /// What the node is, for messages: "a list", "a mapping", "text", "nothing".
    public var kind: String {
        switch self {
        case .scalar: "text"
        case .list: "a list"
        case .mapping: "a mapping"
        case .null: "nothing"
        }
    }
}

/// One `key: value` of a mapping.
public struct YAMLEntry: Sendable, Equatable {
    /// The key.
    public var key: String
    /// The value.
    public var value: YAMLNode
    /// The key's line.
    public var line: Int
}

/// A line that is not YAML this reader takes, and why.
public struct YAMLError: Error, Equatable, CustomStringConvertible {
    /// The line, from 1.
    public var line: Int
    /// What is wrong.
    public var reason: String
    /// `line N: reason`.
    public var description: String { "line \(self.line): \(self.reason)" }
}

/// Reads the YAML that configuration files are written in: block mappings and lists (nested by indentation, lists
/// of mappings included), plain, 'single' and "double" quoted scalars, one-line flow lists (`[a, b]`), `{}` and
/// `[]`, comments, and a leading `---`. What it does not take it refuses with the line rather than guess: anchors and
/// aliases, tags, block scalars (`|`, `>`), plain scalars over several lines, flow mappings with content, several
/// documents, tabs in indentation, duplicate keys.
///
/// It is small on purpose: Yams would link Foundation into the executable, +7 MiB of memory for every server,
/// for a file read at start and on reload. Its work is linear in the input and its nesting bounded
/// (``maximumDepth``); a fuzz target (`yaml`) holds it to that.
public enum YAMLReader {
    /// The deepest nesting taken.
    public static let maximumDepth = 32

    private struct Line {
        var indent: Int
        var text: Substring
        var number: Int
    }

    /// The document in `bytes` (UTF-8), or the first line that is wrong; an empty document is ``YAMLNode/null(line:)``.
    public static func read(_ bytes: [UInt8]) -> Result<YAMLNode, YAMLError> {
        do throws(YAMLError) {
            return .success(try Self.document(String(decoding: bytes, as: UTF8.self)))
        } catch {
            return .failure(error)
        }
    }

    /// The document in `text`, or the first line that is wrong.
    public static func read(_ text: String) -> Result<YAMLNode, YAMLError> { Self.read(Array(text.utf8)) }

    private static func document(_ text: String) throws(YAMLError) -> YAMLNode {
        var lines: [Line] = []
        var number = 0
        var started = false
        // "\r\n" is one Character in Swift: a split on "\n" alone would leave CRLF files one long line.
        for raw in text.split(omittingEmptySubsequences: false, whereSeparator: \.isLineEnd) {
            number += 1
            var line = raw
            if line.last == "\r" { line = line.dropLast() }
            if line.contains("\u{FFFD}") { throw YAMLError(line: number, reason: "is not UTF-8 text") }
            let indent = line.prefix { $0 == " " }.count
            var content = line.dropFirst(indent)
            if content.first == "\t" {
                throw YAMLError(line: number, reason: "a tab in the indentation; indent with spaces")
            }
            content = try Self.strippingComment(content, line: number)
            while content.last == " " || content.last == "\t" { content = content.dropLast() }
            if content.isEmpty { continue }
            if indent == 0 && (content == "---" || content.hasPrefix("--- ")) {
                guard !started else {
                    throw YAMLError(line: number, reason: "a second document: give one document")
                }
                started = true
                content = content.dropFirst(3).drop { $0 == " " }
                if content.isEmpty { continue }
            }
            if indent == 0 && content == "..." {
                throw YAMLError(line: number, reason: "'...' (end of document) is not taken")
            }
            if content.hasPrefix("%") && indent == 0 {
                throw YAMLError(line: number, reason: "directives (%YAML, %TAG) are not taken")
            }
            started = true
            lines.append(Line(indent: indent, text: content, number: number))
        }
        guard let first = lines.first else { return .null(line: 1) }
        var index = 0
        let node = try Self.block(&lines, &index, indent: first.indent, depth: 0)
        if index < lines.count {
            let line = lines[index]
            let reason =
                line.indent == first.indent
                ? "does not continue \(node.kind) above it at the same indentation"
                : "is indented less than the lines before it"
            throw YAMLError(line: line.number, reason: reason)
        }
        return node
    }

    /// `content` without a comment: `#` at the start or after a space, outside quotes.
    private static func strippingComment(_ content: Substring, line: Int) throws(YAMLError) -> Substring {
        var quote: Character?
        var previous: Character = " "
        var index = content.startIndex
        while index < content.endIndex {
            let character = content[index]
            if let open = quote {
                if character == "\\" && open == "\"" {
                    index = content.index(after: index)
                    if index < content.endIndex { index = content.index(after: index) }
                    previous = "x"
                    continue
                }
                if character == open {
                    // '' inside single quotes is a quote.
                    let next = content.index(after: index)
                    if open == "'" && next < content.endIndex && content[next] == "'" {
                        index = content.index(after: next)
                        continue
                    }
                    quote = nil
                }
            } else if character == "#" && (previous == " " || previous == "\t") {
                return content[content.startIndex..<index]
            } else if (character == "\"" || character == "'") && Self.startsScalar(previous) {
                quote = character
            }
            previous = character
            index = content.index(after: index)
        }
        return content
    }

    /// Whether a quote after `previous` opens a quoted scalar (at a value's start), rather than being part of plain
    /// text such as `it's`.
    private static func startsScalar(_ previous: Character) -> Bool {
        previous == " " || previous == "[" || previous == "," || previous == "-" || previous == ":"
    }

    /// The block that starts at `lines[index]`, whose lines are indented `indent`.
    private static func block(
        _ lines: inout [Line],
        _ index: inout Int,
        indent: Int,
        depth: Int
    ) throws(YAMLError) -> YAMLNode {
        let line = lines[index]
        guard depth < Self.maximumDepth else {
            throw YAMLError(line: line.number, reason: "nested more than \(Self.maximumDepth) levels deep")
        }
        if line.text == "-" || line.text.hasPrefix("- ") {
            return try Self.list(&lines, &index, indent: indent, depth: depth)
        }
        if try Self.splitKey(line.text, line: line.number) != nil {
            return try Self.mapping(&lines, &index, indent: indent, depth: depth)
        }
        // A scalar alone: one line only.
        index += 1
        if index < lines.count && lines[index].indent > indent {
            throw YAMLError(
                line: lines[index].number,
                reason:
                    "continues the text of line \(line.number): text over several lines is not taken; put it on one line, quoted"
            )
        }
        return try Self.inlineValue(line.text, line: line.number)
    }

    private static func list(
        _ lines: inout [Line],
        _ index: inout Int,
        indent: Int,
        depth: Int
    ) throws(YAMLError) -> YAMLNode {
        let start = lines[index].number
        var items: [YAMLNode] = []
        while index < lines.count && lines[index].indent == indent {
            let line = lines[index]
            // A line of the mapping this list is the value of (a list may sit at its key's indentation).
            guard line.text == "-" || line.text.hasPrefix("- ") else { break }
            let rest = line.text.dropFirst(1).drop { $0 == " " }
            if rest.isEmpty {
                index += 1
                if index < lines.count && lines[index].indent > indent {
                    items.append(try Self.block(&lines, &index, indent: lines[index].indent, depth: depth + 1))
                } else {
                    items.append(.null(line: line.number))
                }
            } else {
                // The item's content stands as a line of its own, indented where it starts; the lines that continue
                // it (a mapping's other keys) are indented as much.
                let column = indent + (line.text.count - rest.count)
                lines[index] = Line(indent: column, text: rest, number: line.number)
                items.append(try Self.block(&lines, &index, indent: column, depth: depth + 1))
            }
        }
        if index < lines.count && lines[index].indent > indent {
            throw YAMLError(line: lines[index].number, reason: "is indented more than the list item before it")
        }
        return .list(items, line: start)
    }

    private static func mapping(
        _ lines: inout [Line],
        _ index: inout Int,
        indent: Int,
        depth: Int
    ) throws(YAMLError) -> YAMLNode {
        let start = lines[index].number
        var entries: [YAMLEntry] = []
        var keys = Set<String>()
        while index < lines.count && lines[index].indent == indent {
            let line = lines[index]
            guard let (key, rest) = try Self.splitKey(line.text, line: line.number) else {
                if line.text == "-" || line.text.hasPrefix("- ") {
                    throw YAMLError(line: line.number, reason: "a list item where a key of the mapping was expected")
                }
                throw YAMLError(line: line.number, reason: "expected 'key: value'")
            }
            guard keys.insert(key).inserted else {
                throw YAMLError(line: line.number, reason: "'\(key.excerpt())' is given twice in the same mapping")
            }
            index += 1
            let value: YAMLNode
            if !rest.isEmpty {
                value = try Self.inlineValue(rest, line: line.number)
                if index < lines.count && lines[index].indent > indent {
                    throw YAMLError(
                        line: lines[index].number,
                        reason: "is indented under '\(key.excerpt())', which has a value on its line already"
                    )
                }
            } else if index < lines.count && lines[index].indent > indent {
                value = try Self.block(&lines, &index, indent: lines[index].indent, depth: depth + 1)
            } else if index < lines.count && lines[index].indent == indent
                && (lines[index].text == "-" || lines[index].text.hasPrefix("- "))
            {
                // A list may sit at its key's indentation.
                value = try Self.list(&lines, &index, indent: indent, depth: depth + 1)
            } else {
                value = .null(line: line.number)
            }
            entries.append(YAMLEntry(key: key, value: value, line: line.number))
        }
        if index < lines.count && lines[index].indent > indent {
            throw YAMLError(line: lines[index].number, reason: "is indented more than the key before it")
        }
        return .mapping(entries, line: start)
    }

    /// The key and the rest of a `key: value` line, or nil when the line is not one.
    private static func splitKey(_ text: Substring, line: Int) throws(YAMLError) -> (String, Substring)? {
        if let quote = text.first, quote == "\"" || quote == "'" {
            // A quoted key.
            var rest = text
            let key = try Self.quoted(&rest, line: line)
            guard rest.first == ":" else { return nil }
            rest = rest.dropFirst()
            guard rest.isEmpty || rest.first == " " else { return nil }
            return (key, rest.drop { $0 == " " })
        }
        if text.first == "[" || text.first == "{" { return nil }
        var index = text.startIndex
        while index < text.endIndex {
            if text[index] == ":" {
                let next = text.index(after: index)
                if next == text.endIndex || text[next] == " " {
                    let key = text[text.startIndex..<index]
                    guard !key.isEmpty else { throw YAMLError(line: line, reason: "a key is empty") }
                    try Self.checkPlain(key, line: line)
                    return (String(key), text[next...].drop { $0 == " " })
                }
            }
            index = text.index(after: index)
        }
        return nil
    }

    /// A value written on its key's (or its dash's) line: a quoted or plain scalar, or a flow list.
    private static func inlineValue(_ text: Substring, line: Int) throws(YAMLError) -> YAMLNode {
        if text == "{}" { return .mapping([], line: line) }
        if text.first == "{" {
            throw YAMLError(line: line, reason: "flow mappings ({...}) are not taken; write the keys one a line")
        }
        if text.first == "[" { return try Self.flowList(text, line: line) }
        if text.first == "\"" || text.first == "'" {
            var rest = text
            let value = try Self.quoted(&rest, line: line)
            guard rest.isEmpty else {
                throw YAMLError(line: line, reason: "text after the closing quote: '\(String(rest).excerpt())'")
            }
            return .scalar(value, quoted: true, line: line)
        }
        if text == "|" || text == ">" || text.hasPrefix("|") || text.hasPrefix(">") {
            throw YAMLError(
                line: line,
                reason: "block scalars (| and >) are not taken; put the text on one line, quoted"
            )
        }
        try Self.checkPlain(text, line: line)
        if text.contains(": ") || text.hasSuffix(":") {
            throw YAMLError(
                line: line,
                reason:
                    "'\(String(text).excerpt())' has ': ' in a value; quote it, or put the mapping on lines of its own"
            )
        }
        if text == "~" || text == "null" || text == "Null" || text == "NULL" { return .null(line: line) }
        return .scalar(String(text), quoted: false, line: line)
    }

    /// Refuses what YAML gives a meaning this reader does not take.
    private static func checkPlain(_ text: Substring, line: Int) throws(YAMLError) {
        guard let first = text.first else { return }
        switch first {
        case "&", "*": throw YAMLError(line: line, reason: "anchors and aliases (& and *) are not taken")
        case "!": throw YAMLError(line: line, reason: "tags (!) are not taken")
        case "@", "`": throw YAMLError(line: line, reason: "'\(first)' cannot start plain text; quote it")
        case "?": throw YAMLError(line: line, reason: "complex keys (?) are not taken")
        default: break
        }
    }

    /// `[a, "b", c]` on one line: a list of scalars.
    private static func flowList(_ text: Substring, line: Int) throws(YAMLError) -> YAMLNode {
        guard text.last == "]" else {
            throw YAMLError(line: line, reason: "a flow list must close with ']' on the same line")
        }
        var rest = text.dropFirst().dropLast().drop { $0 == " " }
        var items: [YAMLNode] = []
        while !rest.isEmpty {
            if rest.first == "\"" || rest.first == "'" {
                items.append(.scalar(try Self.quoted(&rest, line: line), quoted: true, line: line))
            } else {
                let end = rest.firstIndex(of: ",") ?? rest.endIndex
                var item = rest[rest.startIndex..<end]
                while item.last == " " { item = item.dropLast() }
                if item.isEmpty { throw YAMLError(line: line, reason: "an empty item in a flow list") }
                if item.contains("[") || item.contains("]") || item.contains("{") || item.contains("}") {
                    throw YAMLError(line: line, reason: "nested flow collections are not taken")
                }
                try Self.checkPlain(item, line: line)
                items.append(
                    item == "~" || item == "null" ? .null(line: line) : .scalar(String(item), quoted: false, line: line)
                )
                rest = rest[end...]
            }
            rest = rest.drop { $0 == " " }
            if rest.first == "," {
                rest = rest.dropFirst().drop { $0 == " " }
                if rest.isEmpty { throw YAMLError(line: line, reason: "a flow list ends with ','") }
            } else if !rest.isEmpty {
                throw YAMLError(line: line, reason: "expected ',' between the items of a flow list")
            }
        }
        return .list(items, line: line)
    }

    /// The quoted scalar at the start of `text`; `text` is left after its closing quote.
    private static func quoted(_ text: inout Substring, line: Int) throws(YAMLError) -> String {
        guard let quote = text.first else { throw YAMLError(line: line, reason: "expected a quoted text") }
        var out = ""
        var index = text.index(after: text.startIndex)
        while index < text.endIndex {
            let character = text[index]
            if character == quote {
                let next = text.index(after: index)
                if quote == "'" && next < text.endIndex && text[next] == "'" {
                    out.append("'")
                    index = text.index(after: next)
                    continue
                }
                text = text[next...]
                return out
            }
            if quote == "\"" && character == "\\" {
                index = text.index(after: index)
                guard index < text.endIndex else { break }
                switch text[index] {
                case "\\": out.append("\\")
                case "\"": out.append("\"")
                case "n": out.append("\n")
                case "t": out.append("\t")
                case "/": out.append("/")
                case "0": out.append("\0")
                default:
                    throw YAMLError(
                        line: line,
                        reason: "the escape '\\\(text[index])' is not taken (\\\\ \\\" \\n \\t \\/ \\0 are)"
                    )
                }
                index = text.index(after: index)
                continue
            }
            out.append(character)
            index = text.index(after: index)
        }
        throw YAMLError(line: line, reason: "a quote opened here is not closed on this line")
    }
}
