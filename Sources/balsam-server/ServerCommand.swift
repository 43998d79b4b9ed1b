import ArgumentParser
import BalsamCLI
import Logging
import Server
import ServiceLifecycle
import Spool
import UnixSignals
import Wire

#if canImport(Glibc)
    import Glibc
#endif

@main
struct ServerCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "balsam-server",
        abstract: "The Balsam REST control plane: sites, apps, jobs and batch jobs, for the original Python client.",
        discussion: """
            Serves the original Balsam REST API over SQLite (one file, the default) or PostgreSQL. Without --db, \
            the database is ~/.balsam/server/balsam.db and the token secret ~/.balsam/server/secret (made on \
            first start, mode 0600). See balsam-server(8).
            """,
        version: BalsamVersion.string,
        subcommands: [Serve.self, Migrate.self, Backup.self, UserCommand.self, TokenCommand.self],
        defaultSubcommand: Serve.self)
}

/// Where the database and the secret are, shared by every subcommand.
struct StoreOptions: ParsableArguments {
    @Option(
        name: .long,
        help: ArgumentHelp(
            "The database: sqlite:PATH or postgresql://USER[:PASSWORD]@HOST[:PORT]/DB. Default: $BALSAM_SERVER_DB, else sqlite:~/.balsam/server/balsam.db.",
            valueName: "url"))
    var db: String?

    @Option(
        name: .long,
        help: ArgumentHelp(
            "The file holding the token-signing secret (made, mode 0600, when missing). Default: $BALSAM_SERVER_SECRET_FILE, else secret beside a SQLite database, else ~/.balsam/server/secret.",
            valueName: "file"))
    var secretFile: String?

    static var home: String { getenv("HOME").map { String(cString: $0) } ?? "/tmp" }

    static func environment(_ name: String) -> String? {
        guard let value = getenv(name) else { return nil }
        let text = String(cString: value)
        return text.isEmpty ? nil : text
    }

    func location() throws -> DatabaseLocation {
        let text =
            db ?? StoreOptions.environment("BALSAM_SERVER_DB") ?? "sqlite:\(StoreOptions.home)/.balsam/server/balsam.db"
        let location = try DatabaseLocation(parsing: text)
        if case .sqlite(let path) = location { try Posix.makeDirectories(Posix.parentPath(Posix.absolute(path))) }
        return location
    }

    func secretPath(for location: DatabaseLocation) -> String {
        if let secretFile { return secretFile }
        if let env = StoreOptions.environment("BALSAM_SERVER_SECRET_FILE") { return env }
        if case .sqlite(let path) = location { return Posix.parentPath(Posix.absolute(path)) + "/secret" }
        return "\(StoreOptions.home)/.balsam/server/secret"
    }

    /// Opens the database; SQLite databases are migrated here (one file, one owner).
    func open(threads: Int = 1, migrateSQLite: Bool = true) throws -> Database {
        let location = try location()
        let database = try Database(location, threads: threads)
        if case .sqlite = location, migrateSQLite { try database.migrate() }
        try database.checkSchema()
        return database
    }
}

/// Runs a command body; the server's and the store's errors become one line on stderr and a sysexits status.
func reporting(_ body: () async throws -> Void) async throws {
    do {
        try await body()
    } catch let error as ServerError {
        printError("balsam-server: \(error)")
        throw ExitCode(error.code == 404 ? ExitStatus.noInput : error.code < 500 ? ExitStatus.dataError : 70)
    } catch let error as StoreError {
        printError("balsam-server: \(error)")
        throw ExitCode(error.kind == .unavailable ? ExitStatus.unavailable : ExitStatus.ioError)
    } catch let error as SpoolError {
        printError("balsam-server: \(error)")
        throw ExitCode(ExitStatus.status(for: error.code))
    }
}

struct Serve: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Serve the API until SIGTERM or SIGINT (the default subcommand).")

    @OptionGroup var store: StoreOptions

    @Option(
        name: .long,
        help: ArgumentHelp(
            "The address to listen on; loopback unless told otherwise (put a TLS proxy in front for others).",
            valueName: "host:port"))
    var listen = "127.0.0.1:8080"

    @Option(name: .long, help: ArgumentHelp("Write the port listened on to this file once ready.", valueName: "file"))
    var portFile: String?

    @Option(
        name: .long,
        help: ArgumentHelp(
            "Also serve GET /metrics (Prometheus) and /healthz on this address, for operators only; off by default.",
            valueName: "host:port"))
    var metricsListen: String?

    @Option(
        name: .long,
        help: ArgumentHelp("Write the metrics port to this file once ready.", valueName: "file"))
    var metricsPortFile: String?

    @Option(name: .long, help: "Database worker threads (and connections).")
    var threads = 4

    @Option(
        name: .long,
        help: ArgumentHelp(
            "Whether anyone may register a user through the API: open or closed. Default: open when listening on loopback, else closed.",
            valueName: "open|closed"))
    var registration: String?

    @Option(name: .long, help: "Hours a password login's token lasts (fractions allowed).")
    var tokenHours = 48.0

    @Option(name: .long, help: "Largest bulk request, in items.")
    var maxBulkItems = 5000

    @Option(name: .long, help: "Largest request body, in MiB.")
    var maxBodyMib = 64

    @Option(
        name: .long,
        help: "Seconds a connection may stay idle, or a request's body take to arrive, before it is closed (408).")
    var idleTimeout = 60

    @Option(name: .long, help: "Most connections open at once; more wait until one closes.")
    var maxConnections = 2048

    @Option(
        name: .long,
        help: "Most connections open at once from one client address; more are closed when accepted.")
    var maxConnectionsPerClient = 256

    @Option(
        name: .long,
        help: ArgumentHelp(
            "A proxy's address whose X-Real-IP header names the client (repeatable).", valueName: "address"))
    var trustedProxy: [String] = []

    @Flag(name: [.short, .long], help: "Log at debug level.")
    var verbose = false

    @Flag(name: .long, help: "Do not log each request.")
    var quiet = false

    @Option(name: .long, help: "Log lines as text (the default) or as JSON objects, one per line.")
    var logFormat: LineLogHandler.Format = .text

    func validate() throws {
        guard parseListen() != nil else { throw ValidationError("--listen needs HOST:PORT, not '\(listen)'.") }
        if let metricsListen, Self.hostAndPort(metricsListen) == nil {
            throw ValidationError("--metrics-listen needs HOST:PORT, not '\(metricsListen)'.")
        }
        if metricsPortFile != nil && metricsListen == nil {
            throw ValidationError("--metrics-port-file needs --metrics-listen.")
        }
        if let registration, registration != "open" && registration != "closed" {
            throw ValidationError("--registration is open or closed, not '\(registration)'.")
        }
        if !(1...64).contains(threads) { throw ValidationError("--threads must be between 1 and 64.") }
        if !(0.0001...1_000_000).contains(tokenHours) { throw ValidationError("--token-hours must be positive.") }
        if !(1...100_000).contains(maxBulkItems) { throw ValidationError("--max-bulk-items must be 1 to 100000.") }
        if !(1...4096).contains(maxBodyMib) { throw ValidationError("--max-body-mib must be 1 to 4096.") }
        if !(1...86_400).contains(idleTimeout) { throw ValidationError("--idle-timeout must be 1 to 86400 seconds.") }
        if !(1...1_000_000).contains(maxConnections) {
            throw ValidationError("--max-connections must be 1 to 1000000.")
        }
        if !(1...1_000_000).contains(maxConnectionsPerClient) {
            throw ValidationError("--max-connections-per-client must be 1 to 1000000.")
        }
    }

    func parseListen() -> (String, Int)? { Self.hostAndPort(listen) }

    static func hostAndPort(_ listen: String) -> (String, Int)? {
        guard let colon = listen.lastIndex(of: ":"), let port = Int(listen[listen.index(after: colon)...]),
            (0...65535).contains(port)
        else { return nil }
        var host = String(listen[..<colon])
        if host.hasPrefix("[") && host.hasSuffix("]") { host = String(host.dropFirst().dropLast()) }
        return host.isEmpty ? nil : (host, port)
    }

    func run() async throws {
        try await reporting {
            LineLogHandler.bootstrap(
                program: "balsam-server", level: verbose ? .debug : quiet ? .warning : .info, format: logFormat)
            let logger = Logger(label: "balsam-server")
            guard let (host, port) = parseListen() else { return }
            let database = try store.open(threads: threads)
            let secret = try ServerSecret.loadOrCreate(store.secretPath(for: database.location))
            var limits = ServerLimits()
            limits.bulkItems = maxBulkItems
            limits.bodyBytes = maxBodyMib << 20
            limits.idleTimeoutSeconds = idleTimeout
            limits.maxConnections = maxConnections
            limits.maxConnectionsPerClient = maxConnectionsPerClient
            limits.trustedProxies = Set(trustedProxy)
            let loopback = host == "127.0.0.1" || host == "::1" || host == "localhost"
            limits.openRegistration = registration.map { $0 == "open" } ?? loopback
            let registrationOpen = limits.openRegistration
            var server = BalsamServer(database: database, secret: secret, limits: limits, logger: logger)
            server.setLoginTokenHours(tokenHours)
            let portFile = portFile
            let app = server.application(host: host, port: port) { bound in
                logger.notice(
                    "listening",
                    metadata: [
                        "url": "http://\(host.contains(":") ? "[\(host)]" : host):\(bound)",
                        "db": "\(database.location)", "registration": "\(registrationOpen ? "open" : "closed")",
                    ])
                if let portFile {
                    try? Posix.replaceFile(portFile, Array("\(bound)\n".utf8), sync: false)
                }
            }
            var services: [ServiceGroupConfiguration.ServiceConfiguration] = [.init(service: app)]
            if let metricsListen, let (metricsHost, metricsPort) = Self.hostAndPort(metricsListen) {
                let metricsPortFile = metricsPortFile
                let metrics = server.metricsApplication(host: metricsHost, port: metricsPort) { bound in
                    logger.notice("metrics listening", metadata: ["host": "\(metricsHost)", "port": "\(bound)"])
                    if let metricsPortFile {
                        try? Posix.replaceFile(metricsPortFile, Array("\(bound)\n".utf8), sync: false)
                    }
                }
                services.append(.init(service: metrics))
            }
            let group = ServiceGroup(
                configuration: ServiceGroupConfiguration(
                    services: services, gracefulShutdownSignals: [.sigterm, .sigint], logger: logger))
            try await group.run()
            await database.close()
        }
    }
}

struct Migrate: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Bring the database's schema up to this server's version (PostgreSQL needs it before serve).")

    @OptionGroup var store: StoreOptions

    func run() async throws {
        try await reporting {
            let database = try Database(try store.location(), threads: 1)
            let applied = try database.migrate()
            print(
                applied.isEmpty
                    ? "the schema is up to date (version \(database.schemaVersionKnown))"
                    : "applied migration\(applied.count == 1 ? "" : "s") \(applied.map(String.init).joined(separator: ", "))"
            )
            await database.close()
        }
    }
}

struct Backup: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Copy a SQLite database, consistent, while the server runs (PostgreSQL: pg_dump).")

    @OptionGroup var store: StoreOptions

    @Argument(help: ArgumentHelp("The copy to write (replaced whole once complete).", valueName: "file"))
    var file: String

    func run() async throws {
        try await reporting {
            let location = try store.location()
            guard case .sqlite = location else {
                throw StoreError(
                    .unavailable, "back up a PostgreSQL database with pg_dump (balsam-server(8), OPERATIONS)")
            }
            let database = try Database(location, threads: 1)
            try database.checkSchema()
            try database.backup(to: Posix.absolute(file))
            print("backed up \(database.location) to \(file)")
            await database.close()
        }
    }
}

/// Opens the database, runs `body` with its accounts (signing tokens when `signing`), and closes it.
func withAccounts(_ store: StoreOptions, signing: Bool = false, _ body: (Accounts) throws -> Void) async throws {
    try await reporting {
        let database = try store.open()
        do {
            let secret = signing ? try ServerSecret.loadOrCreate(store.secretPath(for: database.location)) : []
            try body(Accounts(database: database, secret: secret))
        } catch {
            await database.close()
            throw error
        }
        await database.close()
    }
}

/// A user's name and where the password comes from.
struct UserArguments: ParsableArguments {
    @OptionGroup var store: StoreOptions
    @Argument(help: "The user name: letters, digits, '_', '-', '.' or '@'.") var name: String
    @Option(name: .long, help: ArgumentHelp("Read the password from this file's first line.", valueName: "file"))
    var passwordFile: String?
}

struct UserCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "user", abstract: "Add users and set their passwords.", subcommands: [Add.self, Password.self])

    struct Add: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Add a user (the password is asked for).")
        @OptionGroup var user: UserArguments

        func run() async throws {
            try await withAccounts(user.store) { accounts in
                let password = try readPassword(file: user.passwordFile, confirm: true)
                let added = try accounts.addUser(user.name, password: password)
                print("added user \(added.name) (id \(added.id))")
            }
        }
    }

    struct Password: AsyncParsableCommand {
        static let configuration = CommandConfiguration(commandName: "passwd", abstract: "Set a user's password.")
        @OptionGroup var user: UserArguments

        func run() async throws {
            try await withAccounts(user.store) { accounts in
                let password = try readPassword(file: user.passwordFile, confirm: true)
                let revoked = try accounts.setPassword(user.name, password: password)
                print("password of \(user.name) set; \(revoked) login token\(revoked == 1 ? "" : "s") revoked")
            }
        }
    }
}

struct TokenCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "token", abstract: "Long-lived tokens for site daemons: create, list, revoke.",
        subcommands: [Create.self, List.self, Revoke.self])

    struct Create: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Make a token for a user's site and print it (store it mode 0600 at the site).")
        @OptionGroup var store: StoreOptions
        @Option(name: .long, help: "The user the token acts for.") var user: String
        @Option(name: .long, help: "The site it is for (a label shown by token ls).") var site: String
        @Option(name: .long, help: "Days until it expires; without it, it lasts until revoked.") var days: Int?

        func validate() throws {
            if let days, days < 1 { throw ValidationError("--days must be at least 1.") }
        }

        func run() async throws {
            try await withAccounts(store, signing: true) { accounts in
                let made = try accounts.createSiteToken(username: user, siteName: site, days: days)
                printError("balsam-server: token \(made.id) for \(user) at site \(site)")
                if !made.siteExists {
                    printError(
                        "balsam-server: \(user) has no site named \(site) yet: the site that uses this token registers "
                            + "under that name on its first push")
                }
                print(made.token)
            }
        }
    }

    struct List: AsyncParsableCommand {
        static let configuration = CommandConfiguration(commandName: "ls", abstract: "List tokens, newest first.")
        @OptionGroup var store: StoreOptions

        func run() async throws {
            try await withAccounts(store) { accounts in
                let rows = try accounts.tokens().map { t in
                    [
                        t.id, t.username, t.kind, t.siteName ?? "-", isoDate(t.created),
                        t.expires.map(isoDate) ?? "never", t.revoked.map { "revoked " + isoDate($0) } ?? "active",
                    ]
                }
                print(table(["ID", "USER", "KIND", "SITE", "CREATED", "EXPIRES", "STATUS"], rows), terminator: "")
            }
        }
    }

    struct Revoke: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Revoke a token by id, or every token of a user; it stops working at once.")
        @OptionGroup var store: StoreOptions
        @Argument(help: "The token's id (from token ls).") var id: String?
        @Option(name: .long, help: "Revoke every token of this user.") var user: String?

        func validate() throws {
            if (id == nil) == (user == nil) { throw ValidationError("Give a token id or --user, not both.") }
        }

        func run() async throws {
            try await withAccounts(store) { accounts in
                let count = try accounts.revoke(tokenID: id, username: user)
                if count == 0 && id != nil { throw ServerError(status: 404, "no active token \(id ?? "")") }
                print("revoked \(count) token\(count == 1 ? "" : "s")")
            }
        }
    }
}

func isoDate(_ micros: Int64) -> String {
    String(ServerClock.iso(micros).prefix(19)) + "Z"
}
