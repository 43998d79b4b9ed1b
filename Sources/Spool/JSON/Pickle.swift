/// Reads and writes the plain-value subset of Python's pickle format: what the original client sends as a shell
/// app's parameters (`serialized_parameters` = base64 of `dill.dumps(dict)`, protocol 4), and what a site sends
/// back for jobs it made, so that the client's `job.get_parameters()` reads them.
///
/// Strings, integers, floats, booleans, None, and lists, tuples and dicts of them are values; anything else
/// (a class instance, a numpy array: the parameters of a Python app) is refused with the opcode named, and
/// nothing is ever executed. See `reference/balsam-client-facts.md` for the opcode list.
public enum Pickle {
    /// Why a payload could not be read.
    public struct Unsupported: Error, CustomStringConvertible, Sendable {
        /// What was found.
        public var description: String
        /// Whether the pickle was well formed up to an object only Python can load (a Python app's parameters
        /// may hold one); false when it is cut, malformed, or beyond the limits, which nothing should store.
        public var onlyPythonCanLoad = false
    }

    /// Pickles a JSON value with protocol 4 (no frames, no memo: both optional for readers), as base64.
    public static func encodeBase64(_ value: JSONValue) -> String {
        var out: [UInt8] = [0x80, 4]
        write(value, to: &out)
        out.append(UInt8(ascii: "."))
        return Base64.encode(out)
    }

    /// A `RuntimeError(message)` with no traceback, as the original client's `serialize_exception` sends one:
    /// base64 of the pickled tuple `(RuntimeError(message), None)`, which its `job.result()` raises. Written
    /// for a run that failed without an exception of its own (a shell app's exit status), so that a Python user
    /// sees why.
    public static func exceptionBase64(_ message: String) -> String {
        var out: [UInt8] = [0x80, 4, UInt8(ascii: "c")]
        out += Array("builtins\nRuntimeError\n".utf8)
        write(.string(message), to: &out)
        out += [0x85, UInt8(ascii: "R"), UInt8(ascii: "N"), 0x86, UInt8(ascii: ".")]
        return Base64.encode(out)
    }

    private static func little(_ value: Int, bytes: Int, to out: inout [UInt8]) {
        for k in 0..<bytes { out.append(UInt8(truncatingIfNeeded: value >> (8 * k))) }
    }

    private static func write(_ value: JSONValue, to out: inout [UInt8]) {
        switch value {
        case .null: out.append(UInt8(ascii: "N"))
        case .bool(let b): out.append(b ? 0x88 : 0x89)
        case .int(let i):
            if i >= 0 && i < 256 {
                out += [UInt8(ascii: "K"), UInt8(i)]
            } else if i >= 0 && i < 65536 {
                out.append(UInt8(ascii: "M"))
                little(i, bytes: 2, to: &out)
            } else if i >= Int(Int32.min) && i <= Int(Int32.max) {
                out.append(UInt8(ascii: "J"))
                little(i, bytes: 4, to: &out)
            } else {
                out += [0x8A, 8]  // LONG1 with 8 bytes of two's complement
                little(i, bytes: 8, to: &out)
            }
        case .double(let d):
            out.append(UInt8(ascii: "G"))
            let bits = d.bitPattern
            for k in (0..<8).reversed() { out.append(UInt8(truncatingIfNeeded: bits >> (8 * UInt64(k)))) }
        case .string(let s):
            let bytes = Array(s.utf8)
            if bytes.count < 256 {
                out += [0x8C, UInt8(bytes.count)]
            } else {
                out.append(UInt8(ascii: "X"))
                little(bytes.count, bytes: 4, to: &out)
            }
            out += bytes
        case .array(let items):
            out.append(UInt8(ascii: "]"))
            guard !items.isEmpty else { return }
            out.append(UInt8(ascii: "("))
            for item in items { write(item, to: &out) }
            out.append(UInt8(ascii: "e"))
        case .object(let members):
            out.append(UInt8(ascii: "}"))
            guard !members.isEmpty else { return }
            out.append(UInt8(ascii: "("))
            for key in members.keys.sorted() {
                write(.string(key), to: &out)
                write(members[key, default: .null], to: &out)
            }
            out.append(UInt8(ascii: "u"))
        }
    }

    /// The string value stored under attribute `name` in a pickled class (the original client's
    /// `serialized_class`, dill pickling the class by value): its `command_template`, for instance. The
    /// pickle is walked opcode by opcode, never executed; the first `name` string directly followed by a string
    /// is the attribute (a class body's attributes come before its methods' code). nil if there is none.
    public static func classAttribute(_ name: String, inBase64 text: String) -> String? {
        var found: String?
        walkStrings(inBase64: text) { string, previous in
            if previous == name { found = string }
            return found == nil
        }
        return found
    }

    /// The list of strings a class pickled by value holds as its attribute `name` (`cleanup_files = ["*.tmp"]`):
    /// the attribute's name followed by an empty list and its items (`]` `(` strings `e`, or `]` string `a`,
    /// or `]` alone). Read without running the pickle; nil if the class has no such list.
    public static func classStringList(_ name: String, inBase64 text: String) -> [String]? {
        guard let bytes = Base64.decode(text) else { return nil }
        enum Step { case looking, named, listed, marked, one(String) }
        var step = Step.looking
        var items: [String] = []
        var found: [String]?
        _ = walkStrings(
            bytes,
            { string, _ in
                guard found == nil else { return false }
                switch step {
                case .listed: step = .one(string)
                case .marked: items.append(string)
                case .one: found = []  // two strings after the list: it was empty, and this is the next key's value
                default: step = string == name ? .named : .looking
                }
                return found == nil
            },
            other: { op in
                guard found == nil else { return }
                switch (step, op) {
                case (.named, UInt8(ascii: "]")): step = .listed
                case (.listed, UInt8(ascii: "(")): step = .marked
                case (.listed, _): found = []
                case (.marked, _): found = items
                case (.one(let item), UInt8(ascii: "a")): found = [item]
                case (.one, _): found = []
                default: step = .looking
                }
            })
        return found
    }

    /// Every text string a pickle holds (names of a class's attributes and methods among them).
    public static func strings(inBase64 text: String) -> Set<String> {
        var all = Set<String>()
        walkStrings(inBase64: text) { string, _ in
            all.insert(string)
            return true
        }
        return all
    }

    /// Checks a pickle sent as base64 text (a class, a return value, an exception): `checkStructure`.
    public static func check(base64 text: String) throws(Unsupported) {
        guard let bytes = Base64.decode(text) else { throw Unsupported(description: "not base64 text") }
        try checkStructure(bytes)
    }

    /// What a job's `serialized_parameters` hold, as the server decides when it takes them and a site when it
    /// adopts the job: one verdict, so that what the server stores a site can run.
    public enum Parameters: Sendable, Equatable {
        /// Plain values (a shell app's parameters, or a Python app's that happen to be plain).
        case plain([String: JSONValue])
        /// A well-formed pickle holding objects only Python can load: a Python app's, read by the site's Python.
        case pythonOnly
    }

    /// The verdict on a job's parameters for an app that is (`pythonApp`) or is not a Python app. Empty text is
    /// an empty dict (the original's default). Every pickle must pass `checkStructure` first; then a dict of
    /// plain values is `.plain`; one holding objects only Python can load is `.pythonOnly` for a Python app and
    /// refused for a shell app; anything else (a list or None at the top, too deep, too large) is refused.
    public static func jobParameters(base64 text: String, pythonApp: Bool) throws(Unsupported) -> Parameters {
        if text.isEmpty { return .plain([:]) }
        guard let bytes = Base64.decode(text) else { throw Unsupported(description: "not base64 text") }
        try checkStructure(bytes)
        do throws(Unsupported) {
            guard case .object(let members) = try decode(bytes) else {
                throw Unsupported(description: "the parameters are not a dict of names to values")
            }
            return .plain(members)
        } catch {
            guard error.onlyPythonCanLoad else { throw error }
            guard pythonApp else {
                throw Unsupported(
                    description: "the parameters are not plain values (\(error)): a shell app takes strings, numbers, "
                        + "booleans, None, lists and dicts; objects only Python can load need a Python app")
            }
            return .pythonOnly
        }
    }

    /// Checks that a pickle is one Python's unpickler could load without help: every opcode is one of protocols
    /// 0 to 5, every length fits in what is left, every opcode finds on the stack (within its MARK) the items it
    /// takes, every memo entry read was written, and STOP leaves exactly one value with no MARK open. Opcodes that
    /// need what a site never gives (persistent ids, the extension registry, out-of-band buffers) are refused.
    /// Nothing is built and nothing is run: it counts, in one pass, so any bytes give an answer without a trap.
    // Over 100 lines: one switch over the pickle's opcodes, each case a few lines; split, the cases would lose their shared stack.
    public static func checkStructure(_ bytes: [UInt8]) throws(Unsupported) {
        var i = 0
        var depth = 0  // values since the innermost MARK
        var marks: [Int] = []  // the depths the open MARKs interrupted
        var memo = Set<UInt64>()
        func fail(_ what: String) -> Unsupported { Unsupported(description: what) }
        func take(_ n: UInt64) throws(Unsupported) -> ArraySlice<UInt8> {
            guard n <= UInt64(bytes.count - i) else { throw fail("the pickle ends early") }
            defer { i += Int(n) }
            return bytes[i..<i + Int(n)]
        }
        func number(_ n: UInt64) throws(Unsupported) -> UInt64 {
            try take(n).reversed().reduce(UInt64(0)) { $0 << 8 | UInt64($1) }
        }
        func signed32() throws(Unsupported) -> UInt64 {
            let raw = try number(4)
            guard raw < 0x8000_0000 else { throw fail("a negative length") }
            return raw
        }
        /// A text argument up to its newline; `utf8`: it must be UTF-8 (numbers, names), else any bytes (a
        /// protocol-0 string, raw-unicode-escape, holds Latin-1 bytes as they are).
        func line(utf8: Bool = true) throws(Unsupported) -> String {
            guard let end = bytes[i...].firstIndex(of: 0x0A) else { throw fail("a text line has no end") }
            defer { i = end + 1 }
            guard utf8 else { return "" }
            guard let text = String(validating: bytes[i..<end], as: UTF8.self) else {
                throw fail("a text line is not UTF-8")
            }
            return text
        }
        func text(_ n: UInt64) throws(Unsupported) {
            guard String(validating: try take(n), as: UTF8.self) != nil else { throw fail("a string is not UTF-8") }
        }
        func pop(_ n: Int, _ name: String) throws(Unsupported) {
            guard depth >= n else { throw fail("\(name) takes \(n) values and finds \(depth)") }
            depth -= n
        }
        func popMark(_ name: String) throws(Unsupported) -> Int {
            guard let outer = marks.popLast() else { throw fail("\(name) without its MARK") }
            defer { depth = outer }
            return depth
        }
        func decimal(_ text: String) -> Bool {
            let digits = text.first == "-" || text.first == "+" ? text.dropFirst() : Substring(text)
            return !digits.isEmpty && digits.utf8.allSatisfy { $0 >= 0x30 && $0 <= 0x39 }
        }
        /// A FLOAT line as Python's float() reads it, in a stricter form (no whitespace, no underscores):
        /// `Double(String)` is C's strtod, which stops at a NUL and takes hexadecimal and `nan(...)` forms
        /// that Python refuses.
        func floatText(_ text: String) -> Bool {
            var rest = Substring(text).utf8[...]
            if let sign = rest.first, sign == UInt8(ascii: "+") || sign == UInt8(ascii: "-") { rest = rest.dropFirst() }
            if ["inf", "infinity", "nan"].contains(String(decoding: rest, as: UTF8.self).lowercased()) { return true }
            func digits() -> Int {
                let run = rest.prefix { $0 >= 0x30 && $0 <= 0x39 }.count
                rest = rest.dropFirst(run)
                return run
            }
            var mantissa = digits()
            if rest.first == UInt8(ascii: ".") {
                rest = rest.dropFirst()
                mantissa += digits()
            }
            guard mantissa > 0 else { return false }
            if let e = rest.first, e == UInt8(ascii: "e") || e == UInt8(ascii: "E") {
                rest = rest.dropFirst()
                if let sign = rest.first, sign == UInt8(ascii: "+") || sign == UInt8(ascii: "-") {
                    rest = rest.dropFirst()
                }
                guard digits() > 0 else { return false }
            }
            return rest.isEmpty
        }
        func memoKey(_ text: String) throws(Unsupported) -> UInt64 {
            guard let key = UInt64(text) else { throw fail("a memo key '\(text)' that is not a number") }
            return key
        }
        func get(_ key: UInt64) throws(Unsupported) {
            guard memo.contains(key) else { throw fail("GET of memo entry \(key), never written") }
            depth += 1
        }
        func put(_ key: UInt64) throws(Unsupported) {
            guard depth >= 1 else { throw fail("PUT with nothing on the stack") }
            memo.insert(key)
        }
        while i < bytes.count {
            let op = bytes[i]
            i += 1
            switch op {
            case UInt8(ascii: "("):
                marks.append(depth)
                depth = 0
            case UInt8(ascii: "."):
                guard depth == 1, marks.isEmpty else {
                    throw fail(
                        "STOP with \(depth) values and \(marks.count) open MARKs (one value, no MARK, is a pickle)")
                }
                return
            case UInt8(ascii: "0"):  // POP: a value, or the MARK itself when none is above it
                if depth > 0 { depth -= 1 } else { _ = try popMark("POP") }
            case UInt8(ascii: "1"): _ = try popMark("POP_MARK")
            case UInt8(ascii: "2"):  // DUP
                try pop(1, "DUP")
                depth += 2
            case UInt8(ascii: "I"), UInt8(ascii: "L"):
                var t = try line()
                if op == UInt8(ascii: "L") && t.hasSuffix("L") { t.removeLast() }
                guard decimal(t) else { throw fail("an integer line '\(t)' that is not decimal") }
                depth += 1
            case UInt8(ascii: "F"):
                let t = try line()
                guard floatText(t) else { throw fail("a float line '\(t)' that is not a number") }
                depth += 1
            case UInt8(ascii: "S"):
                let start = i
                _ = try line(utf8: false)
                let quoted = bytes[start..<i - 1]
                guard quoted.count >= 2, let q = quoted.first, q == 0x27 || q == 0x22, quoted.last == q else {
                    throw fail("a STRING line that is not quoted")
                }
                depth += 1
            case UInt8(ascii: "V"):
                let start = i
                _ = try line(utf8: false)
                guard rawUnicodeEscapeReads(bytes[start..<i - 1]) else {
                    throw fail("a UNICODE line with a broken \\u escape")
                }
                depth += 1
            case UInt8(ascii: "P"), UInt8(ascii: "Q"):
                throw fail("a persistent id (opcode 0x\(String(op, radix: 16))): no site gives persistent_load")
            case 0x82, 0x83, 0x84:
                throw fail("an extension code (opcode 0x\(String(op, radix: 16))): no site registers one")
            case 0x97: throw fail("an out-of-band buffer (NEXT_BUFFER): no site gives buffers")
            // REDUCE, BUILD, APPEND, NEWOBJ, STACK_GLOBAL
            case UInt8(ascii: "R"), UInt8(ascii: "b"), UInt8(ascii: "a"), 0x81, 0x93:
                try pop(2, "opcode 0x\(String(op, radix: 16))")
                depth += 1
            case 0x92:  // NEWOBJ_EX
                try pop(3, "NEWOBJ_EX")
                depth += 1
            case UInt8(ascii: "s"):  // SETITEM
                try pop(3, "SETITEM")
                depth += 1
            case UInt8(ascii: "c"):  // GLOBAL module\nname\n
                _ = try line()
                _ = try line()
                depth += 1
            case UInt8(ascii: "i"):  // INST module\nname\n, its arguments after a MARK
                _ = try line()
                _ = try line()
                _ = try popMark("INST")
                depth += 1
            case UInt8(ascii: "d"), UInt8(ascii: "l"), UInt8(ascii: "t"), 0x91:  // DICT LIST TUPLE FROZENSET
                let items = try popMark("opcode 0x\(String(op, radix: 16))")
                if op == UInt8(ascii: "d") && items % 2 != 0 { throw fail("DICT of an odd number of values") }
                depth += 1
            case UInt8(ascii: "o"):  // OBJ: a class and its arguments after a MARK
                guard try popMark("OBJ") >= 1 else { throw fail("OBJ without its class") }
                depth += 1
            case UInt8(ascii: "e"), UInt8(ascii: "u"), 0x90:  // APPENDS SETITEMS ADDITEMS
                let items = try popMark("opcode 0x\(String(op, radix: 16))")
                if op == UInt8(ascii: "u") && items % 2 != 0 { throw fail("SETITEMS of an odd number of values") }
                guard depth >= 1 else { throw fail("opcode 0x\(String(op, radix: 16)) with nothing to add to") }
            case UInt8(ascii: "}"), UInt8(ascii: "]"), UInt8(ascii: ")"), 0x8F, UInt8(ascii: "N"), 0x88, 0x89:
                depth += 1
            case 0x85, 0x86, 0x87:  // TUPLE1..3
                try pop(Int(op - 0x84), "TUPLE\(op - 0x84)")
                depth += 1
            case 0x98:  // READONLY_BUFFER
                try pop(1, "READONLY_BUFFER")
                depth += 1
            case UInt8(ascii: "g"): try get(try memoKey(try line()))
            case UInt8(ascii: "h"): try get(try number(1))
            case UInt8(ascii: "j"): try get(try number(4))
            case UInt8(ascii: "p"): try put(try memoKey(try line()))
            case UInt8(ascii: "q"): try put(try number(1))
            case UInt8(ascii: "r"): try put(try number(4))
            case 0x94: try put(UInt64(memo.count))  // MEMOIZE
            case UInt8(ascii: "K"), UInt8(ascii: "M"), UInt8(ascii: "J"), UInt8(ascii: "G"):
                _ = try take(
                    op == UInt8(ascii: "K") ? 1 : op == UInt8(ascii: "M") ? 2 : op == UInt8(ascii: "J") ? 4 : 8)
                depth += 1
            case 0x8A:  // LONG1
                _ = try take(try number(1))
                depth += 1
            case 0x8B, UInt8(ascii: "T"):  // LONG4, BINSTRING: signed 32-bit lengths
                _ = try take(try signed32())
                depth += 1
            case UInt8(ascii: "U"), UInt8(ascii: "C"):  // SHORT_BINSTRING, SHORT_BINBYTES
                _ = try take(try number(1))
                depth += 1
            case UInt8(ascii: "B"):  // BINBYTES
                _ = try take(try number(4))
                depth += 1
            case 0x8E, 0x96:  // BINBYTES8, BYTEARRAY8
                _ = try take(try number(8))
                depth += 1
            case 0x8C:  // SHORT_BINUNICODE
                try text(try number(1))
                depth += 1
            case UInt8(ascii: "X"):  // BINUNICODE
                try text(try number(4))
                depth += 1
            case 0x8D:  // BINUNICODE8
                try text(try number(8))
                depth += 1
            case 0x80:  // PROTO
                let version = try number(1)
                guard version <= 5 else { throw fail("pickle protocol \(version) (Python reads 0 to 5)") }
            case 0x95:  // FRAME: its length must fit in what is left
                guard try number(8) <= UInt64(bytes.count - i) else { throw fail("a frame longer than the pickle") }
            default:
                throw fail("0x\(String(op, radix: 16)) at byte \(i - 1) is not a pickle opcode")
            }
        }
        throw fail("the pickle has no STOP")
    }

    /// Calls `visit` with each text string of a pickle, in order, and the string just before it (nil when
    /// another opcode came between them), until it returns false.
    private static func walkStrings(inBase64 text: String, _ visit: (String, String?) -> Bool) {
        guard let bytes = Base64.decode(text) else { return }
        _ = walkStrings(bytes, visit)
    }

    /// The walk itself: nil when it stopped at STOP or because `visit` asked, else why the pickle cannot be
    /// walked. Every length is checked against what is left before it is added (a crafted length of 2^63 - 1
    /// must not overflow an offset).
    private static func walkStrings(
        _ bytes: [UInt8], _ visit: (String, String?) -> Bool, other: ((UInt8) -> Void)? = nil
    ) -> String? {
        var i = 0
        var previousString: String?
        func fixed(_ op: UInt8) -> Int? {
            switch op {
            case 0x80, UInt8(ascii: "K"), UInt8(ascii: "q"), UInt8(ascii: "h"), 0x82: return 1
            case UInt8(ascii: "M"), 0x83: return 2
            case UInt8(ascii: "J"), UInt8(ascii: "r"), UInt8(ascii: "j"), 0x84: return 4
            case 0x95, UInt8(ascii: "G"): return 8
            default: return nil
            }
        }
        func lengthBytes(_ op: UInt8) -> Int? {
            switch op {
            case 0x8C, UInt8(ascii: "U"), UInt8(ascii: "C"), 0x8A: return 1
            case UInt8(ascii: "X"), UInt8(ascii: "T"), UInt8(ascii: "B"), 0x8B: return 4
            case 0x8D, 0x8E, 0x96: return 8
            default: return nil
            }
        }
        func skipLine() -> Bool {
            while i < bytes.count && bytes[i] != 0x0A { i += 1 }
            guard i < bytes.count else { return false }
            i += 1
            return true
        }
        let cut = "the pickle ends early"
        // The strings in the memo, by index: a string met again is a GET of it (dill writes `["", ""]` so).
        var memo: [Int: String] = [:]
        var memoized = 0
        func index(_ n: Int) -> Int {
            var value = 0
            for k in (0..<n).reversed() { value = value << 8 | Int(bytes[i + k]) }
            return value
        }
        while i < bytes.count {
            let op = bytes[i]
            i += 1
            if op == 0x94 {  // MEMOIZE keeps the string before it
                if let previousString { memo[memoized] = previousString }
                memoized += 1
                continue
            }
            if op == UInt8(ascii: "q") || op == UInt8(ascii: "r") {  // so do BINPUT and LONG_BINPUT
                let n = op == UInt8(ascii: "q") ? 1 : 4
                guard n <= bytes.count - i else { return cut }
                if let previousString { memo[index(n)] = previousString }
                i += n
                continue
            }
            if op == UInt8(ascii: "h") || op == UInt8(ascii: "j") {  // BINGET, LONG_BINGET: maybe a string again
                let n = op == UInt8(ascii: "h") ? 1 : 4
                guard n <= bytes.count - i else { return cut }
                let again = memo[index(n)]
                i += n
                if let again {
                    if !visit(again, previousString) { return nil }
                } else {
                    other?(op)
                }
                previousString = again
                continue
            }
            if op != 0x95 && lengthBytes(op) == nil { other?(op) }  // any opcode but a string or a FRAME
            if let n = fixed(op) {
                guard n <= bytes.count - i else { return cut }
                i += n
                previousString = nil
            } else if let n = lengthBytes(op) {
                guard n <= bytes.count - i else { return cut }
                var length: UInt64 = 0
                for k in (0..<n).reversed() { length = length << 8 | UInt64(bytes[i + k]) }
                i += n
                guard length <= UInt64(bytes.count - i) else { return cut }
                let end = i + Int(length)
                let isText = op == 0x8C || op == UInt8(ascii: "X") || op == 0x8D
                let text = isText ? String(validating: bytes[i..<end], as: UTF8.self) : nil
                i = end
                if let text, !visit(text, previousString) { return nil }
                previousString = text
            } else if "ILFSVpgP".utf8.contains(op) {
                guard skipLine() else { return cut }
                previousString = nil
            } else if op == UInt8(ascii: "c") || op == UInt8(ascii: "i") {
                guard skipLine(), skipLine() else { return cut }
                previousString = nil
            } else if op == UInt8(ascii: ".") {
                return nil
            } else {
                previousString = nil
            }
        }
        return "the pickle has no STOP"
    }

    /// Whether Python's raw-unicode-escape codec reads `text` (a protocol-0 UNICODE line): after an odd run of
    /// backslashes, `u` takes 4 hex digits and `U` 8, at most U+10FFFF; anything else is itself.
    static func rawUnicodeEscapeReads(_ text: ArraySlice<UInt8>) -> Bool {
        var k = text.startIndex
        var slashes = 0
        while k < text.endIndex {
            let byte = text[k]
            k += 1
            if byte == UInt8(ascii: "\\") {
                slashes += 1
                continue
            }
            defer { slashes = 0 }
            guard slashes % 2 == 1, byte == UInt8(ascii: "u") || byte == UInt8(ascii: "U") else { continue }
            let count = byte == UInt8(ascii: "u") ? 4 : 8
            guard text.endIndex - k >= count else { return false }
            var value: UInt32 = 0
            for digit in text[k..<k + count] {
                guard let v = Character(UnicodeScalar(digit)).hexDigitValue else { return false }
                value = value << 4 | UInt32(v)
            }
            if value > 0x10FFFF { return false }
            k += count
        }
        return true
    }

    /// How much a decoded pickle may hold: what a job's parameters may. Nesting is bounded so that the value can
    /// be written into a job's JSON and read back by a site (whose JSON reader stops at `JSONParser.maxDepth`,
    /// with the job's own object and the sync's envelopes around it); size, counted as one per value plus the
    /// bytes of its strings (close to its JSON size), because the memo lets a small pickle name one value many
    /// times (each level doubling: a "billion laughs" of a few hundred bytes).
    static let maxDepth = Job.Limits.parameterDepth
    static let maxSize = 2 * Job.Limits.parametersBytes

    /// Decodes base64 text holding a pickle; an empty text is an empty dictionary (the original's default).
    public static func decodeBase64(_ text: String) throws(Unsupported) -> JSONValue {
        if text.isEmpty { return .object([:]) }
        guard let bytes = Base64.decode(text) else { throw Unsupported(description: "not base64 text") }
        return try decode(bytes)
    }

    /// A value as the decoder builds it: containers hold their items by reference (an index of `nodes`), as
    /// Python's do, so a memo entry (`BINPUT`, `MEMOIZE`) names the object itself and a later `BINGET` sees what
    /// was added to it since. (Kept as values, `{"x": [cfg, cfg]}` came back as `[{"k": "v"}, {}]`: the memo held
    /// the dict as it was before its items were set.)
    private enum Node {
        case scalar(JSONValue)
        case list([Int])
        case dict([String: Int])
    }

    /// Decodes pickle bytes into a JSON value. Total: any bytes give a value or `Unsupported`, never a trap. The
    /// decoder keeps its own stack; only the final build of the value recurses, at most `maxDepth` deep, and it
    /// stops a value that is too deep (a list that holds itself included) or too large (one value named many
    /// times through the memo: a "billion laughs") as it goes.
    // Over 100 lines: one switch over the pickle's opcodes, each case a few lines, around one stack and memo.
    public static func decode(_ bytes: [UInt8]) throws(Unsupported) -> JSONValue {
        var nodes: [Node] = []
        var stack: [Int] = []
        var marks: [Int] = []
        var memo: [Int: Int] = [:]
        var i = 0
        func fail(_ what: String) -> Unsupported { Unsupported(description: what) }
        func take(_ n: Int) throws(Unsupported) -> ArraySlice<UInt8> {
            guard n >= 0, n <= bytes.count - i else { throw fail("the pickle ends early") }
            defer { i += n }
            return bytes[i..<i + n]
        }
        /// A little-endian unsigned length or key; one that does not fit an Int is an error, not a trap.
        func length(_ n: Int) throws(Unsupported) -> Int {
            let raw = try take(n)
            let value = raw.reversed().reduce(UInt64(0)) { $0 << 8 | UInt64($1) }
            guard value <= UInt64(Int.max) else { throw fail("a length of \(value) bytes") }
            return Int(value)
        }
        func push(_ node: Node) {
            nodes.append(node)
            stack.append(nodes.count - 1)
        }
        func push(_ value: JSONValue) { push(.scalar(value)) }
        func text(_ n: Int) throws(Unsupported) -> JSONValue {
            let raw = try take(n)
            guard let s = String(validating: raw, as: UTF8.self) else { throw fail("a string is not UTF-8") }
            return .string(s)
        }
        func pop() throws(Unsupported) -> Int {
            guard let top = stack.popLast() else { throw fail("the pickle's stack is empty") }
            return top
        }
        func popMark() throws(Unsupported) -> ArraySlice<Int> {
            guard let mark = marks.popLast(), mark <= stack.count else { throw fail("a MARK is missing") }
            defer { stack.removeSubrange(mark...) }
            return stack[mark...]
        }
        func setItems(_ items: ArraySlice<Int>) throws(Unsupported) {
            let target = try pop()
            guard items.count % 2 == 0, case .dict(var dict) = nodes[target] else {
                throw fail("SETITEMS on a non-dict")
            }
            var k = items.startIndex
            while k < items.endIndex {
                guard case .scalar(.string(let key)) = nodes[items[k]] else {
                    var unsupported = fail("a dict key that is not a string (only Python reads it)")
                    unsupported.onlyPythonCanLoad = true
                    throw unsupported
                }
                dict[key] = items[k + 1]
                k += 2
            }
            nodes[target] = .dict(dict)
            stack.append(target)
        }
        func appendItems(_ items: ArraySlice<Int>) throws(Unsupported) {
            let target = try pop()
            guard case .list(var list) = nodes[target] else { throw fail("APPENDS on a non-list") }
            list.append(contentsOf: items)
            nodes[target] = .list(list)
            stack.append(target)
        }
        /// The value of node `id`, `level` containers deep; `size` counts one per value plus string bytes.
        var size = 0
        func build(_ id: Int, level: Int) throws(Unsupported) -> JSONValue {
            size += 1
            if size > maxSize { throw fail("a value larger than \(maxSize) (values and string bytes)") }
            switch nodes[id] {
            case .scalar(let value):
                if case .string(let s) = value {
                    size += s.utf8.count
                    if size > maxSize { throw fail("a value larger than \(maxSize) (values and string bytes)") }
                }
                return value
            case .list(let items):
                if level + 1 > maxDepth { throw fail("values nested deeper than \(maxDepth)") }
                var out: [JSONValue] = []
                out.reserveCapacity(items.count)
                for item in items { out.append(try build(item, level: level + 1)) }
                return .array(out)
            case .dict(let members):
                if level + 1 > maxDepth { throw fail("values nested deeper than \(maxDepth)") }
                var out: [String: JSONValue] = [:]
                for (key, item) in members { out[key] = try build(item, level: level + 1) }
                return .object(out)
            }
        }
        while i < bytes.count {
            let op = bytes[i]
            i += 1
            switch op {
            case 0x80: _ = try take(1)  // PROTO
            case 0x95: _ = try take(8)  // FRAME
            case UInt8(ascii: "}"): push(.dict([:]))
            case UInt8(ascii: "]"), UInt8(ascii: ")"): push(.list([]))
            case UInt8(ascii: "("): marks.append(stack.count)
            case UInt8(ascii: "u"): try setItems(try popMark())
            case UInt8(ascii: "s"):
                let value = try pop()
                let key = try pop()
                try setItems([key, value])
            case UInt8(ascii: "e"): try appendItems(try popMark())
            case UInt8(ascii: "a"): try appendItems([try pop()])
            case UInt8(ascii: "t"): push(.list(Array(try popMark())))
            case 0x85, 0x86, 0x87:  // TUPLE1, TUPLE2, TUPLE3
                let n = Int(op - 0x84)
                guard stack.count >= n else { throw fail("a tuple of missing items") }
                let items = Array(stack.suffix(n))
                stack.removeLast(n)
                push(.list(items))
            case 0x8C: push(try text(try length(1)))  // SHORT_BINUNICODE
            case UInt8(ascii: "X"): push(try text(try length(4)))  // BINUNICODE
            case 0x8D: push(try text(try length(8)))  // BINUNICODE8
            case UInt8(ascii: "K"): push(.int(try length(1)))  // BININT1
            case UInt8(ascii: "M"): push(.int(try length(2)))  // BININT2
            case UInt8(ascii: "J"):  // BININT: signed 32 bits
                push(.int(Int(Int32(truncatingIfNeeded: try length(4)))))
            case 0x8A:  // LONG1: little-endian two's complement, up to 8 bytes here
                let n = try length(1)
                guard n <= 8 else {
                    var unsupported = fail("an integer larger than 64 bits (only Python reads it)")
                    unsupported.onlyPythonCanLoad = true
                    throw unsupported
                }
                let raw = try take(n)
                var value = raw.reversed().reduce(UInt64(0)) { $0 << 8 | UInt64($1) }
                if n > 0 && n < 8, let last = raw.last, last & 0x80 != 0 { value |= ~0 << (8 * UInt64(n)) }
                push(.int(Int(truncatingIfNeeded: value)))
            case UInt8(ascii: "G"):  // BINFLOAT, big-endian
                let raw = try take(8)
                push(.double(Double(bitPattern: raw.reduce(UInt64(0)) { $0 << 8 | UInt64($1) })))
            case UInt8(ascii: "N"): push(.null)
            case 0x88: push(.bool(true))
            case 0x89: push(.bool(false))
            case 0x94:  // MEMOIZE
                guard let top = stack.last else { throw fail("MEMOIZE on an empty stack") }
                memo[memo.count] = top
            case UInt8(ascii: "q"), UInt8(ascii: "r"):  // BINPUT, LONG_BINPUT
                let key = try length(op == UInt8(ascii: "q") ? 1 : 4)
                guard let top = stack.last else { throw fail("PUT on an empty stack") }
                memo[key] = top
            case UInt8(ascii: "h"), UInt8(ascii: "j"):  // BINGET, LONG_BINGET
                let key = try length(op == UInt8(ascii: "h") ? 1 : 4)
                guard let node = memo[key] else { throw fail("GET of an unknown memo entry") }
                stack.append(node)
            case UInt8(ascii: "."):
                guard stack.count == 1, let root = stack.first else { throw fail("STOP with \(stack.count) values") }
                return try build(root, level: 0)
            default:
                var unsupported = fail(
                    "opcode 0x\(String(op, radix: 16)) (not a plain value: an object only Python can load)")
                unsupported.onlyPythonCanLoad = true
                throw unsupported
            }
        }
        throw fail("the pickle has no STOP")
    }
}
