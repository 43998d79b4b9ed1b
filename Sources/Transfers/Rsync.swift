import Foundation
import Processes
import Spool
import Synchronization

#if canImport(Glibc)
    import Glibc
#endif

/// `rsync://[USER@]HOST[:PORT]` locations: one `rsync` over ssh per batch, so a thousand small files are one
/// connection, not a thousand.
///
/// Jobs' files have a path of their own on each side, which one rsync cannot pair up; so a batch goes through a
/// staging tree under the site's `data/` (the jobs' filesystem): stage-ins are fetched into it under their remote
/// paths (`--files-from`, paths read from a file: no shell sees them) and each is then renamed into its job's
/// directory; stage-outs are hard-linked into it (never following a link out of a job's directory) and sent from
/// it. rsync writes each file under a temporary name and renames it when complete, so a transfer cut short
/// leaves no file that looks whole. An item whose file did not arrive fails with rsync's own words about it.
public final class RsyncBackend: TransferBackend {
    let tasks = ThreadedTasks(prefix: "rsync")
    let site: Site
    let sshOptions: [String]
    /// How many rsyncs ran (each one ssh connection): for the benchmark and the tests.
    public var runs: Int { runCount.withLock { $0 } }
    private let runCount = Mutex(0)

    public init(site: Site, sshOptions: [String]) {
        self.site = site
        self.sshOptions = sshOptions
    }

    /// `-e` for rsync: ssh with the site's options, never asking a question, and the location's port. Batches to
    /// one host share one connection (ssh's ControlMaster, the socket under /tmp by user and a hash of the
    /// connection, kept 60 s after its last use), unless `ssh_options` set ControlMaster or ControlPath
    /// themselves: 10,000 small files in batches of 1,000 took 4.2–4.4 s instead of 5.0–5.5 (BENCHMARKS.md).
    func sshCommand(port: String?) -> String {
        var words = ["ssh", "-o", "BatchMode=yes"]
        if !sshOptions.contains(where: { $0.contains("ControlMaster") || $0.contains("ControlPath") }) {
            words += [
                "-o", "ControlMaster=auto", "-o", "ControlPath=/tmp/balsam-ssh-\(getuid())-%C",
                "-o", "ControlPersist=60",
            ]
        }
        words += sshOptions.map { Posix.expandTilde($0) }
        if let port { words += ["-p", port] }
        return words.map(CommandTemplate.shellQuote).joined(separator: " ")
    }

    public func submit(_ batch: [TransferRequest], direction: TransferSlot.Direction, location: TransferLocation)
        throws(SpoolError) -> String
    {
        var host = location.host
        var port: String?
        if let colon = host.lastIndex(of: ":"), !host[host.index(after: colon)...].isEmpty,
            host[host.index(after: colon)...].allSatisfy(\.isNumber)
        {
            port = String(host[host.index(after: colon)...])
            host = String(host[..<colon])
        }
        let ssh = sshCommand(port: port)
        let remote = host
        return tasks.start { [self] update in
            runCount.withLock { $0 += 1 }
            let staging = site.stagingPath + "/" + RsyncBackend.stagingName()
            defer { Posix.removeTree(staging) }
            do throws(SpoolError) {
                try Posix.mkdir(staging)
                return direction == .in
                    ? try stageIn(batch, staging: staging, host: remote, ssh: ssh, update: update)
                    : try stageOut(batch, staging: staging, host: remote, ssh: ssh, update: update)
            } catch {
                return .finished(failures: Dictionary(uniqueKeysWithValues: batch.map { ($0.key, error.description) }))
            }
        }
    }

    public func poll(_ taskID: String) -> TaskStatus? { tasks.status(taskID) }

    /// A batch's staging tree under the site's staging directory: `transfer.MICROS.HOST.PID-START`, its owner
    /// named the way `Fsck` and the watcher's sweep tell a live writer's from a dead one's.
    static func stagingName() -> String {
        Fsck.transferStagingPrefix + "\(UInt64(saturating: Posix.monotonicSeconds() * 1e6))" + Site.ownerSuffix
    }

    /// The deepest directory holding every path of a batch: rsync is given it as the remote root and the paths
    /// relative to it (from `/` with long paths, rsync spent twice as long on the implied directories).
    static func commonDirectory(_ paths: [String]) -> String {
        var common: [Substring]?
        for path in paths {
            let parent = path.split(separator: "/").dropLast()
            guard let sofar = common else {
                common = Array(parent)
                continue
            }
            common = Array(zip(sofar, parent).prefix { $0 == $1 }.map(\.0))
        }
        return "/" + (common ?? []).joined(separator: "/")
    }

    /// `path` relative to `root` (a directory holding it), as `--files-from` lists it.
    static func listed(_ path: String, under root: String) -> String {
        let relative = path.hasPrefix(root) ? path.dropFirst(root.utf8.count) : Substring(path)
        return String(relative.drop { $0 == "/" })
    }

    private func run(_ arguments: [String], staging: String) throws(SpoolError) -> SchedulerCommand.Result {
        var environment = Posix.environment()
        environment["LC_ALL"] = "C"
        return try SchedulerCommand(timeoutSeconds: 7 * 24 * 3600, environment: environment, directory: staging)
            .runAllowingFailure(arguments)
    }

    /// Why `path` is missing, in rsync's words if it said something about it.
    static func why(_ path: String, under root: String, _ result: SchedulerCommand.Result) -> String {
        // ssh ends its lines with CR LF, one Character to Swift: split on any line break.
        let lines = result.errors.split(whereSeparator: \.isNewline)
        // Said once: rsync's own lines start "rsync: " already ("rsync: [sender] link_stat ...").
        if let line = lines.first(where: { $0.contains(listed(path, under: root)) }) {
            return line.hasPrefix("rsync") ? String(line) : "rsync: " + String(line)
        }
        return summary(result)
    }

    /// rsync's exit statuses that mean the other side was never reached, or the connection to it broke: ssh's
    /// own failure (255: refused, timed out, no route, host key, authentication), socket I/O (10), the data
    /// stream cut (12), timeouts (30, 35).
    static let unreachableStatuses: Set<Int32> = [255, 10, 12, 30, 35]

    /// What went wrong, in the words of whoever said it: ssh's (and the remote shell's) lines first, which rsync
    /// only passes on, then rsync's last.
    static func summary(_ result: SchedulerCommand.Result) -> String {
        let lines = result.errors.split(whereSeparator: \.isNewline).map(String.init)
        let others = lines.filter { !$0.hasPrefix("rsync") && !$0.trimmingCharacters(in: .whitespaces).isEmpty }
        let words = (others.prefix(3) + lines.suffix(1).filter { !others.contains($0) }).joined(separator: "; ")
        return "rsync exited with status \(result.status): " + (words.isEmpty ? "no message" : words)
    }

    private func stageIn(
        _ batch: [TransferRequest], staging: String, host: String, ssh: String,
        update: @Sendable ([String: JSONValue]) -> Void
    ) throws(SpoolError) -> TaskStatus {
        let root = RsyncBackend.commonDirectory(batch.map(\.remotePath))
        let list = Set(batch.map { RsyncBackend.listed($0.remotePath, under: root) }).sorted()
        try Posix.createFile(staging + "/.files", Array((list.joined(separator: "\n") + "\n").utf8), sync: false)
        try Posix.mkdir(staging + "/tree")
        let result = try run(
            [
                "rsync", "-a", "-r", "--protect-args", "--files-from=" + staging + "/.files", "-e", ssh,
                host + ":" + root + "/", staging + "/tree/",
            ], staging: staging)
        update(["rsync_status": .int(Int(result.status))])
        if RsyncBackend.unreachableStatuses.contains(result.status) {
            return .unreachable(RsyncBackend.summary(result))
        }
        var failures: [String: String] = [:]
        // Two jobs may want the same file: the last takes it, the others get copies.
        var last: [String: String] = [:]
        for request in batch { last[request.remotePath] = request.key }
        for request in batch {
            let fetched = staging + "/tree/" + RsyncBackend.listed(request.remotePath, under: root)
            guard Posix.exists(fetched) else {
                failures[request.key] = RsyncBackend.why(request.remotePath, under: root, result)
                continue
            }
            do throws(SpoolError) {
                let local = try LocalCopy.checkedLocal(request, direction: .in)
                if last[request.remotePath] == request.key {
                    if Posix.isDirectory(local) { Posix.removeTree(local) }
                    try Posix.rename(fetched, local)
                } else {
                    try LocalCopy.copy(fetched, to: local, recursive: request.recursive)
                }
            } catch {
                failures[request.key] = error.description
            }
        }
        return .finished(failures: failures)
    }

    private func stageOut(
        _ batch: [TransferRequest], staging: String, host: String, ssh: String,
        update: @Sendable ([String: JSONValue]) -> Void
    ) throws(SpoolError) -> TaskStatus {
        var failures: [String: String] = [:]
        var sent: [TransferRequest] = []
        let root = RsyncBackend.commonDirectory(batch.map(\.remotePath))
        for request in batch {
            do throws(SpoolError) {
                let local = try LocalCopy.checkedLocal(request, direction: .out)
                let linked = staging + "/tree/" + RsyncBackend.listed(request.remotePath, under: root)
                try Posix.makeDirectories(Posix.parentPath(linked))
                // The slot itself may be a link (checked to stay inside the job): what it points to is sent.
                try LocalLinks.link(LocalCopy.realPath(local) ?? local, to: linked, recursive: request.recursive)
                sent.append(request)
            } catch {
                failures[request.key] = error.description
            }
        }
        guard !sent.isEmpty else { return .finished(failures: failures) }
        let list = sent.map { RsyncBackend.listed($0.remotePath, under: root) }.sorted()
        try Posix.createFile(staging + "/.files", Array((list.joined(separator: "\n") + "\n").utf8), sync: false)
        let result = try run(
            [
                "rsync", "-a", "-r", "--protect-args", "--mkpath", "--files-from=" + staging + "/.files", "-e", ssh,
                staging + "/tree/", host + ":" + root + "/",
            ], staging: staging)
        update(["rsync_status": .int(Int(result.status))])
        // Items that failed before (not linked) are theirs to blame, not the connection's: they fail now.
        if RsyncBackend.unreachableStatuses.contains(result.status) && failures.isEmpty {
            return .unreachable(RsyncBackend.summary(result))
        }
        if result.status != 0 {
            for request in sent { failures[request.key] = RsyncBackend.why(request.remotePath, under: root, result) }
        }
        return .finished(failures: failures)
    }
}

/// Hard links of a job's files into a staging tree (same filesystem), links copied as links.
enum LocalLinks {
    static func link(_ source: String, to target: String, recursive: Bool) throws(SpoolError) {
        if !recursive && Posix.isDirectory(source) {
            throw SpoolError(.invalidInput, "is a directory, and the slot is not recursive", path: source)
        }
        try LocalCopy.walk(source, to: target) { (from, to, _) throws(SpoolError) in
            try Posix.call("link", path: to) { Glibc.link(from, to) }
        }
    }
}
