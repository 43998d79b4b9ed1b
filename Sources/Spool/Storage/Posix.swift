import CLinux

#if canImport(Glibc)
    import Glibc
#endif

/// Thin wrappers over the system calls the spool uses: each goes through `call` (or `check`), which retries
/// `EINTR` and throws `SpoolError` with the path and `errno`. Paths are plain strings; the spool never needs more.
/// Direct libc calls elsewhere are the ones whose failure is an answer, not an error (`kill(pid, 0)`, a `link`
/// that may find its name taken, an `unlink` of what may be gone); each says so where it is made.
public enum Posix {
    /// The one way to make a system call that fails with -1 and `errno`: retried while it fails with `EINTR`;
    /// any other failure throws a `SpoolError` saying what was done (`what`), to which path, and the errno.
    @discardableResult
    package static func call<Result: BinaryInteger>(_ what: String, path: String, _ body: () -> Result)
        throws(SpoolError) -> Result
    {
        while true {
            let result = body()
            if result != -1 { return result }
            let err = errno
            if err == EINTR { continue }
            throw .system(what, path: path, errno: err)
        }
    }

    /// For calls that return their error number instead of setting `errno` (`posix_spawn` and its helpers).
    package static func check(_ what: String, path: String, _ rc: Int32) throws(SpoolError) {
        if rc != 0 { throw .system(what, path: path, errno: rc) }
    }

    package static func open(_ path: String, _ flags: Int32, mode: mode_t = 0o666) throws(SpoolError) -> Int32 {
        try call("open", path: path) { Glibc.open(path, flags | O_CLOEXEC, mode) }
    }

    package static func close(_ fd: Int32) {
        _ = Glibc.close(fd)
    }

    package static func write(_ fd: Int32, _ bytes: UnsafeRawBufferPointer, path: String) throws(SpoolError) {
        var offset = 0
        while offset < bytes.count {
            let base = bytes.baseAddress.map { $0 + offset }
            offset += try call("write", path: path) { Glibc.write(fd, base, bytes.count - offset) }
        }
    }

    package static func write(_ fd: Int32, _ bytes: [UInt8], path: String) throws(SpoolError) {
        let result = bytes.withUnsafeBytes { buffer in
            Result { () throws(SpoolError) in try write(fd, buffer, path: path) }
        }
        try result.get()
    }

    /// Marks `fd` close-on-exec (children started by other threads must not inherit it), and non-blocking when
    /// asked.
    package static func setDescriptorFlags(_ fd: Int32, nonBlocking: Bool, path: String) throws(SpoolError) {
        try call("set close-on-exec", path: path) { fcntl(fd, F_SETFD, FD_CLOEXEC) }
        guard nonBlocking else { return }
        let flags = try call("read descriptor flags", path: path) { fcntl(fd, F_GETFL) }
        try call("set non-blocking", path: path) { fcntl(fd, F_SETFL, flags | O_NONBLOCK) }
    }

    /// A pipe whose ends are close-on-exec, and non-blocking when asked; `path` names its use in errors.
    package static func makePipe(nonBlocking: Bool, path: String) throws(SpoolError) -> (read: Int32, write: Int32) {
        var fds: [Int32] = [0, 0]
        try call("create a pipe", path: path) { pipe(&fds) }
        do {
            for fd in fds { try setDescriptorFlags(fd, nonBlocking: nonBlocking, path: path) }
        } catch {
            for fd in fds { close(fd) }
            throw error
        }
        return (fds[0], fds[1])
    }

    /// Waits until one of `fds` can be read or `seconds` pass (nanosecond timeout, unlike poll(2)).
    @discardableResult
    package static func waitReadable(_ fds: [Int32], seconds: Double) -> Bool {
        readable(fds, seconds: seconds).contains(true)
    }

    /// Waits as `waitReadable` does and says which of `fds` can be read (false for negative ones).
    package static func readable(_ fds: [Int32], seconds: Double) -> [Bool] {
        var polled = fds.map { pollfd(fd: $0, events: Int16(POLLIN), revents: 0) }  // poll(2) skips fd < 0
        guard clinux_ppoll_ns(&polled, nfds_t(polled.count), Int(saturating: max(0, min(seconds, 3600)) * 1e9)) > 0
        else {
            return Array(repeating: false, count: fds.count)
        }
        return polled.map { $0.revents != 0 }
    }

    package static func fsync(_ fd: Int32, path: String) throws(SpoolError) {
        try call("fsync", path: path) { Glibc.fsync(fd) }
    }

    /// fsync a directory, so the names created or renamed in it survive a crash.
    package static func fsyncDirectory(_ path: String) throws(SpoolError) {
        let fd = try open(path, O_RDONLY | O_DIRECTORY)
        defer { close(fd) }
        try fsync(fd, path: path)
    }

    /// syncfs(2) on the filesystem holding `path`: one flush for a whole batch of new files.
    package static func syncFilesystem(_ path: String) throws(SpoolError) {
        let fd = try open(path, O_RDONLY | O_DIRECTORY)
        defer { close(fd) }
        try call("syncfs", path: path) { clinux_syncfs(fd) }
    }

    /// Reads a whole regular file, refusing symlinks, non-regular files, and files over `limit` bytes
    /// (checked before reading, so a huge file costs one `fstat`).
    public static func readFile(_ path: String, limit: Int) throws(SpoolError) -> [UInt8] {
        let fd: Int32
        do { fd = try open(path, O_RDONLY | O_NOFOLLOW | O_NONBLOCK) } catch  where error.cause == ELOOP {
            // O_NOFOLLOW's answer for a symbolic link: bad data, not a failing disk.
            throw SpoolError(.invalidInput, "is a symbolic link; spool files must be regular files", path: path)
        }
        defer { close(fd) }
        var st = stat()
        try call("stat", path: path) { fstat(fd, &st) }
        if (st.st_mode & S_IFMT) != S_IFREG {
            throw SpoolError(.invalidInput, "not a regular file", path: path)
        }
        if Int(st.st_size) > limit {
            throw SpoolError(.invalidInput, "file is \(st.st_size) bytes; the limit is \(limit)", path: path)
        }
        return try readToEnd(fd, path: path, limit: limit, sizeHint: Int(st.st_size))
    }

    /// Reads a user's input file (not a spool file): symlinks are followed and pipes are fine; at most `limit`
    /// bytes.
    public static func readInput(_ path: String, limit: Int) throws(SpoolError) -> [UInt8] {
        let fd = try open(path, O_RDONLY)
        defer { close(fd) }
        var st = stat()
        try call("stat", path: path) { fstat(fd, &st) }
        if (st.st_mode & S_IFMT) == S_IFDIR { throw SpoolError(.invalidInput, "is a directory", path: path) }
        return try readToEnd(fd, path: path, limit: limit)
    }

    package static func readToEnd(_ fd: Int32, path: String, limit: Int, sizeHint: Int = 65536) throws(SpoolError)
        -> [UInt8]
    {
        var result = [UInt8]()
        result.reserveCapacity(sizeHint + 1)
        var chunk = [UInt8](repeating: 0, count: max(4096, min(sizeHint + 1, 1 << 20)))
        while true {
            let n = try call("read", path: path) {
                chunk.withUnsafeMutableBytes { Glibc.read(fd, $0.baseAddress, $0.count) }
            }
            if n == 0 { return result }
            result.append(contentsOf: chunk[0..<n])
            if result.count > limit {
                throw SpoolError(.invalidInput, "input is larger than the limit of \(limit) bytes", path: path)
            }
        }
    }

    /// Creates a file that must not exist yet, writes `bytes`, optionally fsyncs, closes.
    package static func createFile(
        _ path: String, _ bytes: [UInt8], sync: Bool, exclusive: Bool = true, mode: mode_t = 0o666
    ) throws(SpoolError) {
        let flags = O_WRONLY | O_CREAT | (exclusive ? O_EXCL : O_TRUNC) | O_NOFOLLOW
        let fd = try open(path, flags, mode: mode)
        defer { close(fd) }
        try write(fd, bytes, path: path)
        if sync { try fsync(fd, path: path) }
    }

    /// Appends complete lines to an existing file. If the file does not end with a newline (a write cut short
    /// by a crash), one is written first, so the fragment stays a line of its own that readers skip.
    /// `endsWithNewline`: the caller has just read the file and knows it ends with a newline, and no one else
    /// writes it meanwhile (a job's owner appending to its state file), so the look is skipped.
    package static func appendLines(_ path: String, _ bytes: [UInt8], sync: Bool, endsWithNewline: Bool = false)
        throws(SpoolError)
    {
        let fd = try open(path, (endsWithNewline ? O_WRONLY : O_RDWR) | O_APPEND | O_NOFOLLOW)
        defer { close(fd) }
        var last: UInt8 = 0x0A
        if !endsWithNewline {
            var st = stat()
            try call("stat", path: path) { fstat(fd, &st) }
            if st.st_size > 0 {
                let n = try call("read", path: path) { pread(fd, &last, 1, st.st_size - 1) }
                if n != 1 { throw SpoolError(.io, "cannot read its last byte", path: path) }
            }
        }
        try write(fd, last == 0x0A ? bytes : [0x0A] + bytes, path: path)
        if sync { try fsync(fd, path: path) }
    }

    /// Write new, then rename: readers see the old file or the new one, never a torn one.
    package static func replaceFile(
        _ path: String, _ bytes: [UInt8], sync: Bool, tempDirectory: String? = nil, mode: mode_t = 0o666
    ) throws(SpoolError) {
        let temp = (tempDirectory.map { $0 + "/" + lastComponent(path) } ?? path) + ".tmp.\(getpid())"
        try createFile(temp, bytes, sync: sync, exclusive: false, mode: mode)
        do { try rename(temp, path) } catch {
            unlink(temp)
            throw error
        }
    }

    package static func rename(_ from: String, _ to: String) throws(SpoolError) {
        try call("rename to \(to)", path: from) { Glibc.rename(from, to) }
    }

    /// rename(2) that fails with EEXIST instead of replacing an existing (even empty) target.
    package static func renameNoReplace(_ from: String, _ to: String) throws(SpoolError) {
        try call("rename to \(to)", path: from) { clinux_rename_noreplace(AT_FDCWD, from, AT_FDCWD, to) }
    }

    // Files and directories are made with every permission the umask allows (0666, 0777: the Unix rule), so the
    // umask decides who may read and write them: 022 for a private site, 002 in a shared one (`Site.open` relaxes
    // it there). Secrets say 0600 themselves.

    /// Makes `path` executable by whoever may read it (`chmod +x` as the umask would have it): a script written
    /// for a shell or a batch system.
    package static func makeExecutable(_ path: String) throws(SpoolError) {
        var st = stat()
        try call("stat", path: path) { fstatat(AT_FDCWD, path, &st, 0) }
        let mode = st.st_mode & 0o7777
        try call("chmod", path: path) { chmod(path, mode | ((mode & 0o444) >> 2)) }
    }

    package static func mkdir(_ path: String, mode: mode_t = 0o777) throws(SpoolError) {
        try call("create directory", path: path) { Glibc.mkdir(path, mode) }
    }

    /// mkdir -p; returns normally when the directory already exists.
    package static func makeDirectories(_ path: String) throws(SpoolError) {
        if Glibc.mkdir(path, 0o777) == 0 { return }
        let err = errno
        if err == EEXIST {
            if isDirectory(path) { return }
            throw SpoolError(.cannotCreate, "exists and is not a directory", path: path)
        }
        if err != ENOENT { throw .system("create directory", path: path, errno: err) }
        let parent = parentPath(path)
        if parent == path || parent.isEmpty { throw .system("create directory", path: path, errno: err) }
        try makeDirectories(parent)
        if Glibc.mkdir(path, 0o777) != 0 && errno != EEXIST {
            throw .system("create directory", path: path, errno: errno)
        }
    }

    /// Removes a file that may already be gone (cleanup): whether it was there is the answer, not an error.
    @discardableResult
    package static func unlink(_ path: String) -> Bool { Glibc.unlink(path) == 0 }

    package static func unlinkChecked(_ path: String) throws(SpoolError) {
        do { try call("remove", path: path) { Glibc.unlink(path) } } catch  where error.cause == ENOENT {}
    }

    /// Removes a directory tree this process made (cleanup after a failed step); never follows symlinks.
    package static func removeTree(_ path: String) {
        var st = stat()
        guard lstat(path, &st) == 0 else { return }
        if (st.st_mode & S_IFMT) == S_IFDIR {
            for name in (try? listDirectory(path)) ?? [] { removeTree(path + "/" + name) }
            _ = rmdir(path)
        } else {
            _ = Glibc.unlink(path)
        }
    }

    /// stat(2) (following a symlink); nil if there is nothing at `path`.
    package static func statIfExists(_ path: String) throws(SpoolError) -> stat? {
        var st = stat()
        do { try call("stat", path: path) { fstatat(AT_FDCWD, path, &st, 0) } } catch  where error.cause == ENOENT {
            return nil
        }
        return st
    }

    /// lstat(2); nil when the path does not exist.
    package static func lstatIfExists(_ path: String) throws(SpoolError) -> stat? {
        var st = stat()
        do { try call("stat", path: path) { Glibc.lstat(path, &st) } } catch  where error.cause == ENOENT { return nil }
        return st
    }

    package static func exists(_ path: String) -> Bool {
        var st = stat()
        return Glibc.lstat(path, &st) == 0
    }

    package static func isDirectory(_ path: String) -> Bool {
        var st = stat()
        return fstatat(AT_FDCWD, path, &st, 0) == 0 && (st.st_mode & S_IFMT) == S_IFDIR
    }

    /// The names in a directory, without `.` and `..`, in no particular order.
    package static func listDirectory(_ path: String) throws(SpoolError) -> [String] {
        guard let dir = opendir(path) else { throw .system("list directory", path: path, errno: errno) }
        defer { closedir(dir) }
        var names: [String] = []
        while let entry = readdir(dir) {
            let name = withUnsafePointer(to: &entry.pointee.d_name) {
                $0.withMemoryRebound(to: CChar.self, capacity: 256) { String(cString: $0) }
            }
            if name == "." || name == ".." { continue }
            names.append(name)
        }
        return names
    }

    package static func lastComponent(_ path: String) -> String {
        guard let slash = path.lastIndex(of: "/") else { return path }
        return String(path[path.index(after: slash)...])
    }

    package static func parentPath(_ path: String) -> String {
        guard let slash = path.lastIndex(of: "/") else { return "." }
        if slash == path.startIndex { return "/" }
        return String(path[..<slash])
    }

    package static func currentDirectory() -> String {
        var buffer = [CChar](repeating: 0, count: Int(PATH_MAX) + 1)
        guard getcwd(&buffer, buffer.count) != nil else { return "." }
        return cString(buffer)
    }

    package static func absolute(_ path: String) -> String {
        if path.hasPrefix("/") { return path }
        let cwd = currentDirectory()
        return path == "." ? cwd : cwd + "/" + path
    }

    /// The time of day (CLOCK_REALTIME): for timestamps and file ages, never for intervals.
    package static func wallClock() -> timespec {
        var ts = timespec()
        // clock_gettime(2) fails only for an unknown clock or a bad pointer, neither possible here.
        clock_gettime(CLOCK_REALTIME, &ts)
        return ts
    }

    /// Seconds on CLOCK_MONOTONIC: for deadlines and intervals, never for timestamps.
    package static func monotonicSeconds() -> Double {
        var ts = timespec()
        // Cannot fail: CLOCK_MONOTONIC always exists and the pointer is ours.
        clock_gettime(CLOCK_MONOTONIC, &ts)
        return Double(ts.tv_sec) + Double(ts.tv_nsec) / 1e9
    }

    /// The running program's own path (`/proc/self/exe`), or nil.
    /// The absolute path of program `name` as a shell finds it: itself if it has a slash, else the first
    /// executable `DIR/name` along `path` (PATH's value; nil: /usr/bin:/bin); nil when there is none.
    package static func findExecutable(_ name: String, path: String?) -> String? {
        // access(2) answers whether a candidate is executable; a failure just means "look further".
        if name.contains("/") { return access(name, X_OK) == 0 ? name : nil }
        for dir in (path ?? "/usr/bin:/bin").split(separator: ":") {
            let candidate = dir + "/" + name
            if access(candidate, X_OK) == 0 { return candidate }
        }
        return nil
    }

    package static func executablePath() -> String? {
        var buffer = [CChar](repeating: 0, count: 4096)
        let n = readlink("/proc/self/exe", &buffer, buffer.count - 1)
        return n > 0 ? cString(Array(buffer[0..<n]) + [0]) : nil
    }

    /// The last `lines` non-empty lines of a file, reading at most its last 16 KiB and nothing before byte
    /// `offset` (what a run or a hook wrote, say); "" if the file cannot be read.
    package static func tail(_ path: String, lines: Int, from offset: Int = 0) -> String {
        let fd = Glibc.open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { return "" }
        defer { Glibc.close(fd) }
        var st = stat()
        guard fstat(fd, &st) == 0 else { return "" }
        let size = Int(st.st_size)
        let start = max(offset, size - 16 * 1024)
        guard size > start else { return "" }
        var bytes = [UInt8](repeating: 0, count: size - start)
        let n = bytes.withUnsafeMutableBytes { pread(fd, $0.baseAddress, $0.count, off_t(start)) }
        guard n > 0 else { return "" }
        return String(decoding: bytes.prefix(n), as: UTF8.self).split(separator: "\n").suffix(lines)
            .joined(separator: "\n")
    }

    /// This host's name (read once: names of temporary files, event logs and leases are made from it often).
    package static func hostName() -> String { cachedHostName }

    private static let cachedHostName: String = {
        var buffer = [CChar](repeating: 0, count: 256)
        guard gethostname(&buffer, buffer.count) == 0 else { return "localhost" }
        return cString(buffer)
    }()

    /// A NUL-terminated C string in a buffer, as a Swift string.
    package static func cString(_ buffer: [CChar]) -> String {
        String(decoding: buffer.prefix(while: { $0 != 0 }).map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }
}

extension Posix {
    /// Sleeps for `seconds` (nanosleep, resumed after a signal).
    package static func sleep(seconds: Double) {
        var left = timespec(
            tv_sec: Int(saturating: seconds),
            tv_nsec: Int(saturating: (seconds - Double(Int(saturating: seconds))) * 1e9))
        var rest = timespec()
        while nanosleep(&left, &rest) != 0 && errno == EINTR { left = rest }
    }

    /// `path` with a leading `~/` made `$HOME/`.
    public static func expandTilde(_ path: String) -> String {
        guard path.hasPrefix("~/"), let home = getenv("HOME") else { return path }
        return String(cString: home) + path.dropFirst()
    }

    /// The calling process's environment.
    public static func environment() -> [String: String] {
        var env: [String: String] = [:]
        var p = environ
        while let entry = p.pointee {
            let text = String(cString: entry)
            if let eq = text.firstIndex(of: "=") { env[String(text[..<eq])] = String(text[text.index(after: eq)...]) }
            p += 1
        }
        return env
    }

    /// Reads standard input to its end (at most `limit` bytes).
    public static func readStandardInput(limit: Int) throws(SpoolError) -> [UInt8] {
        try readToEnd(0, path: "<stdin>", limit: limit)
    }
}

extension Posix {
}

extension Posix {

}

extension Posix {
    /// Raises this process's soft limit of open files to its hard limit, and returns the limits it has after.
    /// A service manager starts a server with a soft limit of 1,024 (and a hard one far above): a server that
    /// kept it would run out of descriptors at about a thousand connections, for everyone.
    public static func raiseOpenFileLimit() -> (soft: Int, hard: Int) {
        var limit = rlimit()
        guard getrlimit(Int32(RLIMIT_NOFILE.rawValue), &limit) == 0 else { return (1024, 1024) }
        if limit.rlim_cur < limit.rlim_max {
            var raised = limit
            raised.rlim_cur = limit.rlim_max
            if setrlimit(Int32(RLIMIT_NOFILE.rawValue), &raised) == 0 { limit = raised }
        }
        func int(_ v: rlim_t) -> Int { Int(exactly: v) ?? Int.max }  // RLIM_INFINITY is all ones
        return (int(limit.rlim_cur), int(limit.rlim_max))
    }
}
