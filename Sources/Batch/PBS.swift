import Processes
import Spool

#if canImport(Glibc)
    import Glibc
#endif

/// PBS Professional / OpenPBS (Polaris, Aurora): `qsub`, `qstat -f -F json` (with `-x` for ended jobs), `qdel`.
/// Where `qstat` has no `-F json` (Torque, older PBS, Slurm's `slurm-wlm-torque` wrappers), its `qstat -f` text.
/// The JSON parser is tested on output in the documented format (no PBS Professional server runs here); the
/// text path runs live in the tests, through Debian's `slurm-wlm-torque` wrappers over a real Slurm cluster.
public struct PBSScheduler: Scheduler {
    public let kind = "pbs"
    let command: SchedulerCommand
    /// Resources every node chunk asks for besides its count (`scheduler.node_select`): Polaris wants
    /// `select=N:system=polaris`.
    var nodeSelect: String?

    public func submit(script: String, name: String, job: BatchJob, outputPath: String) throws(SpoolError) -> String {
        let walltime = String(format2: job.wallTimeMinutes / 60) + ":" + String(format2: job.wallTimeMinutes % 60)
        // One -l: the wrappers keep only the last of several.
        var arguments = [
            "qsub", "-N", name, "-o", outputPath, "-j", "oe", "-l",
            "select=\(job.numNodes)\(nodeSelect.map { ":" + $0 } ?? ""),walltime=\(walltime):00",
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
        let json = try command.runAllowingFailure(["qstat", "-f", "-F", "json"])
        if json.status == 0 { return try PBSScheduler.parseJSON(json.output, owner: userName()) }
        guard PBSScheduler.lacksOption(json) else {
            throw SpoolError(
                .unavailable,
                "'qstat -f -F json' exited with status \(json.status)" + SchedulerCommand.quote(json.errors))
        }
        return try PBSScheduler.parseText(try command.run(["qstat", "-f"]).output, owner: userName())
    }

    public func lookUp(id: String, outputPath: String) throws(SpoolError) -> SchedulerStatus? {
        let json = try command.runAllowingFailure(["qstat", "-x", "-f", "-F", "json", id])
        if json.status == 0 { return try PBSScheduler.parseJSON(json.output, owner: nil).first }
        guard PBSScheduler.lacksOption(json) else { return nil }  // "Unknown Job Id": the server has no record
        let text = try command.runAllowingFailure(["qstat", "-f", id])
        return text.status == 0 ? try PBSScheduler.parseText(text.output, owner: nil).first : nil
    }

    /// Whether `qstat` refused an option it does not have (`-x`, `-F`), rather than failing.
    static func lacksOption(_ result: SchedulerCommand.Result) -> Bool {
        let text = (result.errors + result.output).lowercased()
        return text.contains("unknown option") || text.contains("invalid option") || text.contains("illegal option")
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
            guard case .object(let j) = value else {
                throw SpoolError(.unavailable, "qstat's record of job \(id) is not an object")
            }
            var attributes: [String: String] = [:]
            for (key, field) in j {
                switch field {
                case .string(let text): attributes[key] = text
                case .int(let number): attributes[key] = String(number)
                case .double(let number): attributes[key] = String(number)
                default: continue  // Resource_List and other objects: not read
                }
            }
            if let status = try status(id: id, attributes, owner: owner) { statuses.append(status) }
        }
        return statuses
    }

    /// `qstat -f` as text: a `Job Id: ID` line, then indented `key = value` lines.
    static func parseText(_ output: String, owner: String?) throws(SpoolError) -> [SchedulerStatus] {
        var statuses: [SchedulerStatus] = []
        var id: String?
        var attributes: [String: String] = [:]
        func flush() throws(SpoolError) {
            if let id, let status = try status(id: id, attributes, owner: owner) { statuses.append(status) }
            id = nil
            attributes = [:]
        }
        for line in output.split(separator: "\n") {
            if line.hasPrefix("Job Id:") {
                try flush()
                id = line.dropFirst("Job Id:".count).trimmingCharacters(in: " \t\r")
            } else if let eq = line.firstRange(of: " = "), id != nil {
                attributes[line[..<eq.lowerBound].trimmingCharacters(in: " \t")] =
                    line[eq.upperBound...].trimmingCharacters(in: " \t\r")
            } else if !line.allSatisfy(\.isWhitespace) && id == nil {
                throw SpoolError(.unavailable, "cannot read qstat's line '\(line)' (expected 'Job Id: ID')")
            }
        }
        try flush()
        return statuses
    }

    /// One job from its attributes; nil if it belongs to another user.
    static func status(id: String, _ j: [String: String], owner: String?) throws(SpoolError) -> SchedulerStatus? {
        guard let state = j["job_state"] else {
            throw SpoolError(.unavailable, "qstat's record of job \(id) has no job_state")
        }
        if let owner, let jobOwner = j["Job_Owner"], jobOwner.split(separator: "@").first.map(String.init) != owner {
            return nil
        }
        let exit = j["Exit_status"].flatMap { Int($0) }
        let phase: SchedulerStatus.Phase
        switch state {
        case "Q", "H", "W", "T", "S", "U", "M": phase = .queued
        case "R", "E", "B": phase = .running
        case "F", "X", "C":  // C: Torque's completed (no exit status from the Slurm wrappers)
            switch exit {
            case 0?, nil: phase = .ended(.completed)
            case (-29)?, (-11)?: phase = .ended(.timedOut)  // JOB_EXEC_KILL_WALLTIME; older servers
            case let code? where code == 256 + 15 || code == 256 + 9: phase = .ended(.cancelled)
            default: phase = .ended(.failed)
            }
        default:
            throw SpoolError(.unavailable, "qstat reports job \(id) in unknown state '\(state)'")
        }
        let ended = phase != .queued && phase != .running
        return SchedulerStatus(
            id: id, name: j["Job_Name"], phase: phase, rawState: state, exitCode: exit, reason: j["comment"],
            submitTime: j["qtime"].flatMap(ctime), startTime: j["stime"].flatMap(ctime),
            endTime: ended ? j["mtime"].flatMap(ctime) : nil)
    }

    /// PBS's times: `Wed Nov 25 08:32:32 2026`, local time.
    static func ctime(_ text: String) -> String? { SchedulerTime.local(text, formats: ["%a %b %d %H:%M:%S %Y"]) }
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
