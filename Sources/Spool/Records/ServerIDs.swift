/// Which id the server gave each of the site's jobs, as the sync learned it: `SITE/sync/server-ids.tsv`, a line
/// `ID TAB SERVER-ID` appended for each job a push reply or a job made through the API named (one write per
/// round; a later line wins, as after a server that lost the site registered it again). With it every command
/// that takes a job ID takes the ids the original client and CLI show (`balsam show 91`), and `show` and `ls
/// --json` give both.
public enum ServerIDs {
    /// The file of `site`.
    public static func path(_ site: Site) -> String { site.root + "/sync/server-ids.tsv" }

    /// Records that the server knows these jobs (site ID, server id) by these ids.
    public static func append(_ site: Site, _ pairs: some Sequence<(String, Int)>) throws(SpoolError) {
        var out: [UInt8] = []
        for (id, serverID) in pairs where JobID.isValid(id) && serverID > 0 {
            out += Array("\(id)\t\(serverID)\n".utf8)
        }
        guard !out.isEmpty else { return }
        try Posix.makeDirectories(site.root + "/sync")
        // Kept open between pushes, as the event log is (`AppendFiles`).
        try AppendFiles.shared.append(path(site), out, sync: false)
    }

    /// The map both ways, as the file says.
    public struct Map: Sendable {
        public var bySite: [String: Int] = [:]
        public var byServer: [Int: String] = [:]
        public init() {}

        /// The site's job ID that `key` names as a server id (digits), or nil: not digits, or no job of this
        /// site has that id (yet).
        public func jobID(_ key: String) -> String? {
            guard ServerIDs.isServerID(key), let serverID = Int(key) else { return nil }
            return byServer[serverID]
        }
    }

    /// The map (empty when the site never synced).
    public static func load(_ site: Site) -> Map {
        var map = Map()
        guard let bytes = try? Posix.readFile(path(site), limit: 1 << 30) else { return map }
        forEachLine(bytes) { line in
            let fields = line.split(separator: UInt8(ascii: "\t"))
            guard fields.count == 2, let serverID = Int(String(decoding: fields[1], as: UTF8.self)) else { return }
            let id = String(decoding: fields[0], as: UTF8.self)
            if let old = map.bySite[id] { map.byServer[old] = nil }
            map.bySite[id] = serverID
            map.byServer[serverID] = id
        }
        return map
    }

    /// Whether `key` is written as a server id (digits only, as the original shows them).
    public static func isServerID(_ key: String) -> Bool {
        !key.isEmpty && key.count <= 18 && key.utf8.allSatisfy { $0 >= 0x30 && $0 <= 0x39 }
    }
}
