import Spool
import Wire
internal import Yams

#if canImport(Glibc)
    import Glibc
#endif

/// `~/.balsam/client.yml`: where the server is and the token to use. The original Python client reads it (its
/// `BALSAM_CLIENT_PATH`, else `~/.balsam/client.yml`), and so do our commands. Written mode 0600: it holds a
/// credential.
public struct ClientFile: Sendable, Equatable {
    /// The server's URL.
    public var apiRoot: String
    /// The bearer token.
    public var token: String
    /// When the token expires, naive UTC ISO 8601 (the original client compares it with `utcnow()`), or nil.
    public var tokenExpiry: String?
    /// The original client's class for password logins.
    public var clientClass = "balsam.client.BasicAuthRequestsClient"
    /// The original client's `retry_count`, or nil for its default (10): it tries every failed request, a
    /// refusal (4xx) too, up to `retry_count + 1` more times, waiting 1, 2, 4, ... s (plus up to 1 s) before
    /// each. 10 hides a refusal for about half an hour; `recommendedRetries` shows it within 10 s and still rides
    /// out a server restart of a few seconds.
    public var retryCount: Int?

    /// What `balsam login` writes for `retryCount`.
    public static let recommendedRetries = 2

    /// Makes a client file's contents.
    public init(apiRoot: String, token: String, tokenExpiry: String?) {
        self.apiRoot = apiRoot
        self.token = token
        self.tokenExpiry = tokenExpiry
    }

    /// `$BALSAM_CLIENT_PATH`, else `~/.balsam/client.yml`.
    public static var defaultPath: String {
        if let path = getenv("BALSAM_CLIENT_PATH"), path.pointee != 0 { return String(cString: path) }
        let home = getenv("HOME").map { String(cString: $0) } ?? "."
        return home + "/.balsam/client.yml"
    }

    /// The YAML text.
    public var text: String {
        var lines = [
            "api_root: \(apiRoot)", "client_class: \(clientClass)", "token: \(token)",
        ]
        if let tokenExpiry { lines.append("token_expiry: \(tokenExpiry)") }
        if let retryCount { lines.append("retry_count: \(retryCount)") }
        return lines.joined(separator: "\n") + "\n"
    }

    /// Writes the file (and its directory) mode 0600, replacing it whole.
    public func write(to path: String) throws(SpoolError) {
        let directory = Posix.parentPath(path)
        try Posix.makeDirectories(directory)
        try Posix.replaceFile(path, Array(text.utf8), sync: true, mode: 0o600)
    }

    /// Reads a client file.
    public static func read(_ path: String) throws(SpoolError) -> ClientFile {
        let text = String(decoding: try Posix.readFile(path, limit: 1 << 20), as: UTF8.self)
        let node: Node?
        do { node = try Yams.compose(yaml: text) } catch {
            throw SpoolError(.invalidInput, "not valid YAML: \(error)", path: path)
        }
        let root = node?.mapping
        func value(_ key: String) -> String? { root?[Node(key)]?.string }
        guard let apiRoot = value("api_root"), let token = value("token") else {
            throw SpoolError(.invalidInput, "needs api_root and token (run balsam login)", path: path)
        }
        var file = ClientFile(apiRoot: apiRoot, token: token, tokenExpiry: value("token_expiry"))
        if let clientClass = value("client_class") { file.clientClass = clientClass }
        file.retryCount = value("retry_count").flatMap { Int($0) }
        return file
    }
}

/// Logging in to a server: what `balsam login` does.
public enum Login {
    /// The first request to a server: while nothing listens at its address (`balsam-server serve &` just
    /// started), asked again every 0.1 s for up to 5 s.
    static func firstContact(_ client: HTTPClient, _ path: String) throws(SyncError) -> HTTPResponse {
        let deadline = Posix.monotonicSeconds() + 5
        while true {
            do throws(SyncError) { return try client.send("GET", path) } catch {
                guard error.refused, Posix.monotonicSeconds() < deadline else { throw error }
                usleep(100_000)
            }
        }
    }

    /// Logs in with a password (registering first when asked); returns the client file to write.
    public static func password(url: String, username: String, password: String, register: Bool, caFile: String?)
        throws(SyncError) -> ClientFile
    {
        let client = try HTTPClient(root: url, caFile: caFile)
        let methods = try firstContact(client, "/auth/how")
        let offered = (try? methods.json()).map { $0.serialized() } ?? ""
        guard offered.contains("LoginMethod.password") else {
            throw SyncError(
                status: nil, message: "the server does not offer password logins (it offers \(offered))",
                request: "GET \(client.root)/auth/how")
        }
        if register {
            try client.send(
                "POST", "/auth/password/register",
                json: .object(["username": .string(username), "password": .string(password)]))
        }
        let reply = try client.send(
            "POST", "/auth/password/login", form: [("username", username), ("password", password)])
        guard let object = (try? reply.json())?.objectValue, let token = object["access_token"]?.stringValue else {
            throw SyncError(status: reply.status, message: "the login reply has no token", request: "POST login")
        }
        return ClientFile(apiRoot: client.root, token: token, tokenExpiry: object["expiration"]?.stringValue)
    }

    /// Checks an existing token (a site token made with `balsam-server token create`); returns the user's name
    /// and the client file to write.
    public static func token(url: String, token: String, caFile: String?) throws(SyncError) -> (String, ClientFile) {
        let client = try HTTPClient(root: url, token: token, caFile: caFile)
        let reply = try firstContact(client, "/auth/password/me")
        let name = (try? reply.json())?.objectValue?["username"]?.stringValue ?? "?"
        return (name, ClientFile(apiRoot: client.root, token: token, tokenExpiry: nil))
    }
}
