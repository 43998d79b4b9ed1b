import Spool

#if canImport(Glibc)
    import Glibc
#endif

/// Runs one hook executable in a job's directory, with the job described in its environment, output appended to
/// the job's `balsam.log`, and a time limit.
///
/// `posix_spawn` rather than swift-subprocess: the watcher's passes are synchronous, and a hook needs only a new
/// process group (so a timeout kills everything it started), a working directory, and its output on a file.
struct HookRunner {
    /// How a hook ended.
    struct Outcome {
        enum Status: Equatable {
            case exited(Int32)
            case signaled(Int32)
            case timedOut
            /// Killed because the watcher is stopping.
            case abandoned
        }

        var status: Status
        /// The last lines the hook wrote to `balsam.log`.
        var tail: String
        /// What the hook asked for in its result file, if it wrote one.
        var result: JSONValue?
    }

    /// The file a hook may write to choose the next state and update the job's `data`.
    static let resultName = ".balsam-hook-result.json"
    /// The job's hook log.
    static let logName = "balsam.log"

    var timeoutSeconds: Double
    var tailLines: Int
    var shouldStop: @Sendable () -> Bool = { false }

    func run(_ executable: String, hook: String, directory: String, environment: [String: String]) throws(SpoolError)
        -> Outcome
    {
        let logPath = directory + "/" + HookRunner.logName
        let resultPath = directory + "/" + HookRunner.resultName
        Posix.unlink(resultPath)
        let startOffset = (try? Posix.lstatIfExists(logPath))??.st_size ?? 0
        let header = "==> \(Timestamp.now()) \(hook) (\(executable))\n"
        let logFD = try Posix.open(logPath, O_WRONLY | O_APPEND | O_CREAT)
        try Posix.write(logFD, Array(header.utf8), path: logPath)

        var env = environment
        env["BALSAM_HOOK"] = hook
        env["BALSAM_HOOK_RESULT"] = resultPath
        let pid: pid_t
        do {
            pid = try Posix.spawn(executable, arguments: [], environment: env, directory: directory, outputFD: logFD)
        } catch {
            Posix.close(logFD)
            throw SpoolError(error.code, "cannot run hook \(hook)", path: executable, cause: error.cause)
        }
        Posix.close(logFD)
        let status = wait(pid, deadline: Posix.monotonicSeconds() + timeoutSeconds)
        let tail = Posix.tail(logPath, lines: tailLines, from: Int(startOffset) + header.utf8.count)
        var result: JSONValue?
        if status == .exited(0), let bytes = try? Posix.readFile(resultPath, limit: 1 << 20) {
            do { result = try JSONValue.parse(bytes) } catch {
                result = .string("malformed \(HookRunner.resultName): \(error)")
            }
        }
        Posix.unlink(resultPath)
        return Outcome(status: status, tail: tail, result: result)
    }

    /// Waits for the hook, killing its whole process group at the deadline (SIGTERM, then SIGKILL 2 s later).
    private func wait(_ pid: pid_t, deadline: Double) -> Outcome.Status {
        var killedAt: Double?
        var abandoned = false
        while true {
            var status: Int32 = 0
            let r = waitpid(pid, &status, WNOHANG)
            if r == pid {
                if abandoned { return .abandoned }
                if killedAt != nil { return .timedOut }
                let signal = status & 0x7F
                return signal == 0 ? .exited((status >> 8) & 0xFF) : .signaled(signal)
            }
            if r < 0 && errno != EINTR { return .signaled(SIGKILL) }
            let now = Posix.monotonicSeconds()
            if let at = killedAt {
                if now > at + 2 { kill(-pid, SIGKILL) }
            } else if now > deadline || shouldStop() {
                abandoned = now <= deadline
                kill(-pid, SIGTERM)
                killedAt = now
            }
            usleep(2_000)
        }
    }
}
