import HTTPTypes
import Hummingbird

extension RouteCollection where Context == BalsamRequestContext {
    /// A resource's routes, each served by `Endpoints.serve` with its handler.
    convenience init(
        _ e: Endpoints, _ routes: [(HTTPRequest.Method, String, Endpoints.Handler)], siteTokens: Bool = false
    ) {
        self.init(context: BalsamRequestContext.self)
        for (method, path, handler) in routes {
            let options = Endpoints.Options(hasID: path.contains("{id}"), siteTokens: siteTokens)
            on(RouterPath(path), method: method) { request, context in
                try await e.serve(request, context, options, handler)
            }
        }
    }
}
