import Spool

/// Reads the members of one JSON object of a message, each check naming the field (with its place in a bulk
/// request: `[3].num_nodes`). Members not read are refused: a misspelt field is an error, not silently dropped.
/// Every message a client or a site sends is read through one of these; everything in them is hostile until
/// checked (lengths, ranges, NUL characters, nesting).
public struct FieldReader {
    /// The object's members.
    public let members: [String: JSONValue]
    /// Where the object is in its message (`jobs[3]`), or empty for the message itself.
    public let prefix: String
    /// Keys asked for: a list, not a set (a job has some twenty; hashing each cost more than scanning).
    private(set) var read: [String] = []

    /// Reads `value`, which must be an object, found at `prefix`.
    public init(_ value: JSONValue, prefix: String = "") throws(WireError) {
        guard let members = value.objectValue else {
            throw WireError("must be a JSON object, not \(value.kindName)", field: prefix.isEmpty ? nil : prefix)
        }
        self.members = members
        self.prefix = prefix
    }

    /// The full name of member `key`.
    public func name(_ key: String) -> String { prefix.isEmpty ? key : "\(prefix).\(key)" }

    /// The error about member `key`.
    public func bad(_ key: String, _ message: String) -> WireError { WireError(message, field: name(key)) }

    /// Whether the member is present (and not null).
    public func has(_ key: String) -> Bool {
        if let value = members[key], value != .null { return true }
        return false
    }

    /// The raw value, if present and not null.
    public mutating func value(_ key: String) -> JSONValue? {
        read.append(key)
        guard let value = members[key], value != .null else { return nil }
        return value
    }

    public mutating func string(_ key: String, maxBytes: Int = 4096) throws(WireError) -> String? {
        guard let value = value(key) else { return nil }
        guard case .string(let s) = value else { throw bad(key, "must be a string, not \(value.kindName)") }
        if s.utf8.count > maxBytes { throw bad(key, "is \(s.utf8.count) bytes; the limit is \(maxBytes)") }
        // A NUL would be cut where the text meets C (a path `/data/ok\0/../../etc` stored as `/data/ok`).
        if s.utf8.contains(0) { throw bad(key, "contains a NUL character") }
        return s
    }

    public mutating func requiredString(_ key: String, maxBytes: Int = 4096) throws(WireError) -> String {
        guard let s = try string(key, maxBytes: maxBytes) else { throw bad(key, "is required") }
        return s
    }

    public mutating func int(_ key: String, in range: ClosedRange<Int>) throws(WireError) -> Int? {
        guard let value = value(key) else { return nil }
        var number = value.intValue
        if number == nil, case .string(let s) = value { number = Int(s) }
        guard let number else { throw bad(key, "must be an integer, not \(value.kindName)") }
        guard range.contains(number) else {
            throw bad(key, "must be between \(range.lowerBound) and \(range.upperBound), not \(number)")
        }
        return number
    }

    public mutating func requiredInt(_ key: String, in range: ClosedRange<Int>) throws(WireError) -> Int {
        guard let n = try int(key, in: range) else { throw bad(key, "is required") }
        return n
    }

    public mutating func double(_ key: String, in range: ClosedRange<Double>) throws(WireError) -> Double? {
        guard let value = value(key) else { return nil }
        guard let number = value.doubleValue, number.isFinite else {
            throw bad(key, "must be a number, not \(value.kindName)")
        }
        guard range.contains(number) else {
            throw bad(key, "must be between \(range.lowerBound) and \(range.upperBound), not \(number)")
        }
        return number
    }

    public mutating func bool(_ key: String) throws(WireError) -> Bool? {
        guard let value = value(key) else { return nil }
        switch value {
        case .bool(let b): return b
        case .int(0), .string("false"), .string("False"): return false
        case .int(1), .string("true"), .string("True"): return true
        default: throw bad(key, "must be true or false, not \(value.kindName)")
        }
    }

    /// A JSON object, stored as its compact text; at most `maxBytes`.
    public mutating func object(_ key: String, maxBytes: Int = 512_000) throws(WireError) -> [String: JSONValue]? {
        guard let value = value(key) else { return nil }
        guard let object = value.objectValue else { throw bad(key, "must be an object, not \(value.kindName)") }
        let size = value.approximateSize
        if size > maxBytes { throw bad(key, "is about \(size) bytes; the limit is \(maxBytes)") }
        return object
    }

    /// An object of strings; numbers and booleans are turned into their text, as the original did.
    public mutating func stringMap(_ key: String, maxEntries: Int = 1000, maxBytes: Int = 4096) throws(WireError)
        -> [String: String]?
    {
        guard let object = try object(key) else { return nil }
        if object.count > maxEntries { throw bad(key, "has \(object.count) entries; the limit is \(maxEntries)") }
        var out: [String: String] = [:]
        for (k, v) in object {
            if k.utf8.count > maxBytes { throw bad(key, "has a key longer than \(maxBytes) bytes") }
            let text: String
            switch v {
            case .string(let s): text = s
            case .int, .double, .bool: text = v.serialized()
            default: throw bad("\(key).\(k)", "must be a string, not \(v.kindName)")
            }
            if text.utf8.count > maxBytes { throw bad("\(key).\(k)", "is longer than \(maxBytes) bytes") }
            if k.utf8.contains(0) || text.utf8.contains(0) { throw bad("\(key).\(k)", "contains a NUL character") }
            out[k] = text
        }
        return out
    }

    /// A list of strings.
    public mutating func stringList(_ key: String, maxCount: Int, maxBytes: Int = 4096) throws(WireError) -> [String]? {
        guard let value = value(key) else { return nil }
        guard case .array(let items) = value else { throw bad(key, "must be a list, not \(value.kindName)") }
        if items.count > maxCount { throw bad(key, "has \(items.count) entries; the limit is \(maxCount)") }
        var out: [String] = []
        for (i, item) in items.enumerated() {
            guard let text = item.stringValue else {
                throw bad("\(key)[\(i)]", "must be a string, not \(item.kindName)")
            }
            if text.utf8.count > maxBytes { throw bad("\(key)[\(i)]", "is longer than \(maxBytes) bytes") }
            if text.utf8.contains(0) { throw bad("\(key)[\(i)]", "contains a NUL character") }
            out.append(text)
        }
        return out
    }

    /// A list of integers.
    public mutating func intList(_ key: String, maxCount: Int) throws(WireError) -> [Int]? {
        guard let value = value(key) else { return nil }
        guard case .array(let items) = value else { throw bad(key, "must be a list, not \(value.kindName)") }
        if items.count > maxCount { throw bad(key, "has \(items.count) entries; the limit is \(maxCount)") }
        var out: [Int] = []
        for item in items {
            guard let n = item.intValue else { throw bad(key, "must hold integers, not \(item.kindName)") }
            out.append(n)
        }
        return out
    }

    /// A time in ISO 8601, as microseconds since the epoch.
    public mutating func time(_ key: String) throws(WireError) -> Int64? { try timeAsSent(key)?.microseconds }

    /// A time in ISO 8601, checked, with its text as sent (a site's own time, which it reads back).
    public mutating func timeAsSent(_ key: String) throws(WireError) -> (text: String, microseconds: Int64)? {
        guard let text = try string(key, maxBytes: 64) else { return nil }
        guard let micros = ServerClock.parse(text) else { throw bad(key, "'\(text)' is not an ISO 8601 date and time") }
        return (text, micros)
    }

    /// A list (absent: empty).
    public mutating func list(_ key: String) throws(WireError) -> [JSONValue] {
        guard let value = value(key) else { return [] }
        guard case .array(let items) = value else { throw bad(key, "must be a list, not \(value.kindName)") }
        return items
    }

    /// Takes every member as read (a message that is only passed on).
    public mutating func readAll() { read = Array(members.keys) }

    /// Refuses members that no reader asked for.
    public func finish() throws(WireError) {
        if members.count <= read.count && members.keys.allSatisfy({ read.contains($0) }) { return }
        for key in members.keys.sorted() where !read.contains(key) {
            throw bad(key, "is not a field of this resource")
        }
    }
}

/// Stored JSON text of a string map (sorted keys), written directly: tags are on every job.
public func jsonText(_ map: [String: String]) -> String {
    if map.isEmpty { return "{}" }
    var out: [UInt8] = [UInt8(ascii: "{")]
    for (i, key) in map.keys.sorted().enumerated() {
        if i > 0 { out.append(UInt8(ascii: ",")) }
        JSONValue.writeString(key, to: &out)
        out.append(UInt8(ascii: ":"))
        JSONValue.writeString(map[key, default: ""], to: &out)
    }
    out.append(UInt8(ascii: "}"))
    return String(decoding: out, as: UTF8.self)
}

/// Stored JSON text of an object.
public func jsonText(_ object: [String: JSONValue]) -> String { JSONValue.object(object).serialized() }
