import Spool

#if canImport(Glibc)
    import Glibc
#endif

/// One way to run a short-lived child process to its end: hooks and scheduler commands.
///
/// The child gets a process group of its own, exactly the environment given (plus `BALSAM_SPAWNED_BY`, naming
/// this process), a working directory, standard input from /dev/null, no other inherited descriptor, default
/// signal handling, and its output on file descriptors. It never outlives its caller: SIGKILL to the caller (or
/// the end of the calling thread) sends it SIGKILL (PR_SET_PDEATHSIG), and what it started itself is found by
/// `BALSAM_SPAWNED_BY` and ended by the next watcher (`Posix.endOrphans`). Every wait has a deadline: at `timeoutSeconds`, or as soon as `shouldStop` says so, the whole
/// group gets SIGTERM, and SIGKILL `graceSeconds` later. The wait is a `poll(2)` on a pidfd, so the caller wakes
/// the moment the child exits. Captured output goes to unlinked temporary files and is read back up to a limit,
/// so a chatty command costs no memory and a background process that keeps the output open cannot hold up the
/// wait.
///
/// Why not swift-subprocess: its `run` is async only, and finishes every run in an unstructured task on Swift's
/// cooperative pool (`withUncancelledTask`), whatever executor the caller prefers. The watcher's engine and
/// scheduler service are synchronous, on threads of their own, and wait for their children there; bridged to
/// swift-subprocess they stalled whenever the pool's threads were busy (on 2 cores a few blocked callers hang it
/// for good: `ChildProcessTests` shows the case), and a child that had exited was then reported as timed out.
/// `posix_spawn` plus a pidfd expresses the same contract without that dependence.
public struct ChildProcess: Sendable {
    /// How a child ended.
    public enum Ending: Sendable, Equatable, CustomStringConvertible {
        /// It exited with this status.
        case exited(Int32)
        /// A signal ended it (not ours).
        case signaled(Int32)
        /// Its time ran out; it was stopped.
        case timedOut
        /// `shouldStop` asked for it to be stopped.
        case stopped

        public var description: String {
            switch self {
            case .exited(let status): "exited with status \(status)"
            case .signaled(let signal): "killed by signal \(signal)"
            case .timedOut: "timed out"
            case .stopped: "stopped"
            }
        }
    }

    /// Where the child's standard output and error go.
    public enum Output: Sendable {
        /// Both onto this descriptor (appended; the caller keeps it open).
        case file(Int32)
        /// Each captured, up to this many bytes (what is beyond is dropped, and said so).
        case capture(limit: Int)
    }

    /// What a child printed (when captured) and how it ended.
    public struct Outcome: Sendable {
        /// How it ended.
        public var ending: Ending
        /// Its standard output, when captured.
        public var output: [UInt8] = []
        /// Its standard error, when captured.
        public var errors: [UInt8] = []
    }

    /// The program (an absolute path).
    public var executable: String
    /// Its arguments, without the program's name.
    public var arguments: [String]
    /// Its whole environment.
    public var environment: [String: String]
    /// Where it runs.
    public var directory: String
    /// Seconds it may run.
    public var timeoutSeconds: Double
    /// Seconds between SIGTERM and SIGKILL when it is stopped.
    public var graceSeconds: Double = 2
    /// Asked every 0.1 s while the child runs: true stops it (the caller is shutting down).
    public var shouldStop: @Sendable () -> Bool = { false }
    /// Whether the child and what it starts carry `BALSAM_SPAWNED_BY`, so that what they leave running when this
    /// process is killed is ended by the next watcher. Off for a scheduler's commands: a batch job inherits the
    /// environment of the `sbatch` that submitted it, and lives on by design.
    public var marksDescendants = true

    /// A child to run `executable` with `arguments`.
    public init(
        executable: String, arguments: [String] = [], environment: [String: String], directory: String,
        timeoutSeconds: Double
    ) {
        self.executable = executable
        self.arguments = arguments
        self.environment = environment
        self.directory = directory
        self.timeoutSeconds = timeoutSeconds
    }

    /// Runs the child to its end, blocking the calling thread.
    public func run(output: Output) throws(SpoolError) -> Outcome {
        switch output {
        case .file(let fd):
            return Outcome(ending: try runToEnd(outputFD: fd, errorFD: fd))
        case .capture(let limit):
            let out = try ChildProcess.temporaryFile()
            defer { Posix.close(out) }
            let err = try ChildProcess.temporaryFile()
            defer { Posix.close(err) }
            let ending = try runToEnd(outputFD: out, errorFD: err)
            return Outcome(
                ending: ending, output: try ChildProcess.readBack(out, limit: limit),
                errors: try ChildProcess.readBack(err, limit: limit))
        }
    }

    private func runToEnd(outputFD: Int32, errorFD: Int32) throws(SpoolError) -> Ending {
        var environment = environment
        environment[Posix.parentVariable] = marksDescendants ? Posix.parentStamp : nil
        let pid = try Posix.spawn(
            executable, arguments: arguments, environment: environment, directory: directory, outputFD: outputFD,
            errorFD: errorFD, diesWithCaller: true)
        let pidFD: Int32
        do { pidFD = try Posix.processDescriptor(pid) } catch {
            // Without a pidfd it cannot be waited for with a deadline: end it rather than leave it unwatched.
            stop(pid, pidFD: -1)
            throw error
        }
        defer { Posix.close(pidFD) }
        let deadline = Posix.monotonicSeconds() + max(0, timeoutSeconds)
        while true {
            let left = deadline - Posix.monotonicSeconds()
            if let status = Posix.waitExit(pid, pidFD: pidFD, seconds: min(0.1, max(0, left))) {
                let signal = status & 0x7F
                return signal == 0 ? .exited((status >> 8) & 0xFF) : .signaled(signal)
            }
            if shouldStop() {
                stop(pid, pidFD: pidFD)
                return .stopped
            }
            if left <= 0 {
                stop(pid, pidFD: pidFD)
                return .timedOut
            }
        }
    }

    /// SIGTERM to the child's group, SIGKILL after the grace period, then reaps the child (waiting at most 5 s more
    /// for an uninterruptible one, which is then left to exit on its own).
    private func stop(_ pid: Int32, pidFD: Int32) {
        // kill(2) of our own child's group: ESRCH only means everything in it has exited already.
        _ = kill(-pid, SIGTERM)
        if pidFD >= 0, Posix.waitExit(pid, pidFD: pidFD, seconds: graceSeconds) != nil { return }
        _ = kill(-pid, SIGKILL)
        let until = Posix.monotonicSeconds() + 5
        while Posix.monotonicSeconds() < until {
            if pidFD >= 0 {
                if Posix.waitExit(pid, pidFD: pidFD, seconds: 0.1) != nil { return }
            } else {
                if Posix.reap(pid) != nil { return }
                Posix.sleep(seconds: 0.01)
            }
        }
    }

    /// An unlinked temporary file: the child writes it through its descriptor, no name is left behind.
    private static func temporaryFile() throws(SpoolError) -> Int32 {
        let directory = getenv("TMPDIR").map { String(cString: $0) } ?? "/tmp"
        var template = Array((directory + "/balsam-child.XXXXXX").utf8CString)
        let fd = try Posix.call("create a temporary file", path: directory) {
            template.withUnsafeMutableBufferPointer { buffer in buffer.baseAddress.map { mkstemp($0) } ?? -1 }
        }
        try? Posix.setDescriptorFlags(fd, nonBlocking: false, path: directory)
        Posix.unlink(Posix.cString(template))
        return fd
    }

    /// What the child wrote into `fd`, at most `limit` bytes (with a note when there was more).
    private static func readBack(_ fd: Int32, limit: Int) throws(SpoolError) -> [UInt8] {
        var bytes = [UInt8](repeating: 0, count: limit + 1)
        var filled = 0
        while filled <= limit {
            let n = try Posix.call("read", path: "<captured output>") {
                bytes.withUnsafeMutableBytes { buffer in
                    buffer.baseAddress.map { pread(fd, $0 + filled, buffer.count - filled, off_t(filled)) } ?? 0
                }
            }
            if n == 0 { break }
            filled += n
        }
        if filled > limit { return Array(bytes[..<limit]) + Array("\n[output cut at \(limit) bytes]\n".utf8) }
        return Array(bytes[..<filled])
    }
}
