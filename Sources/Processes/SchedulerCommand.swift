import Spool

#if canImport(Glibc)
    import Glibc
#endif

/// Runs a scheduler's command-line tools (`sbatch`, `squeue`, `qsub`, ...): found through PATH, arguments passed
/// as they are (no shell), output captured, a time limit. A missing tool, a non-zero exit and a timeout are errors
/// that name the command and quote what it printed.
public struct SchedulerCommand: Sendable {
    /// What a command printed and how it exited.
    public struct Result: Sendable {
        public var status: Int32
        public var output: String
        public var errors: String
    }

    /// Seconds before a command is killed.
    public var timeoutSeconds: Double
    /// Its environment (the caller's, by default).
    public var environment: [String: String]
    /// Where it runs.
    public var directory: String
    /// Whether what it starts is marked as this process's (see `ChildProcess.marksDescendants`): true for a
    /// transfer's rsync, false for a scheduler's tools, whose batch jobs outlive the watcher on purpose.
    public var marksDescendants = true

    public init(timeoutSeconds: Double, environment: [String: String]? = nil, directory: String = "/") {
        self.timeoutSeconds = timeoutSeconds
        self.environment = environment ?? Posix.environment()
        self.directory = directory
    }

    /// Runs `arguments` (the first is the tool, looked up in PATH); throws unless it exits 0.
    public func run(_ arguments: [String]) throws(SpoolError) -> Result {
        let result = try runAllowingFailure(arguments)
        guard result.status == 0 else {
            throw SpoolError(
                .unavailable,
                "'\(arguments.joined(separator: " "))' exited with status \(result.status)"
                    + SchedulerCommand.quote(result.errors.isEmpty ? result.output : result.errors))
        }
        return result
    }

    /// Runs `arguments` and returns however it exited; throws only if it cannot run or does not finish.
    public func runAllowingFailure(_ arguments: [String]) throws(SpoolError) -> Result {
        guard let tool = arguments.first else { throw SpoolError(.usage, "no command given") }
        guard let executable = find(tool) else {
            throw SpoolError(
                .notFound,
                "\(tool): not found in PATH (\(environment["PATH"] ?? "unset")); is the scheduler's client installed?")
        }
        var child = ChildProcess(
            executable: executable, arguments: Array(arguments.dropFirst()), environment: environment,
            directory: directory, timeoutSeconds: timeoutSeconds)
        child.marksDescendants = marksDescendants
        let outcome = try child.run(output: .capture(limit: SchedulerCommand.outputLimit))
        let status: Int32
        switch outcome.ending {
        case .exited(let code): status = code
        case .signaled(let signal): status = 128 + signal
        case .timedOut, .stopped:
            throw SpoolError(
                .unavailable,
                "'\(arguments.joined(separator: " "))' did not finish within \(Int(saturating: timeoutSeconds)) s")
        }
        return Result(
            status: status, output: String(decoding: outcome.output, as: UTF8.self),
            errors: String(decoding: outcome.errors, as: UTF8.self))
    }

    /// Bytes of each output kept (a scheduler's listing of a large machine fits many times over).
    static let outputLimit = 16 << 20

    /// The absolute path of `tool` (itself if it has a slash), or nil.
    public func find(_ tool: String) -> String? { Posix.findExecutable(tool, path: environment["PATH"]) }

    /// `: <first lines of text>` for an error message, or nothing.
    public static func quote(_ text: String) -> String {
        let lines = text.split(separator: "\n").prefix(5).joined(separator: " | ")
        return lines.isEmpty ? "" : ": " + lines
    }
}
