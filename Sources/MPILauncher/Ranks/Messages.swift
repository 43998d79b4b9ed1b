import Spool

#if canImport(Glibc)
    import Glibc
#endif

/// What launcher ranks say to each other: rank 0 tells a node's rank what to start or stop; ranks tell rank 0
/// how jobs ended. One JSON object per MPI message.
public enum Message: Sendable, Equatable {
    /// Start a job (to the rank of its first node).
    case start(TaskSpec)
    /// Stop a job (SIGTERM to its process group, grace, SIGKILL); it then ends with `.ended`.
    case kill(id: String)
    /// Stop every job and report; then say `.stopped` and exit.
    case stop
    /// A job's process ended.
    case ended(TaskRunner.Ended)
    /// The rank has no job left and leaves.
    case stopped
    /// The rank is there (sent when it has said nothing else for a while): rank 0 gives the jobs of a rank that
    /// stays silent past the lease timeout back to the site.
    case alive

    /// The message as bytes.
    public func encoded() -> [UInt8] {
        var o: [String: JSONValue]
        switch self {
        case .start(let spec):
            o = [
                "op": .string("start"), "id": .string(spec.id), "dir": .string(spec.directory),
                "script": .string(spec.script),
                "env": .object(spec.environment.mapValues { .string($0) }),
            ]
            if !spec.warmWorker.isEmpty { o["worker"] = .array(spec.warmWorker.map { .string($0) }) }
        case .kill(let id): o = ["op": .string("kill"), "id": .string(id)]
        case .stop: o = ["op": .string("stop")]
        case .ended(let e):
            o = ["op": .string("ended"), "id": .string(e.id), "status": .int(Int(e.status))]
            if let error = e.error { o["error"] = .string(error) }
            if let cut = e.outputCut { o["cut"] = .int(cut) }
        case .stopped: o = ["op": .string("stopped")]
        case .alive: o = ["op": .string("alive")]
        }
        return Array(JSONValue.object(o).serialized().utf8)
    }

    /// Reads a message; throws on anything else (a rank of another program, a version mismatch).
    public init(bytes: [UInt8]) throws(SpoolError) {
        guard let value = try? JSONValue.parse(bytes), case .object(let o) = value, let op = o["op"]?.stringValue
        else {
            throw SpoolError(.invalidInput, "unreadable launcher message: \(String(decoding: bytes, as: UTF8.self))")
        }
        func string(_ key: String) throws(SpoolError) -> String {
            guard let s = o[key]?.stringValue else {
                throw SpoolError(.invalidInput, "launcher message \(op) without \(key)")
            }
            return s
        }
        switch op {
        case "start":
            let env = (o["env"]?.objectValue ?? [:]).compactMapValues(\.stringValue)
            self = .start(
                TaskSpec(
                    id: try string("id"), directory: try string("dir"), script: try string("script"), environment: env,
                    warmWorker: (o["worker"]?.arrayValue ?? []).compactMap(\.stringValue)))
        case "kill": self = .kill(id: try string("id"))
        case "stop": self = .stop
        case "ended":
            self = .ended(
                TaskRunner.Ended(
                    id: try string("id"), status: Int32(clamping: o["status"]?.intValue ?? 125),
                    error: o["error"]?.stringValue, outputCut: o["cut"]?.intValue))
        case "stopped": self = .stopped
        case "alive": self = .alive
        default: throw SpoolError(.invalidInput, "unknown launcher message '\(op)'")
        }
    }
}

/// How ranks reach each other: MPI in `balsam-launcher`. Calls come from one thread.
public protocol Transport: AnyObject {
    /// This rank.
    var rank: Int { get }
    /// Number of ranks (nodes).
    var size: Int { get }
    /// Sends without waiting.
    func send(_ message: Message, to rank: Int) throws(SpoolError)
    /// A message that has arrived, if any (never waits).
    func receive() throws(SpoolError) -> (source: Int, message: Message)?
}

/// A rank other than 0: runs what rank 0 places on its node and reports how each job ended, and says it is there
/// at least every `heartbeatSeconds`.
///
/// A rank that was frozen (SIGSTOP, a hung node) for longer than `silenceSeconds` finds, when it runs again, that
/// rank 0 has given its jobs back to the site to run elsewhere: it stops them at once rather than let them run
/// twice, and reports them ended (rank 0 records nothing for them any more).
public struct WorkerLoop {
    let transport: any Transport
    let runner: TaskRunner
    let silenceSeconds: Double
    var heartbeatSeconds: Double { max(0.05, min(5, silenceSeconds / 6)) }

    /// `environment`: this rank's own, which its jobs start from.
    public init(
        transport: any Transport, grace: Double, environment: [String: String], silenceSeconds: Double,
        maxOutputBytes: Int? = nil, guardPath: String = TaskRunner.defaultGuardPath
    ) {
        self.transport = transport
        self.silenceSeconds = silenceSeconds
        self.runner = TaskRunner(
            grace: grace, guardPath: guardPath, baseEnvironment: TaskCommand.baseEnvironment(environment),
            maxOutputBytes: maxOutputBytes)
    }

    /// Runs until rank 0 says stop and every job here has ended.
    public func run() throws(SpoolError) {
        var stopping = false
        var pause = IdlePause(longest: 0.001)
        var lastSent = Posix.monotonicSeconds()
        var lastLook = lastSent
        func send(_ message: Message) throws(SpoolError) {
            try transport.send(message, to: 0)
            lastSent = Posix.monotonicSeconds()
        }
        while true {
            var active = false
            let now = Posix.monotonicSeconds()
            if now - lastLook > silenceSeconds {
                // Frozen past the lease timeout: rank 0 has given this node's jobs back.
                runner.killAll()
            }
            lastLook = now
            while let (_, message) = try transport.receive() {
                active = true
                switch message {
                case .start(let spec):
                    if let ended = runner.start(spec) { try send(.ended(ended)) }
                case .kill(let id): runner.kill(id)
                case .stop:
                    stopping = true
                    runner.killAll()
                default: break
                }
            }
            for ended in runner.poll() {
                active = true
                try send(.ended(ended))
            }
            if stopping && runner.count == 0 {
                try send(.stopped)
                return
            }
            if Posix.monotonicSeconds() - lastSent >= heartbeatSeconds { try send(.alive) }
            // Short sleeps right after activity (a start often follows an ending), longer ones when quiet.
            let wait = pause.next(active: active)
            if wait > 0 { Posix.waitReadable(runner.replyFDs, seconds: wait) }
        }
    }
}
