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
    package static func spawn(
        _ executable: String, arguments: [String], environment: [String: String], directory: String, outputFD: Int32,
        inputFD: Int32? = nil, errorFD: Int32? = nil
    ) throws(SpoolError) -> pid_t {
        // Every helper below returns an error number (no errno); a failure names the program.
        func prepare(_ rc: Int32) throws(SpoolError) { try check("prepare to run", path: executable, rc) }
        var actions = posix_spawn_file_actions_t()
        try prepare(posix_spawn_file_actions_init(&actions))
        defer { posix_spawn_file_actions_destroy(&actions) }
        if let inputFD {
            try prepare(posix_spawn_file_actions_adddup2(&actions, inputFD, 0))
        } else {
            try prepare(posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0))
        }
        try prepare(posix_spawn_file_actions_adddup2(&actions, outputFD, 1))
        try prepare(posix_spawn_file_actions_adddup2(&actions, errorFD ?? outputFD, 2))
        try prepare(clinux_spawn_addchdir(&actions, directory))
        try prepare(clinux_spawn_addclosefrom(&actions, 3))
        var attributes = posix_spawnattr_t()
        try prepare(posix_spawnattr_init(&attributes))
        defer { posix_spawnattr_destroy(&attributes) }
        let flags = Int16(POSIX_SPAWN_SETPGROUP | POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF)
        try prepare(posix_spawnattr_setflags(&attributes, flags))
        try prepare(posix_spawnattr_setpgroup(&attributes, 0))
        var empty = sigset_t()
        sigemptyset(&empty)
        try prepare(posix_spawnattr_setsigmask(&attributes, &empty))
        var all = sigset_t()
        sigfillset(&all)
        try prepare(posix_spawnattr_setsigdefault(&attributes, &all))
        let argv: [UnsafeMutablePointer<CChar>?] = ([executable] + arguments).map { strdup($0) } + [nil]
        let envp: [UnsafeMutablePointer<CChar>?] = environment.map { strdup("\($0.key)=\($0.value)") } + [nil]
        defer {
            argv.forEach { free($0) }
            envp.forEach { free($0) }
        }
        var pid: pid_t = 0
        try check("run", path: executable, posix_spawn(&pid, executable, &actions, &attributes, argv, envp))
        return pid
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
