import HTTPTypes
import Hummingbird
import Logging
import Spool

/// One line per request: method, route (as the router matched it: `/jobs/{id}`), status, user and time.
struct RequestLogMiddleware: RouterMiddleware {
    typealias Context = BalsamRequestContext
    let logger: Logger
    let metrics: ServerMetrics

    func handle(
        _ request: Request, context: Context, next: (Request, Context) async throws -> Response
    ) async throws -> Response {
        let start = ContinuousClock.now
        let status: Int
        defer { log(request, context, status: status, since: start) }
        do {
            let response = try await next(request, context)
            status = response.status.code
            return response
        } catch let error as any HTTPResponseError {
            status = error.status.code
            throw error
        } catch {
            status = 500
            throw error
        }
    }

    private func log(_ request: Request, _ context: Context, status: Int, since start: ContinuousClock.Instant) {
        let elapsed = ContinuousClock.now - start
        let ms = Double(elapsed.components.attoseconds) / 1e15 + Double(elapsed.components.seconds) * 1000
        metrics.request(
            route: context.endpointPath, method: request.method.rawValue, status: status, seconds: ms / 1000)
        var metadata: Logger.Metadata = [
            "method": "\(request.method)", "route": "\(context.endpointPath ?? request.uri.path)",
            "status": "\(status)", "user": "\(context.caller.name)",
            "ms": "\(Double(Int(saturating: ms * 10)) / 10)",
        ]
        // Hummingbird's id of the request, which its own log lines about it carry too.
        if let id = context.logger[metadataKey: "hb.request.id"] { metadata["request_id"] = "\(id)" }
        logger.info("request", metadata: metadata)
    }
}

/// Authentication, before any body is read: the request must carry one of the server's own tokens, signed with
/// its secret, as a bearer token (the API) or in the dashboard's cookie (its pages, which send a stranger to the
/// login page instead of answering 401). A token whose signature fails is refused here; whether its user and
/// the token itself still stand is checked in the route's database hop (`Endpoints.serve`).
struct TokenMiddleware: RouterMiddleware {
    typealias Context = BalsamRequestContext
    let accounts: Accounts
    /// Pages: the token is the dashboard's cookie, and a refusal is a redirect to the login page.
    var page = false

    func handle(
        _ request: Request, context: Context, next: (Request, Context) async throws -> Response
    ) async throws -> Response {
        var context = context
        let token = page ? Dashboard.cookieToken(request.headers[.cookie]) : TokenMiddleware.bearer(request)
        guard let claims = token.flatMap(accounts.signedClaims) else {
            if page { return Reply.redirect(Dashboard.loginPath).response }
            throw ServerError.unauthorized
        }
        context.claims = claims
        guard page else { return try await next(request, context) }
        do { return try await next(request, context) } catch let error as ServerError where error.status == 401 {
            return Reply.redirect(Dashboard.loginPath).response
        }
    }

    static func bearer(_ request: Request) -> String? {
        guard let header = request.headers[.authorization] else { return nil }
        let parts = header.split(separator: " ", maxSplits: 1)
        guard parts.count == 2, parts[0].lowercased() == "bearer" else { return nil }
        return String(parts[1])
    }
}
