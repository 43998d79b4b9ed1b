import CLinux
import Processes
import Spool

#if canImport(Glibc)
    import Glibc
#endif

/// What a scheduler says about one of its jobs.
public struct SchedulerStatus: Sendable, Equatable {
    /// Where the job is.
    public enum Phase: Sendable, Equatable {
        case queued
        case running
        case ended(BatchJob.Outcome)
    }

    public var id: String
    /// The job's name (Balsam names its jobs, so a lost submission can be found again).
    public var name: String?
    public var phase: Phase
    /// The scheduler's own word for the state (`PENDING`, `R`, `TIMEOUT`, ...), for messages.
    public var rawState: String
    /// The script's exit code, when known.
    public var exitCode: Int?
    /// The scheduler's reason (why pending, why failed), when it gives one.
    public var reason: String?
    /// Times as UTC timestamps (Balsam's format), when known.
    public var submitTime: String?
    public var startTime: String?
    public var endTime: String?

    public init(
        id: String, name: String? = nil, phase: Phase, rawState: String, exitCode: Int? = nil, reason: String? = nil,
        submitTime: String? = nil, startTime: String? = nil, endTime: String? = nil
    ) {
        self.id = id
        self.name = name
        self.phase = phase
        self.rawState = rawState
        self.exitCode = exitCode
        self.reason = reason
        self.submitTime = submitTime
        self.startTime = startTime
        self.endTime = endTime
    }
}

/// A free stretch of the machine a job can start in at once: this many nodes for this many minutes
/// (`BackfillWindow.unlimited` where the queue has no time limit).
public struct BackfillWindow: Sendable, Equatable {
    /// The minutes of a window without a time limit.
    public static let unlimited = Int.max / 2

    public var nodes: Int
    public var minutes: Int

    public init(nodes: Int, minutes: Int) {
        self.nodes = nodes
        self.minutes = minutes
    }
}

/// One batch scheduler, through its command-line tools. Output that cannot be understood is an error (with the
/// text), never skipped: the original silently dropped Slurm's FAILED lines.
public protocol Scheduler: Sendable {
    /// `slurm`, `pbs`, `lsf`, `cobalt` or `local`.
    var kind: String { get }
    /// Submits `script` (a file) as `name` for `job`'s nodes, time, queue and project, output to `outputPath`;
    /// returns the scheduler's ID.
    func submit(script: String, name: String, job: BatchJob, outputPath: String) throws(SpoolError) -> String
    /// Every job of this user the scheduler knows now (queued, running, and those recently ended it still shows).
    func list() throws(SpoolError) -> [SchedulerStatus]
    /// A job `list` does not show (any more): how it ended, from the scheduler's records (or, for Cobalt, its log
    /// beside `outputPath`); nil if there are none.
    func lookUp(id: String, outputPath: String) throws(SpoolError) -> SchedulerStatus?
    /// Asks the scheduler to cancel a job (queued or running).
    func cancel(id: String) throws(SpoolError)
    /// Where a job could start now in `queue`: nil where the scheduler does not say, empty where nothing is free.
    func backfillWindows(queue: String) throws(SpoolError) -> [BackfillWindow]?
}

extension Scheduler {
    public func backfillWindows(queue: String) throws(SpoolError) -> [BackfillWindow]? { nil }
}

/// Makes the adapter a site's settings name.
public func makeScheduler(
    kind: String, site: Site, timeoutSeconds: Double, environment: [String: String]? = nil,
    queueOption: String? = nil, nodeSelect: String? = nil
) throws(SpoolError) -> any Scheduler {
    var command = SchedulerCommand(timeoutSeconds: timeoutSeconds, environment: environment, directory: site.root)
    // A batch job inherits sbatch's (qsub's, bsub's) environment: unmarked, so no watcher takes it for what a dead
    // one left running.
    command.marksDescendants = false
    switch kind {
    case "slurm": return SlurmScheduler(command: command, queueOption: queueOption ?? "--partition")
    case "pbs": return PBSScheduler(command: command, nodeSelect: nodeSelect)
    case "lsf": return LSFScheduler(command: command)
    case "cobalt": return CobaltScheduler(command: command)
    case "local": return LocalScheduler(site: site, command: command)
    default:
        throw SpoolError(
            .invalidInput, "unknown scheduler '\(kind)' (local, slurm, pbs, lsf or cobalt)", path: site.settingsPath)
    }
}

/// Times as schedulers print them, turned into Balsam's UTC timestamps.
enum SchedulerTime {
    /// A time in the machine's local time zone, in the first of `formats` (strptime(3)) it matches, as a UTC
    /// timestamp; nil for `N/A`, `Unknown`, `None`. A format without a year (`%Y`) means this year. By default
    /// Slurm's `2026-11-25T08:32:35` (or with a space).
    static func local(_ text: String, formats: [String] = ["%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M:%S"]) -> String? {
        let trimmed = text.trimmingCharacters(in: " \t")
        for format in formats {
            var parts = tm()
            guard trimmed.withCString({ clinux_strptime($0, format, &parts) }) != nil else { continue }
            if !format.contains("%Y") {
                var now = time(nil)
                var today = tm()
                localtime_r(&now, &today)
                parts.tm_year = today.tm_year
            }
            parts.tm_isdst = -1
            let t = mktime(&parts)
            return t == -1 ? nil : epoch(Int(t))
        }
        return nil
    }

    /// Seconds since the epoch.
    static func epoch(_ seconds: Int) -> String { Timestamp.format(seconds: seconds, millis: 0) }

    /// `HH:MM:SS`, `MM:SS`, `D-HH:MM:SS` or minutes, as minutes (Slurm's, PBS's and LSF's durations).
    static func minutes(_ text: String) -> Int? {
        var days = 0
        var rest = Substring(text)
        if let dash = rest.firstIndex(of: "-") {
            guard let d = Int(rest[..<dash]) else { return nil }
            days = d
            rest = rest[rest.index(after: dash)...]
        }
        var f: [Int] = []
        for field in rest.split(separator: ":") {
            guard let value = Int(field) else { return nil }
            f.append(value)
        }
        let minutes: Int
        switch f.count {
        case 1: minutes = f[0]
        case 2: minutes = f[0] + (f[1] > 0 ? 1 : 0)  // MM:SS
        case 3: minutes = f[0] * 60 + f[1] + (f[2] > 0 ? 1 : 0)
        default: return nil
        }
        return days * 1440 + minutes
    }
}

extension StringProtocol {
    func trimmingCharacters(in set: String) -> String {
        var s = self[...]
        while let c = s.first, set.contains(c) { s = s.dropFirst() }
        while let c = s.last, set.contains(c) { s = s.dropLast() }
        return String(s)
    }
}
