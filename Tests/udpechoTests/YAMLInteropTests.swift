import Foundation
import TestSupport
import Testing
import UDPEcho

/// PyYAML (an independent YAML parser) reads each document of argv[1] (a JSON list of texts) and prints, per
/// document, its structure as JSON with every scalar as text, or {"error": ...} where it refuses it.
let pythonYAML = """
    import json, sys, yaml
    def plain(value):
        if isinstance(value, dict):
            return {str(k): plain(v) for k, v in value.items()}
        if isinstance(value, list):
            return [plain(v) for v in value]
        if value is None:
            return None
        if isinstance(value, bool):
            return "true" if value else "false"
        return str(value)
    out = []
    for text in json.loads(sys.argv[1]):
        try:
            out.append({"ok": plain(yaml.safe_load(text))})
        except yaml.YAMLError as error:
            out.append({"error": str(error).splitlines()[0]})
    print(json.dumps(out))
    """

/// Our reader's structure of `node`, as the Python side prints PyYAML's.
func plainJSON(_ node: YAMLNode) -> Any {
    switch node {
    case .scalar(let text, _, _): return text
    case .null: return NSNull()
    case .list(let items, _): return items.map(plainJSON)
    case .mapping(let entries, _):
        var object: [String: Any] = [:]
        for entry in entries { object[entry.key] = plainJSON(entry.value) }
        return object
    }
}

@Suite struct YAMLInteropTests {
    /// Documents both readers take: they must read them alike.
    static let taken = [
        """
        ---
        # udpecho exporter
        modules:
          echo:
            protocol: echo   # a comment
            count: 10
            interval: 100ms
          stamp_ef:
            protocol: stamp
            dscp: 46
            fail_if_loss_above: 0.05
        allow:
          - 192.0.2.0/24
          - "2001:db8::/32"
          - router1.example.net
        limits:
          concurrent_probes: 4
        targets:
        - target: 192.0.2.1:862
          module: stamp_ef
          every: 10s
        - target: '[2001:db8::1]:862'
          module: stamp_ef
        """,
        "a: 'it''s # not a comment'\nb: \"tab\\there \\\"quoted\\\" back\\\\slash\"\nc: text with # a comment\n",
        "list: [a, 'b, c', \"d\", 12]\nempty: []\nnothing: {}\nnull_value:\ntilde: ~\n",
        "outer:\n  - name: one\n    tags: [x, y]\n    nested:\n      - deep: true\n  - name: two\n  -\n    late: 1\n",
        "key with spaces: value with spaces\n\"quoted: key\": v\n'single key': w\nurl: http://example.net:80/x\n",
        "a: 1\r\nb:\r\n  - 2\r\n  - 3\r\n",
        "unicode: héllo wörld ✓\nemoji: \"🚀\"\n",
        "- 1\n- - nested\n  - list\n- key: value\n",
        "just text\n",
        "",
        "# only a comment\n",
    ]

    /// Documents PyYAML refuses: ours must refuse them too, not read something else into them.
    static let refused = [
        "a: b: c\n",
        "a:\n  b: 1\n c: 2\n",
        "- a\nb: 1\n",
        "key: [1, 2\n",
        "a: 'x' y\n",
        "a: 1\na: 'open\n",
        "a:\n\t- b\n",
        "a: \"\\q\"\n",
    ]

    @Test(
        .enabled(
            if: FileManager.default.isExecutableFile(atPath: scapyPython),
            "needs .build/peers-venv (.ci/run makes it)"
        )
    )
    func ourReaderReadsAsPyYAMLReads() async throws {
        let documents = Self.taken + Self.refused
        let input = String(decoding: try JSONSerialization.data(withJSONObject: documents), as: UTF8.self)
        let result = try await Spawned.run(scapyPython, ["-c", pythonYAML, input])
        #expect(result.status == 0, "\(result.error)")
        let answers = try #require(try JSONSerialization.jsonObject(with: result.output) as? [[String: Any]])
        #expect(answers.count == documents.count)
        for (index, document) in documents.enumerated() {
            let theirs = answers[index]
            let ours = YAMLReader.read(document)
            if index < Self.taken.count {
                let expected = try #require(theirs["ok"], "PyYAML refused \(document.debugDescription): \(theirs)")
                guard case .success(let node) = ours else {
                    Issue.record("we refused \(document.debugDescription): \(ours)")
                    continue
                }
                let mine = try JSONSerialization.data(
                    withJSONObject: plainJSON(node),
                    options: [.sortedKeys, .fragmentsAllowed]
                )
                let other = try JSONSerialization.data(
                    withJSONObject: expected,
                    options: [.sortedKeys, .fragmentsAllowed]
                )
                #expect(
                    mine == other,
                    "\(document.debugDescription):\n ours   \(String(decoding: mine, as: UTF8.self))\n PyYAML \(String(decoding: other, as: UTF8.self))"
                )
            } else {
                #expect(theirs["error"] != nil, "PyYAML took \(document.debugDescription): \(theirs)")
                guard case .failure = ours else {
                    Issue.record("we took \(document.debugDescription), which PyYAML refuses: \(ours)")
                    continue
                }
            }
        }
    }
}
