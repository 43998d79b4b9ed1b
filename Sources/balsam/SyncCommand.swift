import ArgumentParser
import BalsamCLI
import Spool
import Sync

#if canImport(Glibc)
    import Glibc
#endif

struct SyncCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "sync",
        abstract: "Mirror this site to its balsam-server (the sync: section of settings.yml).",
        discussion: """
            The site's event logs are the changelog: 'balsam sync push' sends what the server lacks, from the \
            cursor in SITE/sync/state.json, and moves the cursor once the server has it. See balsam(1).
            """,
        subcommands: [SyncPush.self, SyncStatus.self])
}

/// The site and its `sync:` settings, or a clear error when there are none.
func syncSettings(_ siteOption: SiteOption) throws(SpoolError) -> (Site, SiteSettings.Sync) {
    let site = try siteOption.open()
    guard let sync = try SiteSettings.load(site).sync else {
        throw SpoolError(
            .unavailable, "settings.yml has no sync: section (sync: {url: https://..., token_file: ...})",
            path: site.settingsPath)
    }
    return (site, sync)
}

struct SyncPush: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "push", abstract: "Push what the server lacks, until it has everything (or one round).")

    @OptionGroup var siteOption: SiteOption

    @Flag(name: .long, help: "One round only (at most 100,000 events, in requests of 5,000).")
    var once = false

    func run() throws {
        try reportingErrors("balsam sync push") {
            let (site, settings) = try syncSettings(siteOption)
            do {
                let pusher = try Pusher(site: site, settings: settings)
                var total = Pusher.Round()
                while true {
                    let round = try pusher.round()
                    total.events += round.events
                    total.sent += round.sent
                    total.jobs += round.jobs
                    total.newRefusals += round.newRefusals
                    if once || round.caughtUp { break }
                }
                print("pushed \(total.sent) events (\(total.events) new to the server) and \(total.jobs) jobs")
                for refusal in total.newRefusals { printError("balsam sync push: refused: \(refusal)") }
            } catch let error as SyncError {
                throw error.spoolError
            }
        }
    }
}

struct SyncStatus: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "status", abstract: "When the sync last succeeded, what it pushed, and its last error.")

    @OptionGroup var siteOption: SiteOption

    @Flag(name: .long, help: "Print JSON.")
    var json = false

    func run() throws {
        try reportingErrors("balsam sync status") {
            let (site, settings) = try syncSettings(siteOption)
            let state = try SyncState.load(site)
            let (pending, oldest) = try SyncState.unpushed(site, state)
            let lag = max(0, oldest.map { Timestamp.nowSeconds() - $0 } ?? 0)
            let fields: [(String, JSONValue)] = [
                ("server", .string(settings.url)), ("site_id", state.siteID.map { .int($0) } ?? .null),
                ("last_success", state.lastSuccess.map { .string($0) } ?? .null),
                ("last_pushed_events", .int(state.lastPushed)), ("unpushed_log_bytes", .int(pending)),
                ("unpushed_lag_seconds", .double((lag * 1000).rounded() / 1000)),
                ("last_error", state.lastError.map { .string($0) } ?? .null),
                ("last_error_time", state.lastErrorTime.map { .string($0) } ?? .null),
                ("refused", .object(state.refused.mapValues { .string($0) })),
                ("refused_here", .array(state.refusedHere.map(\.json))),
            ]
            if json {
                print(JSONValue.object(Dictionary(uniqueKeysWithValues: fields)).serialized())
            } else {
                for (key, value) in fields where key != "refused" && key != "refused_here" {
                    print("\(key): \(value.stringValue ?? (value == .null ? "-" : value.serialized()))")
                }
                // What one end refused of the other: left out of the mirror, with the reason.
                print("refused: \(state.refused.count)")
                for (key, reason) in state.refused.sorted(by: { $0.key < $1.key }) { print("  \(key): \(reason)") }
                // What this site refused of its users' requests through the server, newest first.
                print("refused here: \(state.refusedHere.count)")
                for r in state.refusedHere.reversed() { print("  \(r.time) \(r.what): \(r.reason)") }
            }
        }
    }
}
