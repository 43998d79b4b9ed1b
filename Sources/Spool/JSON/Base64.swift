/// Base64 and base64url (RFC 4648): the original client's pickled payloads, token parts, stored hashes.
public enum Base64 {
    private static let alphabet = Array("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/".utf8)

    /// Base64url without padding (what JWTs use).
    public static func urlEncode(_ bytes: [UInt8]) -> String {
        var out: [UInt8] = []
        out.reserveCapacity((bytes.count + 2) / 3 * 4)
        var i = 0
        while i < bytes.count {
            let b0 = Int(bytes[i])
            let b1 = i + 1 < bytes.count ? Int(bytes[i + 1]) : 0
            let b2 = i + 2 < bytes.count ? Int(bytes[i + 2]) : 0
            let chunk = [b0 >> 2, (b0 & 3) << 4 | b1 >> 4, (b1 & 15) << 2 | b2 >> 6, b2 & 63]
            let keep = min(4, bytes.count - i + 1)
            for k in 0..<keep {
                var c = alphabet[chunk[k]]
                if c == UInt8(ascii: "+") { c = UInt8(ascii: "-") }
                if c == UInt8(ascii: "/") { c = UInt8(ascii: "_") }
                out.append(c)
            }
            i += 3
        }
        return String(decoding: out, as: UTF8.self)
    }

    /// Standard base64 with padding (what Python's `base64.b64encode` writes).
    public static func encode(_ bytes: [UInt8]) -> String {
        var text = urlEncode(bytes).replacingCharacters(["-": "+", "_": "/"])
        while text.utf8.count % 4 != 0 { text += "=" }
        return text
    }

    /// Decodes base64 or base64url, padded or not; nil on any other character.
    public static func decode(_ text: some StringProtocol) -> [UInt8]? {
        var out: [UInt8] = []
        var buffer = 0
        var bits = 0
        for c in text.utf8 {
            let v: Int
            switch c {
            case UInt8(ascii: "A")...UInt8(ascii: "Z"): v = Int(c) - 65
            case UInt8(ascii: "a")...UInt8(ascii: "z"): v = Int(c) - 71
            case UInt8(ascii: "0")...UInt8(ascii: "9"): v = Int(c) + 4
            case UInt8(ascii: "+"), UInt8(ascii: "-"): v = 62
            case UInt8(ascii: "/"), UInt8(ascii: "_"): v = 63
            case UInt8(ascii: "="): continue
            default: return nil
            }
            buffer = buffer << 6 | v
            bits += 6
            if bits >= 8 {
                bits -= 8
                out.append(UInt8(truncatingIfNeeded: buffer >> bits))
            }
        }
        return out
    }
}

extension String {
    fileprivate func replacingCharacters(_ map: [Character: Character]) -> String {
        String(self.map { map[$0] ?? $0 })
    }
}
