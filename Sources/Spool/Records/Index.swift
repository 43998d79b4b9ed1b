import Synchronization

#if canImport(Glibc)
    import Glibc
#endif

/// The spool's indexes, which let commands find and count jobs without reading every job directory:
///
/// - an **active entry** per job that has not ended: `jobs/STATE/ID`, a hard link to the job's `job.json`
///   (a symlink to it where hard links cannot be made). The directory names the state; opening the entry
///   reads the job's spec, workdir included, without knowing where the job directory is.
/// - **accepted batches** `queue/accepted/BATCH.tsv`: bulk submissions whose directories are not made yet.
/// - the **final index** `jobs/final/HOST.tsv`: one line per job that ended, since its entry is removed.
///
/// All three are derived from the job directories and are rebuilt from them by `fsck`.
public struct SiteIndex: Sendable {
    /// The site indexed.
    public let site: Site

    /// Makes an index reader/writer for `site`.
    public init(site: Site) { self.site = site }

    /// Path of a job's active entry.
    public func entryPath(_ state: JobState, _ id: String) -> String { site.activePath(state) + "/" + id }

    /// Creates the active entry for a job whose `job.json` is complete: a hard link to it, which costs no
    /// inode and appears atomically with its contents. Where the job directory is on another filesystem or
    /// hard links are not supported, a symlink to `job.json` instead; readers open either the same way.
    func createEntry(_ state: JobState, id: String, workdir: String) throws(SpoolError) {
        try makeEntry(at: entryPath(state, id), workdir: workdir)
    }

    /// Makes an entry for the job in `workdir` at `path`, which must be two levels below the site root.
    func makeEntry(at path: String, workdir: String) throws(SpoolError) {
        let spec = site.jobDirectory(workdir) + "/job.json"
        // link(2), else symlink(2) where hard links are not allowed: the errno picks the fallback.
        if link(spec, path) == 0 { return }
        let err = errno
        if err == EXDEV || err == EPERM || err == EMLINK {
            if symlink("../../data/" + workdir + "/job.json", path) == 0 { return }
        }
        throw .system("create index entry", path: path, errno: err)
    }

    /// The job an active entry names, or nil if there is no such entry (or it cannot be read).
    func readEntry(_ state: JobState, id: String) -> Job? {
        readEntry(at: entryPath(state, id))
    }

    /// The job an entry names and the inode of the `job.json` it is (a `job.json` is only ever replaced,
    /// never changed in place, so the same inode later means the same spec).
    package func readEntryAndInode(at path: String) -> (job: Job, inode: UInt64)? {
        guard let fd = try? Posix.open(path, O_RDONLY) else { return nil }
        defer { Posix.close(fd) }
        var st = stat()
        // A failed fstat, like any failure here, means "no readable entry" (nil).
        guard fstat(fd, &st) == 0, st.st_size <= Job.Limits.fileBytes,
            let bytes = try? Posix.readToEnd(
                fd, path: path, limit: Job.Limits.fileBytes, sizeHint: Int(st.st_size) + 1),
            let job = try? Job(bytes: bytes)
        else { return nil }
        return (job, UInt64(st.st_ino))
    }

    package func readEntry(at path: String) -> Job? {
        guard let fd = try? Posix.open(path, O_RDONLY) else { return nil }
        defer { Posix.close(fd) }
        guard let bytes = try? Posix.readToEnd(fd, path: path, limit: Job.Limits.fileBytes, sizeHint: 1024) else {
            return nil
        }
        return try? Job(bytes: bytes)
    }

    /// Whether an entry is the current `job.json` of the job in `workdir` (the same file, or a symlink to it).
    func entryIsCurrent(_ path: String, workdir: String) -> Bool {
        guard let entry = try? Posix.statIfExists(path),
            let spec = try? Posix.statIfExists(site.jobDirectory(workdir) + "/job.json")
        else { return false }
        return entry.st_dev == spec.st_dev && entry.st_ino == spec.st_ino
    }

    /// The active state of a job: one `lstat` per active state; if none has it, the leases are looked in (a
    /// claimed or running job), and then its state file says.
    public func activeState(of id: String) -> JobState? {
        if let state = JobState.active.first(where: { Posix.exists(entryPath($0, id)) }) { return state }
        for lease in (try? Lease.all(site)) ?? [] where Posix.exists(lease.entryPath(id)) {
            guard let job = readEntry(at: lease.entryPath(id)) else { continue }
            return (try? Query(site: site).readRecord(workdir: job.workdir))?.state
        }
        return nil
    }

    /// Jobs whose entries are in leases, with their states (read from their state files).
    public func leasedJobs() throws(SpoolError) -> [(id: String, state: JobState, job: Job)] {
        var result: [(String, JobState, Job)] = []
        for lease in try Lease.all(site) {
            for id in try lease.jobIDs() {
                guard let job = readEntry(at: lease.entryPath(id)),
                    let record = try? Query(site: site).readRecord(workdir: job.workdir)
                else { continue }
                result.append((id, record.state, job))
            }
        }
        return result
    }

    /// IDs with an entry in `state`'s directory (a `readdir`; no file is read).
    public func activeIDs(_ state: JobState) throws(SpoolError) -> [String] {
        try Posix.listDirectory(site.activePath(state)).filter { !$0.hasPrefix(".") }
    }

    // MARK: - Final index

    /// One line of the final index.
    public struct FinalLine: Sendable {
        public var id: String
        public var state: JobState
        public var workdir: String
        public var app: String
        public var time: String
    }

    /// Appends lines for jobs that have ended, in one `write(2)` to this host's file.
    func appendFinal(_ lines: [FinalLine], sync: Bool) throws(SpoolError) {
        guard !lines.isEmpty else { return }
        var out: [UInt8] = []
        for line in lines {
            out.append(
                contentsOf: "\(line.id)\t\(line.state.rawValue)\t\(line.workdir)\t\(line.app)\t\(line.time)\n".utf8)
        }
        try appendToHostFile(directory: site.finalIndexPath, suffix: ".tsv", out, sync: sync)
    }

    /// Every final-index line, from every host's file, in file order. A job retried after it ended may have
    /// several lines; its active entry, or the latest line, tells the truth.
    public func finalLines() throws(SpoolError) -> [FinalLine] {
        var result: [FinalLine] = []
        var removed = Set<String>()
        for name in try Posix.listDirectory(site.finalIndexPath).sorted() where name.hasSuffix(".tsv") {
            let path = site.finalIndexPath + "/" + name
            let bytes = try Posix.readFile(path, limit: Int.max)
            forEachLine(bytes) { line in
                let fields = line.split(separator: UInt8(ascii: "\t"), omittingEmptySubsequences: false)
                guard fields.count >= 5 else { return }
                guard let state = JobState(rawValue: String(decoding: fields[1], as: UTF8.self)) else {
                    if fields[1].elementsEqual(SiteIndex.removedMark.utf8) {
                        removed.insert(String(decoding: fields[0], as: UTF8.self))
                    }
                    return
                }
                result.append(
                    FinalLine(
                        id: String(decoding: fields[0], as: UTF8.self), state: state,
                        workdir: String(decoding: fields[2], as: UTF8.self),
                        app: String(decoding: fields[3], as: UTF8.self),
                        time: String(decoding: fields[4], as: UTF8.self)))
            }
        }
        return removed.isEmpty ? result : result.filter { !removed.contains($0.id) }
    }

    /// The state column of a tombstone: the job was removed with `balsam rm`; earlier lines no longer count.
    public static let removedMark = "REMOVED"

    /// Appends a tombstone for removed jobs.
    func appendRemoved(_ ids: [(id: String, workdir: String, app: String)]) throws(SpoolError) {
        guard !ids.isEmpty else { return }
        var out: [UInt8] = []
        let now = Timestamp.now()
        for job in ids {
            out.append(contentsOf: "\(job.id)\t\(SiteIndex.removedMark)\t\(job.workdir)\t\(job.app)\t\(now)\n".utf8)
        }
        try appendToHostFile(directory: site.finalIndexPath, suffix: ".tsv", out, sync: true)
    }

    /// Jobs per final state in the final index, each job counted once (its last line), leaving out `active`
    /// ones (retried since). Parses IDs into 128-bit keys rather than strings: this is the one query that
    /// reads the whole final index, so it is kept lean.
    func finalCounts(excluding active: Set<JobKey>) throws(SpoolError) -> [JobState: Int] {
        var last: [JobKey: UInt8] = [:]  // 1: JOB_FINISHED, 2: FAILED, 0: removed
        let finished = Array(JobState.jobFinished.rawValue.utf8)
        let removed = Array(SiteIndex.removedMark.utf8)
        for name in try Posix.listDirectory(site.finalIndexPath).sorted() where name.hasSuffix(".tsv") {
            let bytes = try Posix.readFile(site.finalIndexPath + "/" + name, limit: Int.max)
            forEachLine(bytes) { line in
                guard line.count > 28, line[line.startIndex + 26] == UInt8(ascii: "\t"),
                    let key = JobKey(line[line.startIndex..<line.startIndex + 26]), !active.contains(key)
                else { return }
                let rest = line[(line.startIndex + 27)...]
                last[key] = rest.starts(with: finished) ? 1 : rest.starts(with: removed) ? 0 : 2
            }
        }
        var counts: [JobState: Int] = [:]
        for kind in last.values where kind != 0 { counts[kind == 1 ? .jobFinished : .failed, default: 0] += 1 }
        return counts
    }

    /// Appends to `DIRECTORY/HOST.SUFFIX` with `O_APPEND`: one writer file per host, so appends from
    /// different nodes of a shared filesystem never interleave.
    func appendToHostFile(directory: String, suffix: String, _ bytes: [UInt8], sync: Bool) throws(SpoolError) {
        let path = directory + "/" + Posix.hostName() + suffix
        try AppendFiles.shared.append(path, bytes, sync: sync)
    }

    // MARK: - Accepted batches

    /// Names of accepted batch files, oldest first.
    public func batchNames() throws(SpoolError) -> [String] {
        try Posix.listDirectory(site.acceptedPath).filter { $0.hasSuffix(".tsv") && !$0.hasPrefix(".") }.sorted()
    }

    /// The marker an ingest pass leaves beside a batch while it makes the batch's directories: until the batch
    /// file is removed, some of its jobs may already have entries, so counts must look at its lines.
    func materializingMarker(_ name: String) -> String { site.acceptedPath + "/." + name + ".materializing" }

    /// Whether an ingest pass has begun on the batch (and perhaps died in it).
    func isMaterializing(_ name: String) -> Bool { Posix.exists(materializingMarker(name)) }

    /// Reads one accepted batch.
    public func readBatch(_ name: String) throws(SpoolError) -> Batch {
        let path = site.acceptedPath + "/" + name
        return try Batch(bytes: Posix.readFile(path, limit: Int.max), path: path)
    }

    /// Reads only a batch's header line (its per-state counts), not its jobs.
    public func readBatchHeader(_ name: String) throws(SpoolError) -> Batch.Header {
        let path = site.acceptedPath + "/" + name
        let fd = try Posix.open(path, O_RDONLY)
        defer { Posix.close(fd) }
        var buffer = [UInt8](repeating: 0, count: 4096)
        let n = try Posix.call("read", path: path) {
            buffer.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
        }
        guard n > 0, let newline = buffer[0..<n].firstIndex(of: 0x0A) else {
            throw SpoolError(.invalidInput, "malformed batch header", path: path)
        }
        return try Batch.Header(line: buffer[0..<newline], path: path)
    }
}

/// An accepted bulk submission: a header, then one line per job
/// `ID TAB STATE TAB WORKDIR TAB APP TAB JOB-JSON`.
public struct Batch: Sendable {
    /// The first line: `#balsam-batch 1 time=T jobs=N STATE=n ...`.
    public struct Header: Sendable {
        /// When the batch was accepted (every job's creation time).
        public var time: String
        /// Jobs per initial state.
        public var counts: [JobState: Int]

        init(time: String, counts: [JobState: Int]) {
            self.time = time
            self.counts = counts
        }

        init(line: ArraySlice<UInt8>, path: String) throws(SpoolError) {
            let words = String(decoding: line, as: UTF8.self).split(separator: " ")
            guard words.count >= 3, words[0] == "#balsam-batch", words[1] == "1" else {
                throw SpoolError(.invalidInput, "not a version-1 batch file", path: path)
            }
            time = ""
            counts = [:]
            for word in words.dropFirst(2) {
                let kv = word.split(separator: "=", maxSplits: 1)
                guard kv.count == 2 else { continue }
                if kv[0] == "time" {
                    time = String(kv[1])
                } else if let state = JobState(rawValue: String(kv[0])), let n = Int(kv[1]) {
                    counts[state] = n
                }
            }
        }

        var line: String {
            "#balsam-batch 1 time=\(time) jobs=\(counts.values.reduce(0, +)) "
                + counts.keys.sorted().map { "\($0.rawValue)=\(counts[$0] ?? 0)" }.joined(separator: " ") + "\n"
        }
    }

    /// One job of a batch.
    public struct Line: Sendable {
        public var id: String
        public var state: JobState
        public var workdir: String
        public var app: String
        /// The job's `job.json` contents, without the newline.
        public var jobJSON: ArraySlice<UInt8>
    }

    /// The header.
    public var header: Header
    /// The jobs.
    public var lines: [Line]

    init(header: Header, lines: [Line]) {
        self.header = header
        self.lines = lines
    }

    init(bytes: [UInt8], path: String) throws(SpoolError) {
        guard let newline = bytes.firstIndex(of: 0x0A) else {
            throw SpoolError(.invalidInput, "malformed batch file", path: path)
        }
        header = try Header(line: bytes[0..<newline], path: path)
        var lines: [Line] = []
        var bad = 0
        forEachLine(bytes[(newline + 1)...]) { line in
            var fields: [ArraySlice<UInt8>] = []
            var start = line.startIndex
            for i in line.indices where line[i] == UInt8(ascii: "\t") && fields.count < 4 {
                fields.append(line[start..<i])
                start = i + 1
            }
            fields.append(line[start...])
            guard fields.count == 5, let state = JobState(rawValue: String(decoding: fields[1], as: UTF8.self)) else {
                bad += 1
                return
            }
            lines.append(
                Line(
                    id: String(decoding: fields[0], as: UTF8.self), state: state,
                    workdir: String(decoding: fields[2], as: UTF8.self),
                    app: String(decoding: fields[3], as: UTF8.self),
                    jobJSON: fields[4]))
        }
        if bad > 0 { throw SpoolError(.invalidInput, "\(bad) malformed lines in batch file", path: path) }
        self.lines = lines
    }

    func fileBytes() -> [UInt8] {
        var out = Array(header.line.utf8)
        out.reserveCapacity(lines.count * 400)
        for line in lines {
            out.append(contentsOf: "\(line.id)\t\(line.state.rawValue)\t\(line.workdir)\t\(line.app)\t".utf8)
            out.append(contentsOf: line.jobJSON)
            out.append(0x0A)
        }
        return out
    }
}

/// The states of ended jobs, read from the final index once (keyed compactly: a million ended jobs cost 16 bytes
/// of key each, not a string) and kept up to date by its owner's own moves. Shared by submission (a new job's
/// parents), the watcher (dependencies) and recovery.
package struct FinalStates {
    let index: SiteIndex
    private var states: [JobKey: JobState]?

    package init(index: SiteIndex) { self.index = index }

    /// The state of ended job `id`, or nil if the final index does not have it. `reread`: read the index again
    /// first (a job may have ended through another program since).
    package mutating func state(of id: String, reread: Bool = false) throws(SpoolError) -> JobState? {
        guard let key = JobKey(id.utf8) else { return nil }
        if states == nil || reread {
            var all: [JobKey: JobState] = [:]
            var removed: [JobKey] = []
            try index.forEachFinal { key, state in
                if let state { all[key] = state } else { removed.append(key) }
            }
            for key in removed { all[key] = nil }  // a removal wins, wherever its line is (as finalLines())
            states = all
        }
        return states?[key]
    }

    /// Records that `id` ended in `state` (only if the index has been read: otherwise reading it will tell).
    package mutating func record(_ id: String, _ state: JobState) {
        guard states != nil, let key = JobKey(id.utf8) else { return }
        states?[key] = state
    }
}

extension SiteIndex {
    /// Calls `body` with every final-index line's job key and state in file order, nil for a removal mark.
    func forEachFinal(_ body: (JobKey, JobState?) -> Void) throws(SpoolError) {
        for name in try Posix.listDirectory(site.finalIndexPath).sorted() where name.hasSuffix(".tsv") {
            let bytes = try Posix.readFile(site.finalIndexPath + "/" + name, limit: Int.max)
            forEachLine(bytes) { line in
                guard let tab = line.firstIndex(of: UInt8(ascii: "\t")), let key = JobKey(line[..<tab]) else { return }
                let rest = line[(tab + 1)...]
                let field = rest[..<(rest.firstIndex(of: UInt8(ascii: "\t")) ?? rest.endIndex)]
                if let state = JobState(rawValue: String(decoding: field, as: UTF8.self)) {
                    body(key, state)
                } else if field.elementsEqual(SiteIndex.removedMark.utf8) {
                    body(key, nil)
                }
            }
        }
    }
}

/// Calls `body` with each non-empty line of `bytes`, without the newline.
func forEachLine(_ bytes: some RandomAccessCollection<UInt8>, _ body: (ArraySlice<UInt8>) -> Void) {
    let array = Array(bytes)
    var start = 0
    while start < array.count {
        let end = array[start...].firstIndex(of: 0x0A) ?? array.count
        if end > start { body(array[start..<end]) }
        start = end + 1
    }
}

/// A job ID as a 128-bit number (26 base32 digits carry 130 bits, the top two always zero): a cheap
/// dictionary key when a query handles millions of IDs.
struct JobKey: Hashable, Sendable {
    var high: UInt64
    var low: UInt64

    init?(_ id: some Collection<UInt8>) {
        guard id.count == 26 else { return nil }
        var high: UInt64 = 0
        var low: UInt64 = 0
        for c in id {
            guard let digit = JobKey.digits[Int(c)] else { return nil }
            high = (high << 5) | (low >> 59)
            low = (low << 5) | UInt64(digit)
        }
        self.high = high
        self.low = low
    }

    static let digits: [UInt8?] = {
        var table = [UInt8?](repeating: nil, count: 256)
        for (i, c) in JobID.alphabet.enumerated() { table[Int(c)] = UInt8(i) }
        return table
    }()
}

/// The host's append-only files (event log, final index), kept open between appends: a daemon appends to them
/// for every job, and an open by path costs more than the write. A file found removed (no links left) is opened
/// again, so nothing is appended to a file nobody will read. (Nothing replaces these files: they only grow.)
///
/// The rule that keeps a descriptor right: one handed to an append is never closed while that append uses it.
/// Each open file counts its users; one retired (the cache full, or its file removed) while in use is closed by
/// its last user. Before, a descriptor was closed under another thread's write, which then failed with EBADF
/// (fleet-bench: 1,000 sites in one process) or, had the number been reused meanwhile, wrote into another file.
final class AppendFiles: @unchecked Sendable {
    static let shared = AppendFiles()

    /// One open file: its descriptor, when its name was last checked, its appends under way, whether it is retired.
    private final class Open {
        let fd: Int32
        var checked: Int
        var users = 0
        var retired = false

        init(fd: Int32, checked: Int) {
            self.fd = fd
            self.checked = checked
        }
    }

    private let files = Mutex<[String: Open]>([:])
    /// The most files kept open (a process that works on many sites, such as the tests, does not keep them all).
    let capacity: Int

    init(capacity: Int = 64) { self.capacity = capacity }

    func append(_ path: String, _ bytes: [UInt8], sync: Bool) throws(SpoolError) {
        let open = try take(path)
        defer { give(open) }
        try Posix.write(open.fd, bytes, path: path)
        if sync { try Posix.fsync(open.fd, path: path) }
    }

    /// Closes `open` if it is retired and no append uses it (called with the lock held).
    private static func closeIfIdle(_ open: Open) {
        if open.retired && open.users == 0 { Posix.close(open.fd) }
    }

    private func give(_ open: Open) {
        files.withLock { _ in
            open.users -= 1
            Self.closeIfIdle(open)
        }
    }

    /// The open file for `path`, counted as in use until `give`.
    private func take(_ path: String) throws(SpoolError) -> Open {
        let result: Result<Open, SpoolError> = files.withLock { files in
            if let open = files[path] {
                // Whether the file still has a name is checked once a second, not at every append.
                let now = Int(time(nil))
                var st = stat()
                // A failed fstat is treated like a removed file: the descriptor is reopened below.
                if now == open.checked || (fstat(open.fd, &st) == 0 && st.st_nlink > 0) {
                    open.checked = now
                    open.users += 1
                    return .success(open)
                }
                open.retired = true
                Self.closeIfIdle(open)
                files[path] = nil
            }
            if files.count >= capacity {
                for open in files.values {
                    open.retired = true
                    Self.closeIfIdle(open)
                }
                files = [:]
            }
            do throws(SpoolError) {
                let open = Open(
                    fd: try Posix.open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC), checked: Int(time(nil)))
                open.users = 1
                files[path] = open
                return .success(open)
            } catch {
                return .failure(error)
            }
        }
        return try result.get()
    }
}
