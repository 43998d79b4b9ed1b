import Hummingbird
import Spool
import Synchronization

/// What a request carries through the middleware to its route: Hummingbird's core context, the caller's token
/// claims (their signature checked by `TokenMiddleware`, before any body is read; the user behind them is found
/// in the route's one database hop), and who the caller turned out to be, for the request log.
struct BalsamRequestContext: RequestContext {
    var coreContext: CoreRequestContextStorage
    /// The claims of the caller's token, whose signature holds; nil on a route that needs none.
    var claims: [String: JSONValue]?
    /// Set by the route once the user is known; read by `RequestLogMiddleware`.
    let caller = Caller()
    /// The client's address (failed logins are counted by it).
    let client: String

    init(source: Source) {
        coreContext = .init(source: source)
        client = source.channel.remoteAddress?.ipAddress ?? "-"
    }
}

/// The name of the user a request turned out to be from (`-` until known).
final class Caller: Sendable {
    private let value = Mutex("-")
    var name: String {
        get { value.withLock { $0 } }
        set { value.withLock { $0 = newValue } }
    }
}
