import Foundation
import Spool
import Synchronization

/// One file or directory to move in a task. `local` is inside a job's directory (checked); `remote` is at the
/// location (absolute, its base path joined).
public struct TransferRequest: Sendable, Equatable {
    /// Names the item in the task's results (`JOBID/SLOT`).
    public var key: String
    /// The job's directory: nothing is read or written outside it on this side.
    public var jobDirectory: String
    /// Relative to `jobDirectory`.
    public var localPath: String
    public var remotePath: String
    public var recursive: Bool

    public init(key: String, jobDirectory: String, localPath: String, remotePath: String, recursive: Bool) {
        self.key = key
        self.jobDirectory = jobDirectory
        self.localPath = localPath
        self.remotePath = remotePath
        self.recursive = recursive
    }

    /// The absolute local path: a slot of `.` (or ending in `/`) that is not recursive takes the remote name.
    public var localFullPath: String {
        var path = localPath
        if !recursive && (path == "." || path.hasSuffix("/")) {
            path = (path == "." ? "" : path) + Posix.lastComponent(remotePath)
        }
        return jobDirectory + "/" + path
    }
}

/// Where a task is.
public enum TaskStatus: Sendable, Equatable {
    /// Still moving; what the backend says of its progress.
    case active([String: JSONValue])
    /// Over: the requests that failed, by key, with why (the others are done).
    case finished(failures: [String: String])
    /// Over without reaching the location (a connection refused or timed out, a host down), with why in the
    /// words of the tool that tried (ssh's own): nothing moved, and no request is to blame. Tried again with a
    /// backoff for `on_transfer_error.unreachable_timeout_sec`, without spending the items' retries.
    case unreachable(String)
}

extension TaskStatus {
    /// Whether the task has ended.
    var isOver: Bool {
        if case .active = self { return false }
        return true
    }
}

/// A way of moving files: submit a batch (one direction, one location) and get a task ID; poll the task.
public protocol TransferBackend: Sendable {
    func submit(_ batch: [TransferRequest], direction: TransferSlot.Direction, location: TransferLocation)
        throws(SpoolError) -> String
    /// nil: a task this backend does not know (one started before the watcher restarted).
    func poll(_ taskID: String) -> TaskStatus?
}

/// Tasks that run on threads of their own, for backends whose work happens here (copies, rsync).
final class ThreadedTasks: Sendable {
    private let table = Mutex<[String: TaskStatus]>([:])
    private let counter = Atomic<Int>(0)
    let prefix: String

    init(prefix: String) { self.prefix = prefix }

    /// Starts `work` on a new thread; its ID. `work` returns how the task ended (`.finished` or `.unreachable`).
    func start(_ work: @escaping @Sendable (_ update: @Sendable ([String: JSONValue]) -> Void) -> TaskStatus)
        -> String
    {
        // The process in the ID: a task of a watcher that died is never taken for one of this one.
        let id = "\(prefix):\(getpid())-\(counter.add(1, ordering: .relaxed).newValue)"
        table.withLock { $0[id] = .active([:]) }
        let thread = Thread { [self] in
            let ending = work { info in table.withLock { if case .active = $0[id] { $0[id] = .active(info) } } }
            table.withLock { $0[id] = ending }
        }
        thread.start()
        return id
    }

    func status(_ id: String) -> TaskStatus? {
        table.withLock { table in
            let status = table[id]
            if let status, status.isOver { table[id] = nil }  // reported once
            return status
        }
    }
}
