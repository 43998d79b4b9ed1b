/// A JSON object whose members are found but not built: a large request is read a list item at a time, and a list's
/// length is checked before any of its items is made.
///
/// Why: a parsed tree costs 10 to 100 times its text (a `{}` is 3 bytes of text and, as a refused push item, some
/// hundreds of bytes of memory), so a 20 MiB push of empty objects took the server from 56 MB to 1.9 GB. Read
/// through this, a request costs its body plus the items it is allowed to hold, each built from its own bytes.
public struct JSONMembers: Sendable {
    /// The document's text.
    public let bytes: [UInt8]
    /// Each member's value, as a range of `bytes`.
    public let ranges: [String: Range<Int>]

    /// Checks the whole document (the same grammar, depth and duplicate-key rules as `JSONValue.parse`) and finds
    /// the members of its top-level object; nil when the document is not an object.
    public init?(_ bytes: [UInt8]) throws(JSONParseError) {
        var found: [String: Range<Int>] = [:]
        let isObject = try bytes.withUnsafeBufferPointer { (buffer) throws(JSONParseError) -> Bool in
            var parser = JSONParser(buffer)
            parser.skipWhitespace()
            guard parser.index < buffer.count, buffer[parser.index] == UInt8(ascii: "{") else { return false }
            try parser.members { key, range in found[key] = range }
            parser.skipWhitespace()
            if parser.index < buffer.count { throw parser.fail("unexpected text after the JSON value") }
            return true
        }
        guard isObject else { return nil }
        self.bytes = bytes
        ranges = found
    }

    /// Member `key`, built.
    public func value(_ key: String) throws(JSONParseError) -> JSONValue? {
        guard let range = ranges[key] else { return nil }
        return try value(at: range)
    }

    /// The value at `range` (a member's, or a list item's), built.
    public func value(at range: Range<Int>) throws(JSONParseError) -> JSONValue {
        try Self.value(bytes, at: range)
    }

    /// The value at `range` of `bytes`, built.
    public static func value(_ bytes: [UInt8], at range: Range<Int>) throws(JSONParseError) -> JSONValue {
        try bytes.withUnsafeBufferPointer { (buffer) throws(JSONParseError) in
            var parser = JSONParser(UnsafeBufferPointer(rebasing: buffer[range]))
            return try parser.parseDocument()
        }
    }

    /// The items of a document that is a list (a bulk request), at most `max`, found without building any after
    /// the whole document is checked.
    public static func items(ofList bytes: [UInt8], max: Int) throws(JSONParseError) -> Items {
        try bytes.withUnsafeBufferPointer { (buffer) throws(JSONParseError) -> Items in
            var parser = JSONParser(buffer)
            parser.skipWhitespace()
            guard parser.index < buffer.count, buffer[parser.index] == UInt8(ascii: "[") else { return .notAList }
            let start = parser.index
            try parser.skipValue()
            parser.skipWhitespace()
            if parser.index < buffer.count { throw parser.fail("unexpected text after the JSON value") }
            parser.index = start
            var found: [Range<Int>] = []
            let complete = try parser.elements { item in
                found.append(item)
                return found.count <= max
            }
            return complete ? .items(found) : .tooMany
        }
    }

    /// What a member holds when it is read as a list.
    public enum Items: Sendable, Equatable {
        /// Not a list.
        case notAList
        /// More than the most asked for: none was kept.
        case tooMany
        /// Each item's range of `bytes`.
        case items([Range<Int>])
    }

    /// The items of member `key` (absent: none), at most `max` of them, found without building any.
    public func items(_ key: String, max: Int) -> Items {
        guard let range = ranges[key] else { return .items([]) }
        guard bytes[range.lowerBound] == UInt8(ascii: "[") else {
            return bytes[range.lowerBound] == UInt8(ascii: "n") ? .items([]) : .notAList
        }
        return bytes.withUnsafeBufferPointer { buffer in
            var parser = JSONParser(buffer)
            parser.index = range.lowerBound
            var found: [Range<Int>] = []
            // The document was checked whole by `init`: skipping it again cannot fail.
            let complete =
                (try? parser.elements { item in
                    found.append(item)
                    return found.count <= max
                }) ?? false
            return complete ? .items(found) : .tooMany
        }
    }
}

extension JSONParser {
    /// Skips one value, checking it as `parseValue` would but building nothing larger than one string or number.
    mutating func skipValue() throws(JSONParseError) {
        guard index < bytes.count else { throw fail("unexpected end of input") }
        switch bytes[index] {
        case UInt8(ascii: "{"): try members { _, _ in }
        case UInt8(ascii: "["): _ = try elements { _ in true }
        default: _ = try parseValue()
        }
    }

    /// Walks an object at `index`, calling `found` with each key and its value's range (duplicate keys refused).
    mutating func members(_ found: (String, Range<Int>) -> Void) throws(JSONParseError) {
        try enter()
        defer { depth -= 1 }
        index += 1
        var keys = Set<String>()
        skipWhitespace()
        if index < bytes.count && bytes[index] == UInt8(ascii: "}") {
            index += 1
            return
        }
        while true {
            skipWhitespace()
            guard index < bytes.count, bytes[index] == UInt8(ascii: "\"") else { throw fail("expected a key string") }
            let keyOffset = index
            let key = try parseString()
            if !keys.insert(key).inserted {
                throw JSONParseError(offset: keyOffset, reason: "duplicate key \"\(key)\"")
            }
            skipWhitespace()
            guard index < bytes.count, bytes[index] == UInt8(ascii: ":") else { throw fail("expected ':'") }
            index += 1
            skipWhitespace()
            let start = index
            try skipValue()
            found(key, start..<index)
            skipWhitespace()
            guard index < bytes.count else { throw fail("unexpected end of input in an object") }
            if bytes[index] == UInt8(ascii: ",") {
                index += 1
                continue
            }
            if bytes[index] == UInt8(ascii: "}") {
                index += 1
                return
            }
            throw fail("expected ',' or '}'")
        }
    }

    /// Walks an array at `index`, calling `found` with each item's range until it answers false (then false).
    mutating func elements(_ found: (Range<Int>) -> Bool) throws(JSONParseError) -> Bool {
        try enter()
        defer { depth -= 1 }
        index += 1
        skipWhitespace()
        if index < bytes.count && bytes[index] == UInt8(ascii: "]") {
            index += 1
            return true
        }
        while true {
            skipWhitespace()
            let start = index
            try skipValue()
            if !found(start..<index) { return false }
            skipWhitespace()
            guard index < bytes.count else { throw fail("unexpected end of input in an array") }
            if bytes[index] == UInt8(ascii: ",") {
                index += 1
                continue
            }
            if bytes[index] == UInt8(ascii: "]") {
                index += 1
                return true
            }
            throw fail("expected ',' or ']'")
        }
    }
}
