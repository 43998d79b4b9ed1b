import HTTPTypes
import Hummingbird
import Logging
import NIOCore
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

    var dialect: SQLDialect { connection.dialect }

    /// The body as JSON; a malformed one is a 400 that says where.
    func json() throws(ServerError) -> JSONValue {
        if body.isEmpty { throw .badRequest("the request needs a JSON body") }
        do { return try JSONValue.parse(body) } catch { throw .badRequest("malformed JSON body: \(error)") }
    }

    /// The body as a JSON list of at most `limits.bulkItems` items.
    func jsonList() throws(ServerError) -> [JSONValue] {
        guard case .array(let items) = try json() else { throw .badRequest("the body must be a JSON list") }
        if items.count > limits.bulkItems {
            throw .badRequest(
                "a bulk request holds at most \(limits.bulkItems) items, not \(items.count): send several requests")
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

    /// An HTML page.
    static func html(_ text: String, status: Int = 200) -> Reply {
        Reply(status: status, body: Array(text.utf8), contentType: "text/html; charset=utf-8")
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
    /// Most items in one bulk request (the original's `MAX_ITEMS_PER_BULK_OP`).
    public var bulkItems = 5000
    /// Whether anyone may register a user through the API.
    public var openRegistration = true

    /// The defaults.
    public init() {}
}

/// The routes' shared plumbing: authentication, the move to a database thread, errors as JSON, the request log.
struct Endpoints: Sendable {
    let database: Database
    let accounts: Accounts
    let limits: ServerLimits
    let logger: Logger

    typealias Handler = @Sendable (inout Call) throws -> Reply

    /// Serves one request: reads the body, then on a database thread authenticates the bearer token (unless
    /// `authenticated` is false) and runs `handler`.
    func serve(
        _ request: Request, _ context: some RequestContext, route: String, authenticated: Bool = true,
        hasID: Bool = false, page: Bool = false, siteTokens: Bool = false, _ handler: @escaping Handler
    ) async -> Response {
        let start = ContinuousClock.now
        var reply: Reply
        var userName = "-"
        do {
            // No token, no body read: an anonymous client cannot make the server buffer megabytes.
            // A page (the dashboard) authenticates with its cookie, and sends a stranger to its login page.
            // A token whose signature fails (`Bearer x`) is refused here too, before the body: only the
            // server's own tokens, of users it can revoke, get a body read.
            let token = page ? Dashboard.cookieToken(request.headers[.cookie]) : bearerToken(request)
            let claims = token.flatMap(accounts.signedClaims)
            if authenticated && claims == nil { throw ServerError.unauthorized }
            let body = try await readBody(request, upTo: authenticated ? limits.bodyBytes : limits.anonymousBodyBytes)
            var id: Int?
            if hasID {
                guard let text = context.parameters.get("id"), let value = Int(text) else {
                    throw ServerError.notFound("object")
                }
                id = value
            }
            let query = QueryParameters(formPairs(request.uri.query ?? ""))
            let accounts = accounts
            let limits = limits
            let routeID = id
            let (answer, user) = try await database.run { connection -> (Reply, String) in
                var user = User(id: 0, name: "-")
                if authenticated {
                    guard let claims, let found = try accounts.authenticate(claims: claims, connection: connection)
                    else { throw ServerError.unauthorized }
                    // A site token lives on a shared login node for months: it may sync its own site and nothing
                    // else (not rename it, make apps or jobs elsewhere, delete sites, read other sites).
                    if let site = found.siteName, !siteTokens {
                        throw ServerError(
                            status: 403,
                            "this is site '\(site)''s token: it may only sync that site (POST /sync/push); log in "
                                + "with a password for the rest of the API")
                    }
                    user = found
                }
                var call = Call(
                    user: user, connection: connection, query: query, body: body, limits: limits, id: routeID)
                return (try handler(&call), user.name)
            }
            reply = answer
            userName = user
        } catch let error as ServerError where page && error.status == 401 {
            reply = .redirect(Dashboard.loginPath)
        } catch let error as ServerError {
            reply = Endpoints.errorReply(error)
        } catch let error as WireError {
            reply = Endpoints.errorReply(ServerError(error))
        } catch let error as StoreError where error.kind == .constraint {
            reply = Endpoints.errorReply(.badRequest("refused by the database: \(error.message)"))
        } catch let error as StoreError where error.kind == .full {
            logger.error("database full", metadata: ["route": "\(route)", "error": "\(error)"])
            reply = Endpoints.errorReply(
                ServerError(status: 503, "the server's disk is full: nothing can be stored until space is made"))
        } catch let error as StoreError where error.kind == .unavailable {
            logger.error("database unavailable", metadata: ["route": "\(route)", "error": "\(error)"])
            reply = Endpoints.errorReply(
                ServerError(status: 503, "the server's database cannot be reached; try again shortly"))
        } catch {
            logger.error("request failed", metadata: ["route": "\(route)", "error": "\(error)"])
            reply = Endpoints.errorReply(.internal("the server could not complete the request; see its log"))
        }
        if reply.hold > 0 { try? await Task.sleep(for: .seconds(reply.hold)) }
        let elapsed = ContinuousClock.now - start
        let ms = Double(elapsed.components.attoseconds) / 1e15 + Double(elapsed.components.seconds) * 1000
        logger.info(
            "request",
            metadata: [
                "method": "\(request.method)", "route": "\(route)", "status": "\(reply.status)",
                "user": "\(userName)", "ms": "\(Double(Int(ms * 10)) / 10)",
            ])
        var headers = HTTPFields()
        if reply.body != nil { headers[.contentType] = reply.contentType }
        for (name, value) in reply.headers {
            if let field = HTTPField.Name(name) { headers.append(HTTPField(name: field, value: value)) }
        }
        if reply.status == 401 { headers[.wwwAuthenticate] = "Bearer" }
        let status = HTTPResponse.Status(code: reply.status)
        guard let bytes = reply.body else { return Response(status: status, headers: headers) }
        return Response(status: status, headers: headers, body: ResponseBody(byteBuffer: ByteBuffer(bytes: bytes)))
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
                for try await buffer in body {
                    if bytes.count + buffer.readableBytes > limit { throw tooLarge }
                    bytes += buffer.readableBytesView
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

    static func errorReply(_ error: ServerError) -> Reply {
        var object: [String: JSONValue] = ["detail": .string(error.message)]
        if let field = error.field { object["field"] = .string(field) }
        return .json(.object(object), status: error.status)
    }

    private func bearerToken(_ request: Request) -> String? {
        guard let header = request.headers[.authorization] else { return nil }
        let parts = header.split(separator: " ", maxSplits: 1)
        guard parts.count == 2, parts[0].lowercased() == "bearer" else { return nil }
        return String(parts[1])
    }
}

/// Decodes `application/x-www-form-urlencoded` text (query strings and login forms): `+` is a space, `%XX` a
/// byte; pairs in order, keys repeated as given.
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
