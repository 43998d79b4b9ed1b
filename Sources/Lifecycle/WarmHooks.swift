import Processes
import Spool

#if canImport(Glibc)
    import Glibc
#endif

/// The watcher's warm hook server for apps defined as Python classes: one `balsam_runner.py hooks` process per
/// Python, started at the first class hook, which has dill and the client package loaded, and forks a child per
/// call (which reads the app's class afresh) (a few milliseconds, where starting Python and importing the client for each call took about
/// 170). The child has its own process group; the time limit and the watcher's stop are enforced here by killing
/// it, as `ChildProcess` does for a hook file. A server that cannot start or stops answering is dropped: the call
/// runs as a hook file instead (a call whose child had started is not run twice: it ends with status 125).
final class WarmHooks {
    let python: String
    let runner: String
    private var server: pid_t = 0
    private var requests: Int32 = -1
    private var replies: Int32 = -1
    private var buffer: [UInt8] = []
    /// Set when the server failed: calls run as hook files from then on.
    private(set) var broken = false

    init(python: String, runner: String) {
        self.python = python
        self.runner = runner
    }

    deinit { stop() }

    /// Runs `hook` for the job in `directory`; nil when the warm server cannot take it (run the hook file).
    func run(
        hook: String, directory: String, environment: [String: String], log: String, timeoutSeconds: Double,
        shouldStop: () -> Bool
    ) -> ChildProcess.Ending? {
        guard !broken else { return nil }
        if server == 0 {
            do { try start() } catch {
                broken = true
                return nil
            }
        }
        let fields = [directory, hook, log, String(environment.count)] + environment.map { "\($0.key)=\($0.value)" }
        var body: [UInt8] = []
        for f in fields { body += Array(f.utf8) + [0] }
        do { try Posix.write(requests, Array("\(body.count)\n".utf8) + body, path: runner) } catch {
            drop()
            return nil
        }
        // The server's first call waits for its imports; later ones fork at once.
        guard let pidLine = line(deadline: Posix.monotonicSeconds() + 60, shouldStop: { false }),
            let child = pid_t(pidLine)
        else {
            drop()
            return nil
        }
        let deadline = Posix.monotonicSeconds() + timeoutSeconds
        if let status = statusLine(deadline: deadline, shouldStop: shouldStop) { return status }
        // Past its time, or the watcher stops: its process group goes, TERM then KILL.
        let stopping = shouldStop()
        _ = kill(-child, SIGTERM)
        var ended = statusLine(deadline: Posix.monotonicSeconds() + 2, shouldStop: { false })
        if ended == nil {
            _ = kill(-child, SIGKILL)
            ended = statusLine(deadline: Posix.monotonicSeconds() + 10, shouldStop: { false })
        }
        if ended == nil {
            drop()
            return .exited(125)
        }
        return stopping ? .stopped : .timedOut
    }

    private func statusLine(deadline: Double, shouldStop: () -> Bool) -> ChildProcess.Ending? {
        guard let text = line(deadline: deadline, shouldStop: shouldStop) else { return nil }
        guard text.hasPrefix("STATUS "), let raw = Int32(text.dropFirst(7)) else {
            drop()
            return .exited(125)
        }
        let signal = raw & 0x7f
        return signal == 0 ? .exited((raw >> 8) & 0xff) : .signaled(signal)
    }

    /// The next reply line, waiting until `deadline` (nil when it passes, `shouldStop` says so, or the server
    /// closed its end: then it is dropped).
    private func line(deadline: Double, shouldStop: () -> Bool) -> String? {
        while true {
            if let newline = buffer.firstIndex(of: 0x0A) {
                let text = String(decoding: buffer[..<newline], as: UTF8.self)
                buffer.removeSubrange(...newline)
                return text
            }
            let left = deadline - Posix.monotonicSeconds()
            if left <= 0 || shouldStop() { return nil }
            guard Posix.waitReadable([replies], seconds: min(left, 0.1)) else { continue }
            var chunk = [UInt8](repeating: 0, count: 4096)
            let n = chunk.withUnsafeMutableBytes { read(replies, $0.baseAddress, $0.count) }
            if n < 0 && (errno == EINTR || errno == EAGAIN) { continue }
            guard n > 0 else {
                drop()
                return nil
            }
            buffer += chunk[..<n]
        }
    }

    private func start() throws(SpoolError) {
        let environment = Posix.environment()
        // As the hook file's `exec` would find it.
        guard let executable = Posix.findExecutable(python, path: environment["PATH"]) else {
            throw SpoolError(.notFound, "\(python) is not in PATH")
        }
        let toServer = try Posix.makePipe(nonBlocking: false, path: runner)
        let fromServer: (read: Int32, write: Int32)
        do { fromServer = try Posix.makePipe(nonBlocking: false, path: runner) } catch {
            Posix.close(toServer.read)
            Posix.close(toServer.write)
            throw error
        }
        defer {
            Posix.close(toServer.read)
            Posix.close(fromServer.write)
        }
        do {
            server = try Posix.spawn(
                executable, arguments: [runner, "hooks", String(getpid())], environment: environment,
                directory: "/", outputFD: fromServer.write, inputFD: toServer.read, errorFD: 2)
        } catch {
            Posix.close(toServer.write)
            Posix.close(fromServer.read)
            throw error
        }
        requests = toServer.write
        replies = fromServer.read
        buffer = []
    }

    private func drop() {
        stop()
        broken = true
    }

    func stop() {
        if requests >= 0 { Posix.close(requests) }
        if replies >= 0 { Posix.close(replies) }
        requests = -1
        replies = -1
        if server > 0 {
            // Its input closed, it leaves by itself; TERM, then KILL, if it does not.
            _ = kill(server, SIGTERM)
            for _ in 0..<200 where Posix.reap(server) == nil { Posix.sleep(seconds: 0.01) }
            if kill(server, 0) == 0 {
                _ = kill(server, SIGKILL)
                var status: Int32 = 0
                _ = waitpid(server, &status, 0)
            }
            server = 0
        }
    }
}
