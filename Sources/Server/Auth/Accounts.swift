import Spool
import Synchronization
import Wire

#if canImport(Glibc)
    import Glibc
#endif

/// Who made a request: the user behind a valid token.
public struct User: Sendable, Equatable {
    /// The user's id.
    public var id: Int
    /// The user's name.
    public var name: String
    /// The site a site token was made for (nil for a password login's token): it may push only as that site.
    public var siteName: String? = nil
}

/// One issued token, as `balsam-server token ls` shows it.
public struct TokenRecord: Sendable, Equatable {
    /// The token's id (its `jti` claim).
    public var id: String
    /// The user it acts for.
    public var username: String
    /// `login` (a password login, expires) or `site` (made by an operator for a site daemon, long-lived).
    public var kind: String
    /// The site it was made for, for site tokens.
    public var siteName: String?
    /// When it was made, microseconds since the epoch.
    public var created: Int64
    /// When it expires, or nil for never.
    public var expires: Int64?
    /// When it was revoked, or nil.
    public var revoked: Int64?
}

/// Users, passwords and tokens.
///
/// Tokens are JWTs (HS256) signed with the server's secret, and each is also a row of `tokens`: a request is
/// accepted only when the signature holds, the token has not expired, and its row is there and not revoked. So
/// an operator revokes any token at once, and a site's token can live for months without being a risk that
/// cannot be taken back.
public struct Accounts: Sendable {
    let database: Database
    let secret: [UInt8]
    /// Lifetime of login tokens.
    public var loginTokenSeconds: Int64 = 48 * 3600
    /// Failed logins per client address (shared by the copies of this value).
    let limiter = LoginLimiter()

    /// Accounts over `database`, signing with `secret`.
    public init(database: Database, secret: [UInt8]) {
        self.database = database
        self.secret = secret
    }

    // MARK: - Users

    /// A user name: 1 to 64 letters, digits, `_`, `-`, `.` or `@`, starting with a letter or a digit (so `-`,
    /// `..` and `.hidden` are not names).
    static func validateUsername(_ name: String) throws(ServerError) {
        func alphanumeric(_ c: UInt8) -> Bool { (c >= 0x30 && c <= 0x39) || (c | 0x20 >= 0x61 && c | 0x20 <= 0x7A) }
        let ok =
            name.utf8.count <= 64 && name.utf8.first.map(alphanumeric) == true
            && name.utf8.allSatisfy { alphanumeric($0) || "_-.@".utf8.contains($0) }
        if !ok {
            throw .badRequest(
                "a user name is 1 to 64 letters, digits, '_', '-', '.' or '@', starting with a letter or a digit",
                field: "username")
        }
    }

    /// A password: at least 8 characters, at most 1024 bytes.
    static func validatePassword(_ password: String) throws(ServerError) {
        if password.count < 8 || password.utf8.count > 1024 {
            throw .badRequest("a password has 8 to 1024 characters", field: "password")
        }
    }

    /// Stored form of a password: `scrypt$N$r$p$SALT$HASH` (base64).
    static func hashPassword(_ password: String) throws(ServerError) -> String {
        let salt = try Crypto.randomBytes(16)
        let hash = try Crypto.scrypt(password, salt: salt, n: Crypto.scryptN, r: Crypto.scryptR, p: Crypto.scryptP)
        return "scrypt$\(Crypto.scryptN)$\(Crypto.scryptR)$\(Crypto.scryptP)$"
            + Base64.urlEncode(salt) + "$" + Base64.urlEncode(hash)
    }

    /// Whether `password` matches a stored hash.
    static func verifyPassword(_ password: String, stored: String) -> Bool {
        let parts = stored.split(separator: "$")
        guard parts.count == 6, parts[0] == "scrypt", let n = UInt64(parts[1]), let r = UInt64(parts[2]),
            let p = UInt64(parts[3]), let salt = Base64.decode(parts[4]), let hash = Base64.decode(parts[5]),
            let computed = try? Crypto.scrypt(password, salt: salt, n: n, r: r, p: p)
        else { return false }
        return Crypto.constantTimeEqual(computed, hash)
    }

    /// A hash no password matches, checked for unknown user names so that they take as long as known ones.
    private static let decoyHash: String = (try? hashPassword("decoy password, never used")) ?? ""

    /// Adds a user; a name taken is a 400.
    @discardableResult
    public func addUser(_ username: String, password: String) throws -> User {
        try addUser(username, password: password, connection: nil)
    }

    func addUser(_ username: String, password: String, connection: (any SQLConnection)?) throws -> User {
        try Accounts.validateUsername(username)
        try Accounts.validatePassword(password)
        let hash = try Accounts.hashPassword(password)
        let insert = { (c: any SQLConnection) throws -> User in
            do {
                // A name is taken in any case: `ALICE` beside `alice` is another user who looks like her.
                let rows = try c.query(
                    """
                    INSERT INTO users (username, password_hash, created)
                    SELECT \(.text(username)), \(.text(hash)), \(.int(ServerClock.microseconds()))
                    WHERE NOT EXISTS (SELECT 1 FROM users WHERE lower(username) = lower(\(.text(username))))
                    RETURNING id
                    """)
                guard let row = rows.first else {
                    throw ServerError.badRequest("the user name '\(username)' is taken", field: "username")
                }
                return User(id: row.int(0), name: username)
            } catch let error as StoreError where error.kind == .constraint {
                throw ServerError.badRequest("the user name '\(username)' is taken", field: "username")
            }
        }
        if let connection { return try insert(connection) }
        return try database.withConnection(insert)
    }

    /// Sets a user's password and revokes the user's login tokens, in one transaction: a password is changed
    /// because it may be known to someone else, who may hold a token made with it. Site tokens stay (they are
    /// not made from the password; `token revoke` ends them). Returns how many tokens were revoked.
    @discardableResult
    public func setPassword(_ username: String, password: String) throws -> Int {
        try Accounts.validatePassword(password)
        let hash = try Accounts.hashPassword(password)
        let now = ServerClock.microseconds()
        return try database.withConnection { c in
            try c.transaction {
                let changed = try c.execute(
                    "UPDATE users SET password_hash = \(.text(hash)) WHERE username = \(.text(username))")
                if changed == 0 { throw ServerError.notFound("user '\(username)'") }
                return try c.execute(
                    """
                    UPDATE tokens SET revoked = \(.int(now)) WHERE revoked IS NULL AND kind = 'login'
                    AND owner_id = (SELECT id FROM users WHERE username = \(.text(username)))
                    """)
            }
        }
    }

    /// The outcome of a password check: the user, or how long the failed attempt should be held before the
    /// reply (grows with the recent failures for that name, so guessing is slow; the same for unknown names).
    enum LoginOutcome {
        case success(User)
        case failure(holdSeconds: Double)
        /// The client's address must wait this many seconds before it tries again (429): no password was checked.
        case tooMany(retryAfter: Int)
    }

    /// How long a failed login is held, after `failures` in ten minutes: free for the first three, then 0.5 s
    /// doubling per failure up to 8 s.
    static func hold(failures: Int) -> Double { failures <= 3 ? 0 : min(8.0, 0.5 * Double(1 << min(failures - 4, 8))) }

    /// Checks a password, for a request from `client` (its address). Failures are counted per user name (known
    /// or not) and per client address for ten minutes: the reply to a failure is held as the name's failures
    /// grow (a guesser spread over many addresses is slowed), and an address past three failures may try again
    /// only once its last hold is over, one attempt at a time (`LoginLimiter`: a guesser opening many
    /// connections gets 429 at once, with no scrypt spent), while the name's owner, from another address, can
    /// still log in.
    func checkPassword(_ username: String, _ password: String, client: String, connection c: any SQLConnection)
        throws -> LoginOutcome
    {
        if let wait = limiter.begin(client) { return .tooMany(retryAfter: wait) }
        let outcome = try checkPassword(username, password, connection: c)
        if case .success = outcome { limiter.end(client, failed: false) } else { limiter.end(client, failed: true) }
        return outcome
    }

    /// Checks a password. Failures are counted per user name (known or not) for ten minutes.
    func checkPassword(_ username: String, _ password: String, connection c: any SQLConnection) throws -> LoginOutcome {
        let rows = try c.query("SELECT id, password_hash FROM users WHERE username = \(.text(username))")
        let stored = rows.first?.text(1) ?? Accounts.decoyHash
        let ok = Accounts.verifyPassword(password, stored: stored) && !rows.isEmpty
        let now = ServerClock.microseconds()
        if ok, let row = rows.first {
            try c.execute("DELETE FROM login_failures WHERE username = \(.text(username))")
            return .success(User(id: row.int(0), name: username))
        }
        let window: Int64 = 600_000_000
        let failures = try c.transaction { () throws -> Int in
            let previous = try c.query(
                "SELECT failures, last_failure FROM login_failures WHERE username = \(.text(username))"
            ).first
            let count = (previous.map { now - Int64($0.int(1)) < window ? $0.int(0) : 0 } ?? 0) + 1
            try c.execute("DELETE FROM login_failures WHERE username = \(.text(username))")
            try c.execute(
                "INSERT INTO login_failures (username, failures, last_failure) VALUES (\(.text(username)), \(.of(count)), \(.int(now)))"
            )
            return count
        }
        return .failure(holdSeconds: Accounts.hold(failures: failures))
    }

    // MARK: - Tokens

    /// Issues a token: a JWT whose `jti` is recorded in `tokens`. `seconds` nil means it never expires.
    func issueToken(
        for user: User, kind: String, siteName: String? = nil, seconds: Int64?, connection c: any SQLConnection
    ) throws -> (token: String, expires: Int64?) {
        // Hex: an id is typed on command lines (`token revoke ID`), where a leading '-' would read as an option.
        let id = try Crypto.randomBytes(16).map {
            String($0, radix: 16).count == 1 ? "0" + String($0, radix: 16) : String($0, radix: 16)
        }
        .joined()
        let now = ServerClock.microseconds()
        let expires = seconds.map { now + $0 * 1_000_000 }
        try c.execute(
            "INSERT INTO tokens (id, owner_id, kind, site_name, created, expires) VALUES (\(.text(id)), \(.of(user.id)), \(.text(kind)), \(siteName.map { .text($0) } ?? .null), \(.int(now)), \(expires.map { .int($0) } ?? .null))"
        )
        var claims: [String: JSONValue] = [
            "sub": .string(String(user.id)), "username": .string(user.name), "jti": .string(id),
            "kind": .string(kind), "iat": .int(Int(now / 1_000_000)),
        ]
        if let expires { claims["exp"] = .int(Int(expires / 1_000_000)) }
        let header = Base64.urlEncode(Array(#"{"alg":"HS256","typ":"JWT"}"#.utf8))
        let payload = Base64.urlEncode(Array(JSONValue.object(claims).serialized().utf8))
        let signature = Base64.urlEncode(Crypto.hmacSHA256(key: secret, message: Array("\(header).\(payload)".utf8)))
        return ("\(header).\(payload).\(signature)", expires)
    }

    /// Makes a long-lived token for `username`'s site daemon (`balsam-server token create`).
    /// Makes a site token; also whether the user has a site of that name yet (a token's site registers under
    /// its name on its first push).
    public func createSiteToken(username: String, siteName: String, days: Int?) throws -> (
        id: String, token: String, siteExists: Bool
    ) {
        try database.withConnection { c in
            guard let row = try c.query("SELECT id FROM users WHERE username = \(.text(username))").first else {
                throw ServerError.notFound("user '\(username)'")
            }
            let user = User(id: row.int(0), name: username)
            let issued = try issueToken(
                for: user, kind: "site", siteName: siteName, seconds: days.map { Int64($0) * 86_400 }, connection: c)
            let id = try Accounts.claims(of: issued.token)?["jti"]?.stringValue ?? ""
            let exists = try !c.query(
                "SELECT 1 FROM sites WHERE owner_id = \(.of(user.id)) AND name = \(.text(siteName))"
            ).isEmpty
            return (id, issued.token, exists)
        }
    }

    /// Revokes tokens by id, or every token of a user; returns how many were revoked.
    public func revoke(tokenID: String?, username: String?) throws -> Int {
        try database.withConnection { c in
            let now = ServerClock.microseconds()
            if let tokenID {
                return try c.execute(
                    "UPDATE tokens SET revoked = \(.int(now)) WHERE id = \(.text(tokenID)) AND revoked IS NULL")
            }
            return try c.execute(
                "UPDATE tokens SET revoked = \(.int(now)) WHERE revoked IS NULL AND owner_id = (SELECT id FROM users WHERE username = \(.text(username ?? "")))"
            )
        }
    }

    /// Every token, newest first.
    public func tokens() throws -> [TokenRecord] {
        try database.withConnection { c in
            try c.query(
                """
                SELECT t.id, u.username, t.kind, t.site_name, t.created, t.expires, t.revoked
                FROM tokens t JOIN users u ON u.id = t.owner_id ORDER BY t.created DESC
                """
            ).map { r in
                TokenRecord(
                    id: r.text(0), username: r.text(1), kind: r.text(2), siteName: r.optionalText(3),
                    created: Int64(r.int(4)), expires: r.optionalInt(5).map(Int64.init),
                    revoked: r.optionalInt(6).map(Int64.init))
            }
        }
    }

    /// The claims of a well-formed token whose signature holds; nil otherwise.
    static func claims(of token: String, secret: [UInt8]? = nil) throws -> [String: JSONValue]? {
        let parts = token.split(separator: ".", omittingEmptySubsequences: false)
        guard parts.count == 3, let payload = Base64.decode(parts[1]) else { return nil }
        if let secret {
            guard let signature = Base64.decode(parts[2]) else { return nil }
            let expected = Crypto.hmacSHA256(key: secret, message: Array("\(parts[0]).\(parts[1])".utf8))
            guard Crypto.constantTimeEqual(signature, expected) else { return nil }
        }
        return try? JSONValue.parse(payload).objectValue
    }

    /// The claims of a bearer token whose signature holds, checked without the database: what the server asks
    /// before it reads a request's body (nil for anything else, `Bearer x` among them).
    func signedClaims(_ token: String) -> [String: JSONValue]? {
        guard token.utf8.count < 4096 else { return nil }
        return (try? Accounts.claims(of: token, secret: secret)) ?? nil
    }

    /// The user behind a signed token's claims (`signedClaims`), checked against its expiry and row; nil for any
    /// failure.
    func authenticate(claims: [String: JSONValue], connection c: any SQLConnection) throws -> User? {
        guard let id = claims["jti"]?.stringValue, let sub = claims["sub"]?.stringValue, let userID = Int(sub)
        else { return nil }
        let now = ServerClock.microseconds()
        let rows = try c.query(
            """
            SELECT u.id, u.username, t.kind, t.site_name FROM tokens t JOIN users u ON u.id = t.owner_id
            WHERE t.id = \(.text(id)) AND t.owner_id = \(.of(userID)) AND t.revoked IS NULL AND (t.expires IS NULL OR t.expires > \(.int(now)))
            """)
        return rows.first.map { r in
            User(id: r.int(0), name: r.text(1), siteName: r.text(2) == "site" ? r.optionalText(3) : nil)
        }
    }
}

/// The secret that signs tokens: a file of 32 random bytes (base64), made mode 0600 on first start.
public enum ServerSecret {
    /// Reads the secret at `path`, or creates it. Refuses a file others can read.
    public static func loadOrCreate(_ path: String) throws -> [UInt8] {
        if let st = try Posix.statIfExists(path) {
            if st.st_mode & 0o077 != 0 {
                throw ServerError.internal(
                    "\(path): the token secret is readable by others (mode \(String(st.st_mode & 0o777, radix: 8))); chmod 600 it"
                )
            }
            let text = String(decoding: try Posix.readFile(path, limit: 4096), as: UTF8.self)
            guard let bytes = Base64.decode(text.split(whereSeparator: \.isWhitespace).first ?? ""), bytes.count >= 32
            else {
                throw ServerError.internal("\(path): the token secret must be at least 32 bytes in base64")
            }
            return bytes
        }
        try Posix.makeDirectories(Posix.parentPath(path))
        let bytes = try Crypto.randomBytes(32)
        try Posix.createFile(path, Array((Base64.urlEncode(bytes) + "\n").utf8), sync: true, mode: 0o600)
        return bytes
    }
}

/// Failed logins per client address, for ten minutes, in memory (each server process keeps its own; at most
/// `capacity` addresses, the oldest forgotten first). An address with three failures or fewer tries freely; past
/// that it may try once its last failure's hold (`Accounts.hold`) is over and none of its attempts is in
/// progress: what a client that waits for each answer never notices, and what stops one that sends many at once.
final class LoginLimiter: Sendable {
    struct Entry {
        var failures = 0
        var inFlight = 0
        var last = ContinuousClock.now
    }

    static let window: Duration = .seconds(600)
    let capacity: Int
    private let entries = Mutex([String: Entry]())

    init(capacity: Int = 65_536) { self.capacity = capacity }

    /// nil: `client` may try now (counted as in progress until `end`); else the seconds it must wait.
    func begin(_ client: String) -> Int? {
        let now = ContinuousClock.now
        return entries.withLock { table -> Int? in
            var entry = table[client] ?? Entry()
            if now - entry.last > Self.window { entry.failures = 0 }
            if entry.failures + entry.inFlight > 3 {
                let ready =
                    entry.last + .milliseconds(Int64(saturating: Accounts.hold(failures: entry.failures) * 1000))
                if entry.inFlight > 0 || now < ready {
                    return max(1, Int((ready - now).components.seconds) + 1)
                }
            }
            entry.inFlight += 1
            if table[client] == nil && table.count >= capacity {
                // Forget the addresses whose failures have aged out, else the oldest half.
                table = table.filter { now - $0.value.last <= Self.window || $0.value.inFlight > 0 }
                if table.count >= capacity {
                    let kept = table.sorted { $0.value.last > $1.value.last }.prefix(capacity / 2)
                    table = Dictionary(uniqueKeysWithValues: kept.map { ($0.key, $0.value) })
                }
            }
            table[client] = entry
            return nil
        }
    }

    /// The attempt `begin` let through ended: a failure counts, a success forgets the address.
    func end(_ client: String, failed: Bool) {
        entries.withLock { table in
            guard var entry = table[client] else { return }
            entry.inFlight = max(0, entry.inFlight - 1)
            if failed {
                entry.failures += 1
                entry.last = .now
                table[client] = entry
            } else if entry.inFlight == 0 {
                table[client] = nil
            } else {
                entry.failures = 0
                table[client] = entry
            }
        }
    }
}
