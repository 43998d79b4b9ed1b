import Dispatch
import Spool
import Subprocess
import SystemPackage

#if canImport(Glibc)
    import Glibc
#endif

/// One way to run a short-lived child process to its end: hooks and scheduler commands.
///
/// Through swift-subprocess: the child gets a process group of its own, exactly the environment given, a working
/// directory, standard input from /dev/null, and its output on file descriptors. Every wait has a deadline: at
/// `timeoutSeconds`, or as soon as `shouldStop` says so, the whole group gets SIGTERM, and SIGKILL
/// `graceSeconds` later. Captured output goes to unlinked temporary files and is read back up to a limit, so a
/// chatty command costs no memory and a background process that keeps the output open cannot hold up the wait.
///
/// Long-lived children are not run here: swift-subprocess always waits for its child, so the watcher's daemon
/// start and the local scheduler's launchers use `Posix.spawn`, and the launcher's per-job task server stays its
/// own (its cost is measured in BENCHMARKS.md).
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
        /// Each captured, up to this many bytes (what is beyond is dropped and said so).
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

    /// Runs the child to its end, blocking the calling thread: the watcher's own threads, a command's main thread.
    ///
    /// Never from a task of Swift's cooperative pool: swift-subprocess finishes every run in an unstructured task
    /// on that pool (`withUncancelledTask`), so callers blocking all of its threads would wait for ever (seen in
    /// tests on 2 cores). Async code calls `runAsync`.
    public func run(output: Output) throws(SpoolError) -> Outcome {
        let done = DispatchSemaphore(value: 0)
        let box = ResultBox()
        let child = self
        Task {
            do throws(SpoolError) { box.result = .success(try await child.runAsync(output: output)) } catch {
                box.result = .failure(error)
            }
            done.signal()
        }
        done.wait()
        guard let result = box.result else { throw SpoolError(.io, "the child process vanished", path: executable) }
        return try result.get()
    }

    /// Runs the child to its end.
    public func runAsync(output: Output) async throws(SpoolError) -> Outcome {
        switch output {
        case .file(let fd):
            return Outcome(ending: try await runToEnd(outputFD: fd, errorFD: fd))
        case .capture(let limit):
            let out = try ChildProcess.temporaryFile()
            defer { Posix.close(out) }
            let err = try ChildProcess.temporaryFile()
            defer { Posix.close(err) }
            let ending = try await runToEnd(outputFD: out, errorFD: err)
            return Outcome(
                ending: ending, output: try ChildProcess.readBack(out, limit: limit),
                errors: try ChildProcess.readBack(err, limit: limit))
        }
    }

    private enum Finish: Sendable {
        case ended(Ending)
        case deadline(Ending)
    }

    private func runToEnd(outputFD: Int32, errorFD: Int32) async throws(SpoolError) -> Ending {
        let grace = Duration.milliseconds(Int64(max(0, graceSeconds) * 1000))
        let environment = Environment.custom(
            Dictionary(
                uniqueKeysWithValues: self.environment.map { (Environment.Key(stringLiteral: $0.key), $0.value) })
        )
        let executable = self.executable
        let arguments = Arguments(self.arguments)
        let directory = FilePath(self.directory)
        let deadline = ContinuousClock.now + .milliseconds(Int64(max(0, timeoutSeconds) * 1000))
        let shouldStop = self.shouldStop
        do {
            return try await withThrowingTaskGroup(of: Finish.self) { group in
                group.addTask {
                    var options = PlatformOptions()
                    options.processGroupID = 0
                    options.teardownSequence = [
                        .gracefulShutDown(toProcessGroup: true, allowedDurationToNextStep: grace),
                        .send(signal: .kill, toProcessGroup: true, allowedDurationToNextStep: .seconds(1)),
                    ]
                    let result = try await Subprocess.run(
                        .path(FilePath(executable)), arguments: arguments, environment: environment,
                        workingDirectory: directory, platformOptions: options, input: .none,
                        output: .fileDescriptor(FileDescriptor(rawValue: outputFD), closeAfterSpawningProcess: false),
                        error: .fileDescriptor(FileDescriptor(rawValue: errorFD), closeAfterSpawningProcess: false))
                    switch result.terminationStatus {
                    case .exited(let code): return .ended(.exited(code))
                    case .signaled(let signal): return .ended(.signaled(signal))
                    }
                }
                group.addTask {
                    while true {
                        if shouldStop() { return .deadline(.stopped) }
                        let left = deadline - ContinuousClock.now
                        if left <= .zero { return .deadline(.timedOut) }
                        try await Task.sleep(for: min(left, .milliseconds(100)))
                    }
                }
                guard let first = try await group.next() else { return .timedOut }
                // Cancelling the run tears the child's group down (SIGTERM, grace, SIGKILL); the group waits for it.
                group.cancelAll()
                switch first {
                case .ended(let ending), .deadline(let ending): return ending
                }
            }
        } catch let error as SubprocessError {
            throw SpoolError(.unavailable, "cannot run: \(error)", path: executable)
        } catch {
            throw SpoolError(.io, "cannot run: \(error)", path: executable)
        }
    }

    /// An unlinked temporary file: the child writes it through its descriptor, no name is left behind.
    private static func temporaryFile() throws(SpoolError) -> Int32 {
        let directory = Posix.environment()["TMPDIR"] ?? "/tmp"
        var template = Array((directory + "/balsam-child.XXXXXX").utf8CString)
        let fd = template.withUnsafeMutableBufferPointer { buffer in buffer.baseAddress.map { mkstemp($0) } ?? -1 }
        if fd < 0 { throw .system("create a temporary file", path: directory, errno: errno) }
        // Close-on-exec so that children started meanwhile by other threads do not inherit it.
        _ = fcntl(fd, F_SETFD, FD_CLOEXEC)
        Posix.unlink(Posix.cString(template))
        return fd
    }

    /// What the child wrote into `fd`, at most `limit` bytes (with a note when there was more).
    private static func readBack(_ fd: Int32, limit: Int) throws(SpoolError) -> [UInt8] {
        guard lseek(fd, 0, SEEK_SET) == 0 else { throw .system("rewind", path: "<captured output>", errno: errno) }
        var bytes = [UInt8](repeating: 0, count: limit + 1)
        var filled = 0
        while filled <= limit {
            let n = bytes.withUnsafeMutableBytes { buffer in
                buffer.baseAddress.map { read(fd, $0 + filled, buffer.count - filled) } ?? 0
            }
            if n < 0 && errno == EINTR { continue }
            if n < 0 { throw .system("read", path: "<captured output>", errno: errno) }
            if n == 0 { break }
            filled += n
        }
        if filled > limit { return Array(bytes[..<limit]) + Array("\n[output cut at \(limit) bytes]\n".utf8) }
        return Array(bytes[..<filled])
    }
}

/// Carries a result from the task to the waiting thread (written once, read after the semaphore).
private final class ResultBox: @unchecked Sendable {
    var result: Result<ChildProcess.Outcome, SpoolError>?
}
