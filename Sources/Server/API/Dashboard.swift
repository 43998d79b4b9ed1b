import Hummingbird
import Spool
import Wire

/// `/dashboard`: a page for a logged-in user, made whole by the server (HTML and SVG charts; no script, no build
/// step, nothing fetched from elsewhere): their sites with last contact and jobs by state, throughput and node
/// utilization over a chosen period, recent failures with their reasons, and batch jobs. It reloads itself every
/// `refreshSeconds` while open. Login is a form that sets an HttpOnly, SameSite=Strict cookie holding a login
/// token; every query is the user's own.
enum Dashboard {
    static let loginPath = "/dashboard/login"
    static let cookieName = "balsam_dashboard"
    static let refreshSeconds = 15
    /// The periods offered, in hours.
    static let periods: [(label: String, hours: Double)] = [("1 h", 1), ("6 h", 6), ("24 h", 24), ("7 d", 168)]

    /// The login token in a `Cookie:` header.
    static func cookieToken(_ header: String?) -> String? {
        guard let header else { return nil }
        for part in header.split(separator: ";") {
            let pair = String(part.drop { $0 == " " })
            if pair.hasPrefix(cookieName + "=") {
                let value = String(pair.dropFirst(cookieName.count + 1))
                return value.isEmpty ? nil : value
            }
        }
        return nil
    }

    static func loginPage(_ call: inout Call) throws -> Reply { .html(loginHTML(message: nil)) }

    static func loginHTML(message: String?) -> String {
        page(
            title: "Balsam: log in",
            body: """
                <h1>Balsam</h1>
                \(message.map { "<p class=\"error\">\(escape($0))</p>" } ?? "")
                <form method="post" action="\(loginPath)" class="login">
                <label>User name <input name="username" autocomplete="username" required></label>
                <label>Password <input name="password" type="password" autocomplete="current-password" required></label>
                <button type="submit">Log in</button>
                </form>
                """, refresh: false)
    }

    /// `POST /dashboard/login`: the form's user name and password; a cookie and the dashboard, or the form again.
    static func login(_ accounts: Accounts) -> Endpoints.Handler {
        { call in
            let fields = Dictionary(
                formPairs(String(decoding: call.body, as: UTF8.self)), uniquingKeysWith: { first, _ in first })
            guard let username = fields["username"], let password = fields["password"] else {
                return .html(loginHTML(message: "Give a user name and a password."), status: 400)
            }
            switch try accounts.checkPassword(username, password, client: call.client, connection: call.connection) {
            case .tooMany(let wait):
                var reply = Reply.html(
                    loginHTML(message: "Too many failed logins from your address: try again in \(wait) s."),
                    status: 429)
                reply.headers.append(("Retry-After", String(wait)))
                return reply
            case .failure(let hold):
                var reply = Reply.html(loginHTML(message: "Incorrect user name or password."), status: 401)
                reply.hold = hold
                return reply
            case .success(let user):
                let issued = try accounts.issueToken(
                    for: user, kind: "login", seconds: accounts.loginTokenSeconds, connection: call.connection)
                return .redirect(
                    "/dashboard",
                    [("Set-Cookie", "\(cookieName)=\(issued.token); Path=/dashboard; HttpOnly; SameSite=Strict")])
            }
        }
    }

    /// `POST /dashboard/logout`: the cookie cleared.
    static func logout(_ call: inout Call) throws -> Reply {
        .redirect(loginPath, [("Set-Cookie", "\(cookieName)=; Path=/dashboard; HttpOnly; SameSite=Strict; Max-Age=0")])
    }

    /// `GET /dashboard?hours=24&site_id=N`.
    // Over 100 lines: the page's queries in one transaction and the page built from them, in the order it shows them.
    static func dashboard(_ call: inout Call) throws -> Reply {
        let asked = try call.query.string("hours").map { text throws(ServerError) -> Double in
            guard let h = Double(text), h > 0, h <= 24 * 366 else {
                throw .badRequest("'\(text)' is not a number of hours", field: "hours")
            }
            return h
        }
        let siteFilter = try call.query.int("site_id")
        try call.query.finish()
        let c = call.connection
        let now = ServerClock.microseconds()
        // Without a period asked for: the data's own span, up to a day (a first day's work fills the charts
        // instead of a sliver of 24 h), at least 10 minutes.
        var since = now - Int64(saturating: (asked ?? 24) * 3600e6)
        if asked == nil {
            let site: SQL = siteFilter.map { "AND j.site_id = \(.of($0))" } ?? ""
            let first = try c.query(
                """
                SELECT MIN(e.timestamp) FROM events e JOIN jobs j ON j.id = e.job_id
                WHERE e.owner_id = \(.of(call.user.id)) AND e.timestamp >= \(.int(since)) \(site)
                """
            ).first.flatMap { $0.isNull(0) ? nil : Int64($0.int(0)) }
            if let first { since = min(max(since, first), now - 600_000_000) }
        }
        let hours = asked ?? Double(now - since) / 3600e6

        // Sites, with their last contact and their jobs by state.
        let sites = try c.query(
            "SELECT id, name, path, last_refresh FROM sites WHERE owner_id = \(.of(call.user.id)) ORDER BY name")
        var byState: [Int: [String: Int]] = [:]
        for r in try c.query(
            """
            SELECT site_id, state, CAST(sum(n) AS BIGINT) FROM job_counts WHERE owner_id = \(.of(call.user.id))
            GROUP BY site_id, state HAVING sum(n) > 0
            """)
        {
            byState[r.int(0), default: [:]][r.text(1)] = r.int(2)
        }
        let states = JobState.allCases.map(\.rawValue).filter { s in byState.values.contains { $0[s] != nil } }
        var siteRows = ""
        for r in sites {
            let counts = byState[r.int(0)] ?? [:]
            let total = counts.values.reduce(0, +)
            let link = "/dashboard?hours=\(format(hours))&site_id=\(r.int(0))"
            siteRows += "<tr\(siteFilter == r.int(0) ? " class=\"chosen\"" : "")><td><a href=\"\(link)\">"
            siteRows += "\(escape(r.text(1)))</a></td><td>\(escape(r.text(2)))</td>"
            siteRows += "<td>\(shown(Int64(r.int(3))))</td><td class=\"n\" data-total>\(total)</td>"
            for s in states { siteRows += "<td class=\"n\" data-state=\"\(s)\">\(counts[s] ?? 0)</td>" }
            siteRows += "</tr>\n"
        }
        let stateHeads = states.map { "<th>\($0)</th>" }.joined()

        // Throughput and utilization over the period: the charts' time axes span all of it.
        let period = (start: Double(since) / 1e6, end: Double(now) / 1e6)
        var window = ReportRoutes.Window(site: siteFilter, since: since, until: nil, bin: nil)
        let throughput = try ReportRoutes.throughput(call, window: &window, state: "JOB_FINISHED")
        let utilization = try ReportRoutes.utilization(call, window: window, steps: false, batchJob: nil)
        let throughputChart = Chart(
            title: "Jobs finished per \(Int(saturating: throughput.bin / 60)) min", unit: "jobs",
            series: [
                .init(
                    name: "JOB_FINISHED", color: "#2a6fdb", points: throughput.bins.map { ($0.start, Double($0.count)) }
                )
            ],
            width: throughput.bin, span: period, wholeNumbers: true
        ).svg()
        let utilizationChart = Chart(
            title: "Nodes busy and held, mean per \(Int(saturating: utilization.bin / 60)) min", unit: "nodes",
            series: [
                .init(name: "busy", color: "#d9480f", points: utilization.bins.map { ($0.start, $0.busy) }),
                .init(
                    name: "available", color: "#666", points: utilization.bins.map { ($0.start, $0.available) },
                    dashed: true),
            ], width: utilization.bin, span: period
        ).svg()

        // Recent failures and batch jobs.
        var failureRows = ""
        for f in try ReportRoutes.failures(call, window: window, limit: 20) {
            let reason = f.data["reason"]?.stringValue ?? f.data["error"]?.stringValue ?? ""
            let code = f.data["return_code"]?.intValue.map(String.init) ?? ""
            failureRows += "<tr><td>\(shown(f.time))</td><td class=\"n\">\(f.job)</td>"
            let lastLine = (f.data["tail"]?.stringValue ?? "").split(separator: "\n").last.map(String.init) ?? ""
            failureRows += "<td>\(escape(f.workdir))</td><td>\(escape(f.app))</td><td>\(f.state)</td>"
            failureRows += "<td class=\"n\">\(f.attempts)</td><td class=\"n\">\(code)</td><td>\(escape(reason))</td>"
            failureRows += "<td><code>\(escape(lastLine))</code></td></tr>\n"
        }
        var b = Conditions(owner: call.user.id, column: "b.owner_id")
        if let siteFilter { b.add("b.site_id = \(.of(siteFilter))") }
        let means = Dictionary(utilization.batchJobs.map { ($0.id, $0.mean) }, uniquingKeysWith: { a, _ in a })
        var batchRows = ""
        for r in try c.query(
            """
            SELECT b.id, s.name, b.state, b.num_nodes, b.queue, b.start_time, b.end_time FROM batch_jobs b
            JOIN sites s ON s.id = b.site_id WHERE \(b.sql) ORDER BY b.id DESC LIMIT 20
            """)
        {
            let mean = means[r.int(0)].map { "\(format($0 * 100)) %" } ?? ""
            batchRows +=
                "<tr><td class=\"n\">\(r.int(0))</td><td>\(escape(r.text(1)))</td><td>\(escape(r.text(2)))</td>"
            batchRows += "<td class=\"n\">\(r.int(3))</td><td>\(escape(r.text(4)))</td>"
            batchRows += "<td>\(r.isNull(5) ? "" : shown(Int64(r.int(5))))</td>"
            batchRows += "<td>\(r.isNull(6) ? "" : shown(Int64(r.int(6))))</td><td class=\"n\">\(mean)</td></tr>\n"
        }
        let periodLinks = periods.map { p in
            let site = siteFilter.map { "&site_id=\($0)" } ?? ""
            let chosen = p.hours == hours ? " class=\"chosen\"" : ""
            return "<a\(chosen) href=\"/dashboard?hours=\(format(p.hours))\(site)\">\(p.label)</a>"
        }.joined(separator: " ")
        let body = """
            <header><h1>Balsam</h1><span>\(escape(call.user.name))</span>
            <nav>Period: \(periodLinks)\(siteFilter == nil ? "" : " · <a href=\"/dashboard?hours=\(format(hours))\">all sites</a>")</nav>
            <form method="post" action="/dashboard/logout"><button type="submit">Log out</button></form></header>
            <h2>Sites</h2>
            <table id="sites"><tr><th>Site</th><th>Path</th><th>Last contact</th><th>Jobs</th>\(stateHeads)</tr>
            \(siteRows)</table>
            <h2>Throughput</h2>
            <p id="throughput-total"><span data-finished>\(throughput.total)</span> jobs finished in the last \(format(hours)) h \
            (\(format(throughput.rate * 60)) per minute from the first to the last)</p>
            \(throughputChart)
            <h2>Utilization</h2>
            <p>Busy node-seconds: <span data-busy>\(format(utilization.busyNodeSeconds))</span> of \
            <span data-held>\(format(utilization.bins.reduce(0) { $0 + $1.available } * utilization.bin))</span> held \
            (by batch jobs, and by launchers started by hand)</p>
            \(utilizationChart)
            <h2>Recent failures</h2>
            <table id="failures"><tr><th>Time</th><th>Job</th><th>Workdir</th><th>App</th><th>State</th><th>Runs</th><th>RC</th><th>Reason</th><th>Last output line</th></tr>
            \(failureRows)</table>
            <h2>Batch jobs</h2>
            <table id="batch-jobs"><tr><th>ID</th><th>Site</th><th>State</th><th>Nodes</th><th>Queue</th><th>Start</th><th>End</th><th>Utilization</th></tr>
            \(batchRows)</table>
            <footer>Shown \(shown(now)) UTC; this page reloads every \(refreshSeconds) s.</footer>
            """
        return .html(page(title: "Balsam: \(call.user.name)", body: body, refresh: true))
    }

    static func page(title: String, body: String, refresh: Bool) -> String {
        """
        <!DOCTYPE html>
        <html lang="en"><head><meta charset="utf-8">
        \(refresh ? "<meta http-equiv=\"refresh\" content=\"\(refreshSeconds)\">" : "")
        <meta name="viewport" content="width=device-width, initial-scale=1">
        <title>\(escape(title))</title>
        <style>
        body { font-family: sans-serif; margin: 1.5em; color: #222; }
        header { display: flex; gap: 1.5em; align-items: baseline; }
        header form { margin-left: auto; }
        table { border-collapse: collapse; margin-bottom: 1em; }
        th, td { border-bottom: 1px solid #ddd; padding: 0.2em 0.6em; text-align: left; font-size: 0.9em; }
        td.n { text-align: right; font-variant-numeric: tabular-nums; }
        tr.chosen td, a.chosen { font-weight: bold; }
        .error { color: #b00; }
        form.login label { display: block; margin: 0.5em 0; }
        svg text { font-size: 11px; fill: #444; }
        footer { color: #777; font-size: 0.8em; margin-top: 2em; }
        </style></head>
        <body>
        \(body)
        </body></html>
        """
    }

    /// A time to the second, as people read it (UTC).
    static func shown(_ micros: Int64) -> String {
        String(ServerClock.iso(micros).prefix(19).map { $0 == "T" ? " " : $0 })
    }

    static func escape(_ text: String) -> String {
        var out = ""
        for ch in text {
            switch ch {
            case "&": out += "&amp;"
            case "<": out += "&lt;"
            case ">": out += "&gt;"
            case "\"": out += "&quot;"
            case "'": out += "&#39;"
            default: out.append(ch)
            }
        }
        return out
    }

    static func format(_ v: Double) -> String {
        let r = (v * 100).rounded() / 100
        return r == r.rounded() && abs(r) < 1e15 ? String(Int(saturating: r)) : String(r)
    }
}

/// A step chart as inline SVG: bins drawn from their start to the next, a time axis in UTC.
struct Chart {
    struct Series {
        var name: String
        var color: String
        var points: [(Double, Double)]
        /// Drawn dashed (over the others, so that where two series are equal both show).
        var dashed = false
    }

    var title: String
    var unit: String
    var series: [Series]
    /// Seconds per bin (the last bin is drawn to its end).
    var width: Double
    /// The period the time axis spans, in seconds since the epoch (the one chosen); nil: the data's own.
    var span: (start: Double, end: Double)? = nil
    /// Whether the values are counts (ticks on whole numbers).
    var wholeNumbers = false

    func svg() -> String {
        let w = 900.0
        let h = 260.0
        let left = 50.0
        let right = 120.0
        let top = 24.0
        let bottom = 30.0
        let all = series.flatMap(\.points)
        guard let first = all.map(\.0).min(), let last = all.map(\.0).max().map({ $0 + width }) else {
            return "<p class=\"empty\">\(Dashboard.escape(title)): nothing in this period.</p>"
        }
        let x0 = min(span?.start ?? first, first)
        let x1 = max(span?.end ?? last, last)
        let ticks = AxisTicks.upTo(all.map(\.1).max() ?? 0, whole: wholeNumbers)
        let yMax = ticks.last ?? 1
        func x(_ t: Double) -> Double { left + (t - x0) / max(1, x1 - x0) * (w - left - right) }
        func y(_ v: Double) -> Double { h - bottom - v / yMax * (h - top - bottom) }
        func n(_ v: Double) -> String { String((v * 10).rounded() / 10) }
        var out =
            "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"\(Int(saturating: w))\" height=\"\(Int(saturating: h))\" "
        out += "role=\"img\" aria-label=\"\(Dashboard.escape(title))\">"
        out += "<text x=\"\(n(left))\" y=\"14\">\(Dashboard.escape(title))</text>"
        out += "<line x1=\"\(n(left))\" y1=\"\(n(y(0)))\" x2=\"\(n(w - right))\" y2=\"\(n(y(0)))\" stroke=\"#999\"/>"
        out += "<line x1=\"\(n(left))\" y1=\"\(n(top))\" x2=\"\(n(left))\" y2=\"\(n(y(0)))\" stroke=\"#999\"/>"
        for v in ticks {
            out += "<text x=\"\(n(left - 6))\" y=\"\(n(y(v) + 4))\" text-anchor=\"end\">\(Dashboard.format(v))</text>"
        }
        for k in 0...4 {
            let t = x0 + (x1 - x0) * Double(k) / 4
            let stamp = ServerClock.iso(Int64(saturating: t * 1e6))
            // Month, day, hours and minutes; seconds too when the span is under 5 minutes (labels that differ).
            let label = String(stamp.dropFirst(5).prefix(x1 - x0 < 300 ? 14 : 11)).replacingT()
            out += "<text x=\"\(n(x(t)))\" y=\"\(n(h - 10))\" text-anchor=\"middle\">\(label)</text>"
        }
        for (k, s) in series.enumerated() {
            var d = ""
            for (i, p) in s.points.enumerated() {
                let next = i + 1 < s.points.count ? s.points[i + 1].0 : p.0 + width
                d += "\(i == 0 ? "M" : "L")\(n(x(p.0))),\(n(y(p.1))) L\(n(x(next))),\(n(y(p.1))) "
            }
            let dash = s.dashed ? " stroke-dasharray=\"6 4\"" : ""
            out += "<path d=\"\(d)\" fill=\"none\" stroke=\"\(s.color)\" stroke-width=\"2\"\(dash) "
            out += "data-series=\"\(s.name)\"/>"
            let ly = top + 14 * Double(k)
            out += "<line x1=\"\(n(w - right + 10))\" y1=\"\(n(ly))\" x2=\"\(n(w - right + 30))\" y2=\"\(n(ly))\" "
            out += "stroke=\"\(s.color)\" stroke-width=\"2\"\(dash)/>"
            out += "<text x=\"\(n(w - right + 36))\" y=\"\(n(ly + 4))\">\(Dashboard.escape(s.name))</text>"
        }
        let unitY = top + 14 * Double(series.count) + 8
        out += "<text x=\"\(n(w - right + 10))\" y=\"\(n(unitY))\">\(Dashboard.escape(unit)); UTC</text></svg>"
        return out
    }
}

extension String {
    fileprivate func replacingT() -> String { String(map { $0 == "T" ? " " : $0 }) }
}

extension Dashboard {
    /// The login page and form, open to all.
    static func anonymous(_ e: Endpoints) -> RouteCollection<BalsamRequestContext> {
        RouteCollection(e, [(.get, "/login", loginPage), (.post, "/login", login(e.accounts))])
    }

    /// The pages behind the dashboard's cookie.
    static func pages(_ e: Endpoints) -> RouteCollection<BalsamRequestContext> {
        RouteCollection(e, [(.get, "/", dashboard), (.post, "/logout", logout)])
    }
}
