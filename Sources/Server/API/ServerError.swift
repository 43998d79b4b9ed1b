import HTTPTypes
import Hummingbird
import Logging
import NIOCore
import Spool
import Wire

/// The one error type of the `Server` library: an HTTP status, a sentence, and the request field it is about.
///
/// It is Hummingbird's `HTTPResponseError`: thrown from a route or a middleware, it becomes the reply, as JSON
/// `{"detail": "...", "field": "..."}`. `detail` is where FastAPI (the original server) put its messages, so the
/// original client prints ours the same way.
public struct ServerError: HTTPResponseError, Sendable, CustomStringConvertible {
    /// The HTTP status code of the reply.
    public var code: Int
    /// A sentence saying what is wrong.
    public var message: String
    /// The request field (or query parameter) involved, if any.
    public var field: String?

    /// Makes an error.
    public init(status: Int, _ message: String, field: String? = nil) {
        self.code = status
        self.message = message
        self.field = field
    }

    /// 400 for a field of the request that is wrong.
    init(_ wire: WireError) { self.init(status: 400, wire.message, field: wire.field) }

    /// 400: the request is wrong; say which field and why.
    static func badRequest(_ message: String, field: String? = nil) -> ServerError {
        ServerError(status: 400, message, field: field)
    }

    /// 404, the same for a missing object and for another user's: ids reveal nothing.
    static func notFound(_ what: String) -> ServerError { ServerError(status: 404, "\(what) not found") }

    /// 401 with one message for every kind of bad credential.
    static let unauthorized = ServerError(status: 401, "not authenticated: a valid bearer token is required")

    /// 500: a failure of the server or its database (logged; the reply does not echo internals).
    static func `internal`(_ message: String) -> ServerError { ServerError(status: 500, message) }

    /// What a route's failure answers: its own error, a wrong field, what the database refused or could not do
    /// (503 while it is full or away), and for anything else a 500 that echoes nothing (logged with `route`).
    static func answering(_ error: any Error, route: String, logger: Logger) -> ServerError {
        switch error {
        case let error as ServerError: return error
        case let error as WireError: return ServerError(error)
        case let error as StoreError where error.kind == .constraint:
            return .badRequest("refused by the database: \(error.message)")
        case let error as StoreError where error.kind == .full:
            logger.error("database full", metadata: ["route": "\(route)", "error": "\(error)"])
            return ServerError(status: 503, "the server's disk is full: nothing can be stored until space is made")
        case let error as StoreError where error.kind == .unavailable:
            logger.error("database unavailable", metadata: ["route": "\(route)", "error": "\(error)"])
            return ServerError(status: 503, "the server's database cannot be reached; try again shortly")
        default:
            logger.error("request failed", metadata: ["route": "\(route)", "error": "\(error)"])
            return .internal("the server could not complete the request; see its log")
        }
    }

    /// The HTTP status of the reply.
    public var status: HTTPResponse.Status { .init(code: code) }

    /// The reply: the JSON body, and `WWW-Authenticate` on a 401.
    public func response(from request: Request, context: some RequestContext) throws -> Response {
        Reply.error(self).response
    }

    public var description: String {
        field.map { "\($0): \(message)" } ?? message
    }
}
