import Processes
import Spool

#if canImport(Glibc)
    import Glibc
#endif

/// The embedded default: a batch job is a background process of this machine (`bash SCRIPT`, limited to its wall
/// time by `timeout`), its ID the process ID. What it needs to remember lives in `batchjobs/local/`:
/// `NAME.pid` (pid and start time, so a reused pid is never mistaken for it), `NAME.exit` (its exit status, written
/// by the wrapper) and `NAME.cancelled`. Exercised live in the tests.
public struct LocalScheduler: Scheduler {
    public let kind = "local"
    let site: Site
    let command: SchedulerCommand
    /// Seconds between SIGTERM and SIGKILL when a batch job is cancelled.
    var killGraceSeconds = 10.0

    var directory: String { BatchJobStore(site: site).path + "/local" }

    public func submit(script: String, name: String, job: BatchJob, outputPath: String) throws(SpoolError) -> String {
        if !Posix.isDirectory(directory) {
            do { try Posix.mkdir(directory) } catch  where error.cause == EEXIST {}
        }
        let base = directory + "/" + name
        guard !Posix.exists(base + ".pid") else {
            throw SpoolError(.conflict, "a local batch job named \(name) already exists", path: base + ".pid")
        }
        // The wrapper keeps the script's exit status where list() finds it, written whole (rename). `timeout` stays in
        // the wrapper's process group (--foreground), so a cancel reaches everything through one kill(-pid).
        let wrapper = """
            timeout --foreground --kill-after=30 "$2" /bin/bash "$1"; status=$?
            echo "$status" > "$3.exit.tmp" && mv -f "$3.exit.tmp" "$3.exit"
            """
        let fd = try Posix.open(outputPath, O_WRONLY | O_CREAT | O_APPEND)
        defer { Posix.close(fd) }
        var environment = command.environment
        environment["BALSAM_BATCH_JOB_NAME"] = name
        // Posix.spawn, not ChildProcess: a batch job outlives this call and is followed through its pid file.
        let pid = try Posix.spawn(
            "/bin/bash",
            arguments: ["-c", wrapper, "balsam-local-batch", script, "\(job.wallTimeMinutes * 60)s", base],
            environment: environment, directory: site.root, outputFD: fd)
        let start = Posix.processStartTime(pid) ?? 0
        try Posix.createFile(base + ".pid", Array("\(pid) \(start)\n".utf8), sync: false)
        return String(pid)
    }

    public func list() throws(SpoolError) -> [SchedulerStatus] {
        guard Posix.isDirectory(directory) else { return [] }
        var statuses: [SchedulerStatus] = []
        for file in try Posix.listDirectory(directory) where file.hasSuffix(".pid") {
            let name = String(file.dropLast(4))
            if let status = status(name: name) { statuses.append(status) }
        }
        return statuses
    }

    public func lookUp(id: String, outputPath: String) throws(SpoolError) -> SchedulerStatus? {
        try list().first { $0.id == id }
    }

    public func cancel(id: String) throws(SpoolError) {
        guard let status = try list().first(where: { $0.id == id }), let name = status.name,
            let pid = pid_t(id)
        else { throw SpoolError(.notFound, "no local batch job \(id)") }
        guard status.phase == .running else { return }
        try Posix.createFile(
            directory + "/" + name + ".cancelled", Array((Timestamp.now() + "\n").utf8), sync: false, exclusive: false)
        kill(-pid, SIGTERM)  // its process group: the wrapper, timeout, the launcher and its jobs
    }

    private func status(name: String) -> SchedulerStatus? {
        let base = directory + "/" + name
        guard let text = try? Posix.readFile(base + ".pid", limit: 256),
            case let words = String(decoding: text, as: UTF8.self).split(whereSeparator: \.isWhitespace),
            words.count == 2, let pid = pid_t(words[0]), let start = UInt64(words[1])
        else { return nil }
        let submitted = (try? Posix.statIfExists(base + ".pid"))??.st_mtim.tv_sec
        var status = SchedulerStatus(
            id: String(pid), name: name, phase: .running, rawState: "running",
            submitTime: submitted.map { SchedulerTime.epoch(Int($0)) })
        status.startTime = status.submitTime
        Posix.reap(pid)  // if this process started it
        let cancelledAt = (try? Posix.statIfExists(base + ".cancelled"))??.st_mtim.tv_sec
        if Posix.isRunning(pid, startedAt: start) {
            if let at = cancelledAt, Double(time(nil) - at) > killGraceSeconds {
                // Its group may have ended in between (ESRCH): the next poll sees it gone.
                _ = kill(-pid, SIGKILL)
            }
            return status
        }
        let exitText = (try? Posix.readFile(base + ".exit", limit: 64)).map { String(decoding: $0, as: UTF8.self) }
        let code = exitText.flatMap { Int($0.trimmingCharacters(in: " \n")) }
        let ended = (try? Posix.statIfExists(base + ".exit"))??.st_mtim.tv_sec
        status.endTime = (ended ?? cancelledAt).map { SchedulerTime.epoch(Int($0)) }
        status.exitCode = code
        switch (code, cancelledAt) {
        case (_, .some):
            status.phase = .ended(.cancelled)
            status.rawState = "cancelled"
        case (0?, nil):
            status.phase = .ended(.completed)
            status.rawState = "exited 0"
        case (124?, nil), (137?, nil):
            status.phase = .ended(.timedOut)
            status.rawState = "killed by timeout at the wall time"
        case (let c?, nil):
            status.phase = .ended(.failed)
            status.rawState = "exited \(c)"
        case (nil, nil):
            status.phase = .ended(.failed)
            status.rawState = "ended without an exit status (killed?)"
        }
        return status
    }
}
