/// What the original client's `Site` model takes as a transfer location (`Dict[str, pydantic.AnyUrl]`, pydantic
/// 1.10), or a little less: printable ASCII only; a scheme of two or more characters, `://`, an optional
/// `USER[:PASSWORD]@`, a host (dot-separated labels of letters, digits, `_` and `-`, none starting or ending
/// with `-`, or an IPv6 address in brackets), an optional port up to 65535, then an optional path, query and
/// fragment. A location the server holds must read there, or `Site.objects.get` fails for every user of the site
/// ("URL host invalid" for `file:///path`).
public enum ClientURL {
    /// Why the client would refuse `text` (or this rule, a little stricter, does), or nil when it takes it.
    public static func problem(_ text: String) -> String? {
        let s = Array(text.utf8)
        if s.isEmpty || s.count > 65_536 { return "is empty or longer than 65,536 bytes" }
        if let bad = s.first(where: { $0 < 0x21 || $0 > 0x7E }) {
            return "holds \(bad < 0x80 ? "a space or control character" : "a character outside ASCII")"
        }
        func letter(_ b: UInt8) -> Bool { (b | 0x20) >= UInt8(ascii: "a") && (b | 0x20) <= UInt8(ascii: "z") }
        func digit(_ b: UInt8) -> Bool { b >= UInt8(ascii: "0") && b <= UInt8(ascii: "9") }
        func hex(_ b: UInt8) -> Bool {
            digit(b) || ((b | 0x20) >= UInt8(ascii: "a") && (b | 0x20) <= UInt8(ascii: "f"))
        }
        let end = s.count
        var i = 0
        guard letter(s[0]) else { return "has no scheme (such as rsync:// or globus://)" }
        i = 1
        while i < end && (letter(s[i]) || digit(s[i]) || "+-.".utf8.contains(s[i])) { i += 1 }
        guard i >= 2, end - i >= 3, s[i] == UInt8(ascii: ":"), s[i + 1] == UInt8(ascii: "/"),
            s[i + 2] == UInt8(ascii: "/")
        else { return "has no scheme (such as rsync:// or globus://)" }
        i += 3
        // USER[:PASSWORD]@ when an @ comes before the next '/', '?' or '#' (the user holds no ':').
        var k = i
        while k < end && !"/?#@".utf8.contains(s[k]) { k += 1 }
        if k < end && s[k] == UInt8(ascii: "@") {
            if s[i..<k].split(separator: UInt8(ascii: ":"), maxSplits: 1).first?.contains(UInt8(ascii: "@")) == true {
                return "has an @ in its user name"
            }
            i = k + 1
        }
        let hostStart = i
        if i < end && s[i] == UInt8(ascii: "[") {
            i += 1
            let inside = i
            while i < end && (hex(s[i]) || s[i] == UInt8(ascii: ":")) { i += 1 }
            guard i < end, s[i] == UInt8(ascii: "]"), s[inside..<i].contains(UInt8(ascii: ":")) else {
                return "has a bracketed host that is not an IPv6 address"
            }
            i += 1
        } else {
            while i < end && !"/:?#".utf8.contains(s[i]) { i += 1 }
            if i == hostStart { return "has no host (file:///path has none: write file://localhost/path)" }
            for label in s[hostStart..<i].split(separator: UInt8(ascii: "."), omittingEmptySubsequences: false) {
                guard !label.isEmpty, label.count <= 63, label.first != UInt8(ascii: "-"),
                    label.last != UInt8(ascii: "-"),
                    label.allSatisfy({ letter($0) || digit($0) || $0 == UInt8(ascii: "_") || $0 == UInt8(ascii: "-") })
                else {
                    return "has a host that is not a domain name (labels of letters, digits, _ and -, split by dots)"
                }
            }
        }
        if i < end && s[i] == UInt8(ascii: ":") {
            i += 1
            let portStart = i
            var port = 0
            while i < end && digit(s[i]) {
                port = min(port * 10 + Int(s[i] - UInt8(ascii: "0")), 1_000_000)
                i += 1
            }
            if i == portStart { return "has a ':' after its host that is not a port" }
            if port > 65_535 { return "has a port above 65535" }
        }
        if i < end && s[i] == UInt8(ascii: "/") { while i < end && s[i] != 0x3F && s[i] != 0x23 { i += 1 } }
        if i < end && s[i] == UInt8(ascii: "?") { while i < end && s[i] != 0x23 { i += 1 } }
        if i < end && s[i] == UInt8(ascii: "#") {
            i += 1
            while i < end && s[i] != 0x23 { i += 1 }
        }
        return i == end ? nil : "has characters after its host or port that are not a path"
    }
}
