import Foundation
import HTTPTypes
import HummingbirdCore
import Logging
import Spool
import Synchronization
import TestSupport
import Testing

@testable import Server

#if canImport(FoundationNetworking)
    import FoundationNetworking
#endif

/// Issue #37, item 1: `GET /healthz` for load balancers, `GET /metrics` for Prometheus on the operators' own
/// listener (`serve --metrics-listen`), scraped here by a real Prometheus (Debian's), whose queries must see the
/// counters move by exactly what the test did.
@Suite struct OperationsTests {
    @Test func healthzAnswers200AndA503NamingTheCauseWhenTheDatabaseDoesNotAnswer() async throws {
        let dir = try TempDir()
        let database = try Database(.sqlite(path: dir.path + "/db.sqlite"), threads: 1)
        let logger = Logger(label: "test")
        let ok = await Health.check(database, within: 5, logger: logger)
        #expect(ok.status.code == 200)
        // The one database thread held: the check gives up at its bound and says why.
        let release = DispatchSemaphore(value: 0)
        let holding = Task { try await database.run { _ in release.wait() } }
        try await Task.sleep(for: .milliseconds(50))
        let busy = await Health.check(database, within: 0.2, logger: logger)
        release.signal()
        _ = try await holding.value
        #expect(busy.status.code == 503)
        let collected = Collected()
        try await busy.body.write(collected)
        let text = String(decoding: collected.bytes.withLock { $0 }, as: UTF8.self)
        #expect(text.contains("the database did not answer within 0.2 s"), "\(text)")
        #expect(await Health.check(database, within: 5, logger: logger).status.code == 200)
    }

    @Test(
        "a real Prometheus scrapes /metrics: every scrape parses, and the counters move by what was done",
        .enabled(if: FileManager.default.isExecutableFile(atPath: "/usr/bin/prometheus"), "dev/install-deps"))
    func prometheusScrapesTheMetrics() async throws {
        let dir = try TempDir()
        let metricsPortFile = dir.path + "/metrics-port"
        let server = try await LiveServer(
            .sqlite, dir: dir, arguments: ["--metrics-listen", "127.0.0.1:0", "--metrics-port-file", metricsPortFile])
        defer { Task { try? await server.stop() } }
        let metricsPort = try String(contentsOfFile: metricsPortFile, encoding: .utf8)
            .trimmingCharacters(in: .whitespacesAndNewlines)
        // The public port has /healthz, not /metrics.
        let health = try await server.request("GET", "/healthz")
        #expect(health.status == 200 && health.text.contains("\"ok\""), "\(health.text)")
        #expect(try await server.request("GET", "/metrics").status == 404)

        let promPort = try freeLoopbackPort()
        try """
        global:
          scrape_interval: 1s
        scrape_configs:
          - job_name: balsam
            static_configs:
              - targets: ['127.0.0.1:\(metricsPort)']
        """.write(toFile: dir.path + "/prometheus.yml", atomically: false, encoding: .utf8)
        let prometheus = try Spawned(
            "/usr/bin/prometheus",
            [
                "--config.file=\(dir.path)/prometheus.yml", "--storage.tsdb.path=\(dir.path)/tsdb",
                "--web.listen-address=127.0.0.1:\(promPort)", "--log.level=warn",
            ], stderr: .file(dir.path + "/prometheus.log"))
        defer { prometheus.signal(SIGKILL) }
        /// One instant query's value, nil while it has none.
        func value(_ query: String) async -> Double? {
            var parts = URLComponents(string: "http://127.0.0.1:\(promPort)/api/v1/query")
            parts?.queryItems = [URLQueryItem(name: "query", value: query)]
            // A form decoder reads '+' as a space (le="+Inf").
            let encoded = parts?.percentEncodedQuery?.replacingOccurrences(of: "+", with: "%2B")
            parts?.percentEncodedQuery = encoded
            guard let url = parts?.url, let (data, _) = try? await URLSession.shared.data(from: url),
                let json = try? JSONValue.parse(Array(data)),
                let result = json.objectValue?["data"]?.objectValue?["result"]?.arrayValue?.first,
                let text = result.objectValue?["value"]?.arrayValue?.last?.stringValue
            else { return nil }
            return Double(text)
        }
        func eventually(_ what: String, _ query: String, _ expected: @escaping (Double) -> Bool) async throws {
            try await waitFor(what, timeout: 60) { await value(query).map(expected) ?? false }
        }
        try await eventually("Prometheus scraped the server and parsed it", "up{job=\"balsam\"}") { $0 == 1 }

        let token = try await server.user("olga")
        let listings = 7
        for _ in 0..<listings { #expect(try await server.request("GET", "/jobs/", token: token).status == 200) }
        #expect(try await server.request("GET", "/jobs/", token: "not-a-token").status == 401)
        let push = try await server.request(
            "POST", "/sync/push", json: ["site": ["name": "ops", "path": "/ops"], "unpushed_lag_seconds": 12.5],
            token: token)
        #expect(push.status == 200, "\(push.text)")
        // Hostile paths add no series: each is `unmatched`.
        var rng = SplitMix(seed: UInt64(saturating: Date().timeIntervalSince1970))
        for _ in 0..<40 {
            let path = "/" + (0..<12).map { _ in String(UnicodeScalar(UInt8(97 + rng.next() % 26))) }.joined()
            _ = try await server.request("GET", path)
        }
        try await eventually(
            "seven listings counted",
            "balsam_http_requests_total{route=\"/jobs\",method=\"GET\",status=\"200\"}"
        ) { $0 == Double(listings) }
        try await eventually(
            "the refused one counted", "balsam_http_requests_total{route=\"/jobs\",status=\"401\"}"
        ) { $0 == 1 }
        try await eventually(
            "the listings' latencies in the histogram",
            "balsam_http_request_duration_seconds_bucket{route=\"/jobs\",le=\"+Inf\"}"
        ) { $0 == Double(listings + 1) }
        try await eventually("the push counted", "balsam_sync_pushes_total") { $0 == 1 }
        try await eventually("the site's lag by its id", "balsam_sync_site_lag_seconds{site_id=\"1\"}") { $0 == 12.5 }
        try await eventually("the largest lag", "balsam_sync_site_lag_max_seconds") { $0 == 12.5 }
        // And the public port's one refusal of /metrics above.
        try await eventually(
            "the 40 strange paths in one series", "sum(balsam_http_requests_total{route=\"unmatched\"})"
        ) { $0 == 41 }
        try await eventually("one unmatched series", "count(balsam_http_requests_total{route=\"unmatched\"})") {
            $0 == 1
        }
        try await eventually("connections and their cap", "balsam_connections_max") { $0 == 2048 || $0 > 16 }
        try await eventually("the database threads", "balsam_database_threads") { $0 == 4 }
        #expect(await value("balsam_connections_open").map { $0 >= 0 } == true)
    }
}

extension OperationsTests {
    @Test func theServersJSONLinesParseAndEachRequestCarriesItsIdRouteAndStatus() async throws {
        let server = try await LiveServer(.sqlite, arguments: ["--log-format", "json"])
        defer { Task { try? await server.stop() } }
        #expect(try await server.request("GET", "/jobs/?x=\"%0A", token: "forged").status == 401)
        try await waitFor("the request's line") { server.log.contains("\"request\"") }
        var ids: Set<String> = []
        for line in server.log.split(separator: "\n") {
            let object = try #require(try JSONValue.parse(String(line)).objectValue, "\(line)")
            #expect(object["program"]?.stringValue == "balsam-server")
            if object["message"]?.stringValue == "request" {
                #expect(object["route"]?.stringValue == "/jobs" && object["status"]?.stringValue == "401")
                if let id = object["request_id"]?.stringValue { ids.insert(id) }
            }
        }
        #expect(ids.count == 1)
    }
}

/// A free loopback TCP port (bound and released: another process may take it in between, rarely).
func freeLoopbackPort() throws -> Int {
    let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    defer { close(fd) }
    var address = sockaddr_in()
    address.sin_family = sa_family_t(AF_INET)
    address.sin_addr.s_addr = inet_addr("127.0.0.1")
    address.sin_port = 0
    var bound = withUnsafePointer(to: &address) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
    }
    guard bound == 0 else { throw ServerTestError(description: "bind: \(errno)") }
    var length = socklen_t(MemoryLayout<sockaddr_in>.size)
    bound = withUnsafeMutablePointer(to: &address) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &length) }
    }
    return Int(UInt16(bigEndian: address.sin_port))
}
