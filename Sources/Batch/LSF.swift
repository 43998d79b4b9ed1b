import Processes
import Spool

#if canImport(Glibc)
    import Glibc
#endif

/// IBM LSF (Summit): `bsub`, `bjobs -json -o ...`, `bkill`. Parsing is tested on output in the documented
/// format; LSF is proprietary and no live server runs in the tests.
public struct LSFScheduler: Scheduler {
    public let kind = "lsf"
    let command: SchedulerCommand

    static let fields = "jobid job_name stat queue submit_time start_time finish_time exit_code exit_reason"

    public func submit(script: String, name: String, job: BatchJob, outputPath: String) throws(SpoolError) -> String {
        var arguments = [
            "bsub", "-J", name, "-o", outputPath, "-nnodes", String(job.numNodes), "-W", String(job.wallTimeMinutes),
        ]
        if !job.queue.isEmpty { arguments += ["-q", job.queue] }
        if !job.project.isEmpty { arguments += ["-P", job.project] }
        let result = try command.run(arguments + [script])
        return try LSFScheduler.parseSubmit(result.output)
    }

    public func list() throws(SpoolError) -> [SchedulerStatus] {
        let result = try command.run(["bjobs", "-a", "-u", userName(), "-json", "-o", Self.fields])
        return try LSFScheduler.parseJSON(result.output)
    }

    public func lookUp(id: String, outputPath: String) throws(SpoolError) -> SchedulerStatus? {
        let result = try command.runAllowingFailure(["bjobs", "-a", "-json", "-o", Self.fields, id])
        guard result.status == 0 else { return nil }
        return try LSFScheduler.parseJSON(result.output).first { $0.id == id }
    }

    public func cancel(id: String) throws(SpoolError) {
        _ = try command.run(["bkill", id])
    }

    /// `Job <12345> is submitted to queue <batch>.`
    static func parseSubmit(_ output: String) throws(SpoolError) -> String {
        guard let open = output.firstIndex(of: "<"), let close = output[open...].firstIndex(of: ">"),
            case let id = String(output[output.index(after: open)..<close]), !id.isEmpty, id.allSatisfy(\.isNumber)
        else { throw SpoolError(.unavailable, "bsub printed no job ID" + SchedulerCommand.quote(output)) }
        return id
    }

    /// `bjobs -json -o "..."`: `{"COMMAND": "bjobs", "JOBS": N, "RECORDS": [{"JOBID": ..., "STAT": ...}]}`.
    static func parseJSON(_ output: String) throws(SpoolError) -> [SchedulerStatus] {
        let root: JSONValue
        do { root = try JSONValue.parse(output) } catch {
            throw SpoolError(.unavailable, "cannot read bjobs' JSON: \(error)" + SchedulerCommand.quote(output))
        }
        guard case .object(let o) = root else {
            throw SpoolError(.unavailable, "bjobs' JSON is not an object" + SchedulerCommand.quote(output))
        }
        guard case .array(let records)? = o["RECORDS"] else { return [] }
        var statuses: [SchedulerStatus] = []
        for case .object(let r) in records {
            guard let id = r["JOBID"]?.stringValue, let stat = r["STAT"]?.stringValue else {
                if r["ERROR"] != nil { continue }  // "Job <N> is not found"
                throw SpoolError(
                    .unavailable, "a bjobs record has no JOBID or STAT: \(JSONValue.object(r).serialized())")
            }
            let exit = r["EXIT_CODE"]?.stringValue.flatMap { Int($0) }
            let reason = r["EXIT_REASON"]?.stringValue.flatMap { $0.isEmpty ? nil : $0 }
            let phase: SchedulerStatus.Phase
            switch stat {
            case "PEND", "PSUSP", "WAIT": phase = .queued
            case "RUN", "USUSP", "SSUSP", "PROV": phase = .running
            case "DONE": phase = .ended(.completed)
            case "EXIT":
                if let reason, reason.contains("RUNLIMIT") || reason.lowercased().contains("run limit") {
                    phase = .ended(.timedOut)
                } else if let reason, reason.lowercased().contains("killed") || reason.contains("TERM_OWNER") {
                    phase = .ended(.cancelled)
                } else {
                    phase = .ended(.failed)
                }
            default:
                throw SpoolError(.unavailable, "bjobs reports job \(id) in unknown state '\(stat)'")
            }
            statuses.append(
                SchedulerStatus(
                    id: id, name: r["JOB_NAME"]?.stringValue, phase: phase, rawState: stat, exitCode: exit,
                    reason: reason, submitTime: r["SUBMIT_TIME"]?.stringValue.flatMap(time),
                    startTime: r["START_TIME"]?.stringValue.flatMap(time),
                    endTime: r["FINISH_TIME"]?.stringValue.flatMap(time)))
        }
        return statuses
    }

    /// LSF's times: `Nov 25 08:32` or `Nov 25 08:32:35 2026` (local; a trailing ` L`, ` E` marks estimates).
    static func time(_ text: String) -> String? {
        let clean = text.split(separator: " ").filter { !["L", "E", "X"].contains($0) }.joined(separator: " ")
        return SchedulerTime.local(clean, formats: ["%b %d %H:%M:%S %Y", "%b %d %H:%M"])
    }
}
