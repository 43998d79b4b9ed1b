internal import CCurl
import Spool
import Wire

#if canImport(Glibc)
    import Glibc
#endif

/// The failure of an HTTP exchange: a transport error (no reply) or a reply with an error status.
public struct SyncError: Error, Sendable, CustomStringConvertible {
    /// The HTTP status, or nil when no reply came (connection refused, timeout, TLS).
    public var status: Int?
    /// What went wrong: libcurl's message, or the server's `detail`.
    public var message: String
    /// The request, `METHOD URL`.
    public var request: String
    /// Whether nothing listened at the address (connection refused): a server not started yet, say.
    public var refused = false
    /// Whether the caller's `abort` ended it (a held push given up for news of the site's own).
    public var aborted = false
    /// The field the server named in its refusal (`{"detail", "field"}`), if it named one.
    public var field: String?

    public var description: String {
        if let status { return "\(request): HTTP \(status): \(message)" }
        return "\(request): \(message)"
    }
}

extension SyncError {
    /// The failure as the commands report it: no reply is a service unavailable (69), a refusal bad input (65).
    public var spoolError: SpoolError { SpoolError(status == nil ? .unavailable : .invalidInput, description) }
}

/// A reply.
public struct HTTPResponse: Sendable {
    /// The status code.
    public var status: Int
    /// The body.
    public var body: [UInt8]

    /// The body as JSON.
    public func json() throws -> JSONValue { try JSONValue.parse(body) }
}

/// An HTTP/1.1 client over libcurl: one connection kept alive between requests, HTTPS with the system's CA
/// store or a given CA file, timeouts on connecting and on the whole transfer, gzip accepted. One thread at a
/// time (a libcurl easy handle is not shared between threads).
public final class HTTPClient {
    /// The server's root URL, without a trailing slash.
    public let root: String
    /// The bearer token sent with every request, when set.
    public var token: String?
    private let handle: UnsafeMutableRawPointer
    private let caFile: String?
    /// Seconds to wait for a connection.
    public var connectTimeout = 10
    /// Seconds a whole request may take.
    public var timeout = 120

    private static let initialized: Bool = { curl_global_init(Int(CURL_GLOBAL_DEFAULT)) == CURLE_OK }()

    /// A client for the server at `root` (`https://host:port` or `http://127.0.0.1:8080`).
    public init(root: String, token: String? = nil, caFile: String? = nil) throws(SyncError) {
        var root = root
        while root.hasSuffix("/") { root.removeLast() }
        guard root.hasPrefix("http://") || root.hasPrefix("https://") else {
            throw SyncError(status: nil, message: "the server URL must start with http:// or https://", request: root)
        }
        guard HTTPClient.initialized, let handle = curl_easy_init() else {
            throw SyncError(status: nil, message: "libcurl could not be initialized", request: root)
        }
        self.root = root
        self.token = token
        self.handle = handle
        self.caFile = caFile ?? HTTPClient.systemCertificates
    }

    deinit { curl_easy_cleanup(handle) }

    /// The machine's own bundle of trusted certificates, for a server certificate checked without `ca_file`:
    /// `SSL_CERT_FILE` or `CURL_CA_BUNDLE` when set, else the first file present where Debian and Ubuntu, RHEL and
    /// its rebuilds, and SLES keep theirs. libcurl's own default is the path of the system it was built on, and
    /// the release bundle carries a libcurl built on Debian: on RHEL or SLES that path does not exist.
    static let systemCertificates: String? = {
        let environment = Posix.environment()
        for name in ["SSL_CERT_FILE", "CURL_CA_BUNDLE"] {
            if let path = environment[name], !path.isEmpty { return path }
        }
        return [
            "/etc/ssl/certs/ca-certificates.crt", "/etc/pki/tls/certs/ca-bundle.crt",
            "/etc/pki/ca-trust/extracted/pem/tls-ca-bundle.pem", "/etc/ssl/ca-bundle.pem", "/etc/ssl/cert.pem",
        ].first { access($0, R_OK) == 0 }
    }()

    /// Collects the reply body; the pointer is the `Collector` passed as user data.
    private final class Collector {
        var bytes: [UInt8] = []
        let limit: Int
        let abort: (() -> Bool)?
        init(limit: Int, abort: (() -> Bool)?) {
            self.limit = limit
            self.abort = abort
        }
    }

    /// Sends one request. `form` sends `application/x-www-form-urlencoded`, else `body` is JSON. A reply of
    /// 400 or more throws with the server's `detail` when it gave one. `abort`, asked about once a second while
    /// the reply is awaited, ends the request when it says true (a `SyncError` with `aborted`); `timeout`
    /// replaces the client's for this request (a held push waits longer than a request takes).
    @discardableResult
    public func send(
        _ method: String, _ path: String, json body: JSONValue? = nil, form: [(String, String)]? = nil,
        limit: Int = 1 << 30, timeout: Int? = nil, abort: (() -> Bool)? = nil
    ) throws(SyncError) -> HTTPResponse {
        let url = root + (path.hasPrefix("/") ? path : "/" + path)
        let what = "\(method) \(url)"
        func check(_ code: CURLcode) throws(SyncError) {
            if code != CURLE_OK {
                var error = SyncError(status: nil, message: String(cString: curl_easy_strerror(code)), request: what)
                error.refused = code == CURLE_COULDNT_CONNECT
                error.aborted = code == CURLE_ABORTED_BY_CALLBACK
                throw error
            }
        }
        curl_easy_reset(handle)
        var payload: [UInt8]?
        var headers: [String] = ["Accept: application/json", "Expect:"]
        if let token { headers.append("Authorization: Bearer \(token)") }
        if let form {
            payload = Array(form.map { "\(formEncode($0.0))=\(formEncode($0.1))" }.joined(separator: "&").utf8)
            headers.append("Content-Type: application/x-www-form-urlencoded")
        } else if let body {
            var bytes: [UInt8] = []
            body.write(to: &bytes)
            payload = bytes
            headers.append("Content-Type: application/json")
        }
        var list: UnsafeMutablePointer<curl_slist>?
        for header in headers { list = curl_slist_append(list, header) }
        defer { curl_slist_free_all(list) }
        let collector = Collector(limit: limit, abort: abort)
        let unmanaged = Unmanaged.passRetained(collector)
        defer { unmanaged.release() }
        try check(ccurl_setopt_string(handle, CURLOPT_URL, url))
        try check(ccurl_setopt_string(handle, CURLOPT_CUSTOMREQUEST, method))
        try check(ccurl_setopt_pointer(handle, CURLOPT_HTTPHEADER, UnsafeMutableRawPointer(list)))
        try check(ccurl_setopt_long(handle, CURLOPT_CONNECTTIMEOUT, connectTimeout))
        try check(ccurl_setopt_long(handle, CURLOPT_TIMEOUT, timeout ?? self.timeout))
        try check(ccurl_setopt_long(handle, CURLOPT_NOSIGNAL, 1))
        try check(ccurl_setopt_string(handle, CURLOPT_ACCEPT_ENCODING, ""))
        if let caFile { try check(ccurl_setopt_string(handle, CURLOPT_CAINFO, caFile)) }
        try check(ccurl_setopt_pointer(handle, CURLOPT_WRITEDATA, unmanaged.toOpaque()))
        try check(
            ccurl_setopt_write_function(handle) { data, size, count, user in
                guard let user, let data else { return 0 }
                let collector = Unmanaged<Collector>.fromOpaque(user).takeUnretainedValue()
                let n = size * count
                if collector.bytes.count + n > collector.limit { return 0 }
                data.withMemoryRebound(to: UInt8.self, capacity: n) { bytes in
                    collector.bytes.append(contentsOf: UnsafeBufferPointer(start: bytes, count: n))
                }
                return n
            })
        if abort != nil {
            try check(ccurl_setopt_long(handle, CURLOPT_NOPROGRESS, 0))
            try check(ccurl_setopt_pointer(handle, CURLOPT_XFERINFODATA, unmanaged.toOpaque()))
            try check(
                ccurl_setopt_xferinfo_function(handle) { user, _, _, _, _ in
                    guard let user else { return 0 }
                    let collector = Unmanaged<Collector>.fromOpaque(user).takeUnretainedValue()
                    return collector.abort?() == true ? 1 : 0
                })
        }
        let code: CURLcode =
            if var payload {
                payload.withUnsafeMutableBytes { buffer in
                    _ = ccurl_setopt_long(handle, CURLOPT_POSTFIELDSIZE, buffer.count)
                    _ = ccurl_setopt_pointer(handle, CURLOPT_POSTFIELDS, buffer.baseAddress)
                    return curl_easy_perform(handle)
                }
            } else {
                curl_easy_perform(handle)
            }
        try check(code)
        var status = 0
        try check(ccurl_getinfo_long(handle, CURLINFO_RESPONSE_CODE, &status))
        let response = HTTPResponse(status: status, body: collector.bytes)
        if status >= 400 {
            let reply = (try? response.json())?.objectValue
            throw SyncError(
                status: status,
                message: reply?["detail"]?.stringValue
                    ?? String(decoding: collector.bytes.prefix(300), as: UTF8.self),
                request: what, field: reply?["field"]?.stringValue)
        }
        return response
    }
}

/// `application/x-www-form-urlencoded` escaping: letters, digits and `-._~` stay, everything else is `%XX`.
func formEncode(_ text: String) -> String {
    var out = ""
    for byte in text.utf8 {
        switch byte {
        case UInt8(ascii: "A")...UInt8(ascii: "Z"), UInt8(ascii: "a")...UInt8(ascii: "z"),
            UInt8(ascii: "0")...UInt8(ascii: "9"), UInt8(ascii: "-"), UInt8(ascii: "."), UInt8(ascii: "_"),
            UInt8(ascii: "~"):
            out.append(Character(Unicode.Scalar(byte)))
        default:
            let hex = String(byte, radix: 16, uppercase: true)
            out += "%" + (hex.count == 1 ? "0" + hex : hex)
        }
    }
    return out
}
