extension String {
    /// This text with each character that `replacements` names written as its replacement: Prometheus' label
    /// values (backslash, quote, newline), the plots' SVG text (`&`, `<`, `>`). Text with nothing to replace is
    /// returned as it is, without a copy.
    func escaping(_ replacements: KeyValuePairs<Character, String>) -> String {
        guard self.contains(where: { character in replacements.contains { $0.key == character } }) else { return self }
        var escaped = ""
        for character in self {
            if let replacement = replacements.first(where: { $0.key == character })?.value {
                escaped += replacement
            } else {
                escaped.append(character)
            }
        }
        return escaped
    }
}
