import Foundation
import Spool
import TestSupport
import Testing

/// The dashboard in a real browser (headless chromium driven by selenium, Tests/client/dashboard_test.py): a user
/// whose site ran jobs sees their counts, throughput, failures and batch jobs; a second user sees none of it; the
/// browser asks nothing of any address but the server's on loopback.
@Suite struct DashboardTests {
    static let browser = ProcessInfo.processInfo.environment["BALSAM_BROWSER_PYTHON"]

    @Test(
        "the dashboard after login shows the user's own sites, counts and failures, and nothing of another user's",
        .enabled(if: browser != nil || PythonTools.required, "dev/test makes the browser's venv"))
    func dashboardInABrowser() async throws {
        let python = try #require(DashboardTests.browser, "BALSAM_BROWSER_PYTHON is not set (dev/test sets it)")
        let server = try await LiveServer(.sqlite)
        defer { Task { try? await server.stop() } }
        let dir = server.dir
        let token = try await server.user("ada")
        _ = try await server.user("bob")
        try dir.file("token", token)
        let site = try Site.create(at: dir.path + "/site")
        try setSync(site, url: server.url, tokenFile: dir.path + "/token", period: 0.2)
        try site.createApp(try App(name: "hi", commandTemplate: "echo hi"))
        try site.createApp(try App(name: "bad", commandTemplate: "echo 'broken <b>'; exit 3"))
        let lines = (0..<5).map { #"{"app":"hi","workdir":"h/\#($0)"}"# } + [#"{"app":"bad","workdir":"b/0"}"#]
        let submitted = try balsamSubmit(
            ["--from", "-"], site: site.root, stdin: Data(lines.joined(separator: "\n").utf8))
        #expect(submitted.status == 0, "\(submitted.stderr)")
        let background = Background()
        defer { background.stop() }
        try background.start("balsam-watch", ["--site", site.root, "--log", dir.path + "/watch.log"])
        try background.start(
            "balsam-launcher", ["--site", site.root, "--wall-time-min", "1", "--idle-timeout", "60"],
            env: ["OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1"])
        try await waitFor("the jobs ended, on the server too", timeout: 60) {
            let jobs = try await server.request("GET", "/jobs/?limit=100", token: token)
            let states = (jobs.object["results"] as? [[String: Any]] ?? []).compactMap { $0["state"] as? String }
            return states.filter { $0 == "JOB_FINISHED" }.count == 5 && states.filter { $0 == "FAILED" }.count == 1
        }

        let screenshot = ProcessInfo.processInfo.environment["BALSAM_TEST_SCREENSHOT"] ?? dir.path + "/dashboard.png"
        let script = URL(fileURLWithPath: PythonTools.scriptPath).deletingLastPathComponent()
            .appendingPathComponent("dashboard_test.py").path
        let result = try await runOffPool(
            python, [script],
            env: [
                "BALSAM_TEST_SERVER": server.url, "BALSAM_TEST_USERS": "ada:ada-password,bob:bob-password",
                "BALSAM_TEST_SCREENSHOT": screenshot,
            ], timeout: 180)
        #expect(result.status == 0, "\(result.stdout)\n\(result.stderr)")
        let pages = result.stdout.split(separator: "\n").compactMap { try? JSONValue.parse(String($0)).objectValue }
        try #require(pages.count == 3, "\(result.stdout)\n\(result.stderr)")
        let ada = pages[0]
        let bob = pages[1]
        #expect(ada["login_page"]?.stringValue?.hasSuffix("/dashboard/login") == true)
        let sites = ada["sites"]?.arrayValue ?? []
        let shown = try #require(sites.first?.objectValue, "\(ada)")
        #expect(sites.count == 1 && shown["name"]?.stringValue == site.name)
        #expect(shown["total"]?.intValue == 6)
        #expect(shown["states"]?.objectValue?["JOB_FINISHED"]?.intValue == 5)
        #expect(shown["states"]?.objectValue?["FAILED"]?.intValue == 1)
        #expect(ada["finished"]?.intValue == 5 && (ada["busy"]?.doubleValue ?? 0) > 0, "\(ada)")
        // The launcher was started by hand: its node is held while it runs (it was "available 0" under "busy").
        #expect((ada["held"]?.doubleValue ?? 0) >= (ada["busy"]?.doubleValue ?? 1), "\(ada)")
        let failures = ada["failures"]?.arrayValue?.compactMap { $0.arrayValue?.compactMap(\.stringValue) } ?? []
        // One row for the failing job (its RUN_ERROR and its FAILED): one run, its exit status, both reasons and
        // its output's last line.
        #expect(failures.count == 1 && failures.allSatisfy { $0.contains("b/0") }, "\(failures)")
        let row = failures.first ?? []
        #expect(row.contains("1") && row.contains("3") && row.contains("broken <b>"), "\(row)")
        #expect(row.contains { $0.hasPrefix("exit status 3; ") }, "\(row)")
        #expect((ada["charts"]?.intValue ?? 0) >= 3 && ada["refresh"]?.stringValue == "15")
        // With no period asked for, the charts span the data's own (issue 35, item 10: a first day's work fills
        // them, not a sliver of 24 h): five labels on each time axis, all different, minutes apart, not a day;
        // "available" is dashed, so that it shows where it equals "busy".
        let axes = ada["axes"]?.arrayValue?.compactMap { $0.arrayValue?.compactMap(\.stringValue) } ?? []
        #expect(axes.count >= 2 && axes.allSatisfy { $0.count == 5 && Set($0).count == 5 }, "\(axes)")
        func minutes(_ label: String?) -> Int? {
            // "MM-DD HH:MM[:SS]"
            let parts = (label ?? "").split(whereSeparator: { "- :".contains($0) }).compactMap { Int($0) }
            return parts.count >= 4 ? parts[1] * 1440 + parts[2] * 60 + parts[3] : nil
        }
        let spans = axes.compactMap { axis in
            minutes(axis.last).flatMap { last in minutes(axis.first).map { last - $0 } }
        }
        #expect(spans.count == axes.count && spans.allSatisfy { $0 < 120 }, "the data's span, not a day: \(axes)")
        #expect(ada["dashed"]?.arrayValue == [.string("available")], "\(ada["dashed"] ?? .null)")
        #expect(ada["after_logout"]?.stringValue?.hasSuffix("/dashboard/login") == true)
        // The screenshot is a real PNG of the page.
        let png = [UInt8](try Data(contentsOf: URL(fileURLWithPath: screenshot)))
        #expect(png.starts(with: [0x89, 0x50, 0x4E, 0x47]) && png.count > 20_000, "\(png.count) bytes")
        // The second user: no sites, nothing finished, no failures, none of the first user's names.
        #expect(bob["sites"]?.arrayValue?.isEmpty == true && bob["finished"]?.intValue == 0, "\(bob)")
        #expect(bob["failures"]?.arrayValue?.isEmpty == true && bob["batch_jobs"]?.intValue == 0)
        let text = bob["text"]?.stringValue ?? ""
        #expect(!text.contains(site.name) && !text.contains("b/0") && text.contains("bob"), "\(text)")
        #expect((pages[2]["requests"]?.intValue ?? 0) >= 3, "the dashboard, its login and its logout")
    }
}
