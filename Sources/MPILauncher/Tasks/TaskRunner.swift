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
    /// A warm Python worker's command (the site's Python and its runner) when the job runs there instead of
    /// through `bash -c SCRIPT`; empty: bash.
    public var warmWorker: [String] = []

    public init(id: String, directory: String, script: String, environment: [String: String], warmWorker: [String] = [])
    {
        self.id = id
        self.directory = directory
        self.script = script
        self.environment = environment
        self.warmWorker = warmWorker
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
        /// The size its output was cut at (`launcher.max_output_mb`), when it was.
        public var outputCut: Int?

        public init(id: String, status: Int32, error: String? = nil, outputCut: Int? = nil) {
            self.id = id
            self.status = status
            self.error = error
            self.outputCut = outputCut
        }
    }

    /// A task server: `balsam-task-guard`, or a warm Python worker (`balsam_runner.py serve`), which speaks the
    /// same protocol and forks a child per job from an interpreter that has its libraries loaded.
    private final class Server {
        let name: String
        let pid: pid_t
        let requests: Int32
        let replies: Int32
        /// Jobs whose output was cut, at what size.
        var cut: [String: Int] = [:]
        /// The worker's standard error (Python workers only): why it died, if it did.
        let errors: Int32?
        var pending: [UInt8] = []
        var errorText: [UInt8] = []
        var running = Set<String>()
        /// Each started job's process group (its pid), as the server reports it: what this rank stops itself
        /// when the server dies.
        var groups: [String: pid_t] = [:]

        init(name: String, pid: pid_t, requests: Int32, replies: Int32, errors: Int32?) {
            self.name = name
            self.pid = pid
            self.requests = requests
            self.replies = replies
            self.errors = errors
        }

        func close() {
            Glibc.close(requests)
            Glibc.close(replies)
            if let errors { Glibc.close(errors) }
            var status: Int32 = 0
            waitpid(pid, &status, 0)
        }
    }

    /// Servers by their command (`""`: the guard), started on first use.
    private var servers: [String: Server] = [:]
    /// Each running job's server.
    private var serverOf: [String: String] = [:]
    private let graceMilliseconds: Int
    private let maxOutputBytes: Int?
    private let guardPath: String
    /// The base environment as `KEY=VALUE` fields, made once: a job only adds its own few on top.
    private let baseFields: [(key: String, field: String)]

    /// A runner whose kills give jobs `grace` seconds between SIGTERM and SIGKILL; `guardPath` is the
    /// `balsam-task-guard` executable (installed beside `balsam-launcher`); jobs get `baseEnvironment` (see
    /// `TaskCommand.baseEnvironment`) with their spec's environment laid over it.
    /// `maxOutputBytes`: what a job's output may grow to (the task guard cuts it there; warm Python workers do not).
    public init(
        grace: Double, guardPath: String, baseEnvironment: [String: String] = [:], maxOutputBytes: Int? = nil
    ) {
        self.maxOutputBytes = maxOutputBytes
        graceMilliseconds = Int(saturating: max(0, grace * 1000))
        self.guardPath = guardPath
        self.baseFields = baseEnvironment.sorted { $0.key < $1.key }.map { ($0.key, "\($0.key)=\($0.value)") }
    }

    deinit {
        for server in servers.values { server.close() }  // each server stops what is left and exits
    }

    /// `balsam-task-guard` beside the running executable.
    public static var defaultGuardPath: String {
        Posix.parentPath(Posix.executablePath() ?? "./balsam-launcher") + "/balsam-task-guard"
    }

    /// Jobs running.
    public var count: Int { serverOf.count }

    /// Readable when a task server has replied (a job ended): a wait can end on them. Empty before the first start.
    public var replyFDs: [Int32] { servers.values.map(\.replies) }

    /// Starts a job. It ends through `poll()`, also when it could not be started (status 126 or 127, with why).
    public func start(_ spec: TaskSpec) -> Ended? {
        var env = baseFields.compactMap { spec.environment[$0.key] == nil ? $0.field : nil }
        for (key, value) in spec.environment { env.append(key + "=" + value) }
        let separator = "\n==> balsam-launcher: run again at \(Timestamp.now()) <==\n"
        let fields =
            ["start", spec.id, spec.directory, spec.directory + "/job.out", separator, String(env.count)] + env
            + [spec.script]
        let key = spec.warmWorker.joined(separator: " ")
        let server: Server
        if let known = servers[key] {
            server = known
        } else {
            switch startServer(spec.warmWorker) {
            case .success(let made):
                servers[key] = made
                server = made
            case .failure(let error):
                return Ended(id: spec.id, status: error.code == .notFound ? 127 : 126, error: error.message)
            }
        }
        if let error = send(fields, to: server) { return Ended(id: spec.id, status: 126, error: error) }
        server.running.insert(spec.id)
        serverOf[spec.id] = key
        return nil
    }

    /// Stops a job (SIGTERM to its process group, SIGKILL after the grace period); it ends through `poll()`.
    public func kill(_ id: String) {
        if let key = serverOf[id], let server = servers[key] { _ = send(["kill", id], to: server) }
    }

    /// Stops every job.
    public func killAll() {
        for id in serverOf.keys { kill(id) }
    }

    /// Jobs that ended since the last call (never waits).
    public func poll() -> [Ended] {
        var ended: [Ended] = []
        for (key, server) in servers {
            if !read(server, into: &ended) {
                servers[key] = nil
            }
        }
        for job in ended { serverOf[job.id] = nil }
        return ended
    }

    /// Reads what `server` replied; false when it is gone (its jobs are then ended, and it is closed).
    private func read(_ server: Server, into ended: inout [Ended]) -> Bool {
        var buffer = [UInt8](repeating: 0, count: 65536)
        if let errors = server.errors {
            while case let n = buffer.withUnsafeMutableBytes({ Glibc.read(errors, $0.baseAddress, $0.count) }), n > 0 {
                server.errorText = Array((server.errorText + buffer.prefix(n)).suffix(4096))
            }
        }
        while true {
            let n = buffer.withUnsafeMutableBytes { Glibc.read(server.replies, $0.baseAddress, $0.count) }
            if n > 0 {
                server.pending += buffer.prefix(n)
                continue
            }
            if n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR) {
                // The server is gone (killed?). Its jobs are not: each has a process group of its own. Read what
                // it said before dying, stop every group it reported, and only then call the jobs ended, so
                // that no job is run again while its first run lives.
                consumeReplies(server, into: &ended)
                let stopped = stopOrphans(server)
                let said = String(decoding: server.errorText, as: UTF8.self).split(separator: "\n").last
                for id in server.running {
                    let why = stopped.contains(id) ? "its processes were stopped" : "it may not have started"
                    let what = server.name + " died" + (said.map { " (\($0))" } ?? "")
                    ended.append(Ended(id: id, status: 125, error: "\(what); \(why)"))
                }
                server.close()
                return false
            }
            break
        }
        consumeReplies(server, into: &ended)
        return true
    }

    /// Stops the process groups of the running jobs whose server died: SIGTERM, SIGKILL after the grace period,
    /// then waits (at most 10 s more) until no process of the group is left. Returns the jobs it stopped.
    private func stopOrphans(_ server: Server) -> Set<String> {
        let orphans = server.running.compactMap { id in server.groups[id].map { (id, $0) } }
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

    /// Parses the complete reply lines read so far: `ID +PID` when a job started, `ID !cut BYTES` when its output
    /// was cut, `ID STATUS [why]` when it ended.
    private func consumeReplies(_ server: Server, into ended: inout [Ended]) {
        while let newline = server.pending.firstIndex(of: 0x0A) {
            let line = String(decoding: server.pending[..<newline], as: UTF8.self)
            server.pending.removeSubrange(...newline)
            let parts = line.split(separator: " ", maxSplits: 2).map(String.init)
            guard parts.count >= 2 else { continue }
            if parts[1].hasPrefix("+") {
                if let pid = pid_t(parts[1].dropFirst()), server.running.contains(parts[0]) {
                    server.groups[parts[0]] = pid
                }
                continue
            }
            if parts[1] == "!cut" {
                if parts.count > 2, server.running.contains(parts[0]) { server.cut[parts[0]] = Int(parts[2]) }
                continue
            }
            guard let status = Int32(parts[1]), server.running.remove(parts[0]) != nil else { continue }
            server.groups[parts[0]] = nil
            ended.append(
                Ended(
                    id: parts[0], status: status, error: parts.count > 2 ? parts[2] : nil,
                    outputCut: server.cut.removeValue(forKey: parts[0])))
        }
    }

    /// Writes one request; returns why it could not.
    private func send(_ fields: [String], to server: Server) -> String? {
        var body: [UInt8] = []
        for field in fields {
            body += field.utf8
            body.append(0)
        }
        let bytes = Array("\(body.count)\n".utf8) + body
        do { try Posix.write(server.requests, bytes, path: server.name) } catch {
            return "cannot reach the \(server.name): \(error)"
        }
        return nil
    }

    /// Starts the guard (`worker` empty) or a warm Python worker (`worker`: its Python and runner).
    private func startServer(_ worker: [String]) -> Result<Server, SpoolError> {
        var program = worker.first ?? guardPath
        if !worker.isEmpty {
            // As a shell would: the Python named by python.executable (python3, say) is looked up on the rank's PATH.
            let path = baseFields.first { $0.key == "PATH" }.map { String($0.field.dropFirst(5)) }
            guard let found = Posix.findExecutable(program, path: path) else {
                return .failure(
                    SpoolError(
                        .notFound,
                        "cannot start the warm Python worker: '\(program)' (python.executable in settings.yml, or "
                            + "the app's python_executable) is not "
                            + (program.contains("/") ? "an executable file" : "on the launcher's PATH (\(path ?? ""))")
                    ))
            }
            program = found
        }
        let name = worker.isEmpty ? "task server" : "warm Python worker (\(worker.joined(separator: " ")))"
        // Every descriptor made here is closed on the way out except the three this side keeps.
        var opened: [Int32] = []
        defer { for fd in opened { Glibc.close(fd) } }
        do throws(SpoolError) {
            func pipe() throws(SpoolError) -> (read: Int32, write: Int32) {
                let p = try Posix.makePipe(nonBlocking: false, path: program)
                opened += [p.read, p.write]
                return p
            }
            let requests = try pipe()
            let replies = try pipe()
            let errors = worker.isEmpty ? nil : try pipe()
            // Only our reading ends are non-blocking (file descriptions of their own): the server writes blocking.
            try Posix.setDescriptorFlags(replies.read, nonBlocking: true, path: program)
            if let errors { try Posix.setDescriptorFlags(errors.read, nonBlocking: true, path: program) }
            var environment = ["PATH": "/usr/bin:/bin"]
            var arguments = [String(getpid()), String(graceMilliseconds)]
            if worker.isEmpty, let maxOutputBytes { arguments.append(String(maxOutputBytes)) }
            if !worker.isEmpty {
                // A Python worker needs the rank's environment (PYTHONPATH, a venv's variables) to import.
                environment = [:]
                for (key, field) in baseFields { environment[key] = String(field.dropFirst(key.utf8.count + 1)) }
                arguments = Array(worker.dropFirst()) + ["serve"] + arguments
            }
            let pid = try Posix.spawn(
                program, arguments: arguments, environment: environment, directory: "/", outputFD: replies.write,
                inputFD: requests.read, errorFD: errors?.write ?? 2)
            let kept = [requests.write, replies.read, errors?.read ?? -1]
            opened.removeAll { kept.contains($0) }
            return .success(
                Server(name: name, pid: pid, requests: requests.write, replies: replies.read, errors: errors?.read))
        } catch {
            return .failure(SpoolError(error.code, "cannot start the \(name): \(error)"))
        }
    }
}
