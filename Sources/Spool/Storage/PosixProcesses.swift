import CLinux

#if canImport(Glibc)
    import Glibc
#endif

/// Processes, as the spool sees them: spawning with a process group and no shell, waiting on a pidfd with a
/// deadline, reaping, and telling whether a pid is still the process that wrote a file (its start time).
extension Posix {
    /// A descriptor that becomes readable when the child `pid` exits (pidfd_open(2)).
    package static func processDescriptor(_ pid: Int32) throws(SpoolError) -> Int32 {
        try call("watch process \(pid)", path: "/proc/\(pid)") { clinux_pidfd_open(pid) }
    }

    /// Waits up to `seconds` for the child `pid` (watched by `pidFD`) to exit, and reaps it: its wait status, or
    /// nil if it still runs.
    package static func waitExit(_ pid: Int32, pidFD: Int32, seconds: Double) -> Int32? {
        if let status = reap(pid) { return status }
        waitReadable([pidFD], seconds: seconds)
        return reap(pid)
    }

    /// Reaps `pid` if it has ended, without waiting: its wait status, or nil while it runs (or is not our child).
    @discardableResult
    package static func reap(_ pid: Int32) -> Int32? {
        var status: Int32 = 0
        while true {
            let r = waitpid(pid, &status, WNOHANG)
            if r == pid { return status }
            if r < 0 && errno == EINTR { continue }
            return nil
        }
    }

    /// Starts `executable` in `directory` in a new process group, standard input from /dev/null and standard
    /// output and error on `outputFD`, with exactly `environment`. Signal mask and dispositions are reset.
    /// `inputFD` replaces /dev/null as standard input, `errorFD` the output descriptor as standard error.
    /// `diesWithCaller`: the child gets SIGKILL when the calling thread ends, however it ends (SIGKILL to the whole
    /// process included): for children the caller waits for on this thread, never for ones that must outlive it.
    package static func spawn(
        _ executable: String, arguments: [String], environment: [String: String], directory: String, outputFD: Int32,
        inputFD: Int32? = nil, errorFD: Int32? = nil, diesWithCaller: Bool = false
    ) throws(SpoolError) -> pid_t {
        let argv: [UnsafeMutablePointer<CChar>?] = ([executable] + arguments).map { strdup($0) } + [nil]
        let envp: [UnsafeMutablePointer<CChar>?] = environment.map { strdup("\($0.key)=\($0.value)") } + [nil]
        defer {
            argv.forEach { free($0) }
            envp.forEach { free($0) }
        }
        var pid: Int32 = 0
        let rc = executable.withCString { path in
            directory.withCString { directory in
                argv.withUnsafeBufferPointer { argv in
                    envp.withUnsafeBufferPointer { envp in
                        var request = clinux_spawn_request(
                            path: path, argv: argv.baseAddress, envp: envp.baseAddress, directory: directory,
                            input_fd: inputFD ?? -1, output_fd: outputFD, error_fd: errorFD ?? outputFD,
                            death_signal: diesWithCaller ? SIGKILL : 0)
                        return clinux_spawn(&request, &pid)
                    }
                }
            }
        }
        try check("run", path: executable, rc)
        return pid
    }

    /// The variable every `ChildProcess` child is given, naming the process that started it (`HOST.PID-START`).
    /// Its descendants inherit it (rsync's ssh, a hook's own children), so whatever a parent killed with SIGKILL
    /// left behind can be found and ended by the next one (`endOrphans`).
    package static let parentVariable = "BALSAM_SPAWNED_BY"

    /// This process as `parentVariable` names it: `HOST.PID-START`.
    package static let parentStamp = "\(hostName()).\(getpid())-\(processStartTime(getpid()) ?? 0)"

    /// Ends (SIGKILL) every process of this user whose `parentVariable` names a process on this host that is no
    /// longer running: children of a watcher, launcher or command that was killed, and theirs. Returns what was
    /// ended, as "PID (NAME)". Rescans until a scan finds nothing new, so what an orphan forked meanwhile goes too.
    package static func endOrphans() -> [String] {
        let prefix = Array((parentVariable + "=" + hostName() + ".").utf8)
        var ended: [String] = []
        var alive: [String: Bool] = [:]
        var killed = Set<Int32>()
        for _ in 0..<10 {
            var found = false
            for name in (try? listDirectory("/proc")) ?? [] {
                guard let pid = Int32(name), pid != getpid(), !killed.contains(pid),
                    let owner = try? lstatIfExists("/proc/" + name), owner.st_uid == getuid(),
                    let environment = try? readFile("/proc/\(name)/environ", limit: 1 << 20),
                    let entry = environment.split(separator: 0).first(where: { $0.starts(with: prefix) })
                else { continue }
                let stamp = String(decoding: entry.dropFirst(prefix.count), as: UTF8.self)
                let parts = stamp.split(separator: "-")
                guard parts.count == 2, let parent = Int32(parts[0]), let start = UInt64(parts[1]) else { continue }
                let running = alive[stamp] ?? isRunning(parent, startedAt: start)
                alive[stamp] = running
                guard !running else { continue }
                let command = (try? readFile("/proc/\(name)/comm", limit: 64)).flatMap {
                    String(decoding: $0, as: UTF8.self).split(separator: "\n").first
                }
                if kill(pid, SIGKILL) == 0 {
                    killed.insert(pid)
                    found = true
                    ended.append("\(pid) (\(command ?? "?"))")
                }
            }
            if !found { break }
        }
        return ended
    }

    /// When a process started, in clock ticks since boot (`/proc/PID/stat`, field 22); nil if there is no such
    /// process. With the pid it names a process uniquely even after its pid is reused (pid_max is 32768 here).
    package static func processStartTime(_ pid: Int32) -> UInt64? { processStat(pid)?.start }

    /// Whether the process that was `pid` and started at `start` is still running: it exists and has not exited
    /// (a zombie, not yet reaped by its parent, has).
    package static func isRunning(_ pid: Int32, startedAt start: UInt64) -> Bool {
        guard let stat = processStat(pid) else { return false }
        return stat.start == start && stat.state != UInt8(ascii: "Z")
    }

    /// The state letter (field 3) and start time (field 22) of `/proc/PID/stat`.
    static func processStat(_ pid: Int32) -> (state: UInt8, start: UInt64)? {
        guard let bytes = try? readFile("/proc/\(pid)/stat", limit: 4096),
            let close = bytes.lastIndex(of: UInt8(ascii: ")"))
        else { return nil }
        let fields = bytes[(close + 1)...].split(separator: UInt8(ascii: " "))
        // After "pid (comm)", fields start at 3 (state); starttime is field 22.
        guard fields.count > 19, let state = fields[0].first,
            let start = UInt64(String(decoding: fields[19], as: UTF8.self))
        else { return nil }
        return (state, start)
    }
}
