import Foundation
import Spool

#if canImport(Glibc)
    import Glibc
#endif

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

/// What a pipe delivered, filled by its reader thread.
private final class Drained: @unchecked Sendable {
    private let lock = NSLock()
    private var data = Data()
    func append(_ more: Data) { lock.withLock { data.append(more) } }
    var text: String { lock.withLock { String(decoding: data, as: UTF8.self) } }
}

/// Runs a program to completion, returning its exit status and outputs. Both pipes are drained at once (a
/// program that fills standard error before writing its output cannot stall), and every wait has a deadline:
/// a program still running after `timeout` seconds is killed and the call throws with what it had printed.
@discardableResult
public func run(
    _ program: String, _ args: [String], stdin: Data? = nil, env: [String: String] = [:], cwd: String? = nil,
    timeout: Double = 180
)
    throws -> (status: Int32, stdout: String, stderr: String)
{
    let process = Process()
    process.executableURL = URL(fileURLWithPath: program)
    process.arguments = args
    var environment = ProcessInfo.processInfo.environment
    environment["BALSAM_SITE"] = nil
    for (k, v) in env { environment[k] = v }
    process.environment = environment
    if let cwd { process.currentDirectoryURL = URL(fileURLWithPath: cwd) }
    let out = Pipe()
    let err = Pipe()
    let input = Pipe()
    process.standardOutput = out
    process.standardError = err
    process.standardInput = input
    let exited = DispatchSemaphore(value: 0)
    process.terminationHandler = { _ in exited.signal() }
    try process.run()
    let writer = Thread {
        if let stdin { try? input.fileHandleForWriting.write(contentsOf: stdin) }
        try? input.fileHandleForWriting.close()
    }
    writer.start()
    let drained = DispatchGroup()
    let outputs = [Drained(), Drained()]
    for (pipe, sink) in zip([out, err], outputs) {
        drained.enter()
        Thread {
            while case let chunk = pipe.fileHandleForReading.availableData, !chunk.isEmpty { sink.append(chunk) }
            drained.leave()
        }.start()
    }
    let describe = { "\(program) \(args.joined(separator: " "))" }
    if exited.wait(timeout: .now() + timeout) == .timedOut {
        kill(process.processIdentifier, SIGKILL)
        _ = exited.wait(timeout: .now() + 10)
        throw SpoolError(
            .unavailable,
            "'\(describe())' did not finish within \(Int(timeout)) s; it printed: \(outputs[0].text) \(outputs[1].text)"
        )
    }
    // A child it left running may hold the pipes open: give them a while, then report it.
    if drained.wait(timeout: .now() + 30) == .timedOut {
        throw SpoolError(
            .unavailable, "'\(describe())' exited, but something it started still holds its output open")
    }
    return (process.terminationStatus, outputs[0].text, outputs[1].text)
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
    let process = Process()
    process.executableURL = URL(fileURLWithPath: "/bin/true")
    try process.run()
    process.waitUntilExit()
    return process.processIdentifier
}

/// The `.HOST.PID` suffix of a temporary name written by a process that is gone.
public func deadOwnerSuffix() throws -> String {
    ".\(Posix.hostName()).\(try deadPID())-12345"
}
