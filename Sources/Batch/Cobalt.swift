import Processes
import Spool

/// Cobalt (the retired Theta): `qsub`, `qstat` with a chosen header, `qdel`. Cobalt keeps no record of ended jobs
/// that qstat can show: an ended job is read from its `.cobaltlog`. Parsing is tested on output in the documented
/// format; no live Cobalt runs in the tests.
public struct CobaltScheduler: Scheduler {
    public let kind = "cobalt"
    let command: SchedulerCommand

    static let header = "JobID:JobName:State:Queue:Nodes:WallTime:QueuedTime:RunTime"

    public func submit(script: String, name: String, job: BatchJob, outputPath: String) throws(SpoolError) -> String {
        let base = outputPath.hasSuffix(".out") ? String(outputPath.dropLast(4)) : outputPath
        var arguments = ["qsub", "-O", base, "-n", String(job.numNodes), "-t", String(job.wallTimeMinutes)]
        if !job.queue.isEmpty { arguments += ["-q", job.queue] }
        if !job.project.isEmpty { arguments += ["-A", job.project] }
        let result = try command.run(arguments + ["--jobname", name, script])
        guard let id = result.output.split(separator: "\n").last.map({ $0.trimmingCharacters(in: " \t\r") }),
            !id.isEmpty, id.allSatisfy({ $0.isNumber })
        else { throw SpoolError(.unavailable, "qsub printed no job ID" + SchedulerCommand.quote(result.output)) }
        return id
    }

    public func list() throws(SpoolError) -> [SchedulerStatus] {
        var env = command
        env.environment["QSTAT_HEADER"] = Self.header
        let result = try env.run(["qstat", "-u", userName()])
        return try CobaltScheduler.parseList(result.output)
    }

    public func lookUp(id: String, outputPath: String) throws(SpoolError) -> SchedulerStatus? {
        let base = outputPath.hasSuffix(".out") ? String(outputPath.dropLast(4)) : outputPath
        guard let bytes = try? Posix.readFile(base + ".cobaltlog", limit: 1 << 20) else { return nil }
        return CobaltScheduler.parseLog(String(decoding: bytes, as: UTF8.self), id: id)
    }

    /// A `.cobaltlog`: its line `... task completed normally with an exit code of N; ...` says how the job ended.
    static func parseLog(_ text: String, id: String) -> SchedulerStatus? {
        let marker = "with an exit code of "
        guard let line = text.split(separator: "\n").last(where: { $0.contains(marker) }),
            let r = line.firstRange(of: marker)
        else { return nil }
        let code = Int(line[r.upperBound...].prefix { $0.isNumber || $0 == "-" })
        let phase: SchedulerStatus.Phase = code == 0 ? .ended(.completed) : .ended(.failed)
        return SchedulerStatus(
            id: id, phase: phase, rawState: "exit code \(code.map(String.init) ?? "?")", exitCode: code)
    }

    public func cancel(id: String) throws(SpoolError) {
        _ = try command.run(["qdel", id])
    }

    /// `qstat` with `QSTAT_HEADER`: a header line, a line of dashes, then whitespace-separated columns.
    static func parseList(_ output: String) throws(SpoolError) -> [SchedulerStatus] {
        var statuses: [SchedulerStatus] = []
        var columns: [String] = []
        for line in output.split(separator: "\n") where !line.allSatisfy(\.isWhitespace) {
            let words = line.split(whereSeparator: \.isWhitespace).map(String.init)
            if columns.isEmpty {
                columns = words
                guard columns.contains("JobID") || columns.contains("JobId"), columns.contains("State") else {
                    throw SpoolError(.unavailable, "cannot read qstat's header '\(line)'")
                }
                continue
            }
            if words.count == 1 && words[0].allSatisfy({ $0 == "-" || $0 == "=" }) { continue }
            guard words.count == columns.count else {
                throw SpoolError(
                    .unavailable, "cannot read qstat's line '\(line)' (columns: \(columns.joined(separator: " ")))")
            }
            var row: [String: String] = [:]
            for (c, w) in zip(columns, words) { row[c] = w }
            let id = row["JobID"] ?? row["JobId"] ?? ""
            let state = row["State"] ?? ""
            let phase: SchedulerStatus.Phase
            switch state {
            case "queued", "user_hold", "admin_hold", "dep_hold", "maxrun_hold", "starting", "dep_fail": phase = .queued
            case "running", "exiting", "killing": phase = .running
            default: throw SpoolError(.unavailable, "qstat reports job \(id) in unknown state '\(state)'")
            }
            statuses.append(SchedulerStatus(id: id, name: row["JobName"], phase: phase, rawState: state))
        }
        return statuses
    }
}
