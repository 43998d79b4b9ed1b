import ArgumentParser
import Spool

#if canImport(Glibc)
    import Glibc
#endif

/// The `--site` option every command takes, and how a command finds its site.
public struct SiteOption: ParsableArguments {
    @Option(
        name: .long,
        help: ArgumentHelp(
            "The site directory. Without it: $BALSAM_SITE, else the nearest site at or above the current directory.",
            valueName: "dir"))
    public var site: String?

    public init() {}

    /// Opens the site named by `--site`, `$BALSAM_SITE`, or the current directory's ancestry.
    public func open() throws(SpoolError) -> Site {
        let env = getenv("BALSAM_SITE").map { String(cString: $0) }
        return try Site.locate(explicit: site, environment: env, from: ".")
    }
}

/// sysexits(3) statuses, as documented in every man page.
public enum ExitStatus {
    public static let usage: Int32 = 64
    public static let dataError: Int32 = 65
    public static let noInput: Int32 = 66
    public static let unavailable: Int32 = 69
    public static let cannotCreate: Int32 = 73
    public static let ioError: Int32 = 74
    public static let tryAgain: Int32 = 75

    /// The status for an error code.
    public static func status(for code: SpoolError.Code) -> Int32 {
        switch code {
        case .usage: usage
        case .invalidInput: dataError
        case .notFound: noInput
        case .unavailable: unavailable
        case .cannotCreate: cannotCreate
        case .conflict: tryAgain
        default: ioError
        }
    }
}

/// Runs a command body, turning a `SpoolError` into a message on stderr and its sysexits status.
public func reportingErrors(_ program: String, _ body: () throws -> Void) throws {
    do {
        try body()
    } catch let error as SpoolError {
        printError("\(program): \(error)")
        throw ExitCode(ExitStatus.status(for: error.code))
    }
}

/// Runs an async command body, turning a `SpoolError` into a message on stderr and its sysexits status.
public func reportingErrors(_ program: String, _ body: () async throws -> Void) async throws {
    do {
        try await body()
    } catch let error as SpoolError {
        printError("\(program): \(error)")
        throw ExitCode(ExitStatus.status(for: error.code))
    }
}

/// Points standard error at `path` (appending): a daemon's or launcher's `--log`.
public func redirectStandardError(to path: String) throws(SpoolError) {
    let fd = try Posix.call("open the log", path: path) { open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0o666) }
    defer { close(fd) }
    try Posix.call("send standard error to the log", path: path) { dup2(fd, 2) }
}

/// Says on standard error that no balsam-watch runs for `site` (its claim has no live holder), and `because`:
/// what waits for one. Nothing when one runs.
public func warnIfNoWatcher(_ site: Site, _ program: String, because: String) {
    let claim = WatcherClaim(site: site)
    if let holder = claim.holder(), claim.isAlive(holder, confirmSeconds: 0) { return }
    printError(
        "\(program): no balsam-watch is running for this site (no live claim in \(claim.path)); \(because): "
            + "start it with 'balsam-watch --daemon'")
}

/// The `balsam` a shell would run (the first executable on `PATH`) when it is not this project's (the one beside
/// the running program): the original Balsam's, which a Python venv with the client installs and its `activate`
/// puts first, so that `balsam ls` answers "No such command 'ls'". Nil when ours comes first, or is not found.
public func shadowingBalsam(path: String? = nil) -> String? {
    guard let me = Posix.executablePath() else { return nil }
    let ours = Posix.parentPath(me) + "/balsam"
    guard Posix.exists(ours) else { return nil }
    let searched = path ?? getenv("PATH").map { String(cString: $0) } ?? ""
    for directory in searched.split(separator: ":") where !directory.isEmpty {
        let candidate = String(directory) + "/balsam"
        guard access(candidate, X_OK) == 0 else { continue }
        var a = stat()
        var b = stat()
        guard stat(candidate, &a) == 0, stat(ours, &b) == 0 else { return nil }
        return a.st_dev == b.st_dev && a.st_ino == b.st_ino ? nil : candidate
    }
    return nil
}

/// Says on standard error that `shadowingBalsam` found another `balsam` first on `PATH`, and what to do.
public func warnIfBalsamIsShadowed(_ program: String) {
    guard let other = shadowingBalsam(), let me = Posix.executablePath() else { return }
    printError(
        "\(program): warning: the balsam first on PATH is \(other), not this project's "
            + "(\(Posix.parentPath(me))/balsam): 'balsam ls' would run the original Balsam's command. "
            + "Leave the client's venv unactivated (name its Python in settings.yml python.executable and run "
            + "scripts with it by path), or remove \(other): this balsam takes the original's spellings")
}

/// Whether a person is there to answer: standard input and standard error are a terminal.
public var onATerminal: Bool { isatty(0) == 1 && isatty(2) == 1 }

/// Asks `prompt` on standard error and reads the answer from standard input: true for y or yes.
public func confirm(_ prompt: String) -> Bool {
    printError(prompt, terminator: "")
    let answer = String((readLine(strippingNewline: true) ?? "").trimmingSpaces()).lowercased()
    return answer == "y" || answer == "yes"
}

/// Writes a line to standard error.
public func printError(_ line: String, terminator: String = "\n") {
    var bytes = Array((line + terminator).utf8)
    _ = bytes.withUnsafeMutableBytes { write(2, $0.baseAddress, $0.count) }
}

/// Parses `KEY=VALUE`, naming the option on error.
public func keyValue(_ text: String, option: String) throws(SpoolError) -> (String, String) {
    guard let eq = text.firstIndex(of: "="), eq != text.startIndex else {
        throw SpoolError(.usage, "\(option) needs KEY=VALUE, not '\(text)'")
    }
    return (String(text[..<eq]), String(text[text.index(after: eq)...]))
}

/// Repeated `KEY=VALUE` options as a JSON object, each value converted by `value`.
public func keyValueObject(_ items: [String], option: String, value: (String) -> JSONValue) throws(SpoolError)
    -> JSONValue
{
    var object: [String: JSONValue] = [:]
    for item in items {
        let (k, v) = try keyValue(item, option: option)
        if object[k] != nil { throw SpoolError(.usage, "\(option) gives '\(k)' twice; give each key once") }
        object[k] = value(v)
    }
    return .object(object)
}

/// A parameter value from the command line: JSON if it parses as JSON, otherwise the text itself.
public func parameterValue(_ text: String) -> JSONValue {
    (try? JSONValue.parse(text)) ?? .string(text)
}

/// Formats rows as a left-aligned table with a header.
public func table(_ header: [String], _ rows: [[String]]) -> String {
    var widths = header.map(\.count)
    for row in rows {
        for (i, cell) in row.enumerated() where i < widths.count { widths[i] = max(widths[i], cell.count) }
    }
    func line(_ cells: [String]) -> String {
        var out = ""
        for (i, cell) in cells.enumerated() {
            if i == cells.count - 1 {
                out += cell
            } else {
                out += cell + String(repeating: " ", count: widths[i] - cell.count + 2)
            }
        }
        return out
    }
    return ([line(header)] + rows.map(line)).map { String($0.trimmingSuffix(" ")) }.joined(separator: "\n")
}

/// A job and its state as one JSON object (the job's fields plus `state`), for `--json` output.
/// A job as `ls --json`, `show --json` and `submit --json` print it: its fields, its state, and the id the server
/// gave it when the site knows it (`server_id`).
public func jobJSON(_ job: Job, state: JobState, serverID: Int? = nil) -> JSONValue {
    guard case .object(var o) = job.json else { return job.json }
    o["state"] = .string(state.rawValue)
    if let serverID = job.serverID ?? serverID { o[JobField.serverID.name] = .int(serverID) }
    return .object(o)
}

extension String {
    func trimmingSuffix(_ character: Character) -> Substring {
        var s = self[...]
        while s.last == character { s = s.dropLast() }
        return s
    }
}

/// Refuses arguments that are not valid UTF-8 (exit 65, naming the argument): Swift would turn their bytes into
/// U+FFFD, and a job would silently get a workdir or a parameter the user never typed.
public func refuseInvalidUTF8Arguments(_ program: String) throws {
    for i in 1..<Int(CommandLine.argc) {
        guard let raw = CommandLine.unsafeArgv[i] else { continue }
        if String(validatingCString: raw) == nil {
            let shown = String(decoding: UnsafeRawBufferPointer(start: raw, count: strlen(raw)), as: UTF8.self)
            printError("\(program): argument \(i) ('\(shown)') is not valid UTF-8")
            throw ExitCode(ExitStatus.dataError)
        }
    }
}

extension LineLogHandler.Format: ExpressibleByArgument {}
