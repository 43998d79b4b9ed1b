import Processes
import Spool

#if canImport(Glibc)
    import Glibc
#endif

/// Runs one hook executable in a job's directory, with the job described in its environment, output appended to
/// the job's `balsam.log`, and a time limit.
/// The hook runs as a `ChildProcess`: a process group of its own, so that a timeout or the watcher's stop ends
/// everything it started (SIGTERM, then SIGKILL 2 s later).
struct HookRunner {
    /// How a hook ended.
    struct Outcome {
        /// How its process ended (`.stopped`: killed because the watcher is stopping).
        var status: ChildProcess.Ending
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

    /// With `warm`, a class hook runs in the watcher's warm hook server (see `WarmHooks`), else as its file.
    func run(
        _ executable: String, hook: String, directory: String, environment: [String: String], warm: WarmHooks? = nil
    ) throws(SpoolError) -> Outcome {
        let logPath = directory + "/" + HookRunner.logName
        let resultPath = directory + "/" + HookRunner.resultName
        Posix.unlink(resultPath)
        let startOffset = (try? Posix.lstatIfExists(logPath))??.st_size ?? 0
        let header = "==> \(Timestamp.now()) \(hook) (\(executable))\n"
        let logFD = try Posix.open(logPath, O_WRONLY | O_APPEND | O_CREAT)
        do { try Posix.write(logFD, Array(header.utf8), path: logPath) } catch {
            Posix.close(logFD)
            throw error
        }

        var env = environment
        env["BALSAM_HOOK"] = hook
        env["BALSAM_HOOK_RESULT"] = resultPath
        var child = ChildProcess(
            executable: executable, environment: env, directory: directory, timeoutSeconds: timeoutSeconds)
        child.shouldStop = shouldStop
        let status: ChildProcess.Ending
        do {
            defer { Posix.close(logFD) }
            if let warm,
                let ended = warm.run(
                    hook: hook, directory: directory, environment: env, log: logPath, timeoutSeconds: timeoutSeconds,
                    shouldStop: shouldStop)
            {
                status = ended
            } else {
                status = try child.run(output: .file(logFD)).ending
            }
        } catch {
            throw SpoolError(
                error.code, "cannot run hook \(hook): \(error.message)", path: executable, cause: error.cause)
        }
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
}
