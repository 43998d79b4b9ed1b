import Foundation
import Spool

#if canImport(Glibc)
    import Glibc
#endif

/// The repository's root (man pages, README), from this file's place in it.
public let repositoryRoot = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
    .deletingLastPathComponent().path

/// A fresh temporary directory per test, removed afterwards: tests run in parallel.
public final class TempDir {
    public let path: String

    public init() throws {
        let base = FileManager.default.temporaryDirectory.path + "/balsam-test-" + UUID().uuidString.prefix(8)
        try FileManager.default.createDirectory(atPath: base, withIntermediateDirectories: true)
        path = base
    }

    deinit { try? FileManager.default.removeItem(atPath: path) }

    public func file(_ name: String, _ text: String) throws {
        let full = path + "/" + name
        try FileManager.default.createDirectory(
            atPath: (full as NSString).deletingLastPathComponent, withIntermediateDirectories: true)
        try text.write(toFile: full, atomically: false, encoding: .utf8)
    }
}

/// A new site with a `hello` app (`echo hello {{ name }}`) in a temporary directory.
public func makeSite(_ dir: TempDir, name: String = "site") throws -> Site {
    let site = try Site.create(at: dir.path + "/" + name)
    try site.createApp(
        App(name: "hello", commandTemplate: "echo hello {{ name }}", parameters: ["name": .init(required: true)]))
    return site
}

public func helloJob(_ workdir: String, name: String = "world") -> Job {
    var job = Job(workdir: workdir, app: "hello")
    job.parameters = ["name": .string(name)]
    return job
}

public func read(_ path: String) throws -> String {
    try String(contentsOfFile: path, encoding: .utf8)
}

public func exists(_ path: String) -> Bool {
    var st = stat()
    return lstat(path, &st) == 0
}

/// Directory entries not starting with a dot.
public func visibleEntries(_ path: String) -> [String] {
    entries(path).filter { !$0.hasPrefix(".") }
}

public func entries(_ path: String) -> [String] {
    ((try? FileManager.default.contentsOfDirectory(atPath: path)) ?? []).sorted()
}

/// Runs a program to completion, returning its exit status and outputs (through files, so a program that fills
/// one output before writing the other cannot stall). Every wait has a deadline: a program still running after
/// `timeout` seconds is killed and the call throws with what it had printed.
@discardableResult
public func run(
    _ program: String, _ args: [String], stdin: Data? = nil, env: [String: String] = [:], cwd: String? = nil,
    timeout: Double = 180
)
    throws -> (status: Int32, stdout: String, stderr: String)
{
    let dir = try TempDir()
    var environment = ProcessInfo.processInfo.environment
    environment["BALSAM_SITE"] = nil
    for (k, v) in env { environment[k] = v }
    let inputPath = dir.path + "/stdin"
    _ = FileManager.default.createFile(atPath: inputPath, contents: stdin ?? Data())
    let process = try Spawned(
        program, args, environment: environment, directory: cwd, stdout: .file(dir.path + "/stdout"),
        stderr: .file(dir.path + "/stderr"), stdinFile: inputPath)
    let outputs = { ((try? read(dir.path + "/stdout")) ?? "", (try? read(dir.path + "/stderr")) ?? "") }
    guard let status = process.wait(timeout: timeout) else {
        process.signal(SIGKILL)
        let (out, err) = outputs()
        throw SpoolError(
            .unavailable,
            "'\(program) \(args.joined(separator: " "))' did not finish within \(Int(saturating: timeout)) s; it printed: \(out) \(err)"
        )
    }
    let (out, err) = outputs()
    return (status, out, err)
}

/// Whether this process may mount filesystems (root): the tests of full and read-only filesystems need it.
public let canMount: Bool = getuid() == 0 && FileManager.default.isExecutableFile(atPath: "/bin/mount")

/// A small tmpfs mounted for one test, unmounted afterwards.
public final class SmallFilesystem {
    public let path: String
    private let dir: TempDir

    public init(size: String, inodes: Int = 4096) throws {
        dir = try TempDir()
        path = dir.path + "/mnt"
        try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
        let r = try run("/bin/mount", ["-t", "tmpfs", "-o", "size=\(size),nr_inodes=\(inodes)", "tmpfs", path])
        if r.status != 0 { throw SpoolError(.io, "mount failed: \(r.stderr)") }
    }

    public func remountReadOnly() throws {
        let r = try run("/bin/mount", ["-o", "remount,ro", path])
        if r.status != 0 { throw SpoolError(.io, "remount failed: \(r.stderr)") }
    }

    /// Writes a file until the filesystem is full.
    public func fill() {
        let fd = open(path + "/filler", O_WRONLY | O_CREAT, 0o644)
        let block = [UInt8](repeating: 0x55, count: 4096)
        while block.withUnsafeBytes({ write(fd, $0.baseAddress, $0.count) }) > 0 {}
        close(fd)
    }

    deinit { _ = try? run("/bin/umount", ["-l", path]) }
}

/// An ext4 filesystem in a file, loop-mounted for one test with `errors=remount-ro`: `failReadOnly()` makes the
/// kernel turn it read-only as after an I/O error, `repair()` checks it with e2fsck and mounts it again.
public final class LoopFilesystem {
    public let path: String
    private let dir: TempDir
    private var image: String { dir.path + "/image" }

    public init(megabytes: Int) throws {
        dir = try TempDir()
        path = dir.path + "/mnt"
        try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
        _ = FileManager.default.createFile(atPath: dir.path + "/image", contents: nil)
        truncate(dir.path + "/image", off_t(megabytes) << 20)
        let made = try run("/sbin/mkfs.ext4", ["-q", "-F", dir.path + "/image"])
        if made.status != 0 { throw SpoolError(.io, "mkfs.ext4: \(made.stderr)") }
        try mount()
    }

    private func mount() throws {
        let r = try run("/bin/mount", ["-o", "loop,errors=remount-ro", image, path])
        if r.status != 0 { throw SpoolError(.io, "mount failed: \(r.stderr)") }
    }

    /// Triggers an ext4 error (`/sys/fs/ext4/DEV/trigger_fs_error`): the kernel remounts it read-only at once.
    public func failReadOnly() throws {
        let device = try run("/bin/findmnt", ["-n", "-o", "SOURCE", path]).stdout
            .trimmingCharacters(in: .whitespacesAndNewlines)
        let name = String(device.split(separator: "/").last ?? "")
        try "test\n".write(toFile: "/sys/fs/ext4/\(name)/trigger_fs_error", atomically: false, encoding: .utf8)
    }

    /// Unmounts it, repairs it with `e2fsck -fy`, and mounts it again at the same path.
    public func repair() throws {
        _ = try run("/bin/umount", [path])
        let checked = try run("/sbin/e2fsck", ["-fy", image])
        // 0: clean; 1: errors corrected.
        if checked.status > 1 { throw SpoolError(.io, "e2fsck: \(checked.status) \(checked.stdout)\(checked.stderr)") }
        try mount()
    }

    deinit { _ = try? run("/bin/umount", ["-l", path]) }
}

/// Whether ext4 images can be loop-mounted here (root, a loop device, the ext4 tools).
public let canLoopMount: Bool =
    canMount && FileManager.default.fileExists(atPath: "/dev/loop-control")
    && FileManager.default.isExecutableFile(atPath: "/sbin/mkfs.ext4")

/// The built executables, found beside the test bundle.
public let binDirectory: String = {
    var buffer = [CChar](repeating: 0, count: 4096)
    let n = readlink("/proc/self/exe", &buffer, buffer.count - 1)
    var dir = String(decoding: buffer[0..<max(n, 0)].map { UInt8(bitPattern: $0) }, as: UTF8.self)
    while !dir.isEmpty && !FileManager.default.isExecutableFile(atPath: dir + "/balsam") {
        guard let slash = dir.lastIndex(of: "/") else { break }
        dir = String(dir[..<slash])
    }
    return dir
}()

/// Runs `balsam` or `balsam-submit` with the given site.
@discardableResult
public func balsam(_ args: [String], site: String? = nil, stdin: Data? = nil, cwd: String? = nil)
    throws -> (status: Int32, stdout: String, stderr: String)
{
    try run(binDirectory + "/balsam", args, stdin: stdin, env: site.map { ["BALSAM_SITE": $0] } ?? [:], cwd: cwd)
}

/// Runs `balsam-submit` with the given site.
@discardableResult
public func balsamSubmit(_ args: [String], site: String? = nil, stdin: Data? = nil)
    throws -> (status: Int32, stdout: String, stderr: String)
{
    try run(binDirectory + "/balsam-submit", args, stdin: stdin, env: site.map { ["BALSAM_SITE": $0] } ?? [:])
}

/// The pid of a process that has exited (for leftovers "written by a dead process").
public func deadPID() throws -> Int32 {
    let process = try Spawned("/bin/true", [])
    process.waitUntilExit()
    return process.processIdentifier
}

/// The `.HOST.PID` suffix of a temporary name written by a process that is gone.
public func deadOwnerSuffix() throws -> String {
    ".\(Posix.hostName()).\(try deadPID())-12345"
}
