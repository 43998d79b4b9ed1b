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
    /// News for held site pushes.
    let news = SiteNews()
    /// What `/metrics` says.
    let metrics = ServerMetrics()

    /// A server over `database`, signing tokens with `secret`.
    public init(database: Database, secret: [UInt8], limits: ServerLimits = ServerLimits(), logger: Logger) {
        self.database = database
        self.accounts = Accounts(database: database, secret: secret)
        self.limits = limits
        self.logger = logger
    }

    /// Sets how long a password login's token lasts.
    public mutating func setLoginTokenHours(_ hours: Double) {
        accounts.loginTokenSeconds = max(1, Int64(saturating: hours * 3600))
    }

    /// The router: the request log around everything; the API's resources as route collections behind the
    /// bearer-token middleware; the dashboard's pages behind the cookie one; login, registration and the OpenAPI
    /// document open to all.
    func router() -> Router<BalsamRequestContext> {
        let router = Router(context: BalsamRequestContext.self)
        router.add(middleware: RequestLogMiddleware(logger: logger, metrics: metrics))
        let e = Endpoints(
            database: database, accounts: accounts, limits: limits, logger: logger, news: news, metrics: metrics)
        router.get("healthz") { [database, limits, logger] _, _ in
            await Health.check(database, within: limits.healthSeconds, logger: logger)
        }
        router.addRoutes(AuthRoutes.anonymous(e), atPath: "/auth")
        router.addRoutes(Dashboard.anonymous(e), atPath: "/dashboard")
        router.get("openapi.json") { _, _ in
            Response(
                status: .ok, headers: [.contentType: "application/json"],
                body: ResponseBody(byteBuffer: ByteBuffer(bytes: OpenAPI.document)))
        }
        router.group("dashboard").add(middleware: TokenMiddleware(accounts: accounts, page: true))
            .addRoutes(Dashboard.pages(e))
        router.group().add(middleware: TokenMiddleware(accounts: accounts))
            .addRoutes(AuthRoutes.authenticated(e), atPath: "/auth")
            .addRoutes(Sites.routes(e), atPath: "/sites")
            .addRoutes(Apps.routes(e), atPath: "/apps")
            .addRoutes(Jobs.routes(e), atPath: "/jobs")
            .addRoutes(BatchJobs.routes(e), atPath: "/batch-jobs")
            .addRoutes(Events.routes(e), atPath: "/events")
            .addRoutes(Transfers.routes(e), atPath: "/transfers")
            .addRoutes(ReportRoutes.routes(e), atPath: "/reports")
            .addRoutes(SyncRoutes.routes(e), atPath: "/sync")
        return router
    }

    /// Descriptors kept for everything but connections: the database's, the log's, files a request opens.
    static let reservedDescriptors = 256

    /// The connection cap within this process's open-file limit (raised to its hard limit first): a cap above
    /// what the process may open would let connections take the descriptors the database needs.
    func connectionCap() -> Int {
        let files = Posix.raiseOpenFileLimit()
        let cap = min(limits.maxConnections, max(16, files.soft - Self.reservedDescriptors))
        logger.info(
            "open files and connections",
            metadata: [
                "open_files_soft": "\(files.soft)", "open_files_hard": "\(files.hard)",
                "max_connections": "\(cap)", "asked_max_connections": "\(limits.maxConnections)",
            ])
        if cap < limits.maxConnections {
            logger.warning(
                "the connection cap is lowered to fit the open-file limit; raise the hard limit (LimitNOFILE=, ulimit -Hn)",
                metadata: ["max_connections": "\(cap)", "open_files": "\(files.soft)"])
        }
        return cap
    }

    /// The application listening on `host:port` (port 0: any free port). `onListening` gets the bound port.
    public func application(
        host: String, port: Int, onListening: @escaping @Sendable (Int) async -> Void = { _ in }
    ) -> some ApplicationProtocol {
        let cap = connectionCap()
        let table = ConnectionTable(cap: cap, perClient: limits.maxConnectionsPerClient, logger: logger)
        metrics.attach(.init(connections: table, cap: cap, news: news, database: database))
        return Application(
            router: router(),
            server: .http1(
                configuration: .init(
                    additionalChannelHandlers: [ConnectionGuard(table: table)],
                    idleTimeout: .seconds(Int64(limits.idleTimeoutSeconds)))),
            configuration: ApplicationConfiguration(
                address: .hostname(host, port: port), serverName: "balsam-server",
                availableConnectionsDelegate: ConnectionCap(cap, logger: logger)),
            onServerRunning: { channel in await onListening(channel.localAddress?.port ?? port) },
            logger: logger)
    }
}

extension BalsamServer {
    /// The operators' listener (`serve --metrics-listen`): `GET /metrics` in Prometheus's text format and
    /// `GET /healthz`, nothing else, on an address of its own that the public proxy does not forward.
    public func metricsApplication(
        host: String, port: Int, onListening: @escaping @Sendable (Int) async -> Void = { _ in }
    ) -> some ApplicationProtocol {
        let router = Router(context: BasicRequestContext.self)
        router.get("metrics") { [metrics] _, _ in
            Response(
                status: .ok, headers: [.contentType: "text/plain; version=0.0.4; charset=utf-8"],
                body: ResponseBody(byteBuffer: ByteBuffer(string: metrics.render())))
        }
        router.get("healthz") { [database, limits, logger] _, _ in
            await Health.check(database, within: limits.healthSeconds, logger: logger)
        }
        return Application(
            router: router,
            configuration: ApplicationConfiguration(
                address: .hostname(host, port: port), serverName: "balsam-server-metrics"),
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
