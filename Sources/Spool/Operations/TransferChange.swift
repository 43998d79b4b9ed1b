/// A change of a job's transfer item asked through the server (`PUT /transfers/ID` on a site's job): an item marked
/// `done` (its data is in place), `pending` (try it again, attempts starting over) or `error` (give up: the job
/// fails). Left in `queue/control/transfers.ID` for the watcher's transfer service, the one writer of a job's
/// `transfers.json`, which applies it (`apply(_:to:)`) and removes it.
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
        // The watcher's transfer service is the one writer of a job's items: it takes the change from here.
        let change = JSONValue.object(
            o.filter { ["direction", "local_path", "remote_path", "location_alias", "state"].contains($0.key) })
        try Posix.replaceFile(
            TransferChange.markerPath(site, listing.id), Array((change.serialized() + "\n").utf8), sync: true)
        return ("done", nil)
    }

    /// Applies a change left by `apply(_:to:)` to a job's items; false if no item matches.
    public static func apply(_ change: [String: JSONValue], to items: inout [TransferItem]) -> Bool {
        guard let state = change["state"]?.stringValue.flatMap(TransferState.init(rawValue:)),
            let i = items.firstIndex(where: {
                $0.direction.rawValue == change["direction"]?.stringValue
                    && $0.localPath == change["local_path"]?.stringValue
                    && $0.remotePath == change["remote_path"]?.stringValue
                    && $0.alias == change["location_alias"]?.stringValue
            })
        else { return false }
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
        return true
    }
}
