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

/// Runs the jobs placed on one node, each under `balsam-task-guard`: a kill, the end of the wall time or the
/// death of this process stops the job's whole process group, SIGTERM first and SIGKILL after the grace period,
/// so no job outlives its launcher to run twice. The guard is a small C program started with `posix_spawn`, so
/// starting a job does not copy the launcher's address space (two forks of it took most of a core at 300 jobs/s).
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

    private var running: [String: pid_t] = [:]
    private let graceMilliseconds: Int
    private let guardPath: String

    /// A runner whose kills give jobs `grace` seconds between SIGTERM and SIGKILL; `guardPath` is the
    /// `balsam-task-guard` executable (installed beside `balsam-launcher`).
    public init(grace: Double, guardPath: String) {
        graceMilliseconds = Int(max(0, grace * 1000))
        self.guardPath = guardPath
    }

    /// `balsam-task-guard` beside the running executable.
    public static var defaultGuardPath: String {
        var buffer = [CChar](repeating: 0, count: 4096)
        let n = readlink("/proc/self/exe", &buffer, buffer.count - 1)
        let exe = String(decoding: buffer.prefix(max(0, n)).map { UInt8(bitPattern: $0) }, as: UTF8.self)
        return Posix.parentPath(exe) + "/balsam-task-guard"
    }

    /// Jobs running.
    public var count: Int { running.count }
    /// Their IDs.
    public var ids: [String] { Array(running.keys) }

    /// Starts a job; returns how it ended at once if it could not be started.
    public func start(_ spec: TaskSpec) -> Ended? {
        let outPath = spec.directory + "/job.out"
        let fd = open(outPath, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0o644)
        if fd < 0 {
            return Ended(id: spec.id, status: 126, error: "cannot open \(outPath): \(String(cString: strerror(errno)))")
        }
        defer { close(fd) }
        var st = stat()
        if fstat(fd, &st) == 0 && st.st_size > 0 {
            // A job run again appends: a separator says where this run starts.
            let line = "\n==> balsam-launcher: run again at \(Timestamp.now()) <==\n"
            _ = line.utf8CString.withUnsafeBufferPointer { write(fd, $0.baseAddress, $0.count - 1) }
        }
        do {
            let pid = try Posix.spawn(
                guardPath, arguments: [String(getpid()), String(graceMilliseconds), "/bin/bash", "-c", spec.script],
                environment: spec.environment, directory: spec.directory, outputFD: fd)
            running[spec.id] = pid
            return nil
        } catch {
            return Ended(id: spec.id, status: 126, error: "cannot start: \(error)")
        }
    }

    /// Stops a job (SIGTERM to its guard, which stops the job's process group); it ends through `poll()`.
    public func kill(_ id: String) {
        if let pid = running[id] { Glibc.kill(pid, SIGTERM) }
    }

    /// Stops every job.
    public func killAll() {
        for pid in running.values { Glibc.kill(pid, SIGTERM) }
    }

    /// Jobs that ended since the last call (never waits).
    public func poll() -> [Ended] {
        var ended: [Ended] = []
        for (id, pid) in running {
            var status: Int32 = 0
            let r = waitpid(pid, &status, WNOHANG)
            guard r == pid || (r < 0 && errno == ECHILD) else { continue }
            running[id] = nil
            let code: Int32
            if r < 0 {
                code = 125
            } else if status & 0x7f == 0 {
                code = (status >> 8) & 0xff
            } else {
                code = 128 + (status & 0x7f)
            }
            ended.append(Ended(id: id, status: code, error: nil))
        }
        return ended
    }
}
