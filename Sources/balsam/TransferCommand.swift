import ArgumentParser
import BalsamCLI
import Spool

struct TransferCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "transfer",
        abstract: "List jobs' stage-in and stage-out items (the transfer service is balsam-watch's).",
        discussion: "See balsam(1), section TRANSFERS, and balsam-spool(5).",
        subcommands: [TransferList.self])
}

struct TransferList: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "ls",
        abstract: "List transfer items: each job's slots, where they go, their state and their last error.",
        discussion: """
            Reads transfers.json in the directory of each job that has transfers (made by the watcher when the \
            job first waits for one; a job not there yet lists its slots as they will be).
            """)

    @OptionGroup var siteOption: SiteOption

    @Option(
        name: .long, help: "Only items in this state (awaiting_job, pending, active, inactive, done, error, skipped).")
    var state: String?

    @Option(
        name: .shortAndLong,
        help: ArgumentHelp(
            "Only the job of this workdir, or with *, ? or [...] the jobs whose workdirs match the glob (* matches / too).",
            valueName: "workdir"))
    var workdir: String?

    @Flag(name: .long, help: "Print JSON: one object per item per line, with the job's id and workdir.")
    var json = false

    func run() throws {
        try reportingErrors("balsam transfer ls") {
            if let state, TransferState(rawValue: state) == nil {
                throw SpoolError(
                    .usage,
                    "--state \(state): not a transfer state ("
                        + TransferState.allCases.map(\.rawValue).joined(separator: ", ") + ")")
            }
            let site = try siteOption.open()
            var filter = JobFilter()
            filter.workdir = workdir.map(WorkdirPattern.init)
            var apps: [String: App] = [:]
            var rows: [[String]] = []
            for listing in try Query(site: site).list(filter, load: true) {
                guard let job = listing.job, !job.transfers.isEmpty else { continue }
                var items: [TransferItem]
                if let saved = try TransferItem.load(directory: site.jobDirectory(job.workdir)) {
                    items = saved
                } else {
                    let app: App
                    if let known = apps[job.app] { app = known } else { app = try site.app(job.app) }
                    apps[job.app] = app
                    items = try TransferItem.items(for: job, app: app)
                    // Items done at the first try leave no file: a job past a stage has its items done.
                    for i in items.indices where TransferItem.isPast(items[i].direction, listing.state) {
                        items[i].state = .done
                    }
                }
                for item in items where state == nil || item.state.rawValue == state {
                    if json {
                        var o = item.json.objectValue ?? [:]
                        o["job_id"] = .string(listing.id)
                        o["workdir"] = .string(listing.workdir)
                        print(JSONValue.object(o).serialized())
                    } else {
                        rows.append([
                            listing.id, listing.workdir, item.slot, item.direction.rawValue,
                            item.alias + ":" + item.remotePath, item.state.rawValue,
                            item.info["error"]?.stringValue ?? "",
                        ])
                    }
                }
            }
            if !json {
                print(table(["JOB", "WORKDIR", "SLOT", "DIR", "REMOTE", "STATE", "ERROR"], rows))
            }
        }
    }
}
