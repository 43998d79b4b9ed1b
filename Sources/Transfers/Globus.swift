import Foundation
import Processes
import Spool
import Synchronization

/// `globus://ENDPOINT` locations, through the Globus CLI (`globus transfer --batch`, `globus task show`), with the
/// original's settings: sync level `size` and checksum verification unless the site says otherwise. The other end
/// is the site's own endpoint (`transfers.globus_endpoint_id`). A missing consent becomes one line saying which
/// command grants it.
public final class GlobusBackend: TransferBackend {
    let settings: SiteSettings.Transfers
    /// Each task's requests, to name the items a failed task failed.
    private let keys = Mutex<[String: [String]]>([:])

    public init(settings: SiteSettings.Transfers) { self.settings = settings }

    func command(_ arguments: [String], directory: String = "/") throws(SpoolError) -> SchedulerCommand.Result {
        try SchedulerCommand(timeoutSeconds: 120, directory: directory).runAllowingFailure(
            [settings.globusCLI] + arguments)
    }

    /// The one line to show for a CLI failure: the consent command when it asks for one.
    static func problem(_ result: SchedulerCommand.Result) -> String {
        let text = result.errors.isEmpty ? result.output : result.errors
        if text.contains("ConsentRequired") || text.contains("consent") {
            let line = text.split(separator: "\n").first { $0.contains("globus session consent") }
            return "Globus needs your consent: run "
                + (line.map { $0.trimmingCharacters(in: .whitespaces) } ?? "'globus session consent' as it says")
                + " as the site's user, then the transfers are retried"
        }
        let lines = text.split(separator: "\n").filter { !$0.allSatisfy(\.isWhitespace) }
        return "globus exited with status \(result.status)"
            + (lines.isEmpty ? "" : ": " + lines.suffix(3).joined(separator: " | "))
    }

    public func submit(_ batch: [TransferRequest], direction: TransferSlot.Direction, location: TransferLocation)
        throws(SpoolError) -> String
    {
        guard let mine = settings.globusEndpointID else {
            throw SpoolError(
                .invalidInput,
                "transfers.globus_endpoint_id is not set in settings.yml: the site's Globus endpoint is needed")
        }
        var lines = ""
        for request in batch {
            let local = try LocalCopy.checkedLocal(request, direction: direction)
            let (source, target) = direction == .in ? (request.remotePath, local) : (local, request.remotePath)
            lines += CommandTemplate.shellQuote(source) + " " + CommandTemplate.shellQuote(target)
            lines += request.recursive ? " --recursive\n" : "\n"
        }
        let (from, to) = direction == .in ? (location.host, mine) : (mine, location.host)
        let file = "/tmp/balsam-globus-batch.\(getpid()).\(UInt64(saturating: Posix.monotonicSeconds() * 1e6))"
        try Posix.createFile(file, Array(lines.utf8), sync: false)
        defer { Posix.unlink(file) }
        var arguments = [
            "transfer", from, to, "--batch", file, "--sync-level", settings.globusSyncLevel, "--label", "balsam",
            "--format", "json",
        ]
        if settings.globusVerifyChecksum { arguments.append("--verify-checksum") }
        let result = try command(arguments)
        guard result.status == 0 else { throw SpoolError(.unavailable, GlobusBackend.problem(result)) }
        guard let task = (try? JSONValue.parse(result.output))?.objectValue?["task_id"]?.stringValue else {
            throw SpoolError(.unavailable, "globus transfer printed no task_id: \(result.output.prefix(200))")
        }
        let id = "globus:" + task
        keys.withLock { $0[id] = batch.map(\.key) }
        return id
    }

    public func poll(_ taskID: String) -> TaskStatus? {
        guard let mine = keys.withLock({ $0[taskID] }) else { return nil }
        let task = String(taskID.dropFirst("globus:".count))
        guard let result = try? command(["task", "show", task, "--format", "json"]), result.status == 0,
            let o = (try? JSONValue.parse(result.output))?.objectValue
        else { return .active(["poll": .string("globus task show failed; asking again")]) }
        var info: [String: JSONValue] = [:]
        for key in ["status", "nice_status", "bytes_transferred", "files_transferred", "files"] where o[key] != nil {
            info[key] = o[key]
        }
        switch o["status"]?.stringValue {
        case "SUCCEEDED":
            keys.withLock { $0[taskID] = nil }
            return .finished(failures: [:])
        case "FAILED":
            keys.withLock { $0[taskID] = nil }
            let fatal = o["fatal_error"]?.objectValue
            let why =
                "Globus task \(task) failed: "
                + (fatal?["description"]?.stringValue ?? fatal?["code"]?.stringValue ?? o["nice_status"]?.stringValue
                    ?? "no reason given")
            return .finished(failures: Dictionary(uniqueKeysWithValues: mine.map { ($0, why) }))
        default:
            return .active(info)
        }
    }
}
