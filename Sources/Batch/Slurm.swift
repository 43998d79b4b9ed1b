import Processes
import Spool

/// Slurm: `sbatch`, `squeue`, `scontrol`, `sacct` (with a database, else its job-completion log), `scancel`.
/// Exercised against a live Slurm 22.05 cluster in the tests.
public struct SlurmScheduler: Scheduler {
    public let kind = "slurm"
    let command: SchedulerCommand
    /// The sbatch option that takes the batch job's queue: `--partition`, or `--qos` where queues are
    /// qualities of service (Perlmutter); `scheduler.queue_option`.
    var queueOption = "--partition"

    /// The `squeue` fields read, in order.
    static let listFormat = "%i|%T|%j|%P|%D|%V|%S|%e|%r"

    public func submit(script: String, name: String, job: BatchJob, outputPath: String) throws(SpoolError) -> String {
        var arguments = [
            "sbatch", "--parsable", "--job-name", name, "--output", outputPath, "--nodes", String(job.numNodes),
            "--time", String(job.wallTimeMinutes),
        ]
        if !job.queue.isEmpty { arguments += [queueOption, job.queue] }
        if !job.project.isEmpty { arguments += ["--account", job.project] }
        let result = try command.run(arguments + [script])
        return try SlurmScheduler.parseSubmit(result.output)
    }

    public func list() throws(SpoolError) -> [SchedulerStatus] {
        let result = try command.run(["squeue", "--noheader", "--me", "--states", "all", "--format", Self.listFormat])
        return try SlurmScheduler.parseList(result.output)
    }

    public func lookUp(id: String, outputPath: String) throws(SpoolError) -> SchedulerStatus? {
        let shown = try command.runAllowingFailure(["scontrol", "show", "job", "--oneliner", id])
        if shown.status == 0, let status = try SlurmScheduler.parseShowJob(shown.output) { return status }
        let fields = "JobID,JobName,State,ExitCode,Submit,Start,End"
        var accounting = try command.runAllowingFailure(["sacct", "-X", "-n", "-P", "-j", id, "-o", fields])
        if accounting.status != 0 && (accounting.output + accounting.errors).contains("accounting storage is disabled")
        {
            // No database: the job-completion log (JobCompType=jobcomp/filetxt) has the job-level record.
            accounting = try command.runAllowingFailure(["sacct", "-c", "-n", "-P", "-j", id, "-o", fields])
        }
        guard accounting.status == 0 else { return nil }
        return try SlurmScheduler.parseAccounting(accounting.output, id: id)
    }

    public func cancel(id: String) throws(SpoolError) {
        _ = try command.run(["scancel", id])
    }

    /// The partition's idle nodes, for its time limit: where a batch job would start at once. (Slurm does not
    /// publish its backfill plan; nodes partly in use are not counted.)
    public func backfillWindows(queue: String) throws(SpoolError) -> [BackfillWindow]? {
        let result = try command.run([
            "sinfo", "--noheader", "--partition", queue, "--states", "idle", "--format", "%D|%l",
        ])
        return try SlurmScheduler.parseIdle(result.output)
    }

    // MARK: - Parsing (static, so that tests can feed captured output)

    /// `sbatch --parsable`: `ID` or `ID;CLUSTER`.
    static func parseSubmit(_ output: String) throws(SpoolError) -> String {
        let line = output.split(separator: "\n").last.map(String.init) ?? ""
        let id = line.split(separator: ";").first.map { String($0).trimmingCharacters(in: " \t\r") } ?? ""
        guard !id.isEmpty, id.allSatisfy(\.isNumber) else {
            throw SpoolError(.unavailable, "sbatch printed no job ID" + SchedulerCommand.quote(output))
        }
        return id
    }

    /// Slurm's job states (`squeue %T`, `scontrol JobState`, `sacct State`, which may add "by UID").
    static func phase(_ state: String) -> SchedulerStatus.Phase? {
        let word = state.split(separator: " ").first.map(String.init) ?? state
        switch word {
        case "PENDING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "RESV_DEL_HOLD", "SPECIAL_EXIT":
            return .queued
        case "CONFIGURING", "RUNNING", "COMPLETING", "SIGNALING", "STAGE_OUT", "RESIZING", "SUSPENDED", "STOPPED":
            return .running
        case "COMPLETED": return .ended(.completed)
        case "CANCELLED", "PREEMPTED", "REVOKED": return .ended(.cancelled)
        case "FAILED", "NODE_FAIL", "BOOT_FAIL", "OUT_OF_MEMORY": return .ended(.failed)
        case "TIMEOUT", "DEADLINE": return .ended(.timedOut)
        default: return nil
        }
    }

    static func parseList(_ output: String) throws(SpoolError) -> [SchedulerStatus] {
        var statuses: [SchedulerStatus] = []
        for line in output.split(separator: "\n") where !line.allSatisfy(\.isWhitespace) {
            let f = line.split(separator: "|", omittingEmptySubsequences: false).map(String.init)
            guard f.count == 9, !f[0].isEmpty else {
                throw SpoolError(.unavailable, "cannot read squeue's line '\(line)' (expected \(listFormat))")
            }
            guard let phase = phase(f[1]) else {
                throw SpoolError(.unavailable, "squeue reports job \(f[0]) in unknown state '\(f[1])'")
            }
            var status = SchedulerStatus(
                id: f[0], name: f[2], phase: phase, rawState: f[1], reason: f[8] == "None" ? nil : f[8],
                submitTime: SchedulerTime.local(f[5]))
            if phase != .queued { status.startTime = SchedulerTime.local(f[6]) }
            if case .ended = phase { status.endTime = SchedulerTime.local(f[7]) }
            statuses.append(status)
        }
        return statuses
    }

    /// `scontrol show job --oneliner ID`: `Key=Value` words.
    static func parseShowJob(_ output: String) throws(SpoolError) -> SchedulerStatus? {
        var fields: [String: String] = [:]
        for word in output.split(whereSeparator: { $0 == " " || $0 == "\n" }) {
            guard let eq = word.firstIndex(of: "=") else { continue }
            let key = String(word[..<eq])
            if fields[key] == nil { fields[key] = String(word[word.index(after: eq)...]) }
        }
        guard let id = fields["JobId"], let state = fields["JobState"] else { return nil }
        guard let phase = phase(state) else {
            throw SpoolError(.unavailable, "scontrol reports job \(id) in unknown state '\(state)'")
        }
        var status = SchedulerStatus(
            id: id, name: fields["JobName"], phase: phase, rawState: state,
            exitCode: fields["ExitCode"].flatMap(exitCode),
            reason: fields["Reason"].flatMap { $0 == "None" ? nil : $0 },
            submitTime: fields["SubmitTime"].flatMap { SchedulerTime.local($0) })
        if phase != .queued { status.startTime = fields["StartTime"].flatMap { SchedulerTime.local($0) } }
        if case .ended = phase { status.endTime = fields["EndTime"].flatMap { SchedulerTime.local($0) } }
        return status
    }

    /// `sacct -X -n -P -o JobID,JobName,State,ExitCode,Submit,Start,End` (or `sacct -c`): the line of job `id`.
    static func parseAccounting(_ output: String, id: String) throws(SpoolError) -> SchedulerStatus? {
        for line in output.split(separator: "\n") {
            let f = line.split(separator: "|", omittingEmptySubsequences: false).map(String.init)
            guard f.count >= 4, f[0] == id else { continue }
            guard let phase = phase(f[2]) else {
                throw SpoolError(.unavailable, "sacct reports job \(id) in unknown state '\(f[2])'")
            }
            func field(_ i: Int) -> String? { i < f.count ? SchedulerTime.local(f[i]) : nil }
            return SchedulerStatus(
                id: id, name: f[1], phase: phase, rawState: f[2], exitCode: exitCode(f[3]), submitTime: field(4),
                startTime: field(5), endTime: field(6))
        }
        return nil
    }

    /// `sinfo --states idle --format '%D|%l'`: node counts and time limits (`infinite`, `1:00:00`, `1-00:00:00`).
    static func parseIdle(_ output: String) throws(SpoolError) -> [BackfillWindow] {
        var windows: [BackfillWindow] = []
        for line in output.split(separator: "\n") where !line.allSatisfy(\.isWhitespace) {
            let f = line.split(separator: "|").map { $0.trimmingCharacters(in: " \t\r") }
            guard f.count == 2, let nodes = Int(f[0]) else {
                throw SpoolError(.unavailable, "cannot read sinfo's line '\(line)' (expected %D|%l)")
            }
            let unlimited = ["infinite", "unlimited", "n/a"].contains(f[1].lowercased())
            guard let minutes = unlimited ? BackfillWindow.unlimited : SchedulerTime.minutes(f[1]) else {
                throw SpoolError(.unavailable, "cannot read sinfo's time limit '\(f[1])'")
            }
            windows.append(BackfillWindow(nodes: nodes, minutes: minutes))
        }
        return windows
    }

    /// `3:0` (exit code 3, no signal) → 3; `0:15` (killed by signal 15) → 143.
    static func exitCode(_ text: String) -> Int? {
        let parts = text.split(separator: ":").map { Int($0) }
        guard let code = parts.first ?? nil else { return nil }
        if parts.count == 2, let signal = parts[1], signal > 0, code == 0 { return 128 + signal }
        return code
    }
}
