/// The fourteen states of a Balsam job, spelled as in the original.
///
/// The state machine is pure: ``canTransition(to:)`` and ``validateTransition(to:)`` read only the table
/// below. Unlike the original, an illegal transition is refused with an error naming both states.
public enum JobState: String, CaseIterable, Sendable, Codable, Comparable {
    case created = "CREATED"
    case awaitingParents = "AWAITING_PARENTS"
    case ready = "READY"
    case stagedIn = "STAGED_IN"
    case preprocessed = "PREPROCESSED"
    case running = "RUNNING"
    case runDone = "RUN_DONE"
    case runError = "RUN_ERROR"
    case runTimeout = "RUN_TIMEOUT"
    case restartReady = "RESTART_READY"
    case postprocessed = "POSTPROCESSED"
    case stagedOut = "STAGED_OUT"
    case jobFinished = "JOB_FINISHED"
    case failed = "FAILED"

    /// States a launcher may claim and run.
    public static let runnable: Set<JobState> = [.preprocessed, .restartReady]
    /// States a job never leaves on its own (only a user's retry moves a FAILED job).
    public static let final: Set<JobState> = [.jobFinished, .failed]
    /// States a stored job can be in: every state but `CREATED`, which exists only as the origin of the
    /// creation event.
    public static let stored: [JobState] = allCases.filter { $0 != .created }
    /// Stored states that are not final: each has a directory of entries under `jobs/`.
    public static let active: [JobState] = stored.filter { !final.contains($0) }

    /// Whether the job can run now.
    public var isRunnable: Bool { JobState.runnable.contains(self) }
    /// Whether the job has ended.
    public var isFinal: Bool { JobState.final.contains(self) }

    /// The states this state may move to. Every state that has not ended may move to `FAILED` (a kill,
    /// a failed parent, a failed hook). A `FAILED` job may be retried by the user: to run again, or to wait for its
    /// parents again (one that failed because a parent did, when that parent is retried).
    public var successors: Set<JobState> {
        var next: Set<JobState>
        switch self {
        case .created: next = [.awaitingParents, .ready]
        case .awaitingParents: next = [.ready]
        case .ready: next = [.stagedIn]
        case .stagedIn: next = [.preprocessed]
        case .preprocessed: next = [.running]
        case .running: next = [.runDone, .runError, .runTimeout]
        case .runDone: next = [.postprocessed, .restartReady]
        case .runError: next = [.restartReady, .postprocessed]
        case .runTimeout: next = [.restartReady, .postprocessed]
        case .restartReady: next = [.running]
        case .postprocessed: next = [.stagedOut]
        case .stagedOut: next = [.jobFinished]
        case .jobFinished: next = []
        // Back to waiting: a job that failed because a parent did, retried with that parent.
        case .failed: next = [.ready, .restartReady, .awaitingParents]
        }
        if !isFinal && self != .created { next.insert(.failed) }
        return next
    }

    /// Whether `self → target` is a legal transition.
    public func canTransition(to target: JobState) -> Bool { successors.contains(target) }

    /// Throws unless `self → target` is legal; the error names both states.
    public func validateTransition(to target: JobState) throws(SpoolError) {
        guard canTransition(to: target) else {
            let allowed = successors.sorted().map(\.rawValue).joined(separator: ", ")
            throw SpoolError(
                .invalidInput,
                "illegal transition \(rawValue) -> \(target.rawValue)"
                    + (allowed.isEmpty ? " (\(rawValue) is final)" : " (from \(rawValue): \(allowed))"))
        }
    }

    /// The state a new job starts in: waiting while any parent has not finished.
    public static func initial(parentStates: [JobState]) -> JobState {
        parentStates.allSatisfy { $0 == .jobFinished } ? .ready : .awaitingParents
    }

    /// The state a job made through the server's API starts in: waiting while a parent has not finished, else
    /// `READY` to be staged in, else `STAGED_IN` (the original server's rule).
    public static func initial(parentsFinished: Bool, hasStageIn: Bool) -> JobState {
        !parentsFinished ? .awaitingParents : hasStageIn ? .ready : .stagedIn
    }

    /// Where a job of the server's that is asked to enter this state ends up: `READY` with every stage-in done (or
    /// none) is `STAGED_IN`; `POSTPROCESSED` with every stage-out done is `JOB_FINISHED`, passing `STAGED_OUT`,
    /// as the original server reports it.
    public func entered(stageInsDone: Bool, stageOutsDone: Bool) -> JobState {
        switch self {
        case .ready where stageInsDone: .stagedIn
        case .postprocessed where stageOutsDone: .jobFinished
        case .stagedOut: .jobFinished
        default: self
        }
    }

    /// Parses a state name, case-insensitively, naming the valid ones on failure.
    public static func parse(_ text: String) throws(SpoolError) -> JobState {
        if let state = JobState(rawValue: text.uppercased()) { return state }
        throw SpoolError(
            .usage, "unknown state '\(text)'; states are " + allCases.map(\.rawValue).joined(separator: ", "))
    }

    /// Lifecycle order, so sorted lists read top to bottom.
    public static func < (a: JobState, b: JobState) -> Bool {
        (allCases.firstIndex(of: a) ?? 0) < (allCases.firstIndex(of: b) ?? 0)
    }
}
