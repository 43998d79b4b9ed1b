import Spool

/// A pause after I/O failures (a full disk, a read-only filesystem) that doubles from 1 to 30 s while they last,
/// and says each distinct failure once: the launcher's claiming and its recording of job endings both wait this
/// way.
struct IOBackoff {
    private var until = 0.0
    private var pause = 0.0
    private var lastMessage = ""
    private var lastError: SpoolError?

    /// Whether failures are under way (the last attempt failed).
    var isFailing: Bool { pause > 0 }

    /// Whether the failures under way are for want of room, which frees up by itself (a read-only filesystem
    /// comes back only when someone repairs it: waiting for that is idleness).
    var waitsForRoom: Bool { isFailing && lastError?.isOutOfRoom == true }

    /// Whether the pause is over at `now` (always, when nothing failed).
    func isOver(_ now: Double) -> Bool { now >= until }

    /// Records a failure and starts the next pause (back at 1 s if some work still got done); true when `message`
    /// is new, so the caller logs it.
    mutating func failed(_ error: SpoolError, now: Double, progressed: Bool = false) -> Bool {
        pause = pause == 0 || progressed ? 1 : min(30, pause * 2)
        until = now + pause
        lastError = error
        let message = error.description
        defer { lastMessage = message }
        return message != lastMessage
    }

    /// Ends the pause early: one more try now.
    mutating func retryNow() { until = 0 }

    /// Records a success; true when it ends a run of failures, so the caller says so.
    mutating func succeeded() -> Bool {
        defer { self = IOBackoff() }
        return pause > 0
    }
}

/// How long a rank with other ranks waits between looks at MPI, whose messages cannot wake a poll(2): the
/// shortest wait right after activity (a start often follows an ending), doubled at every quiet look up to the
/// longest. A fixed short wait after activity kept a busy rank polling 20,000 times a second, each look a wake-up
/// that took CPU from the jobs beside it; the doubling takes a few looks to get back to a millisecond.
struct IdlePause {
    let shortest: Double
    let longest: Double
    private var current: Double

    init(shortest: Double = 0.00005, longest: Double) {
        self.shortest = shortest
        self.longest = longest
        self.current = shortest
    }

    /// The wait after a look: none after activity (the next look is due now), else the current pause, doubled
    /// for the next.
    mutating func next(active: Bool) -> Double {
        if active {
            current = shortest
            return 0
        }
        defer { current = min(longest, current * 2) }
        return current
    }
}
