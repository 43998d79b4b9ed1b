import Synchronization

/// News for users' sites: every change a user makes through the API (a job, an app, a batch job, a request) is
/// posted here, for the sites its handler names (`Reply.newsFor`: a job's site) or else for all of the user's,
/// and a site's push that asked to wait (`POST /sync/push?wait=N`) and has nothing to carry back is held until
/// news for its site comes, N seconds pass, or the server shuts down. In-process: with several server processes on
/// one database, a push held by one process hears only that process's news, and the others' reach its site at
/// the end of the hold (its heartbeat), as polling did.
///
/// Marks make the hand-over race-free: a push reads its site's mark (a generation of the user's news for all
/// sites, and one of the site's own) before its transaction looks for work, and a wait returns at once if either
/// moved since.
final class SiteNews: Sendable {
    /// Where a site's news stood.
    struct Mark: Equatable, Sendable {
        var owner: UInt64
        var site: UInt64
    }

    private struct Waiter {
        let site: Int
        let mark: Mark
        /// nil between the wait's start and its continuation's registration.
        var continuation: CheckedContinuation<Bool, Never>?
    }

    private struct State {
        /// News for all of a user's sites, by user; for one site, by site.
        var ownerGenerations: [Int: UInt64] = [:]
        var siteGenerations: [Int: UInt64] = [:]
        /// Waits in progress, by user; one ended by its timer, news or shutdown is removed (a registration that
        /// finds its key gone returns at once).
        var waiters: [Int: [UInt64: Waiter]] = [:]
        var count = 0
        var nextWaiter: UInt64 = 0
        var closed = false

        func mark(owner: Int, site: Int) -> Mark {
            Mark(owner: ownerGenerations[owner] ?? 0, site: siteGenerations[site] ?? 0)
        }
    }

    private let state = Mutex(State())

    /// Where the news of `site` (of `owner`) stands now.
    func mark(owner: Int, site: Int) -> Mark {
        state.withLock { $0.mark(owner: owner, site: site) }
    }

    /// Wakes the held pushes of `sites` (nil: of every site of `owner`).
    func post(owner: Int, sites: Set<Int>?) {
        let woken = state.withLock { state -> [Waiter] in
            if let sites {
                for site in sites { state.siteGenerations[site, default: 0] &+= 1 }
            } else {
                state.ownerGenerations[owner, default: 0] &+= 1
            }
            guard let mine = state.waiters[owner] else { return [] }
            let hit = mine.filter { sites?.contains($0.value.site) ?? true }
            for key in hit.keys { state.waiters[owner]?[key] = nil }
            if state.waiters[owner]?.isEmpty == true { state.waiters[owner] = nil }
            state.count -= hit.count
            return Array(hit.values)
        }
        for waiter in woken { waiter.continuation?.resume(returning: true) }
    }

    /// Held pushes now.
    var held: Int { state.withLock { $0.count } }

    /// Waits until news for `site` of `owner` past `mark` (true), or `seconds` pass or the server shuts down
    /// (false).
    func wait(owner: Int, site: Int, since mark: Mark, seconds: Double) async -> Bool {
        let key = state.withLock { state -> UInt64? in
            if state.closed || state.mark(owner: owner, site: site) != mark { return nil }
            state.nextWaiter &+= 1
            state.waiters[owner, default: [:]][state.nextWaiter] = Waiter(site: site, mark: mark, continuation: nil)
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
                let news = state.withLock { !$0.closed && $0.mark(owner: owner, site: site) != mark }
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
