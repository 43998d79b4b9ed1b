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

    /// Builtins and keywords that evaluate their arguments, or parts of them, as arithmetic or code (an array
    /// subscript in a name is arithmetic: `read 'a[$(cmd)]'` runs cmd), or that run a command they are given. A
    /// quoted value is still evaluated there, so a placeholder among their arguments is refused.
    static let evaluating: Set<String> = [
        "[[", "let", "declare", "typeset", "local", "export", "readonly", "eval", "trap", "read", "unset", "test", "[",
        "source", ".", "alias", "mapfile", "readarray", "getopts", "wait", "complete", "compgen", "bind", "enable",
        "command", "builtin", "exec", "coproc", "time", "fc", "select", "function", "printf -v",
    ]

    /// Reserved words that a command follows (`if [[ ... ]]` is `[[`'s command, not `if`'s arguments).
    static let prefixes: Set<String> = [
        "if", "then", "else", "elif", "do", "while", "until", "!", "{", "}", "fi", "done",
    ]

    /// Follows the template's text as bash would read it, up to each placeholder. A placeholder is accepted only
    /// where a quoted value stays one literal word (a positive list): an argument of a command that is not in
    /// `evaluating`, a redirection's target, the value of a plain assignment; inside `"..."` or `'...'` there.
    private struct Lexer {
        /// The nesting: each opener pushes one, its closer pops it.
        enum Frame {
            case bare, double, single, ansiC, command(depth: Int), backtick, braced, arithmetic(depth: Int), comment
            case oldArithmetic
        }

        /// The simple command being read at one level (the template, and each `$( )`).
        struct Command {
            /// Words finished, not counting leading assignments and redirections' targets.
            var words = 0
            /// The first word (quotes removed), and `printf -v` once printf has that option.
            var name = ""
            /// The word being read (quotes removed), and whether one is being read.
            var word = ""
            var inWord = false
            /// An unquoted `[` in the word so far (an array subscript, which bash evaluates).
            var bracket = false
            /// The word is a redirection's target (after `<`, `>`), or a here-document's delimiter (after `<<`).
            var redirect = false
            var delimiter = false
        }

        var stack: [Frame] = [.bare]
        var commands = [Command()]
        /// The last character was an unquoted backslash: the next one is taken as it is.
        var escaped = false
        /// At the start of a word (where `#` begins a comment).
        var wordStart = true
        /// Here-documents whose bodies start at the next newline: their delimiters and whether tabs are stripped.
        var pendingDocuments: [(String, Bool)] = []
        /// The here-document whose body is being read, and the body's current line.
        var document: (delimiter: String, stripTabs: Bool)?
        var line = ""
        /// A placeholder stood in the line: it cannot be the delimiter.
        var lineHasPlaceholder = false

        var top: Frame { stack.last ?? .bare }
        /// The innermost command, changed in place (`commands` is never empty: the template's own is at the bottom).
        var current: Command {
            get { commands[commands.count - 1] }
            _modify { yield &commands[commands.count - 1] }
        }

        /// The context of a placeholder here.
        var context: ShellContext {
            if document != nil { return .unquotable("inside a here-document's body") }
            if escaped { return .unquotable("right after a backslash") }
            switch top {
            case .bare, .command, .double, .single: break
            case .ansiC: return .unquotable("inside $'...'")
            case .backtick: return .unquotable("inside backticks (write $( ) instead)")
            case .braced: return .unquotable("inside ${...}")
            case .arithmetic: return .unquotable("inside (( )) or $(( )) arithmetic")
            case .oldArithmetic: return .unquotable("inside $[ ] arithmetic")
            case .comment: return .unquotable("in a comment")
            }
            let command = current
            if command.delimiter { return .unquotable("as a here-document's delimiter (after <<)") }
            if command.bracket {
                return .unquotable("inside [ ] in a word (an array subscript, which bash evaluates as arithmetic)")
            }
            if !command.redirect {
                if command.words == 0 && !Self.isAssignment(command.word) {
                    return .unquotable("as a command's name (the value would choose what runs)")
                }
                if command.words > 0, ShellContext.evaluating.contains(command.name) {
                    return .unquotable("among the arguments of '\(command.name)', which bash evaluates as code")
                }
            }
            switch top {
            case .double: return .doubleQuoted
            case .single: return .singleQuoted
            default: return .bare
            }
        }

        /// `NAME=` or `NAME+=` so far: an assignment's value follows.
        static func isAssignment(_ word: String) -> Bool {
            guard let eq = word.firstIndex(of: "=") else { return false }
            var name = word[..<eq]
            if name.hasSuffix("+") { name = name.dropLast() }
            return CommandTemplate.isIdentifier(name)
        }

        /// A placeholder's value stands here: a word's character.
        mutating func placeholder() {
            escaped = false
            wordStart = false
            if document != nil {
                lineHasPlaceholder = true
                return
            }
            current.inWord = true
            current.word += "\u{0}"
        }

        mutating func read(_ chars: [Unicode.Scalar]) {
            var i = 0
            while i < chars.count {
                i += step(chars, at: i)
            }
        }

        /// A here-document's body, a line at a time: the line equal to its delimiter ends it.
        mutating func bodyCharacter(_ c: Unicode.Scalar) {
            guard let doc = document else { return }
            if c != "\n" {
                line.unicodeScalars.append(c)
                return
            }
            var text = Substring(line)
            if doc.stripTabs { text = text.drop { $0 == "\t" } }
            if text == doc.delimiter && !lineHasPlaceholder {
                document = pendingDocuments.isEmpty ? nil : pendingDocuments.removeFirst()
            }
            line = ""
            lineHasPlaceholder = false
        }

        /// The current word ends (a blank, an operator, the end of a command).
        mutating func endWord() {
            var command = current
            guard command.inWord else { return }
            if command.delimiter {
                let stripTabs = command.word.hasPrefix("-\u{1}")
                let delimiter = stripTabs ? String(command.word.dropFirst(2)) : command.word
                pendingDocuments.append((delimiter, stripTabs))
            } else if !command.redirect {
                if command.words == 0
                    && (Self.isAssignment(command.word) || ShellContext.prefixes.contains(command.word))
                {
                    // A leading assignment, or a keyword a command follows: the command's name is still to come.
                } else {
                    if command.words == 0 { command.name = command.word }
                    if command.name == "printf" && command.word.hasPrefix("-v") { command.name = "printf -v" }
                    command.words += 1
                }
            }
            command.word = ""
            command.inWord = false
            command.bracket = false
            command.redirect = false
            command.delimiter = false
            current = command
        }

        /// The simple command ends (`;`, `|`, `&`, a newline, a parenthesis): the next word is a name again.
        mutating func endCommand() {
            endWord()
            current = Command()
        }

        /// Reads the character at `i` (and those it opens or closes with); returns how many it took.
        mutating func step(_ chars: [Unicode.Scalar], at i: Int) -> Int {
            let c = chars[i]
            func next(_ k: Int = 1) -> Unicode.Scalar? { i + k < chars.count ? chars[i + k] : nil }
            if document != nil {
                bodyCharacter(c)
                return 1
            }
            if escaped {
                escaped = false
                wordStart = false
                current.word.unicodeScalars.append(c)
                if c == "\n" { current.word.removeLast() }
                return 1
            }
            switch top {
            case .single:
                if c == "'" { stack.removeLast() } else { current.word.unicodeScalars.append(c) }
            case .ansiC:
                if c == "\\" { escaped = true } else if c == "'" { stack.removeLast() }
            case .comment:
                if c == "\n" {
                    stack.removeLast()
                    return newline()
                }
            case .backtick:
                if c == "\\" { escaped = true } else if c == "`" { stack.removeLast() }
            case .braced:
                if c == "}" { stack.removeLast() }
            case .oldArithmetic:
                if c == "]" { stack.removeLast() }
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

        /// An unquoted newline: the command ends, and a here-document's body may begin.
        mutating func newline() -> Int {
            endCommand()
            wordStart = true
            if !pendingDocuments.isEmpty { document = pendingDocuments.removeFirst() }
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
                current.inWord = true
            } else if c == "`" {
                stack.append(.backtick)
                current.inWord = true
            } else if c == "$" && next == "(" && after == "(" {
                stack.append(.arithmetic(depth: 0))
                current.inWord = true
                taken = 3
            } else if c == "$" && next == "(" {
                stack.append(.command(depth: 0))
                current.inWord = true
                current.word += "$("
                commands.append(Command())
                wordStart = true
                return 2
            } else if c == "$" && next == "[" {
                stack.append(.oldArithmetic)
                current.inWord = true
                taken = 2
            } else if c == "$" && next == "{" {
                stack.append(.braced)
                current.inWord = true
                taken = 2
            } else if inDouble {
                if c == "\"" { stack.removeLast() } else { current.word.unicodeScalars.append(c) }
            } else if c == "$" && next == "'" {
                stack.append(.ansiC)
                current.inWord = true
                taken = 2
            } else if c == "'" {
                stack.append(.single)
                current.inWord = true
            } else if c == "\"" {
                stack.append(.double)
                current.inWord = true
            } else if c == "#" && wordStart {
                stack.append(.comment)
            } else if c == "\n" {
                return newline()
            } else if c == " " || c == "\t" {
                endWord()
            } else if c == "<" && next == "<" {
                endWord()
                if after == "<" {
                    // `<<<` is a here-string, whose word is quoted as any other.
                    current.redirect = true
                    taken = 3
                } else {
                    current.delimiter = true
                    taken = 2
                    if after == "-" {
                        current.word = "-\u{1}"
                        taken = 3
                    }
                }
            } else if c == "<" || c == ">" {
                endWord()
                current.redirect = true
                if next == ">" || next == "&" || next == "|" { taken = 2 }
            } else if c == "(" && next == "(" {
                endCommand()
                stack.append(.arithmetic(depth: 0))
                taken = 2
            } else if case .command(let depth) = top, c == "(" {
                stack[stack.count - 1] = .command(depth: depth + 1)
                endCommand()
            } else if case .command(let depth) = top, c == ")" {
                if depth == 0 {
                    endCommand()
                    stack.removeLast()
                    if commands.count > 1 { commands.removeLast() }
                    current.word += ")"
                } else {
                    stack[stack.count - 1] = .command(depth: depth - 1)
                    endCommand()
                }
            } else if ";|&()".unicodeScalars.contains(c) {
                endCommand()
            } else {
                if c == "[" { current.bracket = true }
                current.inWord = true
                current.word.unicodeScalars.append(c)
            }
            wordStart = !inDouble && " \t\n;|&()<>".unicodeScalars.contains(c)
            return taken
        }
    }
}
