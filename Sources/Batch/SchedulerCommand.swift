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
        var outPipe: [Int32] = [0, 0]
        var errPipe: [Int32] = [0, 0]
        guard pipe(&outPipe) == 0 else { throw .system("create a pipe", path: tool, errno: errno) }
        guard pipe(&errPipe) == 0 else {
            Posix.close(outPipe[0])
            Posix.close(outPipe[1])
            throw .system("create a pipe", path: tool, errno: errno)
        }
        let pid: pid_t
        do {
            pid = try Posix.spawn(
                executable, arguments: Array(arguments.dropFirst()), environment: environment, directory: directory,
                outputFD: outPipe[1], errorFD: errPipe[1])
        } catch {
            for fd in outPipe + errPipe { Posix.close(fd) }
            throw error
        }
        Posix.close(outPipe[1])
        Posix.close(errPipe[1])
        for fd in [outPipe[0], errPipe[0]] { _ = fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK) }
        defer {
            Posix.close(outPipe[0])
            Posix.close(errPipe[0])
        }
        var output: [UInt8] = []
        var errors: [UInt8] = []
        var open = [outPipe[0], errPipe[0]]
        let deadline = Posix.monotonicSeconds() + timeoutSeconds
        var buffer = [UInt8](repeating: 0, count: 65536)
        while !open.isEmpty {
            let left = deadline - Posix.monotonicSeconds()
            if left <= 0 {
                kill(-pid, SIGKILL)
                var status: Int32 = 0
                waitpid(pid, &status, 0)
                throw SpoolError(
                    .unavailable, "'\(arguments.joined(separator: " "))' did not finish within \(Int(timeoutSeconds)) s"
                )
            }
            Posix.waitReadable(open, seconds: min(left, 1))
            for fd in open {
                let n = buffer.withUnsafeMutableBytes { Glibc.read(fd, $0.baseAddress, $0.count) }
                if n > 0 {
                    if fd == outPipe[0] { output += buffer[..<n] } else { errors += buffer[..<n] }
                } else if n == 0 || (errno != EAGAIN && errno != EINTR) {
                    open.removeAll { $0 == fd }
                }
            }
        }
        var status: Int32 = 0
        while waitpid(pid, &status, 0) < 0 && errno == EINTR {}
        let signal = status & 0x7F
        return Result(
            status: signal == 0 ? (status >> 8) & 0xFF : 128 + signal, output: String(decoding: output, as: UTF8.self),
            errors: String(decoding: errors, as: UTF8.self))
    }

    /// The absolute path of `tool` (itself if it has a slash), or nil.
    public func find(_ tool: String) -> String? {
        if tool.contains("/") { return access(tool, X_OK) == 0 ? tool : nil }
        for dir in (environment["PATH"] ?? "/usr/bin:/bin").split(separator: ":") {
            let candidate = dir + "/" + tool
            if access(candidate, X_OK) == 0 { return candidate }
        }
        return nil
    }

    /// `: <first lines of text>` for an error message, or nothing.
    static func quote(_ text: String) -> String {
        let lines = text.split(separator: "\n").prefix(5).joined(separator: " | ")
        return lines.isEmpty ? "" : ": " + lines
    }
}
