import Spool

#if canImport(Glibc)
    import Glibc
#endif

/// What to run for one job on one node: the script bash runs in the job's directory, and its environment.
public struct TaskSpec: Sendable, Equatable {
    /// The job.
    public var id: String
    /// The job's directory (its output goes to `job.out` there).
    public var directory: String
    /// Run as `bash -c SCRIPT`.
    public var script: String
    /// The whole environment.
    public var environment: [String: String]

    public init(id: String, directory: String, script: String, environment: [String: String]) {
        self.id = id
        self.directory = directory
        self.script = script
        self.environment = environment
    }
}

/// Runs the jobs placed on one node through `balsam-task-guard`, this rank's task server: a small C program
/// started once, which starts each job (`bash -c`) with `posix_spawn`, reports how it ended, stops a job's whole
/// process group on request (SIGTERM, SIGKILL after the grace period), and stops every job when this process
/// goes away (it has PR_SET_PDEATHSIG, and its requests pipe closes), so no job outlives its launcher to run
/// twice. Starting jobs from a small process is cheap; forking the launcher per job was not (two forks of it
/// took most of a core at 300 jobs/s), nor was one guard program exec'd per job (0.5 ms of CPU each).
public final class TaskRunner {
    /// How a job's process ended.
    public struct Ended: Sendable, Equatable {
        public var id: String
        /// Its exit status (128 + a signal that ended it; 126/127: it could not be started).
        public var status: Int32
        /// Why it could not be started, when it could not.
        public var error: String?

        public init(id: String, status: Int32, error: String? = nil) {
            self.id = id
            self.status = status
            self.error = error
        }
    }

    private var running = Set<String>()
    /// Each started job's process group (its pid), as the server reports it: what this rank stops itself when the
    /// server dies.
    private var groups: [String: pid_t] = [:]
    private let graceMilliseconds: Int
    private let guardPath: String
    /// The base environment as `KEY=VALUE` fields, made once: a job only adds its own few on top.
    private let baseFields: [(key: String, field: String)]
    private var server: (pid: pid_t, requests: Int32, replies: Int32)?
    private var pending: [UInt8] = []

    /// A runner whose kills give jobs `grace` seconds between SIGTERM and SIGKILL; `guardPath` is the
    /// `balsam-task-guard` executable (installed beside `balsam-launcher`); jobs get `baseEnvironment` (see
    /// `TaskCommand.baseEnvironment`) with their spec's environment laid over it.
    public init(grace: Double, guardPath: String, baseEnvironment: [String: String] = [:]) {
        graceMilliseconds = Int(max(0, grace * 1000))
        self.guardPath = guardPath
        self.baseFields = baseEnvironment.sorted { $0.key < $1.key }.map { ($0.key, "\($0.key)=\($0.value)") }
    }

    deinit {
        if let server {
            close(server.requests)  // the server stops what is left and exits
            close(server.replies)
            var status: Int32 = 0
            waitpid(server.pid, &status, 0)
        }
    }

    /// `balsam-task-guard` beside the running executable.
    public static var defaultGuardPath: String {
        Posix.parentPath(Posix.executablePath() ?? "./balsam-launcher") + "/balsam-task-guard"
    }

    /// Jobs running.
    public var count: Int { running.count }

    /// Readable when the task server has replied (a job ended): a wait can end on it. -1 before the first start.
    public var replyFD: Int32 { server?.replies ?? -1 }

    /// Starts a job. It ends through `poll()`, also when it could not be started (status 126 or 127, with why).
    public func start(_ spec: TaskSpec) -> Ended? {
        var env = baseFields.compactMap { spec.environment[$0.key] == nil ? $0.field : nil }
        for (key, value) in spec.environment { env.append(key + "=" + value) }
        let separator = "\n==> balsam-launcher: run again at \(Timestamp.now()) <==\n"
        let fields =
            ["start", spec.id, spec.directory, spec.directory + "/job.out", separator, String(env.count)] + env
            + [spec.script]
        if let error = send(fields) { return Ended(id: spec.id, status: 126, error: error) }
        running.insert(spec.id)
        return nil
    }

    /// Stops a job (SIGTERM to its process group, SIGKILL after the grace period); it ends through `poll()`.
    public func kill(_ id: String) {
        if running.contains(id) { _ = send(["kill", id]) }
    }

    /// Stops every job.
    public func killAll() {
        for id in running { _ = send(["kill", id]) }
    }

    /// Jobs that ended since the last call (never waits).
    public func poll() -> [Ended] {
        guard let server else { return [] }
        var ended: [Ended] = []
        var buffer = [UInt8](repeating: 0, count: 65536)
        while true {
            let n = buffer.withUnsafeMutableBytes { read(server.replies, $0.baseAddress, $0.count) }
            if n > 0 {
                pending += buffer.prefix(n)
                continue
            }
            if n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR) {
                // The server is gone (killed?). Its jobs are not: each has a process group of its own. Read what
                // it said before dying, stop every group it reported, and only then call the jobs ended, so
                // that no job is run again while its first run lives.
                consumeReplies(into: &ended)
                let stopped = stopOrphans()
                for id in running {
                    let why = stopped.contains(id) ? "its processes were stopped" : "it may not have started"
                    ended.append(Ended(id: id, status: 125, error: "the task server died; \(why)"))
                }
                running = []
                groups = [:]
                close(server.requests)
                close(server.replies)
                var status: Int32 = 0
                waitpid(server.pid, &status, 0)
                self.server = nil
                return ended
            }
            break
        }
        consumeReplies(into: &ended)
        return ended
    }

    /// Stops the process groups of the running jobs whose server died: SIGTERM, SIGKILL after the grace period,
    /// then waits (at most 10 s more) until no process of the group is left. Returns the jobs it stopped.
    private func stopOrphans() -> Set<String> {
        let orphans = running.compactMap { id in groups[id].map { (id, $0) } }
        guard !orphans.isEmpty else { return [] }
        // kill(2) of a group that has ended fails with ESRCH: that is the answer "gone", not an error.
        for (_, group) in orphans { _ = Glibc.kill(-group, SIGTERM) }
        let alive = { orphans.contains { Glibc.kill(-$0.1, 0) == 0 } }
        var until = Posix.monotonicSeconds() + Double(graceMilliseconds) / 1000
        while alive() && Posix.monotonicSeconds() < until { Posix.sleep(seconds: 0.01) }
        for (_, group) in orphans { _ = Glibc.kill(-group, SIGKILL) }
        until = Posix.monotonicSeconds() + 10
        while alive() && Posix.monotonicSeconds() < until { Posix.sleep(seconds: 0.01) }
        return Set(orphans.map(\.0))
    }

    /// Parses the complete reply lines read so far: `ID +PID` when a job started, `ID STATUS [why]` when it ended.
    private func consumeReplies(into ended: inout [Ended]) {
        while let newline = pending.firstIndex(of: 0x0A) {
            let line = String(decoding: pending[..<newline], as: UTF8.self)
            pending.removeSubrange(...newline)
            let parts = line.split(separator: " ", maxSplits: 2).map(String.init)
            guard parts.count >= 2 else { continue }
            if parts[1].hasPrefix("+") {
                if let pid = pid_t(parts[1].dropFirst()), running.contains(parts[0]) { groups[parts[0]] = pid }
                continue
            }
            guard let status = Int32(parts[1]), running.remove(parts[0]) != nil else { continue }
            groups[parts[0]] = nil
            ended.append(Ended(id: parts[0], status: status, error: parts.count > 2 ? parts[2] : nil))
        }
    }

    /// Writes one request; returns why it could not.
    private func send(_ fields: [String]) -> String? {
        if server == nil, let error = startServer() { return error }
        guard let server else { return "no task server" }
        var body: [UInt8] = []
        for field in fields {
            body += field.utf8
            body.append(0)
        }
        let bytes = Array("\(body.count)\n".utf8) + body
        do { try Posix.write(server.requests, bytes, path: "balsam-task-guard") } catch {
            return "cannot reach the task server: \(error)"
        }
        return nil
    }

    private func startServer() -> String? {
        let requests: (read: Int32, write: Int32)
        let replies: (read: Int32, write: Int32)
        do {
            requests = try Posix.makePipe(nonBlocking: false, path: guardPath)
            do { replies = try Posix.makePipe(nonBlocking: false, path: guardPath) } catch {
                close(requests.read)
                close(requests.write)
                throw error
            }
        } catch {
            return "cannot make pipes: \(error)"
        }
        defer {
            close(requests.read)
            close(replies.write)
        }
        do {
            // Only this end is non-blocking (a file description of its own): the server writes replies blocking.
            try Posix.setDescriptorFlags(replies.read, nonBlocking: true, path: guardPath)
            let pid = try Posix.spawn(
                guardPath, arguments: [String(getpid()), String(graceMilliseconds)],
                environment: ["PATH": "/usr/bin:/bin"], directory: "/", outputFD: replies.write,
                inputFD: requests.read, errorFD: 2)
            server = (pid, requests.write, replies.read)
            return nil
        } catch {
            close(requests.write)
            close(replies.read)
            return "cannot start \(guardPath): \(error)"
        }
    }
}
