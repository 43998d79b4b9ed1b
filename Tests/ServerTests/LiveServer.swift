import Foundation
import Spool
import TestSupport
import Testing

#if canImport(FoundationNetworking)
    import FoundationNetworking
#endif
#if canImport(Glibc)
    import Glibc
#endif

/// Where a test's server keeps its data.
enum Backend: String, CustomStringConvertible, Sendable {
    case sqlite, postgresql

    var description: String { rawValue }

    /// The test PostgreSQL's base URL (`postgresql://postgres@127.0.0.1:PORT`), set by dev/test.
    static let postgresBase: String? = ProcessInfo.processInfo.environment["BALSAM_TEST_POSTGRES"]

    /// Backends to run on: PostgreSQL when dev/test started one (and always in CI, where a missing one fails).
    static let available: [Backend] = {
        if postgresBase != nil || ProcessInfo.processInfo.environment["CI"] != nil { return [.sqlite, .postgresql] }
        return [.sqlite]
    }()
}

/// A reply: status, headers, body.
struct HTTPReply: Sendable {
    var status: Int
    var body: Data
    var headers: [String: String]

    var json: Any? { try? JSONSerialization.jsonObject(with: body, options: [.fragmentsAllowed]) }
    var object: [String: Any] { json as? [String: Any] ?? [:] }
    var list: [[String: Any]] { json as? [[String: Any]] ?? [] }
    var text: String { String(decoding: body, as: UTF8.self) }
}

struct ServerTestError: Error, CustomStringConvertible {
    var description: String
}

/// A database for one test: a SQLite file in the test's directory, or a new PostgreSQL database.
func makeDatabase(_ backend: Backend, dir: TempDir) throws -> String {
    switch backend {
    case .sqlite:
        return "sqlite:\(dir.path)/server.db"
    case .postgresql:
        guard let base = Backend.postgresBase else {
            throw ServerTestError(description: "BALSAM_TEST_POSTGRES is not set: run the tests through dev/test")
        }
        let name = "balsam_test_" + UUID().uuidString.prefix(12).lowercased().replacingOccurrences(of: "-", with: "")
        let url = base + "/postgres"
        let created = try run("/usr/bin/psql", [url, "-q", "-c", "CREATE DATABASE \(name)"])
        guard created.status == 0 else { throw ServerTestError(description: "createdb failed: \(created.stderr)") }
        let db = base + "/" + name
        let migrated = try run(binDirectory + "/balsam-server", ["migrate", "--db", db])
        guard migrated.status == 0 else { throw ServerTestError(description: "migrate failed: \(migrated.stderr)") }
        return db
    }
}

/// A `balsam-server` process on a free loopback port, stopped (SIGTERM) by `stop()`.
final class LiveServer: @unchecked Sendable {
    let dir: TempDir
    let db: String
    let process: Spawned
    let url: String
    let logPath: String

    /// Starts a server over `db` (made for `backend` when nil) with `arguments` added to `serve`; `wrapper` is a
    /// command line that runs the server as its last arguments (`unshare -m sh -c '...; exec "$@"' sh`).
    init(
        _ backend: Backend, db existing: String? = nil, dir: TempDir? = nil, arguments: [String] = [],
        wrapper: [String] = []
    ) async throws {
        let dir = try dir ?? TempDir()
        self.dir = dir
        db = try existing ?? makeDatabase(backend, dir: dir)
        let portFile = dir.path + "/port-" + UUID().uuidString.prefix(6)
        logPath = portFile + ".log"
        let command = wrapper + [binDirectory + "/balsam-server"]
        process = try Spawned(
            command[0],
            Array(command.dropFirst()) + [
                "serve", "--db", db, "--secret-file", dir.path + "/secret", "--listen", "127.0.0.1:0",
                "--port-file", portFile,
            ] + arguments, stderr: .file(logPath))
        let deadline = Date().addingTimeInterval(30)
        var port: Int?
        func readPort() -> Int? {
            (try? String(contentsOfFile: portFile, encoding: .utf8)).flatMap {
                Int($0.trimmingCharacters(in: .whitespacesAndNewlines))
            }
        }
        while Date() < deadline, process.isRunning {
            if let value = readPort() {
                port = value
                break
            }
            try await Task.sleep(for: .milliseconds(20))
        }
        // A test process whose threads were all busy may wake past the deadline: look once more.
        port = port ?? readPort()
        guard let port else {
            process.terminate()
            let log = (try? String(contentsOfFile: logPath, encoding: .utf8)) ?? ""
            throw ServerTestError(description: "balsam-server did not start: \(log)")
        }
        url = "http://127.0.0.1:\(port)"
    }

    /// What the server logged.
    var log: String { (try? String(contentsOfFile: logPath, encoding: .utf8)) ?? "" }

    /// Stops the server with SIGTERM and waits (with a deadline) for it to exit; returns its exit status.
    @discardableResult
    func stop() async throws -> Int32 {
        if process.isRunning { kill(process.processIdentifier, SIGTERM) }
        let deadline = Date().addingTimeInterval(30)
        while process.isRunning && Date() < deadline { try await Task.sleep(for: .milliseconds(20)) }
        if process.isRunning {
            kill(process.processIdentifier, SIGKILL)
            throw ServerTestError(description: "balsam-server did not stop on SIGTERM within 30 s")
        }
        return process.terminationStatus
    }

    deinit {
        if process.isRunning { kill(process.processIdentifier, SIGKILL) }
    }

    /// One request; `json` is serialized as the body.
    /// `session`: the shared one, whose few connections per host all tests share; a test that holds requests
    /// open (long polls) passes one of its own.
    func request(
        _ method: String, _ path: String, json: Any? = nil, body: Data? = nil, token: String? = nil,
        contentType: String = "application/json", session: URLSession = .shared
    ) async throws -> HTTPReply {
        guard let target = URL(string: url + path) else { throw ServerTestError(description: "bad URL \(path)") }
        var request = URLRequest(url: target)
        request.httpMethod = method
        request.timeoutInterval = 120
        if let token { request.setValue("Bearer \(token)", forHTTPHeaderField: "Authorization") }
        if let json {
            request.httpBody = try JSONSerialization.data(withJSONObject: json, options: [.fragmentsAllowed])
            request.setValue(contentType, forHTTPHeaderField: "Content-Type")
        } else if let body {
            request.httpBody = body
            request.setValue(contentType, forHTTPHeaderField: "Content-Type")
        }
        let (data, response) = try await session.data(for: request)
        guard let http = response as? HTTPURLResponse else { throw ServerTestError(description: "not HTTP") }
        var headers: [String: String] = [:]
        for (k, v) in http.allHeaderFields { headers["\(k)".lowercased()] = "\(v)" }
        return HTTPReply(status: http.statusCode, body: data, headers: headers)
    }

    /// Registers `user` (password `user-password`) and returns a login token.
    func user(_ name: String) async throws -> String {
        let registered = try await request(
            "POST", "/auth/password/register", json: ["username": name, "password": "\(name)-password"])
        guard registered.status == 201 else { throw ServerTestError(description: "register: \(registered.text)") }
        return try await login(name, "\(name)-password")
    }

    func login(_ name: String, _ password: String) async throws -> String {
        let form = "username=\(name)&password=\(password)"
        let reply = try await request(
            "POST", "/auth/password/login", body: Data(form.utf8), contentType: "application/x-www-form-urlencoded")
        guard reply.status == 200, let token = reply.object["access_token"] as? String else {
            throw ServerTestError(description: "login: \(reply.status) \(reply.text)")
        }
        return token
    }

    /// A site, and an app with a required `name` parameter; returns (site id, app id).
    func siteAndApp(_ token: String, site: String = "laptop", transfers: [String: Any] = [:]) async throws -> (
        Int, Int
    ) {
        let s = try await request(
            "POST", "/sites/",
            json: [
                "name": site, "path": "/tmp/\(site)",
                "transfer_locations": ["aps": "globus://aps-dtn", "cluster": "rsync://user@host"],
            ], token: token)
        guard s.status == 201, let siteID = s.object["id"] as? Int else {
            throw ServerTestError(description: "site: \(s.text)")
        }
        let a = try await request(
            "POST", "/apps/",
            json: [
                "site_id": siteID, "name": "Hello", "serialized_class": "", "source_code": "echo",
                "parameters": ["name": ["required": true, "default": NSNull(), "help": ""]], "transfers": transfers,
            ], token: token)
        guard a.status == 201, let appID = a.object["id"] as? Int else {
            throw ServerTestError(description: "app: \(a.text)")
        }
        return (siteID, appID)
    }
}

/// `{"name": VALUE}` pickled as the original client sends it (protocol 4, as dill writes a small dict).
func pickledName(_ value: String) -> String {
    var bytes: [UInt8] = [0x80, 0x04, 0x95]
    var body: [UInt8] = [0x7D, 0x94, 0x8C, 4] + Array("name".utf8) + [0x94, 0x8C, UInt8(value.utf8.count)]
    body += Array(value.utf8) + [0x94, 0x73, 0x2E]
    var length = UInt64(body.count)
    for _ in 0..<8 {
        bytes.append(UInt8(length & 0xFF))
        length >>= 8
    }
    return Data(bytes + body).base64EncodedString()
}

/// Waits until `condition` holds, polling; records an issue at the deadline.
func waitFor(_ what: String, timeout: Double = 30, _ condition: () async throws -> Bool) async throws {
    let deadline = Date().addingTimeInterval(timeout)
    while Date() < deadline {
        if try await condition() { return }
        try await Task.sleep(for: .milliseconds(50))
    }
    // Woken past the deadline (the test process's threads busy elsewhere): the condition gets a last look.
    if try await condition() { return }
    Issue.record("timed out after \(timeout) s waiting until \(what)")
}

/// Starts a built program (`balsam-watch`, `balsam-launcher`) in the background; the caller stops it.
func startBinary(_ program: String, _ args: [String], env: [String: String] = [:]) throws -> Spawned {
    try Spawned(
        binDirectory + "/" + program, args,
        environment: ProcessInfo.processInfo.environment.merging(env, uniquingKeysWith: { _, b in b }))
}

/// Points the site's `sync:` section at `url` (replacing one written before).
/// A new user's token on `server`, written to the server's directory (`token`), and `site` set to sync to the
/// server with it.
func syncing(_ site: Site, to server: LiveServer, user: String, period: Double? = nil) async throws -> String {
    let token = try await server.user(user)
    try server.dir.file("token", token)
    try setSync(site, url: server.url, tokenFile: server.dir.path + "/token", period: period)
    return token
}

func setSync(
    _ site: Site, url: String, tokenFile: String? = nil, period: Double? = nil, caFile: String? = nil
) throws {
    let settings = try read(site.settingsPath).components(separatedBy: "\nsync:\n")[0]
    var section = "\nsync:\n  url: \(url)\n"
    if let tokenFile { section += "  token_file: \(tokenFile)\n" }
    if let caFile { section += "  ca_file: \(caFile)\n" }
    if let period { section += "  period: \(period)\n" }
    try (settings + section).write(toFile: site.settingsPath, atomically: true, encoding: .utf8)
}

/// Programs a test runs in the background (a watcher, a launcher), stopped with SIGTERM when it is done with them.
final class Background {
    private(set) var processes: [Spawned] = []

    /// Starts `program` (see `startBinary`) and returns it.
    @discardableResult
    func start(_ program: String, _ args: [String], env: [String: String] = [:]) throws -> Spawned {
        let p = try startBinary(program, args, env: env)
        processes.append(p)
        return p
    }

    /// Stops every program still running (call it in a `defer`: an object's lifetime may end at its last use).
    func stop() {
        for p in processes where p.isRunning {
            kill(p.processIdentifier, SIGTERM)
            p.waitUntilExit()
        }
    }

    deinit { stop() }
}

/// Each job's state at `site`, by its id (`balsam ls --json`).
func siteStates(_ site: Site) throws -> [String: String] {
    let listed = try balsam(["ls", "--json"], site: site.root)
    var states: [String: String] = [:]
    for line in listed.stdout.split(separator: "\n") {
        if let o = try? JSONValue.parse(String(line)).objectValue, let id = o["id"]?.stringValue {
            states[id] = o["state"]?.stringValue
        }
    }
    return states
}

/// Each of `token`'s user's jobs on `server` that a site pushed: its state, by the site's id.
func serverStates(_ server: LiveServer, _ token: String) async throws -> [String: String] {
    let reply = try await server.request("GET", "/jobs/?limit=100000", token: token)
    var states: [String: String] = [:]
    for job in reply.object["results"] as? [[String: Any]] ?? [] {
        if let id = job["site_job_id"] as? String { states[id] = job["state"] as? String }
    }
    return states
}
