import CLinux
import Spool

#if canImport(Glibc)
    import Glibc
#endif

/// PBS Professional / OpenPBS (Polaris, Aurora): `qsub`, `qstat -f -F json` (with `-x` for ended jobs), `qdel`.
/// Parsing is tested on output in the documented format; no live PBS server runs in the tests (Debian has none,
/// and the `slurm-wlm-torque` wrappers do not implement `-F json`).
public struct PBSScheduler: Scheduler {
    public let kind = "pbs"
    let command: SchedulerCommand

    public func submit(script: String, name: String, job: BatchJob, outputPath: String) throws(SpoolError) -> String {
        let walltime = String(format2: job.wallTimeMinutes / 60) + ":" + String(format2: job.wallTimeMinutes % 60)
        var arguments = [
            "qsub", "-N", name, "-o", outputPath, "-j", "oe", "-l", "select=\(job.numNodes)", "-l",
            "walltime=\(walltime):00",
        ]
        if !job.queue.isEmpty { arguments += ["-q", job.queue] }
        if !job.project.isEmpty { arguments += ["-A", job.project] }
        let result = try command.run(arguments + [script])
        guard let id = result.output.split(separator: "\n").last.map({ $0.trimmingCharacters(in: " \t\r") }),
            let first = id.first, first.isNumber
        else { throw SpoolError(.unavailable, "qsub printed no job ID" + SchedulerCommand.quote(result.output)) }
        return id
    }

    public func list() throws(SpoolError) -> [SchedulerStatus] {
        let result = try command.run(["qstat", "-f", "-F", "json"])
        return try PBSScheduler.parseJSON(result.output, owner: userName())
    }

    public func lookUp(id: String, outputPath: String) throws(SpoolError) -> SchedulerStatus? {
        let result = try command.runAllowingFailure(["qstat", "-x", "-f", "-F", "json", id])
        guard result.status == 0 else { return nil }  // "Unknown Job Id": the server has no record
        return try PBSScheduler.parseJSON(result.output, owner: nil).first
    }

    public func cancel(id: String) throws(SpoolError) {
        _ = try command.run(["qdel", id])
    }

    /// `qstat -f -F json`: `{"Jobs": {"ID": {"Job_Name", "Job_Owner", "job_state", "Exit_status", "qtime", ...}}}`.
    /// `owner`: keep only that user's jobs (qstat lists everyone's).
    static func parseJSON(_ output: String, owner: String?) throws(SpoolError) -> [SchedulerStatus] {
        let root: JSONValue
        do { root = try JSONValue.parse(output) } catch {
            throw SpoolError(.unavailable, "cannot read qstat's JSON: \(error)" + SchedulerCommand.quote(output))
        }
        guard case .object(let o) = root else {
            throw SpoolError(.unavailable, "qstat's JSON is not an object" + SchedulerCommand.quote(output))
        }
        guard case .object(let jobs)? = o["Jobs"] else { return [] }  // no jobs: the key is absent
        var statuses: [SchedulerStatus] = []
        for (id, value) in jobs.sorted(by: { $0.key < $1.key }) {
            guard case .object(let j) = value, let state = j["job_state"]?.stringValue else {
                throw SpoolError(.unavailable, "qstat's record of job \(id) has no job_state")
            }
            if let owner, let jobOwner = j["Job_Owner"]?.stringValue,
                jobOwner.split(separator: "@").first.map(String.init) != owner
            {
                continue
            }
            let exit = j["Exit_status"]?.intValue
            let phase: SchedulerStatus.Phase
            switch state {
            case "Q", "H", "W", "T", "S", "U", "M": phase = .queued
            case "R", "E", "B": phase = .running
            case "F", "X":
                switch exit {
                case 0?: phase = .ended(.completed)
                case (-29)?, (-11)?: phase = .ended(.timedOut)  // JOB_EXEC_KILL_WALLTIME; older servers
                case let code? where code == 256 + 15 || code == 256 + 9: phase = .ended(.cancelled)
                default: phase = .ended(.failed)
                }
            default:
                throw SpoolError(.unavailable, "qstat reports job \(id) in unknown state '\(state)'")
            }
            statuses.append(
                SchedulerStatus(
                    id: id, name: j["Job_Name"]?.stringValue, phase: phase, rawState: state, exitCode: exit,
                    reason: j["comment"]?.stringValue, submitTime: j["qtime"]?.stringValue.flatMap(ctime),
                    startTime: j["stime"]?.stringValue.flatMap(ctime),
                    endTime: phase == .queued || phase == .running ? nil : j["mtime"]?.stringValue.flatMap(ctime)))
        }
        return statuses
    }

    /// PBS's times: `Wed Nov 25 08:32:32 2026`, local time.
    static func ctime(_ text: String) -> String? {
        var parts = tm()
        guard text.withCString({ clinux_strptime($0, "%a %b %d %H:%M:%S %Y", &parts) }) != nil else { return nil }
        parts.tm_isdst = -1
        let t = mktime(&parts)
        return t == -1 ? nil : SchedulerTime.epoch(Int(t))
    }
}

/// The user running this process.
func userName() -> String {
    if let pw = getpwuid(geteuid()), let name = pw.pointee.pw_name { return String(cString: name) }
    return String(geteuid())
}

extension String {
    /// Two digits at least.
    init(format2 value: Int) { self = value < 10 ? "0\(value)" : String(value) }
}
