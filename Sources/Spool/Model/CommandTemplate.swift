/// A shell command with Jinja-style `{{ name }}` placeholders, as in Balsam's `command_template`.
///
/// Only plain placeholders are supported (no filters, no `{% %}` blocks). Rendering quotes every value for the
/// place it stands in (`ShellContext`): bare, inside double quotes, or inside single quotes, so that the shell
/// reads the value literally and a parameter can never inject shell syntax. A placeholder where no quoting can
/// do that (a here-document, a comment, backticks, arithmetic) makes the template unquotable: an app refuses it
/// when it is defined (`checkQuotable`), with a message that says how to write it.
public struct CommandTemplate: Sendable, Equatable {
    enum Piece: Sendable, Equatable {
        case text(String)
        case placeholder(String, ShellContext)
    }

    let pieces: [Piece]
    /// The template text as written.
    public let source: String

    /// Parses a template; an unclosed `{{`, a name that is not an identifier, or `{%` is an error.
    // Over 100 lines: the template's one-pass scanner, its states in one loop.
    public init(_ source: String) throws(SpoolError) {
        self.source = source
        var pieces: [Piece] = []
        // `{# ... #}` is a comment, as in Jinja: it is left out of the command.
        var uncommented = ""
        var remaining = Substring(source)
        while let open = remaining.firstRange(of: "{#") {
            uncommented += remaining[..<open.lowerBound]
            guard let close = remaining[open.upperBound...].firstRange(of: "#}") else {
                throw fieldError("command_template", "has '{#' without a closing '#}'")
            }
            remaining = remaining[close.upperBound...]
        }
        uncommented += remaining
        var rest = Substring(uncommented)
        while let open = rest.firstRange(of: "{{") {
            if open.lowerBound > rest.startIndex { pieces.append(.text(String(rest[..<open.lowerBound]))) }
            let afterOpen = rest[open.upperBound...]
            guard let close = afterOpen.firstRange(of: "}}") else {
                throw fieldError("command_template", "has '{{' without a closing '}}'")
            }
            let name = afterOpen[..<close.lowerBound].trimmingSpaces()
            guard CommandTemplate.isIdentifier(name) else {
                throw fieldError(
                    "command_template", "placeholder '{{\(afterOpen[..<close.lowerBound])}}' is not a plain name")
            }
            pieces.append(.placeholder(String(name), .bare))
            rest = afterOpen[close.upperBound...]
        }
        if !rest.isEmpty { pieces.append(.text(String(rest))) }
        if uncommented.contains("{%") {
            throw fieldError("command_template", "uses '{%'; only {{ name }} placeholders are supported")
        }
        self.pieces = ShellContext.classify(pieces)
    }

    /// Refuses a template with a placeholder that no quoting can keep literal, naming it and its place.
    public func checkQuotable() throws(SpoolError) {
        for case .placeholder(let name, let context) in pieces {
            if let why = context.unquotable {
                throw fieldError(
                    "command_template",
                    "placeholder '{{ \(name) }}' sits \(why), where no quoting keeps a value literal; put it "
                        + "where a word goes (bare, or inside \"...\" or '...'), or pass it in the environment of a "
                        + "preprocess hook")
            }
        }
    }

    /// Placeholder names in order of first use.
    public var placeholders: [String] {
        var seen: [String] = []
        for case .placeholder(let name, _) in pieces where !seen.contains(name) { seen.append(name) }
        return seen
    }

    /// The command with each placeholder replaced by its shell-quoted value. A placeholder without a value
    /// is an error naming it.
    public func render(_ values: [String: JSONValue]) throws(SpoolError) -> String {
        try render(values, quoting: true)
    }

    /// The text with each placeholder replaced by its value as it is, for the caller that has checked every
    /// value (a batch job's script, whose `#SBATCH` lines a shell never reads).
    public func renderUnquoted(_ values: [String: String]) throws(SpoolError) -> String {
        try render(values.mapValues { .string($0) }, quoting: false)
    }

    private func render(_ values: [String: JSONValue], quoting: Bool) throws(SpoolError) -> String {
        var out = ""
        for piece in pieces {
            switch piece {
            case .text(let text): out += text
            case .placeholder(let name, let context):
                guard let value = values[name] else {
                    throw SpoolError(.invalidInput, "no value for placeholder '{{ \(name) }}'")
                }
                let text = CommandTemplate.text(of: value)
                guard quoting else {
                    out += text
                    continue
                }
                switch context {
                case .bare: out += CommandTemplate.shellQuote(text)
                case .doubleQuoted: out += CommandTemplate.doubleQuoteEscape(text)
                // Close the quote, add the value quoted as a word, open it again: the shell joins the three.
                case .singleQuoted: out += "'" + CommandTemplate.shellQuote(text) + "'"
                case .unquotable(let why):
                    throw fieldError("command_template", "placeholder '{{ \(name) }}' sits \(why)")
                }
            }
        }
        return out
    }

    /// The text a value stands for on a command line: strings as they are, other values as JSON.
    static func text(of value: JSONValue) -> String {
        switch value {
        case .string(let s): s
        case .null: ""
        default: value.serialized()
        }
    }

    /// Quotes a word for a POSIX shell, as Python's `shlex.quote` does: safe words stay bare, anything else
    /// goes in single quotes.
    public static func shellQuote(_ word: String) -> String {
        if word.isEmpty { return "''" }
        if isSafeWord(word) { return word }
        return "'" + word.replacingAll("'", with: "'\"'\"'") + "'"
    }

    /// Escapes text for the inside of a double-quoted string: `\`, `"`, `$` and `` ` `` are the characters bash
    /// reads there; everything else (newlines, `'`, globs, spaces) is literal.
    static func doubleQuoteEscape(_ text: String) -> String {
        var out = ""
        for c in text.unicodeScalars {
            if c == "\\" || c == "\"" || c == "$" || c == "`" { out.unicodeScalars.append("\\") }
            out.unicodeScalars.append(c)
        }
        return out
    }

    /// Whether `word` means the same to a shell without quotes: letters, digits and `@%+=:,./-_` only.
    public static func isSafeWord(_ word: String) -> Bool {
        !word.isEmpty
            && word.utf8.allSatisfy { c in
                (c >= 0x30 && c <= 0x39) || (c >= 0x41 && c <= 0x5A) || (c >= 0x61 && c <= 0x7A)
                    || "@%+=:,./-_".utf8.contains(c)
            }
    }

    static func isIdentifier(_ name: Substring) -> Bool {
        guard let first = name.utf8.first, first == UInt8(ascii: "_") || (first | 0x20 >= 0x61 && first | 0x20 <= 0x7A)
        else { return false }
        return name.utf8.allSatisfy { c in
            c == UInt8(ascii: "_") || (c >= 0x30 && c <= 0x39) || (c | 0x20 >= 0x61 && c | 0x20 <= 0x7A)
        }
    }
}

extension StringProtocol {
    package func trimmingSpaces() -> SubSequence {
        var s = self[...]
        while s.first == " " || s.first == "\t" { s = s.dropFirst() }
        while s.last == " " || s.last == "\t" { s = s.dropLast() }
        return s
    }

    package func replacingAll(_ target: String, with replacement: String) -> String {
        var out = ""
        var rest = self[...]
        while let r = rest.firstRange(of: target) {
            out += rest[..<r.lowerBound]
            out += replacement
            rest = rest[r.upperBound...]
        }
        out += rest
        return out
    }
}
