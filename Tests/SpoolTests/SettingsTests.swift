import Foundation
import TestSupport
import Testing

@testable import Spool

/// settings.yml as a user writes it: typos refused as in app.yml, broken YAML pointed at, the original's keys
/// accepted.
@Suite struct SettingsTests {
    func loading(_ text: String) throws -> Result<SiteSettings, SpoolError> {
        let dir = try TempDir()
        let site = try Site.create(at: dir.path + "/s")
        try text.write(toFile: site.settingsPath, atomically: true, encoding: .utf8)
        do { return .success(try SiteSettings.load(site)) } catch { return .failure(error) }
    }

    @Test(arguments: [
        ("launcher:\n  idel_ttl_sec: 5\n", "unknown key 'launcher.idel_ttl_sec' (launcher keys: ", "idle_ttl_sec"),
        ("elastic_queu:\n  submit_queue: debug\n", "unknown key 'elastic_queu' (top-level keys: ", "elastic_queue"),
        (
            "scheduler:\n  allowed_queues:\n    debug: {max_nodes: 2, max_walltim: 30}\n",
            "unknown key 'scheduler.allowed_queues.debug.max_walltim'", "max_walltime"
        ),
        ("sync:\n  url: http://x\n  peroid: 2\n", "unknown key 'sync.peroid' (sync keys: ", "period"),
        (
            "transfers:\n  on_transfer_error: {retries: 1, unreachable_timout_sec: 5}\n",
            "unknown key 'transfers.on_transfer_error.unreachable_timout_sec'", "unreachable_timeout_sec"
        ),
    ])
    func unknownKeysAreRefusedNamingTheKeyAndTheKnownOnes(text: String, message: String, known: String) throws {
        guard case .failure(let error) = try loading("name: s\n" + text) else {
            Issue.record("accepted: \(text)")
            return
        }
        #expect(error.code == .invalidInput && error.path?.hasSuffix("/settings.yml") == true)
        #expect(error.message.hasPrefix(message) && error.message.contains(known), "\(error)")
    }

    /// Each bounded number of the sync section, at random values across and around its documented range (ends,
    /// 0, fractions, out of range, not a number): accepted exactly when balsam-spool(5) says it is, and then
    /// loaded as written; refused naming the key otherwise. (`wait_for_news: 0`, documented as "polls every
    /// period", was refused as "not a positive number" until this test.)
    @Test func syncNumbersAreAcceptedExactlyInTheirDocumentedRanges() throws {
        let seed = UInt64.random(in: 1...UInt64(UInt32.max))
        var rng = SplitMix(seed: seed)
        let ranges: [(key: String, low: Double, lowIncluded: Bool, high: Double)] = [
            ("wait_for_news", 0, true, 50), ("period", 0, false, 3600),
        ]
        for (key, low, lowIncluded, high) in ranges {
            let edges = [low, high, low - 1, high + 1, high + 0.5, 0, 0.25, -0.5]
            let values =
                edges + (0..<12).map { _ in Double(Int.random(in: -20...Int(saturating: high) + 20, using: &rng)) / 2 }
            for value in values {
                let text = "name: s\nsync:\n  url: http://127.0.0.1:9\n  \(key): \(value)\n"
                let accepted = (lowIncluded ? value >= low : value > low) && value <= high
                switch try loading(text) {
                case .success(let settings):
                    #expect(accepted, "seed \(seed): \(key) \(value) accepted")
                    let loaded =
                        key == "period"
                        ? settings.sync?.periodSeconds : settings.sync.map { Double($0.waitForNewsSeconds) }
                    let expected = key == "period" ? value : Double(Int(saturating: value))
                    #expect(loaded == expected, "seed \(seed): \(key) \(value) loaded as \(String(describing: loaded))")
                case .failure(let error):
                    #expect(!accepted, "seed \(seed): \(key) \(value) refused: \(error)")
                    #expect(error.message.contains("sync.\(key)"), "\(error)")
                }
            }
            if case .success = try loading("name: s\nsync:\n  url: http://127.0.0.1:9\n  \(key): soon\n") {
                Issue.record("\(key): soon accepted")
            }
        }
    }

    @Test func theOriginalsKeysThatMeanNothingHereAreAccepted() throws {
        let text = """
            title: "Polaris"
            logging: {level: DEBUG, buffer_num_records: 1024}
            launcher:
              idle_ttl_sec: 5
              compute_node: balsam.platform.compute_node.PolarisNode
              serial_mode_startup_params: {cpu_affinity: none}
            processing: {num_workers: 5, prefetch_depth: 1000}
            queue_maintainer: {submit_period: 60}
            filter_tags: {any_tag_at_all: x}
            transfer_locations: {my_dtn: "file:///tmp"}

            """
        let settings = try loading(text).get()
        #expect(settings.launcher.idleSeconds == 5 && settings.filterTags == ["any_tag_at_all": "x"])
    }

    @Test func malformedYAMLNamesTheLineAndColumnAndShowsTheLine() throws {
        guard case .failure(let error) = try loading("name: s\nlauncher:\n  idle_ttl_sec: 60\n   delay_sec: [1\n")
        else {
            Issue.record("accepted")
            return
        }
        #expect(error.path?.hasSuffix("/settings.yml") == true)
        #expect(error.message.hasPrefix("malformed YAML: line 4, column "), "\(error)")
        #expect(error.message.contains("\n     delay_sec: [1\n"), "the line itself: \(error)")
        #expect(error.message.hasSuffix("^"), "a caret under the column: \(error)")
    }
}
