#if canImport(Glibc)
    import Glibc
#endif

/// Wakes a daemon (the watcher, a launcher) when something changes in some of the site's directories on this node.
///
/// Raw inotify with `poll(2)`, not libinotifytools: the library's `inotifytools_next_event(0)` blocks forever on
/// an empty queue (measured here), so it can neither drain a burst of events without blocking nor wait less than
/// a second; the raw API does both, and a self-pipe lets signals wake the wait. inotify is only a hint: changes
/// made on other nodes of a shared filesystem never raise events, so the watcher also rescans on a timer, and an
/// overflowed queue just means "rescan".
/// `@unchecked Sendable`: only `wake()` (one write to a pipe) is called from other threads.
package final class ChangeMonitor: @unchecked Sendable {
    private let inotifyFD: Int32
    private let wakeFD: Int32
    private let wakeWriteFD: Int32
    /// Events read so far (for tests and statistics).
    package private(set) var eventCount = 0
    /// Overflows seen (the kernel dropped events; a rescan covers them).
    package private(set) var overflows = 0

    /// Watches `directories` (with `inotify` false, only `wake()` and timeouts end a wait).
    package init(directories: [String], inotify: Bool) throws(SpoolError) {
        (wakeFD, wakeWriteFD) = try Posix.makePipe(nonBlocking: true, path: directories.first ?? "")
        guard inotify else {
            inotifyFD = -1
            return
        }
        inotifyFD = inotify_init1(Int32(IN_NONBLOCK | IN_CLOEXEC))
        if inotifyFD < 0 { throw .system("initialize inotify", path: directories.first ?? "", errno: errno) }
        let mask = UInt32(IN_CREATE | IN_MOVED_TO | IN_CLOSE_WRITE | IN_ATTRIB)
        for dir in directories where inotify_add_watch(inotifyFD, dir, mask) < 0 {
            throw .system("watch", path: dir, errno: errno)
        }
    }

    deinit {
        if inotifyFD >= 0 { close(inotifyFD) }
        close(wakeFD)
        close(wakeWriteFD)
    }

    /// Waits until a change is reported, `wake()` is called, one of `alsoReadable` can be read (a child's
    /// replies, say), or `seconds` pass; drains every queued change. Returns true when woken by a change or
    /// `wake()`, false otherwise.
    package func wait(seconds: Double, alsoReadable: [Int32] = []) -> Bool {
        let ready = Posix.readable([wakeFD, inotifyFD] + alsoReadable, seconds: seconds)
        guard ready[0] || ready[1] else { return false }
        drain()
        return true
    }

    /// Makes a pending or future `wait` return now (async-signal-safe: one write).
    package func wake() {
        var one: UInt8 = 1
        // Direct: Posix.call allocates nothing but may throw, and this runs in signal handlers. A full pipe
        // (EAGAIN) means a wake is already pending, which is all a wake needs.
        _ = write(wakeWriteFD, &one, 1)
    }

    private func drain() {
        var bytes = [UInt8](repeating: 0, count: 64)
        // Non-blocking reads until EAGAIN: the end of what is pending is the expected way out, not an error.
        while read(wakeFD, &bytes, bytes.count) > 0 {}
        guard inotifyFD >= 0 else { return }
        var buffer = [UInt8](repeating: 0, count: 64 * 1024)
        while true {
            // EAGAIN ends the drain; any other failure too: inotify is a hint, and the rescan timer covers it.
            let n = buffer.withUnsafeMutableBytes { read(inotifyFD, $0.baseAddress, $0.count) }
            if n <= 0 { return }
            var offset = 0
            while offset + 16 <= n {
                let mask = buffer.withUnsafeBytes { $0.load(fromByteOffset: offset + 4, as: UInt32.self) }
                let length = buffer.withUnsafeBytes { $0.load(fromByteOffset: offset + 12, as: UInt32.self) }
                if mask & UInt32(IN_Q_OVERFLOW) != 0 { overflows += 1 }
                eventCount += 1
                offset += 16 + Int(length)
            }
        }
    }
}
