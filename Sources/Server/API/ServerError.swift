import Wire

/// The one error type of the `Server` library: an HTTP status, a sentence, and the request field it is about.
///
/// Replies carry it as JSON, `{"detail": "...", "field": "..."}`: `detail` is where FastAPI (the original server)
/// put its messages, so the original client prints ours the same way.
public struct ServerError: Error, Sendable, CustomStringConvertible {
    /// The HTTP status of the reply.
    public var status: Int
    /// A sentence saying what is wrong.
    public var message: String
    /// The request field (or query parameter) involved, if any.
    public var field: String?

    /// Makes an error.
    public init(status: Int, _ message: String, field: String? = nil) {
        self.status = status
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

    public var description: String {
        field.map { "\($0): \(message)" } ?? message
    }
}
