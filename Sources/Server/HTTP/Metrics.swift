import Foundation
import Spool
import Synchronization
import Wire

/// What `GET /metrics` says, in Prometheus's text format (version 0.0.4): requests by route, method and status
/// with a latency histogram per route, pushes and events the sync took, its refusals by code, connections open
/// and refused against their caps, held pushes, and the database threads in use.
///
/// Labels come only from the server's own vocabulary, never from what a client sent: a route is the router's
/// pattern (`/jobs/{id}`), or `unmatched` for a path no route has; a method outside HTTP's usual ones is
/// `other`. So a client sending a million different paths adds no series (balsam-server(8), OPERATIONS).
final class ServerMetrics: Sendable {
    /// Latency buckets, seconds: from a cached read to a push held for news (at most 50 s).
    static let buckets: [Double] = [0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60]
    static let methods: Set<String> = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]

    private struct Latency {
        var counts = [UInt64](repeating: 0, count: ServerMetrics.buckets.count)
        var sum = 0.0
        var count: UInt64 = 0
    }

    /// One series of `balsam_http_requests_total`.
    private struct Series: Hashable, Comparable {
        let route: String
        let method: String
        let status: Int

        static func < (a: Series, b: Series) -> Bool { (a.route, a.method, a.status) < (b.route, b.method, b.status) }
        var labels: [String: String] { ["route": route, "method": method, "status": String(status)] }
    }

    private struct State {
        var requests: [Series: UInt64] = [:]
        var latency: [String: Latency] = [:]
        var pushes: UInt64 = 0
        var events: UInt64 = 0
        var refusals: [String: UInt64] = [:]
        /// Each site's latest reported lag, by the server's site id, with when it came (monotonic seconds).
        var lags: [Int: (seconds: Double, at: Double)] = [:]
    }

    /// A site's lag is shown this long after its latest push said it (a live site pushes at least every 50 s).
    static let lagShownSeconds = 300.0
    /// The most sites whose lag is kept: past it, those not heard from within `lagShownSeconds` are dropped, and
    /// a new site's lag is not kept until there is room.
    static let lagSites = 100_000

    private let state = Mutex(State())
    /// Read when scraped: set once the server is built.
    private let sources = Mutex<Sources?>(nil)

    struct Sources: Sendable {
        let connections: ConnectionTable
        let cap: Int
        let news: SiteNews
        let database: Database
    }

    func attach(_ sources: Sources) { self.sources.withLock { $0 = sources } }

    /// One request answered: `route` is the router's pattern (nil: none matched).
    func request(route: String?, method: String, status: Int, seconds: Double) {
        // Hummingbird names a request no route matched `NotFound`.
        let route = route.flatMap { $0 == "NotFound" ? nil : $0 } ?? "unmatched"
        let method = Self.methods.contains(method) ? method : "other"
        let key = Series(route: route, method: method, status: status)
        let seconds = seconds.isFinite ? max(0, seconds) : 0
        state.withLock { s in
            s.requests[key, default: 0] &+= 1
            var l = s.latency[route] ?? Latency()
            for (k, bound) in Self.buckets.enumerated() where seconds <= bound { l.counts[k] &+= 1 }
            l.sum += seconds
            l.count &+= 1
            s.latency[route] = l
        }
    }

    /// A push recorded: the events it took and what it refused; `first`: not a held push's run after news.
    func push(events: Int, refused: [SyncRefusal], first: Bool) {
        state.withLock { s in
            if first { s.pushes &+= 1 }
            s.events &+= UInt64(max(0, events))
            for r in refused { s.refusals[r.code.rawValue, default: 0] &+= 1 }
        }
    }

    /// Site `siteID`'s push said the oldest line it had not pushed was `seconds` old.
    func siteLag(_ siteID: Int, seconds: Double, now: Double = Posix.monotonicSeconds()) {
        state.withLock { s in
            if s.lags[siteID] == nil && s.lags.count >= Self.lagSites {
                s.lags = s.lags.filter { now - $0.value.at < Self.lagShownSeconds }
                if s.lags.count >= Self.lagSites { return }
            }
            s.lags[siteID] = (seconds, now)
        }
    }

    /// The exposition: every family with its HELP and TYPE, series sorted (a scrape reads the same order).
    func render() -> String {
        let s = state.withLock { $0 }
        var out = PrometheusText()
        out.family(
            "balsam_http_requests_total", "counter", "Requests answered, by route pattern, method and status.",
            s.requests.sorted { $0.key < $1.key }.map { ($0.key.labels, String($0.value)) })
        let name = "balsam_http_request_duration_seconds"
        out.family(name, "histogram", "Time to answer, by route pattern.", [])
        for (route, l) in s.latency.sorted(by: { $0.key < $1.key }) {
            for (k, bound) in Self.buckets.enumerated() {
                out.line(name + "_bucket", ["route": route, "le": PrometheusText.number(bound)], String(l.counts[k]))
            }
            out.line(name + "_bucket", ["route": route, "le": "+Inf"], String(l.count))
            out.line(name + "_sum", ["route": route], PrometheusText.number(l.sum))
            out.line(name + "_count", ["route": route], String(l.count))
        }
        out.family("balsam_sync_pushes_total", "counter", "Site pushes recorded.", [([:], String(s.pushes))])
        out.family("balsam_sync_events_total", "counter", "Site events recorded by pushes.", [([:], String(s.events))])
        out.family(
            "balsam_sync_refusals_total", "counter", "Objects of pushes refused, by the code the site is told.",
            SyncRefusal.Code.allCases.map { (["code": $0.rawValue], String(s.refusals[$0.rawValue] ?? 0)) })
        // Labelled by the server's own site id (a number it made), for sites heard from lately.
        let now = Posix.monotonicSeconds()
        let lags = s.lags.filter { now - $0.value.at < Self.lagShownSeconds }.sorted { $0.key < $1.key }
        out.family(
            "balsam_sync_site_lag_seconds", "gauge",
            "Age of the oldest event each site had not pushed, as its latest push said (sites heard from in 5 minutes).",
            lags.map { (["site_id": String($0.key)], PrometheusText.number($0.value.seconds)) })
        out.family(
            "balsam_sync_site_lag_max_seconds", "gauge", "The largest of balsam_sync_site_lag_seconds (0: none).",
            [([:], PrometheusText.number(lags.map(\.value.seconds).max() ?? 0))])
        if let sources = sources.withLock({ $0 }) {
            let c = sources.connections.counts
            func gauge(_ name: String, _ type: String, _ help: String, _ value: Int) {
                out.family(name, type, help, [([:], String(value))])
            }
            gauge("balsam_connections_open", "gauge", "Connections open now.", c.open)
            gauge("balsam_connections_max", "gauge", "The cap on connections open at once.", sources.cap)
            gauge(
                "balsam_connections_per_client_max", "gauge", "The cap on connections open from one address.",
                sources.connections.perClient)
            gauge(
                "balsam_connections_refused_total", "counter",
                "Connections closed at once: their address was at its cap.", c.refused)
            gauge(
                "balsam_connections_evicted_total", "counter", "Idle connections closed to make room near the cap.",
                c.evicted)
            gauge("balsam_sync_held_pushes", "gauge", "Site pushes held now, waiting for news.", sources.news.held)
            gauge(
                "balsam_database_threads", "gauge", "Database threads (and connections) of this process.",
                sources.database.threadCount)
            gauge(
                "balsam_database_threads_busy", "gauge", "Database threads running a request now.",
                sources.database.busyThreads)
        }
        return out.text
    }
}
