/// A JSON document whose parts are found but not built: a large request is read a list item at a time, and its
/// lists' lengths are checked before any of their items is made.
///
/// Why: a parsed tree costs 10 to 100 times its text (a `{}` is 3 bytes of text and, as a refused push item, some
/// hundreds of bytes of memory), so a 20 MiB push of empty objects took the server from 56 MB to 1.9 GB. Read
/// through this, a request costs its body plus the items it is allowed to hold, each built from its own bytes.
///
/// One pass finds the parts; it checks the document's structure (brackets, commas, colons, strings' ends, the
/// nesting bound) but builds nothing. Each part is checked whole when it is built (`value(at:)`): UTF-8, escapes,
/// numbers, duplicate keys.
public struct JSONMembers: Sendable {
    /// The document's text.
    public let bytes: [UInt8]
    /// Each top-level member's value, as a range of `bytes`.
    public let ranges: [String: Range<Int>]
    /// The items of each top-level member that is a list, as ranges of `bytes`.
    public let lists: [String: [Range<Int>]]

    /// What a reading found.
    public enum Reading: Sendable {
        /// The document is not an object (or, for `list(_:max:)`, not a list).
        case wrongKind
        /// Its lists hold more than the most asked for (the member whose list passed it; nil for a list
        /// document): no item was kept.
        case tooMany(String?)
        /// The object's members, and its lists' items.
        case members(JSONMembers)
        /// The list's items.
        case items([Range<Int>])
    }

    private init(bytes: [UInt8], ranges: [String: Range<Int>], lists: [String: [Range<Int>]]) {
        self.bytes = bytes
        self.ranges = ranges
        self.lists = lists
    }

    /// Finds the members of the object `bytes` holds, and the items of its members that are lists: at most
    /// `maxListItems` in all.
    public static func object(_ bytes: [UInt8], maxListItems: Int) throws(JSONParseError) -> Reading {
        var ranges: [String: Range<Int>] = [:]
        var lists: [String: [Range<Int>]] = [:]
        var over: String?
        var left = maxListItems
        let isObject = try document(bytes, opening: "{") { (parser) throws(JSONParseError) -> Bool in
            try parser.walkObject { (parser, key, keyOffset) throws(JSONParseError) in
                if ranges[key] != nil { throw JSONParseError(offset: keyOffset, reason: "duplicate key \"\(key)\"") }
                let start = parser.index
                if over == nil, start < parser.bytes.count, parser.bytes[start] == UInt8(ascii: "[") {
                    var found: [Range<Int>] = []
                    if try parser.itemRanges(into: &found, max: left) {
                        lists[key] = found
                        left -= found.count
                    } else {
                        over = key
                        parser.index = start
                        try parser.skipValue()
                    }
                } else {
                    try parser.skipValue()
                }
                ranges[key] = start..<parser.index
            }
            return true
        }
        guard isObject else { return .wrongKind }
        if let over { return .tooMany(over) }
        return .members(JSONMembers(bytes: bytes, ranges: ranges, lists: lists))
    }

    /// Finds the items of the list `bytes` holds (a bulk request), at most `max`.
    public static func list(_ bytes: [UInt8], max: Int) throws(JSONParseError) -> Reading {
        var found: [Range<Int>] = []
        var complete = true
        let isList = try document(bytes, opening: "[") { (parser) throws(JSONParseError) -> Bool in
            complete = try parser.itemRanges(into: &found, max: max)
            return complete
        }
        guard isList else { return .wrongKind }
        return complete ? .items(found) : .tooMany(nil)
    }

    /// Runs `walk` over a document that opens with `opening` (false when it does not); nothing may follow it,
    /// unless `walk` stopped early (answered false).
    private static func document(
        _ bytes: [UInt8], opening: Unicode.Scalar, _ walk: (inout JSONParser) throws(JSONParseError) -> Bool
    ) throws(JSONParseError) -> Bool {
        try bytes.withUnsafeBufferPointer { (buffer) throws(JSONParseError) -> Bool in
            var parser = JSONParser(buffer)
            parser.skipWhitespace()
            guard parser.index < buffer.count, buffer[parser.index] == UInt8(ascii: opening) else { return false }
            guard try walk(&parser) else { return true }
            parser.skipWhitespace()
            if parser.index < buffer.count {
                throw parser.fail("unexpected text after the JSON value")
            }
            return true
        }
    }

    /// The value at `range` (a member's, or a list item's), built and checked whole.
    public func value(at range: Range<Int>) throws(JSONParseError) -> JSONValue { try Self.value(bytes, at: range) }

    /// The value at `range` of `bytes`, built and checked whole.
    public static func value(_ bytes: [UInt8], at range: Range<Int>) throws(JSONParseError) -> JSONValue {
        try bytes.withUnsafeBufferPointer { (buffer) throws(JSONParseError) in
            var parser = JSONParser(UnsafeBufferPointer(rebasing: buffer[range]))
            return try parser.parseDocument()
        }
    }
}

extension JSONParser {
    /// Skips one value: its structure checked, nothing built (`JSONMembers` checks each part when it builds it).
    mutating func skipValue() throws(JSONParseError) {
        guard index < bytes.count else { throw fail("unexpected end of input") }
        switch bytes[index] {
        case UInt8(ascii: "{"): try walkObject { (parser, _, _) throws(JSONParseError) in try parser.skipValue() }
        case UInt8(ascii: "["):
            _ = try walkArray { (parser) throws(JSONParseError) in
                try parser.skipValue()
                return true
            }
        case UInt8(ascii: "\""): try skipString()
        default: _ = try parseValue()  // a number or a literal: nothing allocated
        }
    }

    /// Skips a string to its closing quote (a backslash takes the byte after it); control characters refused.
    mutating func skipString() throws(JSONParseError) {
        index += 1
        while index < bytes.count {
            let b = bytes[index]
            if b == UInt8(ascii: "\"") {
                index += 1
                return
            }
            if b < 0x20 { throw fail("control character in a string") }
            index += b == UInt8(ascii: "\\") ? 2 : 1
        }
        throw fail("unterminated string")
    }

    /// The ranges of the array's items at `index`, appended to `found` until there are more than `max`: false
    /// then (the parser stops at the item past `max`), true at the closing bracket.
    mutating func itemRanges(into found: inout [Range<Int>], max: Int) throws(JSONParseError) -> Bool {
        try walkArray { (parser) throws(JSONParseError) in
            let start = parser.index
            try parser.skipValue()
            found.append(start..<parser.index)
            return found.count <= max
        }
    }
}
