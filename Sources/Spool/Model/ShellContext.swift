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

    /// The lexer's nesting: each opener pushes one, its closer pops it.
    private enum Frame {
        case bare, double, single, ansiC, command(depth: Int), backtick, braced, arithmetic(depth: Int), comment
    }

    /// `pieces` with each placeholder's context filled in.
    static func classify(_ pieces: [CommandTemplate.Piece]) -> [CommandTemplate.Piece] {
        var stack: [Frame] = [.bare]
        var escaped = false
        var wordStart = true
        var hereDocument = false
        var out: [CommandTemplate.Piece] = []
        for piece in pieces {
            switch piece {
            case .placeholder(let name, _):
                out.append(
                    .placeholder(name, context(stack.last ?? .bare, escaped: escaped, hereDocument: hereDocument)))
                escaped = false
                wordStart = false
            case .text(let text):
                out.append(piece)
                let chars = Array(text.unicodeScalars)
                var i = 0
                func next(_ k: Int = 1) -> Unicode.Scalar? { i + k < chars.count ? chars[i + k] : nil }
                while i < chars.count {
                    let c = chars[i]
                    defer { i += 1 }
                    if escaped {
                        escaped = false
                        wordStart = false
                        continue
                    }
                    let top = stack.last ?? .bare
                    switch top {
                    case .single:
                        if c == "'" { stack.removeLast() }
                    case .ansiC:
                        if c == "\\" { escaped = true } else if c == "'" { stack.removeLast() }
                    case .comment:
                        if c == "\n" {
                            stack.removeLast()
                            wordStart = true
                        }
                    case .backtick:
                        if c == "\\" { escaped = true } else if c == "`" { stack.removeLast() }
                    case .braced:
                        if c == "}" { stack.removeLast() }
                    case .arithmetic(let depth):
                        if c == "(" {
                            stack[stack.count - 1] = .arithmetic(depth: depth + 1)
                        } else if c == ")" {
                            if depth == 0 && next() == ")" {
                                stack.removeLast()
                                i += 1
                            } else {
                                stack[stack.count - 1] = .arithmetic(depth: max(0, depth - 1))
                            }
                        }
                    case .double, .bare, .command:
                        let inDouble: Bool
                        if case .double = top { inDouble = true } else { inDouble = false }
                        if c == "\\" {
                            escaped = true
                        } else if c == "`" {
                            stack.append(.backtick)
                        } else if c == "$" && next() == "(" {
                            if next(2) == "(" {
                                stack.append(.arithmetic(depth: 0))
                                i += 2
                            } else {
                                stack.append(.command(depth: 0))
                                i += 1
                                wordStart = true
                                continue
                            }
                        } else if c == "$" && next() == "{" {
                            stack.append(.braced)
                            i += 1
                        } else if inDouble {
                            if c == "\"" { stack.removeLast() }
                        } else if c == "$" && next() == "'" {
                            stack.append(.ansiC)
                            i += 1
                        } else if c == "'" {
                            stack.append(.single)
                        } else if c == "\"" {
                            stack.append(.double)
                        } else if c == "#" && wordStart {
                            stack.append(.comment)
                        } else if c == "<" && next() == "<" {
                            // `<<<` is a here-string, whose word is quoted as any other; `<<` starts a document.
                            if next(2) == "<" { i += 2 } else { hereDocument = true }
                            i += 1
                        } else if case .command(let depth) = top, c == "(" {
                            stack[stack.count - 1] = .command(depth: depth + 1)
                        } else if case .command(let depth) = top, c == ")" {
                            if depth == 0 {
                                stack.removeLast()
                            } else {
                                stack[stack.count - 1] = .command(depth: depth - 1)
                            }
                        }
                        wordStart = !inDouble && " \t\n;|&()<>".unicodeScalars.contains(c)
                        continue
                    }
                    wordStart = false
                }
            }
        }
        return out
    }

    private static func context(_ frame: Frame, escaped: Bool, hereDocument: Bool) -> ShellContext {
        if escaped { return .unquotable("right after a backslash") }
        if hereDocument { return .unquotable("after a here-document operator (<<)") }
        switch frame {
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
}
