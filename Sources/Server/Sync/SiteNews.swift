import Synchronization

/// News for a user's sites: every change a user makes through the API (a job, an app, a batch job, a request)
/// is posted here for that user, and a site's push that asked to wait (`POST /sync/push?wait=N`) and has nothing
/// to carry back is held until news for its owner comes, N seconds pass, or the server shuts down. In-process:
/// with several server processes on one database, a push held by one process hears only that process's news,
/// and the others' reach its site at the end of the hold (its heartbeat), as polling did.
///
/// A generation per owner makes the hand-over race-free: a push reads it before its transaction looks for work,
/// and a wait returns at once if it moved since.
final class SiteNews: Sendable {
    private struct Waiter {
        /// nil between the wait's start and its continuation's registration.
        var continuation: CheckedContinuation<Bool, Never>?
    }

    private struct State {
        var generations: [Int: UInt64] = [:]
        /// Waits in progress, by owner; one ended by its timer, news or shutdown is removed (a registration that
        /// finds its key gone returns at once).
        var waiters: [Int: [UInt64: Waiter]] = [:]
        var count = 0
        var nextWaiter: UInt64 = 0
        var closed = false
    }

    private let state = Mutex(State())

    /// The owner's generation now (bumped by each `post`).
    func generation(owner: Int) -> UInt64 {
        state.withLock { $0.generations[owner] ?? 0 }
    }

    /// Wakes every push of `owner`'s sites that is held.
    func post(owner: Int) {
        let woken = state.withLock { state -> [Waiter] in
            state.generations[owner, default: 0] &+= 1
            let mine = state.waiters.removeValue(forKey: owner) ?? [:]
            state.count -= mine.count
            return Array(mine.values)
        }
        for waiter in woken { waiter.continuation?.resume(returning: true) }
    }

    /// Held pushes now.
    var held: Int { state.withLock { $0.count } }

    /// Waits until news for `owner` newer than `generation` (true), or `seconds` pass or the server shuts down
    /// (false).
    func wait(owner: Int, since generation: UInt64, seconds: Double) async -> Bool {
        let key = state.withLock { state -> UInt64? in
            if state.closed || (state.generations[owner] ?? 0) != generation { return nil }
            state.nextWaiter &+= 1
            state.waiters[owner, default: [:]][state.nextWaiter] = Waiter(continuation: nil)
            state.count += 1
            return state.nextWaiter
        }
        guard let key else { return !state.withLock { $0.closed } }
        let timer = Task {
            guard (try? await Task.sleep(for: .seconds(seconds))) != nil else { return }
            self.end(key, owner: owner)
        }
        defer { timer.cancel() }
        return await withCheckedContinuation { continuation in
            let registered = state.withLock { state -> Bool in
                guard state.waiters[owner]?[key] != nil else { return false }
                state.waiters[owner]?[key]?.continuation = continuation
                return true
            }
            // Ended before it was registered: by its timer, news or shutdown; which one is read again.
            if !registered {
                let news = state.withLock { !$0.closed && ($0.generations[owner] ?? 0) != generation }
                continuation.resume(returning: news)
            }
        }
    }

    /// Ends one wait (its time is up), if it is still held.
    private func end(_ key: UInt64, owner: Int) {
        let waiter = state.withLock { state -> Waiter? in
            guard let waiter = state.waiters[owner]?.removeValue(forKey: key) else { return nil }
            if state.waiters[owner]?.isEmpty == true { state.waiters[owner] = nil }
            state.count -= 1
            return waiter
        }
        waiter?.continuation?.resume(returning: false)
    }

    /// Ends every held push and every later wait at once: the server is shutting down.
    func close() {
        let all = state.withLock { state -> [Waiter] in
            state.closed = true
            defer {
                state.waiters = [:]
                state.count = 0
            }
            return state.waiters.values.flatMap(\.values)
        }
        for waiter in all { waiter.continuation?.resume(returning: false) }
    }
}
