import Foundation
import Spool

#if canImport(Glibc)
    import Glibc
#endif

/// A program a test started with `posix_spawn` (the project's own `Posix.spawn`), in a process group of its own.
///
/// Tests do not use Foundation's `Process`: in Swift 6.3.1 its `run()` can over-read in
/// `findMaximumOpenFromProcSelfFD()` and crash the test process when many descriptors are open
/// (swift-corelibs-foundation, fixed upstream in PR #5472).
public final class Spawned: @unchecked Sendable {
    /// Where the program's output goes.
    public enum Output {
        case null
        case file(String)
    }

    public let processIdentifier: pid_t
    private let lock = NSLock()
    private var status: Int32?

    /// Starts `program` with `arguments`; `environment` nil: this process's own, without `BALSAM_SITE`.
    public init(
        _ program: String, _ arguments: [String], environment: [String: String]? = nil, directory: String? = nil,
        stdout: Output = .null, stderr: Output = .null, stdinFile: String? = nil
    ) throws {
        func open(_ output: Output) throws -> Int32 {
            switch output {
            case .null: return try Posix.open("/dev/null", O_WRONLY)
            case .file(let path): return try Posix.open(path, O_WRONLY | O_APPEND | O_CREAT)
            }
        }
        let out = try open(stdout)
        defer { Posix.close(out) }
        let err = try open(stderr)
        defer { Posix.close(err) }
        let input = try stdinFile.map { try Posix.open($0, O_RDONLY) }
        defer { if let input { Posix.close(input) } }
        var env = environment ?? ProcessInfo.processInfo.environment
        if environment == nil { env["BALSAM_SITE"] = nil }
        processIdentifier = try Posix.spawn(
            program, arguments: arguments, environment: env,
            directory: directory ?? FileManager.default.currentDirectoryPath, outputFD: out, inputFD: input,
            errorFD: err)
    }

    /// Reaps the program if it has ended (never waits).
    private func reap(blocking: Bool) -> Int32? {
        lock.withLock {
            if let status { return status }
            var raw: Int32 = 0
            let r = waitpid(processIdentifier, &raw, blocking ? 0 : WNOHANG)
            guard r == processIdentifier else { return nil }
            // As Foundation's `terminationStatus`: the exit status, or the signal that ended it.
            let signal = raw & 0x7F
            status = signal == 0 ? (raw >> 8) & 0xFF : signal
            return status
        }
    }

    public var isRunning: Bool { reap(blocking: false) == nil }

    /// Its exit status (or the signal that ended it); waits for it to end.
    public var terminationStatus: Int32 { waitUntilExit() }

    @discardableResult
    public func waitUntilExit() -> Int32 {
        while true {
            if let status = reap(blocking: false) { return status }
            usleep(5_000)
        }
    }

    /// Its status, or nil if it is still running after `timeout` seconds.
    public func wait(timeout: Double) -> Int32? {
        let deadline = Date().addingTimeInterval(timeout)
        repeat {
            if let status = reap(blocking: false) { return status }
            usleep(5_000)
        } while Date() < deadline
        return reap(blocking: false)
    }

    /// Sends `signal` if it is still running.
    public func signal(_ signal: Int32) {
        if isRunning { _ = kill(processIdentifier, signal) }
    }

    public func terminate() { signal(SIGTERM) }

    deinit {
        if reap(blocking: false) == nil {
            kill(processIdentifier, SIGKILL)
            _ = reap(blocking: true)
        }
    }
}
