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
    }

    /// Pickles a JSON value with protocol 4 (no frames, no memo: both optional for readers), as base64.
    public static func encodeBase64(_ value: JSONValue) -> String {
        var out: [UInt8] = [0x80, 4]
        write(value, to: &out)
        out.append(UInt8(ascii: "."))
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

    /// Every text string a pickle holds (names of a class's attributes and methods among them).
    public static func strings(inBase64 text: String) -> Set<String> {
        var all = Set<String>()
        walkStrings(inBase64: text) { string, _ in
            all.insert(string)
            return true
        }
        return all
    }

    /// Calls `visit` with each text string of a pickle, in order, and the string just before it (nil when
    /// another opcode came between them), until it returns false.
    private static func walkStrings(inBase64 text: String, _ visit: (String, String?) -> Bool) {
        guard let bytes = Base64.decode(text) else { return }
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
        while i < bytes.count {
            let op = bytes[i]
            i += 1
            if op == 0x94 || op == UInt8(ascii: "q") || op == UInt8(ascii: "r") {  // memo ops keep the string
                i += op == 0x94 ? 0 : (op == UInt8(ascii: "q") ? 1 : 4)
                continue
            }
            if let n = fixed(op) {
                i += n
                previousString = nil
            } else if let n = lengthBytes(op) {
                guard i + n <= bytes.count else { return }
                var length = 0
                for k in (0..<n).reversed() { length = length << 8 | Int(bytes[i + k]) }
                i += n
                guard length >= 0, i + length <= bytes.count else { return }
                let isText = op == 0x8C || op == UInt8(ascii: "X") || op == 0x8D
                let text = isText ? String(validating: bytes[i..<i + length], as: UTF8.self) : nil
                i += length
                if let text, !visit(text, previousString) { return }
                previousString = text
            } else if "ILFSVpgP".utf8.contains(op) {
                while i < bytes.count && bytes[i] != 0x0A { i += 1 }
                i += 1
                previousString = nil
            } else if op == UInt8(ascii: "c") || op == UInt8(ascii: "i") {
                for _ in 0..<2 {
                    while i < bytes.count && bytes[i] != 0x0A { i += 1 }
                    i += 1
                }
                previousString = nil
            } else if op == UInt8(ascii: ".") {
                return
            } else {
                previousString = nil
            }
        }
    }

    /// Decodes base64 text holding a pickle; an empty text is an empty dictionary (the original's default).
    public static func decodeBase64(_ text: String) throws(Unsupported) -> JSONValue {
        if text.isEmpty { return .object([:]) }
        guard let bytes = Base64.decode(text) else { throw Unsupported(description: "not base64 text") }
        return try decode(bytes)
    }

    /// Decodes pickle bytes into a JSON value.
    public static func decode(_ bytes: [UInt8]) throws(Unsupported) -> JSONValue {
        var stack: [JSONValue] = []
        var marks: [Int] = []
        var memo: [Int: JSONValue] = [:]
        var i = 0
        func fail(_ what: String) -> Unsupported { Unsupported(description: what) }
        func take(_ n: Int) throws(Unsupported) -> ArraySlice<UInt8> {
            guard n >= 0, i + n <= bytes.count else { throw fail("the pickle ends early") }
            defer { i += n }
            return bytes[i..<i + n]
        }
        func little(_ slice: ArraySlice<UInt8>) -> Int {
            slice.reversed().reduce(0) { $0 << 8 | Int($1) }
        }
        func text(_ n: Int) throws(Unsupported) -> JSONValue {
            let raw = try take(n)
            guard let s = String(validating: raw, as: UTF8.self) else { throw fail("a string is not UTF-8") }
            return .string(s)
        }
        func pop() throws(Unsupported) -> JSONValue {
            guard let top = stack.popLast() else { throw fail("the pickle's stack is empty") }
            return top
        }
        func popMark() throws(Unsupported) -> [JSONValue] {
            guard let mark = marks.popLast(), mark <= stack.count else { throw fail("a MARK is missing") }
            defer { stack.removeSubrange(mark...) }
            return Array(stack[mark...])
        }
        func setItems(_ items: [JSONValue]) throws(Unsupported) {
            guard items.count % 2 == 0, case .object(var dict) = try pop() else { throw fail("SETITEMS on a non-dict") }
            for k in stride(from: 0, to: items.count, by: 2) {
                guard case .string(let key) = items[k] else { throw fail("a dict key that is not a string") }
                dict[key] = items[k + 1]
            }
            stack.append(.object(dict))
        }
        func appendItems(_ items: [JSONValue]) throws(Unsupported) {
            guard case .array(var list) = try pop() else { throw fail("APPENDS on a non-list") }
            list.append(contentsOf: items)
            stack.append(.array(list))
        }
        while i < bytes.count {
            let op = bytes[i]
            i += 1
            switch op {
            case 0x80: _ = try take(1)  // PROTO
            case 0x95: _ = try take(8)  // FRAME
            case UInt8(ascii: "}"): stack.append(.object([:]))
            case UInt8(ascii: "]"), UInt8(ascii: ")"): stack.append(.array([]))
            case UInt8(ascii: "("): marks.append(stack.count)
            case UInt8(ascii: "u"): try setItems(try popMark())
            case UInt8(ascii: "s"):
                let value = try pop()
                let key = try pop()
                try setItems([key, value])
            case UInt8(ascii: "e"): try appendItems(try popMark())
            case UInt8(ascii: "a"): try appendItems([try pop()])
            case UInt8(ascii: "t"): stack.append(.array(try popMark()))
            case 0x85, 0x86, 0x87:  // TUPLE1, TUPLE2, TUPLE3
                let n = Int(op - 0x84)
                guard stack.count >= n else { throw fail("a tuple of missing items") }
                let items = Array(stack.suffix(n))
                stack.removeLast(n)
                stack.append(.array(items))
            case 0x8C: stack.append(try text(Int(try take(1).first ?? 0)))  // SHORT_BINUNICODE
            case UInt8(ascii: "X"): stack.append(try text(little(try take(4))))  // BINUNICODE
            case 0x8D: stack.append(try text(little(try take(8))))  // BINUNICODE8
            case UInt8(ascii: "K"): stack.append(.int(Int(try take(1).first ?? 0)))  // BININT1
            case UInt8(ascii: "M"): stack.append(.int(little(try take(2))))  // BININT2
            case UInt8(ascii: "J"): stack.append(.int(Int(Int32(truncatingIfNeeded: little(try take(4))))))
            case 0x8A:  // LONG1: little-endian two's complement, up to 8 bytes here
                let n = Int(try take(1).first ?? 0)
                guard n <= 8 else { throw fail("an integer larger than 64 bits") }
                let raw = try take(n)
                var value = little(raw)
                if n > 0 && n < 8, let last = raw.last, last & 0x80 != 0 { value -= 1 << (8 * n) }
                stack.append(.int(value))
            case UInt8(ascii: "G"):  // BINFLOAT, big-endian
                let raw = try take(8)
                stack.append(.double(Double(bitPattern: raw.reduce(UInt64(0)) { $0 << 8 | UInt64($1) })))
            case UInt8(ascii: "N"): stack.append(.null)
            case 0x88: stack.append(.bool(true))
            case 0x89: stack.append(.bool(false))
            case 0x94:  // MEMOIZE
                guard let top = stack.last else { throw fail("MEMOIZE on an empty stack") }
                memo[memo.count] = top
            case UInt8(ascii: "q"), UInt8(ascii: "r"):  // BINPUT, LONG_BINPUT
                let key = little(try take(op == UInt8(ascii: "q") ? 1 : 4))
                guard let top = stack.last else { throw fail("PUT on an empty stack") }
                memo[key] = top
            case UInt8(ascii: "h"), UInt8(ascii: "j"):  // BINGET, LONG_BINGET
                let key = little(try take(op == UInt8(ascii: "h") ? 1 : 4))
                guard let value = memo[key] else { throw fail("GET of an unknown memo entry") }
                stack.append(value)
            case UInt8(ascii: "."):
                guard stack.count == 1, let value = stack.first else { throw fail("STOP with \(stack.count) values") }
                return value
            default:
                throw fail("opcode 0x\(String(op, radix: 16)) (not a plain value: an object only Python can load)")
            }
        }
        throw fail("the pickle has no STOP")
    }
}
