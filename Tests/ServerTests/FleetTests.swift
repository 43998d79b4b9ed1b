import Foundation
import Spool
import TestSupport
import Testing

/// `bench/fleet-bench` in small, with the built binaries: a few sites pushing to two server processes on one
/// PostgreSQL behind nginx, one server killed with SIGKILL mid-run and started again. Nothing a site wrote may be
/// lost or recorded twice, and the sites must catch up.
@Suite struct FleetTests {
    static let script = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .deletingLastPathComponent().appendingPathComponent("bench/fleet-bench").path

    @Test(
        "a server process killed mid-run: every site's events on the server once, the sites caught up",
        .enabled(if: Backend.postgresBase != nil, "PostgreSQL (BALSAM_TEST_POSTGRES)"),
        .enabled(if: FileManager.default.isExecutableFile(atPath: "/usr/sbin/nginx"), "nginx-light (dev/install-deps)"))
    func serverKilledMidRun() async throws {
        let dir = try TempDir()
        let result = dir.path + "/result.json"
        let r = try await runOffPool(
            "/usr/bin/python3",
            [
                Self.script, "--sites", "4", "--rate", "50", "--seconds", "14", "--db", "postgresql", "--servers", "2",
                "--kill-after", "4", "--down", "4", "--driver-threads", "4", "--json", result,
            ],
            env: ["BALSAM_BENCH_BIN": binDirectory], timeout: 300)
        #expect(r.status == 0, "\(r.stderr)")
        let o = try #require(
            try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: result))) as? [String: Any])
        let written = try #require(o["written"] as? Int)
        #expect(written > 500, "\(o)")
        // Every line of every site's log, on the server exactly once.
        #expect(o["logged"] as? Int == written, "\(o)")
        #expect(o["lost"] as? Int == 0, "\(o)")
        #expect(o["dup"] as? Int == 0, "\(o)")
        #expect(o["unpushed"] as? Int == 0, "\(o)")
        // The kill happened, and the server came back.
        #expect(o["killed_at"] is Double && o["restarted_at"] is Double, "\(o)")
        #expect((o["max_backoff"] as? Double ?? 99) <= 60, "\(o)")
        // Events written 10 s after the restart reached the server within 2 s.
        let late = o["lag_over_2s_until_after_restart"] as? Double
        #expect((late ?? 0) <= 10, "\(o)")
    }
}
