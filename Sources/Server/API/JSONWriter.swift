import Spool
import Wire

/// Writes reply JSON straight into bytes, fields in the order given: a page of 100,000 jobs is built without a
/// dictionary per job. JSON the database holds (tags, data) is copied in as it is: it was checked on the way in.
struct JSONWriter {
    var bytes: [UInt8] = []
    private var needsComma = false

    init(capacity: Int = 256) { bytes.reserveCapacity(capacity) }

    private mutating func separator() {
        if needsComma { bytes.append(UInt8(ascii: ",")) }
        needsComma = true
    }

    private mutating func key(_ name: String) {
        separator()
        JSONValue.writeString(name, to: &bytes)
        bytes.append(UInt8(ascii: ":"))
        needsComma = false
    }

    /// `{`, optionally as the value of `name`.
    mutating func beginObject(_ name: String? = nil) {
        if let name { key(name) } else { separator() }
        bytes.append(UInt8(ascii: "{"))
        needsComma = false
    }

    /// `}`.
    mutating func endObject() {
        bytes.append(UInt8(ascii: "}"))
        needsComma = true
    }

    /// `[`, optionally as the value of `name`.
    mutating func beginArray(_ name: String? = nil) {
        if let name { key(name) } else { separator() }
        bytes.append(UInt8(ascii: "["))
        needsComma = false
    }

    /// `]`.
    mutating func endArray() {
        bytes.append(UInt8(ascii: "]"))
        needsComma = true
    }

    /// A string member.
    mutating func field(_ name: String, _ value: String) {
        key(name)
        JSONValue.writeString(value, to: &bytes)
        needsComma = true
    }

    /// An optional string member (`null` when nil).
    mutating func field(_ name: String, _ value: String?) {
        if let value { field(name, value) } else { raw(name, "null") }
    }

    /// An integer member.
    mutating func field(_ name: String, _ value: Int) { raw(name, String(value)) }

    /// An optional integer member.
    mutating func field(_ name: String, _ value: Int?) { raw(name, value.map(String.init) ?? "null") }

    /// A boolean member.
    mutating func field(_ name: String, _ value: Bool) { raw(name, value ? "true" : "false") }

    /// A number member.
    mutating func field(_ name: String, _ value: Double) {
        key(name)
        JSONValue.double(value).write(to: &bytes)
        needsComma = true
    }

    /// A member whose value is JSON text already.
    mutating func raw(_ name: String, _ json: String) {
        key(name)
        bytes.append(contentsOf: json.utf8)
        needsComma = true
    }

    /// A member holding a parsed value.
    mutating func value(_ name: String, _ value: JSONValue) {
        key(name)
        value.write(to: &bytes)
        needsComma = true
    }

    /// An array element that is JSON text already.
    mutating func element(raw json: String) {
        separator()
        bytes.append(contentsOf: json.utf8)
    }
}
