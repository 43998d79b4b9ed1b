/// Where a placeholder stands in a command template, as bash reads the text around it: what decides how its
/// value is quoted.
///
/// A small lexer over the template's text (the values are not yet there): it follows quotes, backslashes,
/// command substitution `$( )`, and notes the places whose rules no quoting can satisfy. It errs on the side of
/// refusing: a template it cannot follow is one a user rewrites, never one that runs a parameter as code.
enum ShellContext: Sendable, Equatable {
    /// Where a word goes: the value is quoted as a word (`shlex.quote`).
    case bare
    /// Inside `"..."`: `\`, `"`, `$` and `` ` `` are escaped.
    case doubleQuoted
    /// Inside `'...'`: the quote is closed, the value added as a word, and the quote opened again.
    case singleQuoted
    /// Nowhere a value can be kept literal; the text says where (for the error).
    case unquotable(String)

    /// Why a value cannot be quoted here, or nil.
    var unquotable: String? {
        if case .unquotable(let why) = self { return why }
        return nil
    }

    /// `pieces` with each placeholder's context filled in.
    static func classify(_ pieces: [CommandTemplate.Piece]) -> [CommandTemplate.Piece] {
        var lexer = Lexer()
        return pieces.map { piece in
            switch piece {
            case .placeholder(let name, _):
                let context = lexer.context
                lexer.placeholder()
                return .placeholder(name, context)
            case .text(let text):
                lexer.read(Array(text.unicodeScalars))
                return piece
            }
        }
    }

    /// Follows the template's text as bash would read it, up to each placeholder.
    private struct Lexer {
        /// The nesting: each opener pushes one, its closer pops it.
        enum Frame {
            case bare, double, single, ansiC, command(depth: Int), backtick, braced, arithmetic(depth: Int), comment
        }

        var stack: [Frame] = [.bare]
        /// The last character was an unquoted backslash: the next one is taken as it is.
        var escaped = false
        /// At the start of a word (where `#` begins a comment).
        var wordStart = true
        /// A `<<` was seen: what follows may be a here-document's body.
        var hereDocument = false

        var top: Frame { stack.last ?? .bare }

        /// The context of a placeholder here.
        var context: ShellContext {
            if escaped { return .unquotable("right after a backslash") }
            if hereDocument { return .unquotable("after a here-document operator (<<)") }
            switch top {
            case .bare, .command: return .bare
            case .double: return .doubleQuoted
            case .single: return .singleQuoted
            case .ansiC: return .unquotable("inside $'...'")
            case .backtick: return .unquotable("inside backticks (write $( ) instead)")
            case .braced: return .unquotable("inside ${...}")
            case .arithmetic: return .unquotable("inside $(( )) arithmetic")
            case .comment: return .unquotable("in a comment")
            }
        }

        /// A placeholder's value stands here: a word's character.
        mutating func placeholder() {
            escaped = false
            wordStart = false
        }

        mutating func read(_ chars: [Unicode.Scalar]) {
            var i = 0
            while i < chars.count {
                i += step(chars, at: i)
            }
        }

        /// Reads the character at `i` (and those it opens or closes with); returns how many it took.
        mutating func step(_ chars: [Unicode.Scalar], at i: Int) -> Int {
            let c = chars[i]
            func next(_ k: Int = 1) -> Unicode.Scalar? { i + k < chars.count ? chars[i + k] : nil }
            if escaped {
                escaped = false
                wordStart = false
                return 1
            }
            switch top {
            case .single:
                if c == "'" { stack.removeLast() }
            case .ansiC:
                if c == "\\" { escaped = true } else if c == "'" { stack.removeLast() }
            case .comment:
                if c == "\n" {
                    stack.removeLast()
                    wordStart = true
                    return 1
                }
            case .backtick:
                if c == "\\" { escaped = true } else if c == "`" { stack.removeLast() }
            case .braced:
                if c == "}" { stack.removeLast() }
            case .arithmetic(let depth):
                if c == "(" {
                    stack[stack.count - 1] = .arithmetic(depth: depth + 1)
                } else if c == ")" && depth == 0 && next() == ")" {
                    stack.removeLast()
                    return 2
                } else if c == ")" {
                    stack[stack.count - 1] = .arithmetic(depth: max(0, depth - 1))
                }
            case .double, .bare, .command:
                return word(c, next(), next(2))
            }
            wordStart = false
            return 1
        }

        /// A character where words are read (bare, in a substitution, inside double quotes); returns how many
        /// characters it took.
        mutating func word(_ c: Unicode.Scalar, _ next: Unicode.Scalar?, _ after: Unicode.Scalar?) -> Int {
            var inDouble = false
            if case .double = top { inDouble = true }
            var taken = 1
            if c == "\\" {
                escaped = true
            } else if c == "`" {
                stack.append(.backtick)
            } else if c == "$" && next == "(" && after == "(" {
                stack.append(.arithmetic(depth: 0))
                taken = 3
            } else if c == "$" && next == "(" {
                stack.append(.command(depth: 0))
                wordStart = true
                return 2
            } else if c == "$" && next == "{" {
                stack.append(.braced)
                taken = 2
            } else if inDouble {
                if c == "\"" { stack.removeLast() }
            } else if c == "$" && next == "'" {
                stack.append(.ansiC)
                taken = 2
            } else if c == "'" {
                stack.append(.single)
            } else if c == "\"" {
                stack.append(.double)
            } else if c == "#" && wordStart {
                stack.append(.comment)
            } else if c == "<" && next == "<" {
                // `<<<` is a here-string, whose word is quoted as any other; `<<` starts a document.
                if after == "<" { taken = 3 } else { hereDocument = true }
                taken = max(taken, 2)
            } else if case .command(let depth) = top, c == "(" {
                stack[stack.count - 1] = .command(depth: depth + 1)
            } else if case .command(let depth) = top, c == ")" {
                if depth == 0 { stack.removeLast() } else { stack[stack.count - 1] = .command(depth: depth - 1) }
            }
            wordStart = !inDouble && " \t\n;|&()<>".unicodeScalars.contains(c)
            return taken
        }
    }
}
