import CLinux
import Foundation
import Spool

/// Copies files and trees on filesystems this machine sees: in the kernel (`copy_file_range`, which reflinks
/// where the filesystem can), into a hidden partial name beside the target that is renamed into place when
/// complete, so a copy cut short is never taken for the file. Symbolic links inside a tree are copied as links,
/// never followed.
enum LocalCopy {
    /// The real path of `path` (symbolic links resolved), or nil if it does not exist.
    static func realPath(_ path: String) -> String? {
        guard let resolved = realpath(path, nil) else { return nil }
        defer { free(resolved) }
        return String(cString: resolved)
    }

    /// Whether `path` (which exists) is `directory` or inside it, once links are resolved.
    static func isInside(_ path: String, _ directory: String) -> Bool {
        guard let real = realPath(path), let base = realPath(directory) else { return false }
        return real == base || real.hasPrefix(base + "/")
    }

    /// Copies `source` to `target` (replacing it), a directory only when `recursive`.
    static func copy(_ source: String, to target: String, recursive: Bool) throws(SpoolError) {
        guard let st = try Posix.statIfExists(source) else {
            throw SpoolError(.notFound, "no such file or directory", path: source)
        }
        let isDirectory = (st.st_mode & S_IFMT) == S_IFDIR
        if isDirectory && !recursive {
            throw SpoolError(.invalidInput, "is a directory, and the slot is not recursive", path: source)
        }
        let partial = Posix.parentPath(target) + "/.balsam-partial." + Posix.lastComponent(target)
        Posix.removeTree(partial)
        do throws(SpoolError) {
            if isDirectory {
                try copyTree(source, to: partial)
                Posix.removeTree(target)
            } else {
                try copyFile(source, to: partial, mode: st.st_mode & 0o7777)
                if Posix.isDirectory(target) { Posix.removeTree(target) }
            }
            try Posix.rename(partial, target)
        } catch {
            Posix.removeTree(partial)
            throw error
        }
    }

    static func copyFile(_ source: String, to target: String, mode: mode_t) throws(SpoolError) {
        let input = try Posix.open(source, O_RDONLY)
        defer { Posix.close(input) }
        let output = try Posix.open(target, O_WRONLY | O_CREAT | O_TRUNC, mode: mode)
        defer { Posix.close(output) }
        while true {
            let n = try Posix.call("copy", path: target) { clinux_copy_file_range(input, output, 1 << 30) }
            if n == 0 { break }
        }
        // Not fsynced, as cp and rsync do not: the partial name and the rename keep a copy cut short (a killed
        // watcher) from passing for the file; a machine that crashes may lose what its page cache held.
    }

    /// Copies a directory tree: directories made, files copied, links recreated (not followed).
    static func copyTree(_ source: String, to target: String) throws(SpoolError) {
        // The top may be a link to the tree (a location's path): what it points to is copied.
        try walk(realPath(source) ?? source, to: target) { (from, to, st) throws(SpoolError) in
            try copyFile(from, to: to, mode: st.st_mode & 0o7777)
        }
    }

    /// Recreates `source` at `target`: directories made, each regular file given to `file`, symbolic links
    /// recreated as links (never followed); devices, sockets and pipes are not data to move.
    static func walk(
        _ source: String, to target: String, file: (String, String, stat) throws(SpoolError) -> Void
    ) throws(SpoolError) {
        guard let st = try Posix.lstatIfExists(source) else {
            throw SpoolError(.notFound, "no such file or directory", path: source)
        }
        switch st.st_mode & S_IFMT {
        case S_IFDIR:
            try Posix.mkdir(target)
            for name in try Posix.listDirectory(source) {
                try walk(source + "/" + name, to: target + "/" + name, file: file)
            }
        case S_IFREG: try file(source, target, st)
        case S_IFLNK:
            var buffer = [CChar](repeating: 0, count: Int(PATH_MAX) + 1)
            let n = readlink(source, &buffer, buffer.count - 1)
            guard n >= 0 else { throw SpoolError.system("readlink", path: source, errno: errno) }
            let link = String(decoding: buffer.prefix(n).map { UInt8(bitPattern: $0) }, as: UTF8.self)
            try Posix.call("symlink", path: target) { symlink(link, target) }
        default: return
        }
    }

    /// The local end of a request, checked: what a stage-out reads, or the directory a stage-in writes into,
    /// must be inside the job's directory once links are resolved.
    static func checkedLocal(_ request: TransferRequest, direction: TransferSlot.Direction) throws(SpoolError)
        -> String
    {
        let path = request.localFullPath
        // A plain name in the job's directory needs no resolving: only a link there could lead out.
        let plain = !path.dropFirst(request.jobDirectory.utf8.count + 1).contains("/")
        if plain && path.hasPrefix(request.jobDirectory + "/") {
            let st = try Posix.lstatIfExists(path)
            if direction == .in && (st.map { ($0.st_mode & S_IFMT) != S_IFLNK } ?? true) { return path }
            if direction == .out, let st, (st.st_mode & S_IFMT) == S_IFREG || (st.st_mode & S_IFMT) == S_IFDIR {
                return path
            }
        }
        if direction == .out {
            guard Posix.exists(path) else { throw SpoolError(.notFound, "no such file or directory", path: path) }
            guard isInside(path, request.jobDirectory) else {
                throw SpoolError(.invalidInput, "leads out of the job's directory (a symbolic link?)", path: path)
            }
        } else {
            try Posix.makeDirectories(Posix.parentPath(path))
            guard isInside(Posix.parentPath(path), request.jobDirectory) else {
                throw SpoolError(
                    .invalidInput, "its directory leads out of the job's directory (a symbolic link?)", path: path)
            }
        }
        return path
    }
}

/// `file://` locations: copies on this machine, one thread per task.
public final class LocalBackend: TransferBackend {
    let tasks = ThreadedTasks(prefix: "local")

    public init() {}

    public func submit(_ batch: [TransferRequest], direction: TransferSlot.Direction, location: TransferLocation)
        throws(SpoolError) -> String
    {
        tasks.start { update in
            var failures: [String: String] = [:]
            for (i, request) in batch.enumerated() {
                do throws(SpoolError) {
                    let local = try LocalCopy.checkedLocal(request, direction: direction)
                    if direction == .in {
                        try LocalCopy.copy(request.remotePath, to: local, recursive: request.recursive)
                    } else {
                        try Posix.makeDirectories(Posix.parentPath(request.remotePath))
                        try LocalCopy.copy(local, to: request.remotePath, recursive: request.recursive)
                    }
                } catch {
                    failures[request.key] = error.description
                }
                update(["done": .int(i + 1), "of": .int(batch.count)])
            }
            return .finished(failures: failures)
        }
    }

    public func poll(_ taskID: String) -> TaskStatus? { tasks.status(taskID) }
}
