import Hummingbird
import Spool
import Wire

/// `/auth/...`: the password flow the original client uses.
enum AuthRoutes {
    /// `GET /auth/how`: the login methods offered, spelt as the original server spells them.
    static func how(_ call: inout Call) throws -> Reply {
        .json(.array([.string("LoginMethod.password")]))
    }

    /// `POST /auth/password/register` `{username, password}` → 201 `{id, username}`.
    static func register(_ accounts: Accounts) -> Endpoints.Handler {
        { call in
            guard call.limits.openRegistration else {
                throw ServerError(
                    status: 403, "registration is closed on this server; ask its operator (balsam-server user add)")
            }
            var input = try FieldReader(try call.json())
            let username = try input.requiredString("username", maxBytes: 64)
            let password = try input.requiredString("password", maxBytes: 1024)
            try input.finish()
            let user = try accounts.addUser(username, password: password, connection: call.connection)
            return .json(.object(["id": .int(user.id), "username": .string(user.name)]), status: 201)
        }
    }

    /// `POST /auth/password/login`, a form (`username`, `password`) → `{access_token, token_type, expiration}`.
    /// A wrong name and a wrong password get the same answer, after the same time, held longer as failures grow.
    static func login(_ accounts: Accounts) -> Endpoints.Handler {
        { call in
            var pairs: [(String, String)] = formPairs(String(decoding: call.body, as: UTF8.self))
            // A JSON body is accepted too (scripts), though the original client sends a form.
            if call.body.first == UInt8(ascii: "{"), let object = (try? JSONValue.parse(call.body))?.objectValue {
                pairs = object.compactMap { key, value in value.stringValue.map { (key, $0) } }
            }
            let fields = Dictionary(pairs, uniquingKeysWith: { first, _ in first })
            guard let username = fields["username"], let password = fields["password"] else {
                throw ServerError.badRequest("the login form needs username and password")
            }
            switch try accounts.checkPassword(username, password, client: call.client, connection: call.connection) {
            case .tooMany(let wait): return .tooManyLogins(retryAfter: wait)
            case .failure(let hold):
                var reply = Reply.error(ServerError(status: 401, "incorrect user name or password"))
                reply.hold = hold
                return reply
            case .success(let user):
                let issued = try accounts.issueToken(
                    for: user, kind: "login", seconds: accounts.loginTokenSeconds, connection: call.connection)
                var out = JSONWriter()
                out.beginObject()
                out.field("access_token", issued.token)
                out.field("token_type", "bearer")
                out.field("expiration", issued.expires.map { ServerClock.iso($0) })
                out.endObject()
                return .json(out)
            }
        }
    }

    /// `GET /auth/password/me`: who the token belongs to.
    static func me(_ call: inout Call) throws -> Reply {
        .json(.object(["id": .int(call.user.id), "username": .string(call.user.name)]))
    }
}

extension AuthRoutes {
    /// `/auth/` routes open to all: how to log in, registration, login.
    static func anonymous(_ e: Endpoints) -> RouteCollection<BalsamRequestContext> {
        RouteCollection(
            e,
            [
                (.get, "/how", how), (.post, "/password/register", register(e.accounts)),
                (.post, "/password/login", login(e.accounts)),
            ])
    }

    /// `/auth/password/me`, which a site's token may call too.
    static func authenticated(_ e: Endpoints) -> RouteCollection<BalsamRequestContext> {
        RouteCollection(e, [(.get, "/password/me", me)], siteTokens: true)
    }
}
