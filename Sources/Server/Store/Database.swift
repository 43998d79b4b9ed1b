import Logging
import NIOPosix
import Synchronization

#if canImport(Glibc)
    import Glibc
#endif

/// Where the server's data lives: `sqlite:PATH` (one file, the default) or `postgresql://...` (a facility's).
public enum DatabaseLocation: Sendable, Equatable, CustomStringConvertible {
    case sqlite(path: String)
    case postgresql(url: String)

    /// Parses `sqlite:PATH`, `sqlite://PATH`, `postgresql://...` or `postgres://...`.
    public init(parsing text: String) throws(StoreError) {
        if text.hasPrefix("sqlite://") {
            self = .sqlite(path: String(text.dropFirst("sqlite://".count)))
        } else if text.hasPrefix("sqlite:") {
            self = .sqlite(path: String(text.dropFirst("sqlite:".count)))
        } else if text.hasPrefix("postgresql://") || text.hasPrefix("postgres://") {
            self = .postgresql(url: text)
        } else {
            throw StoreError(
                .unavailable, "unknown database '\(redacted(text))': use sqlite:PATH or postgresql://USER@HOST/DB")
        }
        if case .sqlite(let path) = self, path.isEmpty {
            throw StoreError(.unavailable, "sqlite: needs a file path (sqlite:/var/lib/balsam/server.db)")
        }
    }

    public var description: String {
        switch self {
        case .sqlite(let path): "sqlite:\(path)"
        case .postgresql(let url): redacted(url)
        }
    }
}

/// The server's database: a small pool of connections, each used by one thread of a dedicated thread pool, so
/// the blocking C calls of SQLite and libpq never run on Swift's cooperative threads.
///
/// The server keeps no state of its own in memory: everything is in the database, so several server processes
/// can share one PostgreSQL database.
public final class Database: Sendable {
    /// The database's location.
    public let location: DatabaseLocation
    let dialect: SQLDialect
    private let threads: NIOThreadPool
    private let idle: Mutex<[any SQLConnection]>
    /// Worker threads, and how many run a request now (`/metrics`).
    public let threadCount: Int
    private let busy = Atomic<Int>(0)
    public var busyThreads: Int { busy.load(ordering: .relaxed) }

    /// Opens the database with `threads` worker threads (and as many connections, made when first needed).
    public init(_ location: DatabaseLocation, threads: Int = 4) throws(StoreError) {
        self.location = location
        switch location {
        case .sqlite: dialect = .sqlite
        case .postgresql: dialect = .postgresql
        }
        // One connection now: a wrong path or an unreachable server is reported at start, not on a request.
        let first = try Database.connect(location)
        idle = Mutex([first])
        threadCount = max(1, threads)
        self.threads = NIOThreadPool(numberOfThreads: threadCount)
        self.threads.start()
    }

    /// Stops the worker threads.
    public func close() async {
        try? await threads.shutdownGracefully()
    }

    private static func connect(_ location: DatabaseLocation) throws(StoreError) -> any SQLConnection {
        switch location {
        case .sqlite(let path): return try SQLiteConnection(path: path)
        case .postgresql(let url): return try PostgresConnection(url: url)
        }
    }

    /// A consistent copy of a SQLite database in the file `path` while the server may be writing (`balsam-server
    /// backup`); PostgreSQL's is `pg_dump`'s, which this refuses to stand in for.
    public func backup(to path: String) throws {
        guard case .sqlite = location else {
            throw StoreError(.unavailable, "back up a PostgreSQL database with pg_dump (balsam-server(8), OPERATIONS)")
        }
        try withConnection { connection in
            guard let sqlite = connection as? SQLiteConnection else { return }
            try sqlite.backup(to: path)
        }
    }

    /// Applies the missing schema migrations (up to `version`: the tests make an earlier server's schema); returns
    /// their versions.
    @discardableResult
    public func migrate(upTo version: Int? = nil) throws -> [Int] {
        try withConnection { try Schema.migrate($0, upTo: version ?? Schema.latest) }
    }

    /// The schema version this server needs.
    public var schemaVersionKnown: Int { Schema.latest }

    /// Refuses a database whose schema is older or newer than this server's.
    public func checkSchema() throws {
        let version = try withConnection { try Schema.version($0) }
        if version < Schema.latest {
            throw StoreError(
                .unavailable,
                "the database \(location) is at schema version \(version); this server needs \(Schema.latest): run balsam-server migrate"
            )
        }
        if version > Schema.latest {
            throw StoreError(
                .unavailable, "the database is at schema version \(version), newer than this server's \(Schema.latest)")
        }
    }

    /// Runs `body` with a connection on a worker thread. A connection that broke is dropped, not reused.
    func run<T: Sendable>(_ body: @escaping @Sendable (any SQLConnection) throws -> T) async throws -> T {
        try await threads.runIfActive { [self] in
            busy.add(1, ordering: .relaxed)
            defer { busy.subtract(1, ordering: .relaxed) }
            return try withConnection(body)
        }
    }

    /// Runs `body` with a connection on the calling thread (commands such as `migrate` and `user add`).
    func withConnection<T>(_ body: (any SQLConnection) throws -> T) throws -> T {
        let connection = try idle.withLock { $0.popLast() } ?? Database.connect(location)
        defer {
            if connection.isHealthy { idle.withLock { $0.append(connection) } }
        }
        return try body(connection)
    }
}
