/// A change of a job's transfer item asked through the server (`PUT /transfers/ID` on a site's job): an item marked
/// `done` (its data is in place), `pending` (try it again, attempts starting over) or `error` (give up: the job
/// fails). Written to the job's `transfers.json`; a marker in `queue/control/` tells the watcher's transfer
/// service to read the job's items again.
public struct TransferChange {
    public let site: Site

    public init(site: Site) { self.site = site }

    /// The marker for job `id`.
    public static func markerPath(_ site: Site, _ id: String) -> String { site.controlPath + "/transfers." + id }

    /// Applies `target` (`{direction, local_path, remote_path, location_alias, state}`) to the job listed;
    /// returns the outcome (`done` or `refused`) and why it was refused.
    public func apply(_ target: String, to listing: JobListing) throws(SpoolError) -> (String, String?) {
        guard listing.state == .ready || listing.state == .postprocessed else {
            return ("refused", "job \(listing.id) is \(listing.state.rawValue), not waiting for its transfers")
        }
        guard case .object(let o)? = try? JSONValue.parse(Array(target.utf8)),
            let state = o["state"]?.stringValue.flatMap(TransferState.init(rawValue:)),
            [.pending, .done, .error].contains(state)
        else {
            return ("refused", "a transfer item can be made pending, done or error here, not \(target)")
        }
        let directory = site.jobDirectory(listing.workdir)
        let job = try Job(bytes: try Posix.readFile(directory + "/job.json", limit: Job.Limits.fileBytes))
        var items: [TransferItem]
        if let saved = try TransferItem.load(directory: directory) {
            items = saved
        } else {
            items = try TransferItem.items(for: job, app: try site.app(job.app))
        }
        guard
            let i = items.firstIndex(where: {
                $0.direction.rawValue == o["direction"]?.stringValue && $0.localPath == o["local_path"]?.stringValue
                    && $0.remotePath == o["remote_path"]?.stringValue && $0.alias == o["location_alias"]?.stringValue
            })
        else { return ("refused", "job \(listing.id) has no such transfer item") }
        items[i].state = state
        items[i].taskID = nil
        switch state {
        case .pending:
            items[i].attempts = 0
            items[i].info["error"] = nil
        case .error: items[i].info["error"] = .string("marked error through the API")
        default: items[i].info["error"] = nil
        }
        items[i].info["changed_through_the_api"] = .bool(true)
        try TransferItem.save(items, directory: directory)
        try Posix.replaceFile(TransferChange.markerPath(site, listing.id), [], sync: false)
        return ("done", nil)
    }
}
