internal import CCrypto
import Spool
import Wire

/// The server's cryptography, all from OpenSSL's libcrypto: nothing here is home-made but the encodings.
enum Crypto {
    /// `count` bytes from OpenSSL's kernel-seeded generator.
    static func randomBytes(_ count: Int) throws(ServerError) -> [UInt8] {
        var bytes = [UInt8](repeating: 0, count: count)
        guard RAND_bytes(&bytes, Int32(count)) == 1 else { throw ServerError.internal("no random bytes from OpenSSL") }
        return bytes
    }

    /// HMAC-SHA256 of `message` under `key`.
    static func hmacSHA256(key: [UInt8], message: [UInt8]) -> [UInt8] {
        var out = [UInt8](repeating: 0, count: 32)
        var length: UInt32 = 32
        _ = HMAC(EVP_sha256(), key, Int32(key.count), message, message.count, &out, &length)
        return out
    }

    /// Parameters of the password hash: scrypt with N = 2^15, r = 8, p = 1 (32 MiB, about 0.1 s here), OWASP's
    /// recommendation.
    static let scryptN: UInt64 = 1 << 15
    static let scryptR: UInt64 = 8
    static let scryptP: UInt64 = 1

    /// scrypt of `password` with `salt`, 32 bytes.
    static func scrypt(_ password: String, salt: [UInt8], n: UInt64, r: UInt64, p: UInt64) throws(ServerError)
        -> [UInt8]
    {
        var out = [UInt8](repeating: 0, count: 32)
        let pw = Array(password.utf8)
        let ok = pw.withUnsafeBufferPointer { pwBuffer in
            pwBuffer.withMemoryRebound(to: CChar.self) { chars in
                EVP_PBE_scrypt(chars.baseAddress, chars.count, salt, salt.count, n, r, p, 64 << 20, &out, out.count)
            }
        }
        guard ok == 1 else { throw ServerError.internal("scrypt failed") }
        return out
    }

    /// Whether two byte strings are equal, in time that does not depend on where they differ.
    static func constantTimeEqual(_ a: [UInt8], _ b: [UInt8]) -> Bool {
        guard a.count == b.count, !a.isEmpty else { return false }
        return CRYPTO_memcmp(a, b, a.count) == 0
    }
}
