import Spool
import Wire

/// The database schema, as numbered migrations. `balsam-server migrate` applies the missing ones in order, each
/// in its own transaction, and records it in `schema_migrations`; SQLite databases are migrated at start.
///
/// Every table carries `owner_id`: each query filters on it, so per-user isolation is one predicate that no query
/// can forget to join for. Times are microseconds since the epoch (UTC); JSON is text (`jsonb` for the tags that
/// PostgreSQL indexes); booleans are 0 and 1.
enum Schema {
    /// One step of the schema: SQL text, or a program where text cannot say it, run in one transaction.
    struct Migration: Sendable {
        let version: Int
        let name: String
        var sql: @Sendable (SQLDialect) -> String = { _ in "" }
        var program: (@Sendable (any SQLConnection) throws -> Void)?
    }

    /// The migrations, oldest first; never edit one that has shipped, add another.
    static let migrations: [Migration] = [
        Migration(version: 1, name: "initial schema", sql: initial),
        Migration(version: 2, name: "sites' own job ids, for idempotent pushes", sql: siteJobIDs),
        Migration(version: 3, name: "sites' own batch job ids", sql: siteBatchIDs),
        Migration(version: 4, name: "users' requests to sites", sql: jobRequests),
        Migration(
            version: 5, name: "report rollups: state changes and busy node-seconds per minute", sql: reportRollups),
        Migration(version: 6, name: "ids never reused (SQLite: AUTOINCREMENT)", program: neverReuseIDs),
        Migration(version: 7, name: "why a site could not install an app", sql: appRefusals),
        Migration(version: 8, name: "a site's jobs by workdir (one job per workdir at a site)", sql: siteWorkdirs),
        Migration(version: 9, name: "launchers' time on their nodes", sql: launcherSessions),
        Migration(version: 10, name: "jobs counted per site and state, kept by triggers", sql: jobCounts),
        Migration(version: 11, name: "SQLite: a user's jobs in id order (the first page of a list)", sql: ownerIDOrder),
        Migration(version: 12, name: "whether a site's own app is a Python app", sql: sitePythonApps),
        Migration(version: 13, name: "the site's batch job of a job's latest run", sql: jobsSiteBatch),
        Migration(version: 14, name: "PostgreSQL: counters sharded by connection", sql: shardedCounters),
        Migration(
            version: 15, name: "busy node-seconds of batch jobs the site has not reported yet", sql: batchBusyPending),
    ]

    /// Tables whose ids a client holds. PostgreSQL's sequences never hand an id out twice; SQLite's plain
    /// `INTEGER PRIMARY KEY` gives the largest deleted id to the next row, so a client still holding a deleted
    /// job's id would read someone else's job. Each such table is rebuilt with `AUTOINCREMENT` (SQLite's
    /// documented way to change a table: a new table from the old one's own `CREATE`, its rows copied, the old
    /// dropped and the new renamed, its indexes made again), with foreign keys off so that dropping the old
    /// table cascades nowhere.
    static let idTables = [
        "users", "sites", "apps", "batch_jobs", "jobs", "events", "transfer_items", "job_requests",
    ]

    private static func neverReuseIDs(_ connection: any SQLConnection) throws {
        guard connection.dialect == .sqlite else { return }
        for table in idTables {
            let rows = try connection.query(
                "SELECT type, sql FROM sqlite_master WHERE tbl_name = \(.text(table)) AND sql IS NOT NULL ORDER BY type DESC"
            )
            guard let create = rows.first(where: { $0.text(0) == "table" })?.text(1) else { continue }
            if create.contains("AUTOINCREMENT") { continue }
            // SQLite keeps the text it was given, but quotes the name of a table that was renamed.
            let head = ["CREATE TABLE \(table) (", "CREATE TABLE \"\(table)\" ("].first { create.hasPrefix($0) }
            guard let head, create.contains("id INTEGER PRIMARY KEY,") else {
                throw StoreError(.failed, "table \(table) is not as this server made it: \(create.prefix(80))")
            }
            let rebuilt =
                "CREATE TABLE new_\(table) ("
                + String(create.dropFirst(head.count)).replacingAll(
                    "id INTEGER PRIMARY KEY,", with: "id INTEGER PRIMARY KEY AUTOINCREMENT,")
            try connection.executeScript(rebuilt)
            try connection.executeScript("INSERT INTO new_\(table) SELECT * FROM \(table)")
            try connection.executeScript("DROP TABLE \(table)")
            try connection.executeScript("ALTER TABLE new_\(table) RENAME TO \(table)")
            for index in rows where index.text(0) == "index" { try connection.executeScript(index.text(1)) }
        }
    }

    /// The newest version this server knows.
    static var latest: Int { migrations.last?.version ?? 0 }

    // Over 100 lines: the first migration's SQL as it shipped (never edited).
    private static func initial(_ d: SQLDialect) -> String {
        let (id, big) = columnTypes(d)
        let json = d == .sqlite ? "TEXT" : "JSONB"
        var sql = """
            CREATE TABLE users (
                id \(id),
                username TEXT NOT NULL UNIQUE,
                password_hash TEXT NOT NULL,
                created \(big) NOT NULL
            );
            CREATE TABLE tokens (
                id TEXT PRIMARY KEY,
                owner_id \(big) NOT NULL REFERENCES users(id) ON DELETE CASCADE,
                kind TEXT NOT NULL,
                site_name TEXT,
                created \(big) NOT NULL,
                expires \(big),
                revoked \(big)
            );
            CREATE TABLE login_failures (
                username TEXT PRIMARY KEY,
                failures \(big) NOT NULL,
                last_failure \(big) NOT NULL
            );
            CREATE TABLE sites (
                id \(id),
                owner_id \(big) NOT NULL REFERENCES users(id) ON DELETE CASCADE,
                name TEXT NOT NULL,
                path TEXT NOT NULL,
                globus_endpoint_id TEXT,
                backfill_windows TEXT NOT NULL,
                queued_jobs TEXT NOT NULL,
                optional_batch_job_params TEXT NOT NULL,
                allowed_projects TEXT NOT NULL,
                allowed_queues TEXT NOT NULL,
                transfer_locations TEXT NOT NULL,
                last_refresh \(big) NOT NULL,
                creation_date \(big) NOT NULL,
                UNIQUE (owner_id, name)
            );
            CREATE TABLE apps (
                id \(id),
                owner_id \(big) NOT NULL,
                site_id \(big) NOT NULL REFERENCES sites(id) ON DELETE CASCADE,
                name TEXT NOT NULL,
                serialized_class TEXT NOT NULL,
                source_code TEXT NOT NULL,
                description TEXT NOT NULL,
                parameters TEXT NOT NULL,
                transfers TEXT NOT NULL,
                UNIQUE (site_id, name)
            );
            CREATE TABLE batch_jobs (
                id \(id),
                owner_id \(big) NOT NULL,
                site_id \(big) NOT NULL REFERENCES sites(id) ON DELETE CASCADE,
                scheduler_id \(big),
                project TEXT NOT NULL,
                queue TEXT NOT NULL,
                num_nodes \(big) NOT NULL,
                wall_time_min \(big) NOT NULL,
                job_mode TEXT NOT NULL,
                optional_params TEXT NOT NULL,
                filter_tags \(json) NOT NULL,
                partitions TEXT,
                state TEXT NOT NULL,
                status_info TEXT NOT NULL,
                start_time \(big),
                end_time \(big)
            );
            CREATE INDEX batch_jobs_owner ON batch_jobs (owner_id, site_id);
            CREATE TABLE jobs (
                id \(id),
                owner_id \(big) NOT NULL,
                site_id \(big) NOT NULL,
                app_id \(big) NOT NULL REFERENCES apps(id) ON DELETE CASCADE,
                workdir TEXT NOT NULL,
                tags \(json) NOT NULL,
                serialized_parameters TEXT NOT NULL,
                data TEXT NOT NULL,
                return_code \(big),
                num_nodes \(big) NOT NULL,
                ranks_per_node \(big) NOT NULL,
                threads_per_rank \(big) NOT NULL,
                threads_per_core \(big) NOT NULL,
                launch_params TEXT NOT NULL,
                gpus_per_rank DOUBLE PRECISION NOT NULL,
                node_packing_count \(big) NOT NULL,
                wall_time_min \(big) NOT NULL,
                parent_ids TEXT NOT NULL,
                batch_job_id \(big) REFERENCES batch_jobs(id) ON DELETE SET NULL,
                state TEXT NOT NULL,
                last_update \(big) NOT NULL,
                pending_file_cleanup \(big) NOT NULL,
                serialized_return_value TEXT NOT NULL,
                serialized_exception TEXT NOT NULL
            );
            CREATE INDEX jobs_owner_state ON jobs (owner_id, state, id);
            CREATE INDEX jobs_site_state ON jobs (site_id, state);
            CREATE INDEX jobs_app ON jobs (app_id);
            CREATE INDEX jobs_batch_job ON jobs (batch_job_id);
            CREATE INDEX jobs_owner_update ON jobs (owner_id, last_update);
            CREATE TABLE job_parents (
                job_id \(big) NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,
                parent_id \(big) NOT NULL,
                PRIMARY KEY (job_id, parent_id)
            );
            CREATE INDEX job_parents_parent ON job_parents (parent_id);
            CREATE TABLE events (
                id \(id),
                owner_id \(big) NOT NULL,
                job_id \(big) NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,
                timestamp \(big) NOT NULL,
                from_state TEXT NOT NULL,
                to_state TEXT NOT NULL,
                data TEXT NOT NULL
            );
            CREATE INDEX events_job ON events (job_id);
            CREATE INDEX events_owner_time ON events (owner_id, timestamp);
            CREATE TABLE transfer_items (
                id \(id),
                owner_id \(big) NOT NULL,
                job_id \(big) NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,
                direction TEXT NOT NULL,
                local_path TEXT NOT NULL,
                remote_path TEXT NOT NULL,
                location_alias TEXT NOT NULL,
                recursive \(big) NOT NULL,
                state TEXT NOT NULL,
                task_id TEXT NOT NULL,
                transfer_info TEXT NOT NULL
            );
            CREATE INDEX transfer_items_job ON transfer_items (job_id);
            CREATE INDEX transfer_items_owner_state ON transfer_items (owner_id, state);
            """
        if d == .postgresql {
            sql += "\nCREATE INDEX jobs_tags ON jobs USING GIN (tags jsonb_path_ops);"
        }
        return sql
    }

    private static func siteJobIDs(_ d: SQLDialect) -> String {
        """
        ALTER TABLE jobs ADD COLUMN site_job_id TEXT;
        CREATE UNIQUE INDEX jobs_site_job ON jobs (site_id, site_job_id);
        CREATE INDEX events_job_time ON events (job_id, timestamp);
        """
    }

    private static func siteBatchIDs(_ d: SQLDialect) -> String {
        let big = columnTypes(d).big
        return """
            ALTER TABLE batch_jobs ADD COLUMN site_batch_id \(big);
            CREATE UNIQUE INDEX batch_jobs_site_batch ON batch_jobs (site_id, site_batch_id);
            """
    }

    /// The dialect's types of an id column and of a 64-bit integer.
    private static func columnTypes(_ d: SQLDialect) -> (id: String, big: String) {
        d == .sqlite ? ("INTEGER PRIMARY KEY", "INTEGER") : ("BIGSERIAL PRIMARY KEY", "BIGINT")
    }

    private static func jobRequests(_ d: SQLDialect) -> String {
        let (id, big) = columnTypes(d)
        return """
            CREATE TABLE job_requests (
                id \(id),
                owner_id \(big) NOT NULL,
                site_id \(big) NOT NULL REFERENCES sites(id) ON DELETE CASCADE,
                job_id \(big) NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,
                kind TEXT NOT NULL,
                target TEXT,
                created \(big) NOT NULL
            );
            CREATE INDEX job_requests_site ON job_requests (site_id);
            """
    }

    /// Per-minute counts the report routes add up instead of reading every event: state changes per site, state
    /// and minute (filled from the events already recorded), busy node-seconds per site and minute, and each
    /// batch job's busy node-seconds (counted from this version on).
    private static func reportRollups(_ d: SQLDialect) -> String {
        let big = columnTypes(d).big
        return """
            CREATE TABLE state_minutes (
                owner_id \(big) NOT NULL,
                site_id \(big) NOT NULL,
                to_state TEXT NOT NULL,
                minute \(big) NOT NULL,
                n \(big) NOT NULL,
                PRIMARY KEY (owner_id, to_state, site_id, minute)
            );
            CREATE TABLE busy_minutes (
                owner_id \(big) NOT NULL,
                site_id \(big) NOT NULL,
                minute \(big) NOT NULL,
                node_seconds DOUBLE PRECISION NOT NULL,
                PRIMARY KEY (owner_id, site_id, minute)
            );
            ALTER TABLE batch_jobs ADD COLUMN busy_node_seconds DOUBLE PRECISION NOT NULL DEFAULT 0;
            CREATE INDEX events_owner_to_time ON events (owner_id, to_state, timestamp);
            INSERT INTO state_minutes (owner_id, site_id, to_state, minute, n)
                SELECT e.owner_id, j.site_id, e.to_state, e.timestamp / 60000000, count(*)
                FROM events e JOIN jobs j ON j.id = e.job_id
                GROUP BY e.owner_id, j.site_id, e.to_state, e.timestamp / 60000000;
            """
    }

    /// An app defined through the API that its site could not install (a template placeholder that is not a
    /// parameter, say): the site's reason, shown with the app, until a definition it can install replaces it.
    private static func appRefusals(_ d: SQLDialect) -> String {
        "ALTER TABLE apps ADD COLUMN site_refusal TEXT;"
    }

    private static func launcherSessions(_ d: SQLDialect) -> String {
        let (id, big) = columnTypes(d)
        return """
            CREATE TABLE launcher_sessions (
                id \(id),
                owner_id \(big) NOT NULL,
                site_id \(big) NOT NULL REFERENCES sites(id) ON DELETE CASCADE,
                lease TEXT NOT NULL,
                nodes \(big) NOT NULL,
                start_time \(big) NOT NULL,
                end_time \(big),
                site_batch_id \(big),
                UNIQUE (site_id, lease)
            );
            CREATE INDEX launcher_sessions_owner ON launcher_sessions (owner_id, start_time);
            """
    }

    private static func siteWorkdirs(_ d: SQLDialect) -> String {
        "CREATE INDEX jobs_site_workdir ON jobs (site_id, workdir);"
    }

    /// Each user's jobs counted per site and state, kept by triggers on `jobs` whatever changes a job (the API,
    /// a site's push, a cascade), so that a page's `count` and the dashboard read a few rows instead of counting
    /// every job. PostgreSQL: one statement-level trigger per kind of change, adding each statement's rows per
    /// group (in key order, so that concurrent statements lock rows in one order); SQLite: row triggers.
    private static func jobCounts(_ d: SQLDialect) -> String {
        let big = columnTypes(d).big
        let table = """
            CREATE TABLE job_counts (
                owner_id \(big) NOT NULL,
                site_id \(big) NOT NULL,
                state TEXT NOT NULL,
                n \(big) NOT NULL,
                PRIMARY KEY (owner_id, site_id, state)
            );
            INSERT INTO job_counts (owner_id, site_id, state, n)
                SELECT owner_id, site_id, state, count(*) FROM jobs GROUP BY owner_id, site_id, state;

            """
        let add = "ON CONFLICT (owner_id, site_id, state) DO UPDATE SET n = job_counts.n + excluded.n"
        guard d == .postgresql else {
            func change(_ row: String, _ sign: String) -> String {
                """
                INSERT INTO job_counts (owner_id, site_id, state, n)
                        VALUES (\(row).owner_id, \(row).site_id, \(row).state, \(sign)1) \(add);
                """
            }
            return table + """
                CREATE TRIGGER job_counts_insert AFTER INSERT ON jobs BEGIN
                    \(change("NEW", ""))
                END;
                CREATE TRIGGER job_counts_delete AFTER DELETE ON jobs BEGIN
                    \(change("OLD", "-"))
                END;
                CREATE TRIGGER job_counts_update AFTER UPDATE OF owner_id, site_id, state ON jobs
                WHEN OLD.state IS NOT NEW.state OR OLD.site_id IS NOT NEW.site_id OR OLD.owner_id IS NOT NEW.owner_id
                BEGIN
                    \(change("OLD", "-"))
                    \(change("NEW", ""))
                END;
                """
        }
        return table + jobCountFunctions(sharded: false, create: "CREATE")
            + """
            CREATE TRIGGER job_counts_insert AFTER INSERT ON jobs REFERENCING NEW TABLE AS new_rows
                FOR EACH STATEMENT EXECUTE FUNCTION job_counts_inserted();
            CREATE TRIGGER job_counts_delete AFTER DELETE ON jobs REFERENCING OLD TABLE AS old_rows
                FOR EACH STATEMENT EXECUTE FUNCTION job_counts_deleted();
            CREATE TRIGGER job_counts_update AFTER UPDATE ON jobs REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
                FOR EACH STATEMENT EXECUTE FUNCTION job_counts_updated();
            """
    }

    /// The PostgreSQL trigger functions that keep `job_counts`: each adds its statement's rows per group, in key
    /// order (concurrent statements lock rows in one order); `sharded`, into the connection's own shard.
    private static func jobCountFunctions(sharded: Bool, create: String) -> String {
        let key = sharded ? "owner_id, site_id, state, shard" : "owner_id, site_id, state"
        let add = "ON CONFLICT (\(key)) DO UPDATE SET n = job_counts.n + excluded.n"
        func function(_ name: String, _ deltas: String) -> String {
            """
            \(create) FUNCTION \(name)() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                INSERT INTO job_counts (owner_id, site_id, state, n)
                    SELECT owner_id, site_id, state, sum(d) FROM (\(deltas)) AS deltas
                    GROUP BY owner_id, site_id, state HAVING sum(d) <> 0 ORDER BY owner_id, site_id, state
                \(add);
                RETURN NULL;
            END $$;

            """
        }
        let columns = "owner_id, site_id, state"
        return function("job_counts_inserted", "SELECT \(columns), 1 AS d FROM new_rows")
            + function("job_counts_deleted", "SELECT \(columns), -1 AS d FROM old_rows")
            + function(
                "job_counts_updated",
                """
                SELECT o.owner_id, o.site_id, o.state, -1 AS d FROM old_rows o JOIN new_rows n ON n.id = o.id
                    WHERE (o.owner_id, o.site_id, o.state) <> (n.owner_id, n.site_id, n.state)
                    UNION ALL
                    SELECT n.owner_id, n.site_id, n.state, 1 AS d FROM old_rows o JOIN new_rows n ON n.id = o.id
                    WHERE (o.owner_id, o.site_id, o.state) <> (n.owner_id, n.site_id, n.state)
                """)
    }

    /// The columns a counter row is found by: on PostgreSQL with the writing connection's shard.
    static func counterKey(_ columns: String, _ d: SQLDialect) -> String {
        d == .postgresql ? columns + ", shard" : columns
    }

    /// Counters many writers add to at once (the jobs' counts, the per-minute state changes) are sharded on
    /// Busy node-seconds of runs that ended in a batch job the server has no row for yet (its report comes in a
    /// later push): the batch job takes them when its row is made or linked (`Rollups.takePending`).
    private static func batchBusyPending(_ d: SQLDialect) -> String {
        let big = columnTypes(d).big
        return """
            CREATE TABLE batch_busy_pending (
                owner_id \(big) NOT NULL,
                site_id \(big) NOT NULL REFERENCES sites(id) ON DELETE CASCADE,
                site_batch_id \(big) NOT NULL,
                node_seconds DOUBLE PRECISION NOT NULL,
                PRIMARY KEY (owner_id, site_id, site_batch_id)
            );
            """
    }

    /// PostgreSQL: each connection adds to rows of its own shard (`balsam.shard`, set when it connects; the
    /// column's default), and readers sum the shards. Two transactions of one user, site and state then never
    /// wait for each other's commit on one row (`Lock:transactionid`). SQLite has one writer at a time: nothing.
    private static func shardedCounters(_ d: SQLDialect) -> String {
        guard d == .postgresql else { return "" }
        return """
            CREATE FUNCTION balsam_shard() RETURNS integer LANGUAGE sql STABLE AS $$
                SELECT coalesce(nullif(current_setting('balsam.shard', true), ''), '0')::integer
            $$;
            ALTER TABLE job_counts ADD COLUMN shard INTEGER NOT NULL DEFAULT 0;
            ALTER TABLE job_counts ALTER COLUMN shard SET DEFAULT balsam_shard();
            ALTER TABLE job_counts DROP CONSTRAINT job_counts_pkey;
            ALTER TABLE job_counts ADD PRIMARY KEY (owner_id, site_id, state, shard);
            ALTER TABLE state_minutes ADD COLUMN shard INTEGER NOT NULL DEFAULT 0;
            ALTER TABLE state_minutes ALTER COLUMN shard SET DEFAULT balsam_shard();
            ALTER TABLE state_minutes DROP CONSTRAINT state_minutes_pkey;
            ALTER TABLE state_minutes ADD PRIMARY KEY (owner_id, to_state, site_id, minute, shard);

            """ + jobCountFunctions(sharded: true, create: "CREATE OR REPLACE")
    }

    /// A list's page in id order: SQLite sorted all of a user's jobs for it (65 ms on 1,000,000 jobs) for want of
    /// an index in that order; an index on `owner_id` alone is one (its entries end with the rowid). PostgreSQL's
    /// planner walks the primary key instead.
    private static func ownerIDOrder(_ d: SQLDialect) -> String {
        d == .sqlite ? "CREATE INDEX jobs_owner_id ON jobs (owner_id);" : ""
    }

    /// Whether an app a site made (no pickled class) is a Python app, as the app.yml its site pushes says (NULL
    /// until a push of it): a shell app's jobs take plain parameters only (`Pickle.jobParameters`).
    private static func sitePythonApps(_ d: SQLDialect) -> String {
        "ALTER TABLE apps ADD COLUMN site_python INTEGER;"
    }

    /// The site's batch job (its own id) that a job last ran in, as its RUNNING event says: the server's
    /// `batch_job_id` is that batch job's row, linked when the event or the batch job arrives, whichever is later.
    private static func jobsSiteBatch(_ d: SQLDialect) -> String {
        """
        ALTER TABLE jobs ADD COLUMN site_batch_id \(d == .sqlite ? "INTEGER" : "BIGINT");
        CREATE INDEX jobs_site_batch ON jobs (site_id, site_batch_id) WHERE site_batch_id IS NOT NULL;
        """
    }

    /// The version the database is at (0 for an empty database).
    static func version(_ connection: any SQLConnection) throws -> Int {
        try connection.executeScript(
            "CREATE TABLE IF NOT EXISTS schema_migrations (version BIGINT PRIMARY KEY, name TEXT NOT NULL, applied BIGINT NOT NULL)"
        )
        return try connection.scalar("SELECT max(version) FROM schema_migrations") ?? 0
    }

    /// Applies every missing migration up to `target` (the tests make an earlier server's schema with it);
    /// returns the versions applied. Concurrent `migrate` runs on one PostgreSQL database are serialized by an
    /// advisory lock.
    @discardableResult
    static func migrate(_ connection: any SQLConnection, upTo target: Int = latest) throws -> [Int] {
        if connection.dialect == .postgresql {
            try connection.executeScript("SELECT pg_advisory_lock(4242420)")
        }
        defer {
            if connection.dialect == .postgresql { try? connection.executeScript("SELECT pg_advisory_unlock(4242420)") }
        }
        let current = try version(connection)
        guard current <= latest else {
            throw StoreError(
                .unavailable, "the database is at schema version \(current), newer than this server's \(latest)")
        }
        var applied: [Int] = []
        // A table rebuild drops the old table: with foreign keys on, SQLite would first delete its rows and
        // cascade. The pragma has no effect inside a transaction, so it is set around them.
        let sqliteRebuild = connection.dialect == .sqlite && current < latest
        if sqliteRebuild { try connection.executeScript("PRAGMA foreign_keys = OFF") }
        defer { if sqliteRebuild { try? connection.executeScript("PRAGMA foreign_keys = ON") } }
        for migration in migrations where migration.version > current && migration.version <= target {
            try connection.transaction {
                let sql = migration.sql(connection.dialect)
                if !sql.isEmpty { try connection.executeScript(sql) }
                try migration.program?(connection)
                if sqliteRebuild, try connection.query("PRAGMA foreign_key_check").first != nil {
                    throw StoreError(.failed, "migration \(migration.version) broke a foreign key")
                }
                try connection.execute(
                    "INSERT INTO schema_migrations (version, name, applied) VALUES (\(.of(migration.version)), \(.text(migration.name)), \(.int(ServerClock.microseconds())))"
                )
            }
            applied.append(migration.version)
        }
        return applied
    }
}
