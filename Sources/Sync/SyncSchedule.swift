/// When a site's next sync round runs: at once while a backlog remains, after `sync.period` when caught up,
/// and after a failure after a wait that doubles from the period up to `cap`. The watcher and
/// `bench/fleet-bench`'s driver both follow it.
public struct SyncSchedule: Sendable {
    /// The longest wait after failures, seconds.
    public static let cap = 60.0
    /// Seconds between rounds when caught up (`sync.period`).
    public var period: Double
    /// The wait after the last failure (0 after a success).
    public private(set) var backoff = 0.0

    /// A schedule with rounds every `period` seconds.
    public init(period: Double) { self.period = period }

    /// The wait after a round that succeeded.
    public mutating func succeeded(_ round: Pusher.Round) -> Double {
        backoff = 0
        // Pushes that wait for news are the wait: the next round goes at once (a push with nothing to tell waits
        // on the server; one with news within `Pusher.spacing` of the last listens out the rest first).
        if round.listening { return 0 }
        return round.caughtUp ? period : 0
    }

    /// The wait after a round that failed.
    public mutating func failed() -> Double {
        backoff = min(Self.cap, max(backoff * 2, period))
        return backoff
    }
}
