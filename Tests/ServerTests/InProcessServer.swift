import HTTPTypes
import Hummingbird
import Logging
import NIOCore
import NIOEmbedded
import Spool
import Synchronization
import TestSupport
import Wire

@testable import Server

/// The server in the test process: its router, over a temporary SQLite database, driven request by request with
/// no socket (as HummingbirdTesting's router framework does, without its HTTP client's build cost). For logic and
/// protocol; `LiveServer` runs the binary, for everything a process and a socket add.
struct InProcessServer {
    let dir: TempDir
    let database: Database
    let responder: RouterResponder<BalsamRequestContext>
    /// The server its router and `serving` answer with (one, so that `/metrics` counts both).
    let server: BalsamServer
    var metrics: ServerMetrics { server.metrics }

    /// Over a new database of `backend` (PostgreSQL: the test's, as `LiveServer` makes it).
    init(_ backend: Backend = .sqlite) throws {
        dir = try TempDir()
        database = try Database(try DatabaseLocation(parsing: try makeDatabase(backend, dir: dir)), threads: 2)
        try database.migrate()
        var logger = Logger(label: "balsam-server-test")
        logger.logLevel = .critical
        server = BalsamServer(database: database, secret: Array("in-process test secret".utf8), logger: logger)
        responder = server.router().buildResponder()
    }

    /// One request; the reply's status and its body as JSON (null when it has none or is not JSON).
    func request(
        _ method: HTTPRequest.Method, _ path: String, body: [UInt8]? = nil, token: String? = nil,
        contentType: String = "application/json"
    ) async throws -> (status: Int, json: JSONValue) {
        var headers = HTTPFields()
        if let token { headers[.authorization] = "Bearer \(token)" }
        if let body {
            headers[.contentLength] = String(body.count)
            headers[.contentType] = contentType
        }
        let request = Request(
            head: HTTPRequest(
                method: method, scheme: "http", authority: "localhost", path: path, headerFields: headers),
            body: RequestBody(buffer: ByteBuffer(bytes: body ?? [])))
        var logger = Logger(label: "request")
        logger.logLevel = .critical
        let context = BalsamRequestContext(
            source: ApplicationRequestContextSource(channel: EmbeddedChannel(), logger: logger))
        let response: Response
        do { response = try await responder.respond(to: request, context: context) } catch let error as ServerError {
            response = try error.response(from: request, context: context)
        }
        let collected = Collected()
        try await response.body.write(collected)
        let bytes = collected.bytes.withLock { $0 }
        return (Int(response.status.code), (try? JSONValue.parse(bytes)) ?? .null)
    }

    /// A request with a JSON body.
    func request(_ method: HTTPRequest.Method, _ path: String, json: JSONValue, token: String? = nil) async throws
        -> (status: Int, json: JSONValue)
    {
        try await request(method, path, body: Array(json.serialized().utf8), token: token)
    }

    /// Registers `name` (password `NAME-password`) and returns a login token.
    func user(_ name: String) async throws -> String {
        let password = JSONValue.object(["username": .string(name), "password": .string(name + "-password")])
        _ = try await request(.post, "/auth/password/register", json: password)
        let form = Array("username=\(name)&password=\(name)-password".utf8)
        let login = try await request(
            .post, "/auth/password/login", body: form, contentType: "application/x-www-form-urlencoded")
        return login.json.objectValue?["access_token"]?.stringValue ?? ""
    }

    /// Serves on a loopback port in this process while `body` runs (for clients that speak HTTP: the site's
    /// `Pusher`); `body` gets the server's URL.
    func serving<T: Sendable>(_ body: @escaping @Sendable (String) async throws -> T) async throws -> T {
        let (ports, port) = AsyncStream.makeStream(of: Int.self)
        let app = server.application(host: "127.0.0.1", port: 0) { bound in port.yield(bound) }
        return try await withThrowingTaskGroup(of: T?.self) { group in
            group.addTask {
                try await app.runService()
                return nil
            }
            var first = ports.makeAsyncIterator()
            guard let bound = await first.next() else { throw CancellationError() }
            let value = try await body("http://127.0.0.1:\(bound)")
            group.cancelAll()
            return value
        }
    }

    /// A site's push, and the reply as the site reads it.
    func push(_ push: PushRequest, token: String) async throws -> (status: Int, reply: PushReply) {
        let (status, json) = try await request(.post, "/sync/push", json: push.json, token: token)
        return (status, PushReply(json))
    }
}

/// A response body, collected.
final class Collected: ResponseBodyWriter, Sendable {
    let bytes = Mutex<[UInt8]>([])
    func write(_ buffer: ByteBuffer) async throws { bytes.withLock { $0 += buffer.readableBytesView } }
    func finish(_ trailingHeaders: HTTPFields?) async throws {}
}
