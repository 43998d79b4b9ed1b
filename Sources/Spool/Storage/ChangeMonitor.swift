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
    /// Overflows seen (the kernel dropped events; a rescan covers them). Names of `named` directories were lost
    /// with them: whoever keeps a directory's entries from `takeNames()` lists it again.
    package private(set) var overflows = 0

    /// An entry that arrived in (created, renamed into) or left (removed, renamed out of) a `named` directory.
    package struct NamedChange: Sendable, Equatable {
        package var directory: String
        package var name: String
        package var arrived: Bool

        package init(directory: String, name: String, arrived: Bool) {
            self.directory = directory
            self.name = name
            self.arrived = arrived
        }
    }

    /// Names heard since the last `takeNames()`, in the order they happened.
    private var names: [NamedChange] = []
    /// The named directories, by watch descriptor.
    private var namedWatches: [Int32: String] = [:]
    /// Names kept at most between two `takeNames()`: past it they are dropped and counted as an overflow (a
    /// rescan), so a watcher that falls behind a burst holds no more memory than this.
    package static let namesKept = 1 << 18

    /// Watches `directories` (with `inotify` false, only `wake()` and timeouts end a wait). For those also in
    /// `named`, the names of entries that arrive and leave are kept for `takeNames()`.
    package init(directories: [String], named: Set<String> = [], inotify: Bool) throws(SpoolError) {
        (wakeFD, wakeWriteFD) = try Posix.makePipe(nonBlocking: true, path: directories.first ?? "")
        guard inotify else {
            inotifyFD = -1
            return
        }
        inotifyFD = inotify_init1(Int32(IN_NONBLOCK | IN_CLOEXEC))
        if inotifyFD < 0 { throw .system("initialize inotify", path: directories.first ?? "", errno: errno) }
        let mask = UInt32(IN_CREATE | IN_MOVED_TO | IN_CLOSE_WRITE | IN_ATTRIB)
        for dir in directories {
            let watch = inotify_add_watch(
                inotifyFD, dir, named.contains(dir) ? mask | UInt32(IN_MOVED_FROM | IN_DELETE) : mask)
            if watch < 0 { throw .system("watch", path: dir, errno: errno) }
            if named.contains(dir) { namedWatches[watch] = dir }
        }
    }

    /// The names heard in the named directories since the last call, oldest first.
    package func takeNames() -> [NamedChange] {
        defer { names = [] }
        return names
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
                let (watch, mask, length) = buffer.withUnsafeBytes {
                    (
                        $0.load(fromByteOffset: offset, as: Int32.self),
                        $0.load(fromByteOffset: offset + 4, as: UInt32.self),
                        Int($0.load(fromByteOffset: offset + 12, as: UInt32.self))
                    )
                }
                if mask & UInt32(IN_Q_OVERFLOW) != 0 { overflows += 1 }
                if let directory = namedWatches[watch], length > 0, offset + 16 + length <= n {
                    // The name is NUL-padded to its length.
                    let bytes = buffer[(offset + 16)..<(offset + 16 + length)]
                    let name = String(decoding: bytes.prefix { $0 != 0 }, as: UTF8.self)
                    if names.count >= ChangeMonitor.namesKept {
                        names = []
                        overflows += 1
                    } else {
                        let arrived = mask & UInt32(IN_CREATE | IN_MOVED_TO) != 0
                        let left = mask & UInt32(IN_MOVED_FROM | IN_DELETE) != 0
                        if arrived || left {
                            names.append(NamedChange(directory: directory, name: name, arrived: arrived))
                        }
                    }
                }
                eventCount += 1
                offset += 16 + length
            }
        }
    }
}
