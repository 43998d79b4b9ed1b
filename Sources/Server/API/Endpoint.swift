import HTTPTypes
import Hummingbird
import Logging
import NIOCore
import ServiceLifecycle
import Spool
import Wire

/// What a route handler gets: the user (for authenticated routes), a database connection on a worker thread,
/// the query string and the body.
struct Call {
    let user: User
    let connection: any SQLConnection
    var query: QueryParameters
    let body: [UInt8]
    let limits: ServerLimits
    /// The route's `{id}`, when it has one.
    let id: Int?
    /// The client's address.
    var client = "-"
    /// News for sites (`SiteNews`), and whether this call may be held for it (not when it is run again after).
    var news: SiteNews? = nil
    var mayHold = false
    /// What `/metrics` counts (pushes and events).
    var metrics: ServerMetrics? = nil

    var dialect: SQLDialect { connection.dialect }

    /// The body as JSON; a malformed one is a 400 that says where.
    func json() throws(ServerError) -> JSONValue {
        if body.isEmpty { throw .badRequest("the request needs a JSON body") }
        do { return try JSONValue.parse(body) } catch { throw .badRequest("malformed JSON body: \(error)") }
    }

    /// The body as a JSON list of at most `limits.bulkItems` items, counted before any is built (a tree of the
    /// whole body costs many times its size: `JSONMembers`).
    func jsonList() throws(ServerError) -> [JSONValue] {
        if body.isEmpty { throw .badRequest("the request needs a JSON body") }
        let reading: JSONMembers.Reading
        do { reading = try JSONMembers.list(body, max: limits.bulkItems) } catch {
            throw .badRequest("malformed JSON body: \(error)")
        }
        guard case .items(let ranges) = reading else {
            if case .tooMany = reading {
                throw .badRequest("a bulk request holds at most \(limits.bulkItems) items: send several requests")
            }
            throw .badRequest("the body must be a JSON list")
        }
        var items: [JSONValue] = []
        items.reserveCapacity(ranges.count)
        for range in ranges {
            do { items.append(try JSONMembers.value(body, at: range)) } catch {
                throw .badRequest("malformed JSON body: \(error)")
            }
        }
        return items
    }

    /// The route's id, which the router guarantees for `{id}` routes.
    func requiredID() throws(ServerError) -> Int {
        guard let id else { throw .notFound("object") }
        return id
    }
}

/// What a handler answers.
struct Reply {
    var status: Int
    var body: [UInt8]?
    /// Seconds to hold the reply (failed logins).
    var hold: Double = 0
    /// The body's type (the dashboard's pages are HTML).
    var contentType = "application/json"
    /// More response headers (the dashboard's cookie and redirects).
    var headers: [(String, String)] = []
    /// Hold the reply until news for the site past the mark, at most the seconds; on news the handler is run
    /// again and its reply sent (a site's idle push: `SyncRoutes.push`).
    var holdForNews: (owner: Int, site: Int, mark: SiteNews.Mark, seconds: Double)?
    /// The sites a user's change is news for (nil: every site of the user, when the handler does not say).
    var newsFor: Set<Int>?

    /// What every HTML page says of itself: no script, no frame around it, styles and charts of its own only,
    /// forms posted back here. A value a user stored that reached a page unescaped would still run nothing.
    static let pageHeaders = [
        (
            "Content-Security-Policy",
            "default-src 'none'; style-src 'unsafe-inline'; img-src 'self' data:; form-action 'self'; "
                + "frame-ancestors 'none'; base-uri 'none'"
        ),
        ("X-Frame-Options", "DENY"), ("X-Content-Type-Options", "nosniff"), ("Referrer-Policy", "no-referrer"),
    ]

    /// An HTML page.
    static func html(_ text: String, status: Int = 200) -> Reply {
        Reply(status: status, body: Array(text.utf8), contentType: "text/html; charset=utf-8", headers: pageHeaders)
    }

    /// 303 to `location`, with more headers.
    static func redirect(_ location: String, _ headers: [(String, String)] = []) -> Reply {
        Reply(status: 303, body: nil, headers: [("Location", location)] + headers)
    }

    static func json(_ writer: JSONWriter, status: Int = 200) -> Reply { Reply(status: status, body: writer.bytes) }
    static func json(_ value: JSONValue, status: Int = 200) -> Reply {
        var bytes: [UInt8] = []
        value.write(to: &bytes)
        return Reply(status: status, body: bytes)
    }
    /// 204: no body at all (the original client's connection breaks on a 204 with one).
    static let noContent = Reply(status: 204, body: nil)

    /// An error's reply: `{"detail", "field"}`.
    static func error(_ error: ServerError) -> Reply {
        var object: [String: JSONValue] = ["detail": .string(error.message)]
        if let field = error.field { object["field"] = .string(field) }
        return .json(.object(object), status: error.code)
    }

    /// 429 for a client address past its failed logins (`LoginLimiter`), with `Retry-After`.
    static func tooManyLogins(retryAfter seconds: Int) -> Reply {
        var reply = Reply.error(
            ServerError(
                status: 429, "too many failed logins from this address: try again in \(seconds) s"))
        reply.headers.append(("Retry-After", String(seconds)))
        return reply
    }

    /// As Hummingbird sends it.
    var response: Response {
        var fields = HTTPFields()
        if body != nil { fields[.contentType] = contentType }
        for (name, value) in headers {
            if let field = HTTPField.Name(name) { fields.append(HTTPField(name: field, value: value)) }
        }
        if status == 401 { fields[.wwwAuthenticate] = "Bearer" }
        let code = HTTPResponse.Status(code: status)
        guard let body else { return Response(status: code, headers: fields) }
        return Response(status: code, headers: fields, body: ResponseBody(byteBuffer: ByteBuffer(bytes: body)))
    }
}

/// Request and body limits (documented in balsam-server(8)).
public struct ServerLimits: Sendable {
    /// Largest request body.
    public var bodyBytes = 64 << 20
    /// Largest body of a route that needs no token (login, register): a login form is a few hundred bytes, and
    /// an anonymous client must not make the server buffer megabytes.
    public var anonymousBodyBytes = 64 << 10
    /// Seconds a connection may sit idle (a request's head half sent, nothing between requests, or no byte of a
    /// body arriving) before it is closed.
    public var idleTimeoutSeconds = 60
    /// A whole body must arrive within this many idle timeouts (408 after): a client that sends a byte now and
    /// then must not hold a connection and a buffer for ever, and 64 MiB on a slow link still fits (5 minutes).
    public var bodySecondsPerIdleTimeout = 5
    /// Most connections open at once; past it, new ones wait in the kernel's backlog (and the log says so).
    public var maxConnections = 2048
    /// Most connections open at once from one client address (behind a proxy on the same host, every client
    /// is the proxy's address: raise it to `maxConnections` and cap clients in the proxy).
    public var maxConnectionsPerClient = 256
    /// Proxies whose `X-Real-IP` header names the client (failed logins are counted by client address).
    public var trustedProxies: Set<String> = []
    /// Most items in one bulk request (the original's `MAX_ITEMS_PER_BULK_OP`).
    public var bulkItems = 5000
    /// Longest `GET /healthz` waits for the database before it answers 503.
    public var healthSeconds = 2.0
    /// Whether anyone may register a user through the API.
    public var openRegistration = true

    /// The defaults.
    public init() {}
}

/// What every route does between the middleware and its handler: the body read (within its limits), the `{id}`
/// and the query string parsed, and one hop to a database thread that finds the caller's user (from the claims
/// `TokenMiddleware` checked) and runs the handler. A failure is thrown as the `ServerError` it answers.
struct Endpoints: Sendable {
    let database: Database
    let accounts: Accounts
    let limits: ServerLimits
    let logger: Logger
    let news: SiteNews
    let metrics: ServerMetrics

    typealias Handler = @Sendable (inout Call) throws -> Reply

    /// The header a trusted proxy names the client in.
    static let realIP = HTTPField.Name("X-Real-IP")

    /// What a route needs of `serve`.
    struct Options: Sendable {
        /// The path has an `{id}`.
        var hasID = false
        /// A site's token may call it (only `POST /sync/push` and `/auth/password/me`).
        var siteTokens = false
    }

    /// Serves one request with `handler`.
    func serve(
        _ request: Request, _ context: BalsamRequestContext, _ options: Options, _ handler: @escaping Handler
    ) async throws -> Response {
        let route = context.endpointPath ?? request.uri.path
        let reply: Reply
        do {
            // An anonymous route (login, register) takes small bodies only: an anonymous client must not make the
            // server buffer megabytes.
            let claims = context.claims
            let body = try await readBody(request, upTo: claims != nil ? limits.bodyBytes : limits.anonymousBodyBytes)
            var id: Int?
            if options.hasID {
                guard let text = context.parameters.get("id"), let value = Int(text) else {
                    throw ServerError.notFound("object")
                }
                id = value
            }
            let query = QueryParameters(formPairs(request.uri.query ?? ""))
            // Behind a proxy the server trusts, the client is who the proxy says (nginx: X-Real-IP).
            let real = Self.realIP.flatMap { request.headers[$0] } ?? ""
            let client =
                limits.trustedProxies.contains(context.client) && !real.isEmpty && real.utf8.count <= 64
                ? real : context.client
            let (accounts, limits, routeID, news, metrics) = (accounts, limits, id, news, metrics)
            var mayHold = true
            var answer: Reply
            var user: User
            repeat {
                (answer, user) = try await database.run { [mayHold] connection -> (Reply, User) in
                    var user = User(id: 0, name: "-")
                    if let claims {
                        guard let found = try accounts.authenticate(claims: claims, connection: connection) else {
                            throw ServerError.unauthorized
                        }
                        // A site token lives on a shared login node for months: it may sync its own site and nothing
                        // else (not rename it, make apps or jobs elsewhere, delete sites, read other sites).
                        if let site = found.siteName, !options.siteTokens {
                            throw ServerError(
                                status: 403,
                                "this is site '\(site)''s token: it may only sync that site (POST /sync/push); log in "
                                    + "with a password for the rest of the API")
                        }
                        user = found
                    }
                    var call = Call(
                        user: user, connection: connection, query: query, body: body, limits: limits, id: routeID,
                        client: client, news: news, mayHold: mayHold, metrics: metrics)
                    return (try handler(&call), user)
                }
                guard let hold = answer.holdForNews, mayHold else { break }
                // Held outside the database: a held push costs a suspended task, no connection or thread. On news
                // the handler runs once more (the push is idempotent) and its reply goes; else this one does.
                mayHold = false
                let heard = await withGracefulShutdownHandler {
                    await news.wait(owner: hold.owner, site: hold.site, since: hold.mark, seconds: hold.seconds)
                } onGracefulShutdown: {
                    news.close()
                }
                if !heard { break }
            } while true
            context.caller.name = user.name
            // A user's change through the API is news for the user's sites (a site's own push is not).
            if claims != nil, request.method != .get, !options.siteTokens {
                news.post(owner: user.id, sites: answer.newsFor)
            }
            reply = answer
        } catch {
            throw ServerError.answering(error, route: route, logger: logger)
        }
        if reply.hold > 0 { try? await Task.sleep(for: .seconds(reply.hold)) }
        return reply.response
    }

    /// The request's body, at most `limit` bytes (413 past it, before a byte is read when the request says its
    /// length), arriving within `bodySecondsPerIdleTimeout` idle timeouts (408 after: a client that trickles a
    /// body must not hold a connection and a buffer for ever). A request with neither a length nor a chunked
    /// body has none (RFC 9112, 6.3): nothing is awaited, as for most GETs.
    private func readBody(_ request: Request, upTo limit: Int) async throws -> [UInt8] {
        let tooLarge = ServerError(status: 413, "the request body is larger than \(limit) bytes")
        let length = request.headers[.contentLength]
        if let length, (Int(length) ?? Int.max) > limit { throw tooLarge }
        if length == nil && request.headers[.transferEncoding] == nil || length == "0" { return [] }
        let seconds = limits.bodySecondsPerIdleTimeout * limits.idleTimeoutSeconds
        let body = request.body
        return try await withThrowingTaskGroup(of: [UInt8]?.self) { group in
            group.addTask {
                var bytes: [UInt8] = []
                do {
                    for try await buffer in body {
                        if bytes.count + buffer.readableBytes > limit { throw tooLarge }
                        bytes += buffer.readableBytesView
                    }
                } catch let error as ServerError {
                    throw error
                } catch {
                    // The client's framing (a chunk size of -1, a body cut short): its fault, not the server's.
                    throw ServerError(status: 400, "the request body could not be read: \(error)")
                }
                return bytes
            }
            group.addTask {
                try await Task.sleep(for: .seconds(seconds))
                return nil
            }
            defer { group.cancelAll() }
            guard let first = try await group.next(), let bytes = first else {
                throw ServerError(status: 408, "the request body did not arrive within \(seconds) s")
            }
            return bytes
        }
    }
}

/// Decodes `application/x-www-form-urlencoded` text (query strings and login forms): `+` is a space, `%XX` a
/// byte; pairs in order, keys repeated as given. Not Hummingbird's `URI.queryParameters`: it leaves `+` as it
/// is and keys undecoded, and the original client (Python's `requests`) writes a space in a filter as `+`.
func formPairs(_ text: String) -> [(String, String)] {
    func decode(_ part: Substring) -> String {
        var bytes: [UInt8] = []
        var iterator = Array(part.utf8)[...]
        while let c = iterator.popFirst() {
            if c == UInt8(ascii: "+") {
                bytes.append(0x20)
            } else if c == UInt8(ascii: "%"), iterator.count >= 2,
                let hex = UInt8(String(decoding: iterator.prefix(2), as: UTF8.self), radix: 16)
            {
                bytes.append(hex)
                iterator = iterator.dropFirst(2)
            } else {
                bytes.append(c)
            }
        }
        return String(decoding: bytes, as: UTF8.self)
    }
    return text.split(separator: "&").map { pair in
        if let eq = pair.firstIndex(of: "=") {
            return (decode(pair[..<eq]), decode(pair[pair.index(after: eq)...]))
        }
        return (decode(pair), "")
    }
}
