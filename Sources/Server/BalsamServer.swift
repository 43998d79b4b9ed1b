import Hummingbird
import HummingbirdCore
import Logging
import NIOCore
import Spool
import Wire

/// The REST control plane: the original Balsam API on Hummingbird, over one database.
///
/// `application()` gives a Hummingbird `Application`, which is a swift-service-lifecycle `Service`: run it in a
/// `ServiceGroup` (or with `runService()`) and SIGTERM or SIGINT stop it gracefully, letting requests finish.
public struct BalsamServer: Sendable {
    /// The database.
    public let database: Database
    /// Users and tokens.
    public private(set) var accounts: Accounts
    /// Request limits.
    public let limits: ServerLimits
    let logger: Logger

    /// A server over `database`, signing tokens with `secret`.
    public init(database: Database, secret: [UInt8], limits: ServerLimits = ServerLimits(), logger: Logger) {
        self.database = database
        self.accounts = Accounts(database: database, secret: secret)
        self.limits = limits
        self.logger = logger
    }

    /// Sets how long a password login's token lasts.
    public mutating func setLoginTokenHours(_ hours: Double) {
        accounts.loginTokenSeconds = max(1, Int64(hours * 3600))
    }

    /// The router with every route.
    func router() -> Router<BasicRequestContext> {
        let router = Router()
        let e = Endpoints(database: database, accounts: accounts, limits: limits, logger: logger)
        let accounts = accounts

        func route(
            _ method: HTTPRequest.Method, _ path: RouterPath, _ name: String, authenticated: Bool = true,
            siteTokens: Bool = false, _ handler: @escaping Endpoints.Handler
        ) {
            let hasID = name.contains("{id}")
            router.on(path, method: method) { request, context in
                await e.serve(
                    request, context, route: name, authenticated: authenticated, hasID: hasID, siteTokens: siteTokens,
                    handler)
            }
        }

        route(.get, "auth/how", "/auth/how", authenticated: false, AuthRoutes.how)
        route(
            .post, "auth/password/register", "/auth/password/register", authenticated: false,
            AuthRoutes.register(accounts))
        route(.post, "auth/password/login", "/auth/password/login", authenticated: false, AuthRoutes.login(accounts))
        route(.get, "auth/password/me", "/auth/password/me", siteTokens: true, AuthRoutes.me)

        route(.get, "sites", "/sites/", Sites.list)
        route(.post, "sites", "/sites/", Sites.create)
        route(.get, "sites/{id}", "/sites/{id}", Sites.one)
        route(.put, "sites/{id}", "/sites/{id}", Sites.update)
        route(.delete, "sites/{id}", "/sites/{id}", Sites.delete)

        route(.get, "apps", "/apps/", Apps.list)
        route(.post, "apps", "/apps/", Apps.create)
        route(.get, "apps/{id}", "/apps/{id}", Apps.one)
        route(.put, "apps/{id}", "/apps/{id}", Apps.update)
        route(.delete, "apps/{id}", "/apps/{id}", Apps.delete)

        route(.get, "jobs", "/jobs/", Jobs.list)
        route(.post, "jobs", "/jobs/", Jobs.create)
        route(.patch, "jobs", "/jobs/", Jobs.bulkUpdate)
        route(.put, "jobs", "/jobs/", Jobs.queryUpdate)
        route(.delete, "jobs", "/jobs/", Jobs.queryDelete)
        route(.get, "jobs/{id}", "/jobs/{id}", Jobs.one)
        route(.put, "jobs/{id}", "/jobs/{id}", Jobs.update)
        route(.delete, "jobs/{id}", "/jobs/{id}", Jobs.delete)

        route(.get, "batch-jobs", "/batch-jobs/", BatchJobs.list)
        route(.post, "batch-jobs", "/batch-jobs/", BatchJobs.create)
        route(.patch, "batch-jobs", "/batch-jobs/", BatchJobs.bulkUpdate)
        route(.get, "batch-jobs/{id}", "/batch-jobs/{id}", BatchJobs.one)
        route(.put, "batch-jobs/{id}", "/batch-jobs/{id}", BatchJobs.update)
        route(.delete, "batch-jobs/{id}", "/batch-jobs/{id}", BatchJobs.delete)

        route(.get, "events", "/events/", Events.list)

        route(.get, "reports/throughput", "/reports/throughput", ReportRoutes.throughput)
        route(.get, "reports/utilization", "/reports/utilization", ReportRoutes.utilization)
        route(.get, "reports/failures", "/reports/failures", ReportRoutes.failures)

        router.on("dashboard", method: .get) { request, context in
            await e.serve(request, context, route: "/dashboard", page: true, Dashboard.dashboard)
        }
        router.on("dashboard/login", method: .get) { request, context in
            await e.serve(request, context, route: "/dashboard/login", authenticated: false, Dashboard.loginPage)
        }
        router.on("dashboard/login", method: .post) { request, context in
            await e.serve(
                request, context, route: "/dashboard/login", authenticated: false, Dashboard.login(accounts))
        }
        router.on("dashboard/logout", method: .post) { request, context in
            await e.serve(request, context, route: "/dashboard/logout", page: true, Dashboard.logout)
        }

        route(.post, "sync/push", "/sync/push", siteTokens: true, SyncRoutes.push)

        route(.get, "transfers", "/transfers/", Transfers.list)
        route(.patch, "transfers", "/transfers/", Transfers.bulkUpdate)
        route(.get, "transfers/{id}", "/transfers/{id}", Transfers.one)
        route(.put, "transfers/{id}", "/transfers/{id}", Transfers.update)

        router.get("openapi.json") { _, _ in
            Response(
                status: .ok, headers: [.contentType: "application/json"],
                body: ResponseBody(byteBuffer: ByteBuffer(bytes: OpenAPI.document)))
        }
        return router
    }

    /// The application listening on `host:port` (port 0: any free port). `onListening` gets the bound port.
    public func application(
        host: String, port: Int, onListening: @escaping @Sendable (Int) async -> Void = { _ in }
    ) -> Application<RouterResponder<BasicRequestContext>> {
        Application(
            router: router(),
            server: .http1(configuration: .init(idleTimeout: .seconds(Int64(limits.idleTimeoutSeconds)))),
            configuration: ApplicationConfiguration(
                address: .hostname(host, port: port), serverName: "balsam-server",
                availableConnectionsDelegate: ConnectionCap(limits.maxConnections, logger: logger)),
            onServerRunning: { channel in await onListening(channel.localAddress?.port ?? port) },
            logger: logger)
    }
}

/// At most `limit` connections open at once: past it, the server stops accepting (new connections wait in the
/// kernel's backlog) and says so in its log, once each time the cap is reached, instead of running out of file
/// descriptors for its database and files. HummingbirdCore's `MaximumAvailableConnections` counts the same way
/// but logs only at trace level, where an operator never looks.
struct ConnectionCap: AvailableConnectionsDelegate {
    let limit: Int
    let logger: Logger
    var open = 0

    init(_ limit: Int, logger: Logger) {
        self.limit = limit
        self.logger = logger
    }

    mutating func connectionOpened() {
        open += 1
        if open == limit {
            logger.warning(
                "connection cap reached: new connections wait until one closes",
                metadata: ["connections": "\(open)", "max_connections": "\(limit)"])
        }
    }

    mutating func connectionClosed() { open -= 1 }

    func isAcceptingNewConnections() -> Bool { open < limit }
}
