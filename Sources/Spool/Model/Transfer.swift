#if canImport(Glibc)
    import Glibc
#endif

/// One transfer slot of an app (`transfers:` in `app.yml`, the original's keys): a file or directory a job
/// brings in before it runs or sends out after.
public struct TransferSlot: Sendable, Equatable {
    public enum Direction: String, Sendable { case `in`, out }

    public var name: String
    /// Whether every job must fill the slot.
    public var required: Bool
    public var direction: Direction
    /// Where in the job's directory: relative, inside it (no `..`, not absolute).
    public var localPath: String
    public var description: String
    /// Whether the remote side is a directory, copied whole.
    public var recursive: Bool

    /// The app's slots from its `transfers` mapping; an error names the slot and key.
    public static func slots(of app: App) throws(SpoolError) -> [String: TransferSlot] {
        var slots: [String: TransferSlot] = [:]
        for (name, value) in app.transfers {
            func bad(_ key: String, _ problem: String) -> SpoolError {
                SpoolError(.invalidInput, "app '\(app.name)': transfers.\(name).\(key) \(problem)")
            }
            guard case .object(let o) = value else {
                throw SpoolError(
                    .invalidInput,
                    "app '\(app.name)': transfers.\(name) must be a mapping {required, direction, local_path, description, recursive}"
                )
            }
            guard let direction = o["direction"]?.stringValue.flatMap(Direction.init(rawValue:)) else {
                throw bad("direction", "must be 'in' or 'out'")
            }
            guard let localPath = o["local_path"]?.stringValue, !localPath.isEmpty else {
                throw bad("local_path", "is required: a path inside the job's directory")
            }
            if let problem = TransferSlot.unsafeLocalPath(localPath) { throw bad("local_path", problem) }
            func flag(_ key: String, _ fallback: Bool) throws(SpoolError) -> Bool {
                switch o[key] {
                case nil, .null?: return fallback
                case .bool(let b)?: return b
                default: throw bad(key, "must be true or false")
                }
            }
            slots[name] = TransferSlot(
                name: name, required: try flag("required", true), direction: direction, localPath: localPath,
                description: o["description"]?.stringValue ?? "", recursive: try flag("recursive", false))
        }
        return slots
    }

    /// Why `path` could leave the job's directory (absolute, `..`, empty components), or nil.
    public static func unsafeLocalPath(_ path: String) -> String? {
        if path.hasPrefix("/") { return "'\(path)' must be relative to the job's directory" }
        for component in path.split(separator: "/", omittingEmptySubsequences: false) where component == ".." {
            return "'\(path)' must not contain '..'"
        }
        if path.utf8.contains(0) { return "'\(path)' contains a NUL" }
        return nil
    }
}

/// Where a transfer location (`transfer_locations: {ALIAS: URL}` in settings.yml) is, and by which protocol.
public struct TransferLocation: Sendable, Equatable {
    public enum Kind: String, Sendable { case local, rsync, globus }

    public var alias: String
    public var url: String
    public var kind: Kind
    /// `[USER@]HOST[:PORT]` (rsync) or the endpoint ID (globus); empty for local.
    public var host: String
    /// A prefix joined to the jobs' remote paths ("" or "/"-less for none).
    public var basePath: String

    /// `file:///path`, a plain absolute path, `rsync://[USER@]HOST[:PORT][/path]` or `globus://ENDPOINT[/path]`.
    public init(alias: String, url: String) throws(SpoolError) {
        self.alias = alias
        self.url = url
        func bad(_ why: String) -> SpoolError {
            SpoolError(.invalidInput, "transfer_locations.\(alias): '\(url)' \(why)")
        }
        if url.hasPrefix("/") {
            kind = .local
            host = ""
            basePath = url
        } else if let scheme = url.firstRange(of: "://") {
            let name = String(url[..<scheme.lowerBound])
            let rest = url[scheme.upperBound...]
            let slash = rest.firstIndex(of: "/") ?? rest.endIndex
            host = String(rest[..<slash])
            basePath = String(rest[slash...])
            switch name {
            case "file":
                kind = .local
                if !host.isEmpty && host != "localhost" { throw bad("names a host; file:// locations are local") }
                host = ""
                basePath = Self.percentDecoded(basePath)
            case "rsync":
                kind = .rsync
                if host.isEmpty { throw bad("needs a host: rsync://[USER@]HOST[:PORT][/path]") }
            case "globus":
                kind = .globus
                if host.isEmpty { throw bad("needs an endpoint ID: globus://ENDPOINT[/path]") }
            default:
                throw bad("has an unknown scheme '\(name)' (file, rsync or globus)")
            }
            // What the server shows the original client must read there (`ClientURL`).
            if let problem = ClientURL.problem(clientURL) { throw bad(problem) }
        } else {
            throw bad("must be file:///path, an absolute path, rsync://[USER@]HOST/path or globus://ENDPOINT/path")
        }
        while basePath.hasSuffix("/") { basePath.removeLast() }
    }

    /// The location as the original client reads it (`ClientURL`): a local one as `file://localhost/path`
    /// (`file:///path` has no host for it), its path percent-encoded where a URL's path cannot hold a byte as it
    /// is (a space, `?`, `#`, anything outside ASCII), so that any directory a site may use reads there; the
    /// others as written.
    public var clientURL: String {
        guard kind == .local else { return url }
        let path = basePath.hasPrefix("/") ? basePath : "/" + basePath
        let plain = Set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~/!$&'()*+,;=:@".utf8)
        let hex = Array("0123456789ABCDEF".utf8)
        var out = Array("file://localhost".utf8)
        for byte in path.utf8 {
            if plain.contains(byte) {
                out.append(byte)
            } else {
                out += [0x25, hex[Int(byte >> 4)], hex[Int(byte & 15)]]
            }
        }
        return String(decoding: out, as: UTF8.self)
    }

    /// A URL path with its `%XX` escapes read (a `%` not followed by two hex digits stays as it is).
    static func percentDecoded(_ path: String) -> String {
        let bytes = Array(path.utf8)
        var out: [UInt8] = []
        var i = 0
        while i < bytes.count {
            if bytes[i] == 0x25, i + 2 < bytes.count,
                let high = Character(UnicodeScalar(bytes[i + 1])).hexDigitValue,
                let low = Character(UnicodeScalar(bytes[i + 2])).hexDigitValue
            {
                out.append(UInt8(high << 4 | low))
                i += 3
            } else {
                out.append(bytes[i])
                i += 1
            }
        }
        return String(decoding: out, as: UTF8.self)
    }

    /// The full remote path of a job's `path` (absolute) at this location.
    public func remotePath(_ path: String) -> String { basePath + path }
}

/// The state of a transfer item: the original's, and `skipped` (the site's own, never sent to a server, whose
/// original client does not know it): an item not started when its job ended `FAILED`.
public enum TransferState: String, Sendable, CaseIterable {
    case awaitingJob = "awaiting_job"
    case pending, active, inactive, done, error, skipped
}

/// One transfer of one job's slot. A job's items live in `transfers.json` in its directory.
public struct TransferItem: Sendable, Equatable {
    public var slot: String
    public var direction: TransferSlot.Direction
    /// Relative to the job's directory.
    public var localPath: String
    public var alias: String
    /// Absolute, at the location (before its base path is joined).
    public var remotePath: String
    public var recursive: Bool
    public var state: TransferState
    /// `PROTOCOL:ID` of the task moving it, while active.
    public var taskID: String?
    /// Progress and errors, as the backend says.
    public var info: [String: JSONValue] = [:]
    /// Failed attempts so far.
    public var attempts = 0

    public init(
        slot: String, direction: TransferSlot.Direction, localPath: String, alias: String, remotePath: String,
        recursive: Bool, state: TransferState
    ) {
        self.slot = slot
        self.direction = direction
        self.localPath = localPath
        self.alias = alias
        self.remotePath = remotePath
        self.recursive = recursive
        self.state = state
    }

    public var json: JSONValue {
        .object([
            "slot": .string(slot), "direction": .string(direction.rawValue), "local_path": .string(localPath),
            "location_alias": .string(alias), "remote_path": .string(remotePath), "recursive": .bool(recursive),
            "state": .string(state.rawValue), "task_id": taskID.map(JSONValue.string) ?? .null,
            "transfer_info": .object(info), "attempts": .int(attempts),
        ])
    }

    public init(json: JSONValue) throws(SpoolError) {
        guard case .object(let o) = json, let slot = o["slot"]?.stringValue,
            let direction = o["direction"]?.stringValue.flatMap(TransferSlot.Direction.init(rawValue:)),
            let localPath = o["local_path"]?.stringValue, let alias = o["location_alias"]?.stringValue,
            let remotePath = o["remote_path"]?.stringValue,
            let state = o["state"]?.stringValue.flatMap(TransferState.init(rawValue:))
        else { throw SpoolError(.invalidInput, "malformed transfer item \(json.serialized())") }
        self.init(
            slot: slot, direction: direction, localPath: localPath, alias: alias, remotePath: remotePath,
            recursive: o["recursive"] == .bool(true), state: state)
        taskID = o["task_id"]?.stringValue
        info = o["transfer_info"]?.objectValue ?? [:]
        attempts = o["attempts"]?.intValue ?? 0
    }

    /// The items of `job` of `app`: one per slot the job fills, stage-ins pending, stage-outs awaiting the job.
    /// `slots`: the app's, when the caller has them already.
    public static func items(for job: Job, app: App, slots known: [String: TransferSlot]? = nil)
        throws(SpoolError) -> [TransferItem]
    {
        let slots: [String: TransferSlot]
        if let known { slots = known } else { slots = try TransferSlot.slots(of: app) }
        var items: [TransferItem] = []
        for (slotName, value) in job.transfers.sorted(by: { $0.key < $1.key }) {
            guard let slot = slots[slotName] else {
                let known = slots.keys.sorted().joined(separator: ", ")
                throw SpoolError(
                    .invalidInput,
                    "app '\(app.name)' has no transfer slot '\(slotName)' (its slots: \(known.isEmpty ? "none" : known))"
                )
            }
            let (alias, path) = try Job.transferTarget(slot: slotName, value)
            items.append(
                TransferItem(
                    slot: slotName, direction: slot.direction, localPath: slot.localPath, alias: alias,
                    remotePath: path, recursive: slot.recursive,
                    state: slot.direction == .in ? .pending : .awaitingJob))
        }
        for (name, slot) in slots.sorted(by: { $0.key < $1.key }) where slot.required && job.transfers[name] == nil {
            throw SpoolError(.invalidInput, "missing required transfer slot '\(name)' of app '\(app.name)'")
        }
        return items
    }

    /// Whether a job in `state` is past its stage of `direction` (its items of it are done, unless it failed).
    public static func isPast(_ direction: TransferSlot.Direction, _ state: JobState) -> Bool {
        switch direction {
        case .in: return ![.awaitingParents, .ready, .failed].contains(state)
        case .out: return [.stagedOut, .jobFinished].contains(state)
        }
    }

    /// A job leaving `FAILED` for `next` (a retry) starts over the stages `next` has not passed: each of their
    /// items goes back to where a new job's starts (a stage-in `pending`, a stage-out `awaiting_job`), with no
    /// attempts, task or error left from before; a stage-in already `done` keeps its data and stays done.
    /// Without this the old error is the new verdict (the job fails again at once), or nothing moves at all.
    public static func startOver(directory: String, for next: JobState) throws(SpoolError) {
        guard var items = try load(directory: directory) else { return }
        var changed = false
        for i in items.indices where !isPast(items[i].direction, next) {
            let initial: TransferState = items[i].direction == .in ? .pending : .awaitingJob
            if items[i].direction == .in && items[i].state == .done { continue }
            let fresh = items[i].state == initial && items[i].attempts == 0 && items[i].taskID == nil
            if fresh && items[i].info.isEmpty { continue }
            items[i].state = initial
            items[i].attempts = 0
            items[i].taskID = nil
            items[i].info = [:]
            changed = true
        }
        if changed { try save(items, directory: directory) }
    }

    /// A job that ended `FAILED`: its items not started (`awaiting_job`, `pending`) will not be, and say so
    /// (`skipped`, with why); a retry starts them over (`startOver`).
    public static func skipUnstarted(directory: String) throws(SpoolError) {
        guard var items = try load(directory: directory) else { return }
        var changed = false
        for i in items.indices where items[i].state == .awaitingJob || items[i].state == .pending {
            items[i].state = .skipped
            items[i].info["skipped"] = .string("the job ended FAILED before this transfer")
            changed = true
        }
        if changed { try save(items, directory: directory) }
    }

    /// The items file in a job's directory.
    public static let fileName = "transfers.json"

    /// Reads a job's items (nil: none recorded yet).
    public static func load(directory: String) throws(SpoolError) -> [TransferItem]? {
        let path = directory + "/" + fileName
        guard Posix.exists(path) else { return nil }
        let value: JSONValue
        do { value = try JSONValue.parse(try Posix.readFile(path, limit: 1 << 22)) } catch {
            throw SpoolError(.invalidInput, "malformed \(fileName): \(error)", path: path)
        }
        var items: [TransferItem] = []
        for item in value.objectValue?["items"]?.arrayValue ?? [] { items.append(try TransferItem(json: item)) }
        return items
    }

    /// Writes a job's items (write, rename; not fsynced: after a machine's crash an item is at worst moved
    /// again, never marked done before its data is in place).
    public static func save(_ items: [TransferItem], directory: String) throws(SpoolError) {
        let text = JSONValue.object(["items": .array(items.map(\.json))]).serialized() + "\n"
        try Posix.replaceFile(directory + "/" + fileName, Array(text.utf8), sync: false)
    }
}

extension Job {
    /// A transfer's `ALIAS:/path` or `{location_alias, path}` as (alias, path).
    public static func transferTarget(slot: String, _ value: JSONValue) throws(SpoolError) -> (String, String) {
        try validateTransfer(slot: slot, value)
        switch value {
        case .string(let s):
            let colon = s.firstIndex(of: ":") ?? s.startIndex
            return (String(s[..<colon]), String(s[s.index(after: colon)...]))
        case .object(let o):
            return (o["location_alias"]?.stringValue ?? "", o["path"]?.stringValue ?? "")
        default:
            throw fieldError("transfers.\(slot)", "must be \"ALIAS:/absolute/path\" or {location_alias, path}")
        }
    }
}
