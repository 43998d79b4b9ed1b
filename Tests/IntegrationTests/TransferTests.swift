import Foundation
import Spool
import TestSupport
import Testing

#if canImport(Glibc)
    import Glibc
#endif

/// An sshd on a loopback port with throw-away keys (the second host of the tests), stopped with the object.
final class SSHServer {
    let dir: TempDir
    let port: Int
    var process: Spawned
    /// The ssh options a site needs to reach it as root.
    let options: [String]

    init() throws {
        dir = try TempDir()
        let p = dir.path
        for key in ["host", "client"] {
            let made = try run("/usr/bin/ssh-keygen", ["-q", "-t", "ed25519", "-N", "", "-f", "\(p)/\(key)"])
            guard made.status == 0 else { throw SpoolError(.io, "ssh-keygen: \(made.stderr)") }
        }
        try FileManager.default.copyItem(atPath: p + "/client.pub", toPath: p + "/authorized_keys")
        // sshd wants its privilege separation directory.
        try? FileManager.default.createDirectory(atPath: "/run/sshd", withIntermediateDirectories: true)
        var port = 0
        var started: Spawned?
        for _ in 0..<20 {
            port = Int.random(in: 20_000..<60_000)
            try """
            ListenAddress 127.0.0.1:\(port)
            HostKey \(p)/host
            AuthorizedKeysFile \(p)/authorized_keys
            PidFile \(p)/sshd.pid
            PermitRootLogin prohibit-password
            PasswordAuthentication no
            UsePAM no
            StrictModes no
            LogLevel INFO
            MaxStartups 100
            """.write(toFile: p + "/sshd_config", atomically: false, encoding: .utf8)
            let sshd = try Spawned(
                "/usr/sbin/sshd", ["-D", "-e", "-f", p + "/sshd_config"], stderr: .file(p + "/sshd.log"))
            let deadline = Date().addingTimeInterval(10)
            var listening = false
            // Only once this sshd says it listens (the port may be another program's: then it exits), and with
            // a short timeout: an ssh talking to something else than sshd would wait for ever.
            while Date() < deadline && sshd.isRunning {
                if ((try? read(p + "/sshd.log")) ?? "").contains("Server listening on 127.0.0.1 port \(port)") {
                    let probe = try? run(
                        "/usr/bin/ssh",
                        Self.clientOptions(p) + ["-o", "BatchMode=yes", "-p", "\(port)", "root@127.0.0.1", "true"],
                        timeout: 15)
                    if probe?.status == 0 {
                        listening = true
                        break
                    }
                }
                usleep(50_000)
            }
            if listening {
                started = sshd
                break
            }
            sshd.signal(SIGKILL)
        }
        guard let started else {
            throw SpoolError(.unavailable, "sshd did not start: \((try? read(p + "/sshd.log")) ?? "")")
        }
        self.port = port
        process = started
        options = Self.clientOptions(p)
    }

    /// Stops listening (an endpoint down): new connections are refused.
    func down() {
        process.signal(SIGKILL)
        process.waitUntilExit()
    }

    /// Listens again on the same port.
    func up() throws {
        let p = dir.path
        let log = p + "/sshd-again.log"
        process = try Spawned("/usr/sbin/sshd", ["-D", "-e", "-f", p + "/sshd_config"], stderr: .file(log))
        try waitUntil("sshd listens again", timeout: 20) {
            ((try? read(log)) ?? "").contains("Server listening on 127.0.0.1 port \(port)")
        }
    }

    static func clientOptions(_ p: String) -> [String] {
        [
            "-i", p + "/client", "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o",
            "LogLevel=ERROR",
        ]
    }

    /// Connections accepted so far.
    var connections: Int {
        ((try? read(dir.path + "/sshd.log")) ?? "").components(separatedBy: "Accepted publickey").count - 1
    }

    deinit { process.signal(SIGKILL) }
}

/// Stage-in and stage-out through the watcher's transfer service, with real copies and real rsync over ssh.
@Suite(.serialized) struct TransferTests {
    let dir: TempDir
    let site: Site
    /// The other side: a directory on this machine, reached directly or over ssh.
    let remote: String

    init() throws {
        dir = try TempDir()
        site = try makeSite(dir)
        remote = dir.path + "/remote"
        try FileManager.default.createDirectory(atPath: remote + "/in dir", withIntermediateDirectories: true)
        try FileManager.default.createDirectory(atPath: remote + "/tree/sub", withIntermediateDirectories: true)
        try "alpha\n".write(toFile: remote + "/in dir/a b;$x.txt", atomically: false, encoding: .utf8)
        try "leaf\n".write(toFile: remote + "/tree/sub/leaf.txt", atomically: false, encoding: .utf8)
        try Posix.makeDirectories(site.appsPath + "/stage")
        try """
        command_template: "cat input.txt > result.txt && cat tree/sub/leaf.txt >> result.txt"
        transfers:
          input: {required: true, direction: in, local_path: input.txt, description: "a file"}
          tree: {required: false, direction: in, local_path: tree, recursive: true}
          result: {required: true, direction: out, local_path: result.txt}
        """.write(toFile: site.appsPath + "/stage/app.yml", atomically: false, encoding: .utf8)
    }

    /// Adds `text` to settings.yml, after taking out the template's `transfers:` section (which it replaces).
    func configure(_ text: String) throws {
        var lines: [Substring] = []
        var inTransfers = false
        for line in try read(site.settingsPath).split(separator: "\n", omittingEmptySubsequences: false) {
            if line == "transfers:" {
                inTransfers = true
            } else if !inTransfers || !line.hasPrefix("  ") {
                inTransfers = false
                lines.append(line)
            }
        }
        try (lines.joined(separator: "\n") + "\n" + text + "\n").write(
            toFile: site.settingsPath, atomically: false, encoding: .utf8)
    }

    /// Points the site at `sshd` as location `dtn`, with `extra` keys of the transfers section; `multiplex`
    /// false turns off the connection sharing the site does by default (to count connections per batch).
    func configureRsync(_ sshd: SSHServer, _ extra: String = "", multiplex: Bool = true) throws {
        let options = (sshd.options + (multiplex ? [] : ["-o", "ControlMaster=no"])).map { "\"\($0)\"" }
            .joined(separator: ", ")
        try configure(
            "transfer_locations:\n  dtn: rsync://root@127.0.0.1:\(sshd.port)\(remote)\n"
                + "transfers:\n\(extra)  ssh_options: [\(options)]")
    }

    /// App `one`: `true`, with one required stage-in slot `input` into `localPath`.
    func oneSlotApp(localPath: String) throws {
        try Posix.makeDirectories(site.appsPath + "/one")
        try """
        command_template: "true"
        transfers:
          input: {required: true, direction: in, local_path: \(localPath)}
        """.write(toFile: site.appsPath + "/one/app.yml", atomically: false, encoding: .utf8)
    }

    /// A 300 MB file at the remote side (sparse there, whole where it arrives): a transfer long enough to act on.
    /// A job at `workdir` staging in a 300 MB file over rsync, and the watcher, once the transfer runs: big enough
    /// that what the test does next lands while rsync runs (sparse at the source, whole at the target).
    func bigTransferUnderWay(workdir: String) throws -> (SSHServer, [String], WatchProcess) {
        let sshd = try SSHServer()
        let big = remote + "/in dir/big.bin"
        _ = FileManager.default.createFile(atPath: big, contents: nil)
        truncate(big, 300 << 20)
        try configureRsync(sshd)
        try oneSlotApp(localPath: "big.bin")
        let ids = try submit([#"{"app":"one","workdir":"\#(workdir)","transfers":{"input":"dtn:/in dir/big.bin"}}"#])
        let watcher = try WatchProcess(site: site.root, logDirectory: dir.path)
        try waitUntil("the transfer is active", timeout: 30) {
            entries(site.stagingPath).contains { $0.hasPrefix("transfer.") }
        }
        return (sshd, ids, watcher)
    }

    func submit(_ lines: [String]) throws -> [String] {
        let result = try balsamSubmit(
            ["--from", "-"], site: site.root, stdin: Data(lines.joined(separator: "\n").utf8))
        #expect(result.status == 0, "\(result.stderr)")
        return result.stdout.split(separator: "\n").map(String.init)
    }

    func state(_ id: String) -> JobState? { try? Query(site: site).find(id).state }

    func shown(_ id: String) throws -> String { try balsam(["show", id, "--json"], site: site.root).stdout }

    func stageJob(_ name: String, alias: String) -> String {
        #"{"app":"stage","workdir":"\#(name)","transfers":{"input":"\#(alias):/in dir/a b;$x.txt","tree":"\#(alias):/tree","result":"\#(alias):/out/\#(name) result.txt"}}"#
    }

    /// Runs the watcher and a launcher until `done` holds for every job (or the deadline).
    func runSite(until done: @escaping () -> Bool, timeout: Double = 60) throws -> String {
        let watcher = try WatchProcess(site: site.root, logDirectory: dir.path)
        // Idle for long enough to outlast slow stage-ins on a loaded machine (a first ssh connection took 5 s in one
        // CI run, and a launcher idle for 3 s had left): stopped once the jobs are done.
        let launcher = try LauncherProcess(
            site: site.root, ranks: nil, ["--wall-time-min", "5", "--idle-timeout", "120"], logDirectory: dir.path)
        try waitUntil("the jobs are done", timeout: timeout) { done() }
        launcher.process.terminate()
        _ = launcher.wait(timeout: 30)
        #expect(watcher.terminate() == 0)
        return watcher.log
    }

    @Test func twoStageInsAndAStageOutThroughLocalCopies() throws {
        try configure("transfer_locations:\n  here: file://\(remote)")
        let ids = try submit([stageJob("j1", alias: "here")])
        let log = try runSite(until: { self.state(ids[0])?.isFinal == true })
        let first = try shown(ids[0])
        #expect(state(ids[0]) == .jobFinished, "\(first)\n\(log)")
        #expect(try read(remote + "/out/j1 result.txt") == "alpha\nleaf\n")
        #expect(try read(site.jobDirectory("j1") + "/tree/sub/leaf.txt") == "leaf\n")
        let listed = try balsam(["transfer", "ls", "--json"], site: site.root).stdout
        #expect(listed.components(separatedBy: #""state":"done""#).count - 1 == 3, "\(listed)")
        #expect(!entries(site.jobDirectory("j1")).contains { $0.hasPrefix(".balsam-partial") })
    }

    /// The user's way out of a failed stage-in (issue 35, item 3): the file is put in place, `balsam retry`, and
    /// the job is staged in, not failed again at once with the old error; a watcher restarted after it agrees.
    @Test func aRetryAfterAFailedStageInFetchesAgain() throws {
        try configure("transfer_locations:\n  here: file://\(remote)\ntransfers:\n  on_transfer_error: {retries: 0}")
        try oneSlotApp(localPath: "mesh.dat")
        let ids = try submit([#"{"app":"one","workdir":"m/3","transfers":{"input":"here:/meshes/missing.dat"}}"#])
        var watcher = try WatchProcess(site: site.root, logDirectory: dir.path)
        try waitUntil("the stage-in fails", timeout: 60) { self.state(ids[0]) == .failed }
        try FileManager.default.createDirectory(atPath: remote + "/meshes", withIntermediateDirectories: true)
        try "mesh\n".write(toFile: remote + "/meshes/missing.dat", atomically: false, encoding: .utf8)
        let retried = try balsam(["retry", "-w", "m/3"], site: site.root)
        #expect(retried.status == 0, "\(retried.stderr)")
        try waitUntil("the job is staged in", timeout: 60) { self.state(ids[0]) == .preprocessed }
        #expect(state(ids[0]) == .preprocessed, "\(retried.stdout)\n\(watcher.log)")
        #expect(try read(site.jobDirectory("m/3") + "/mesh.dat") == "mesh\n")
        let item = try #require(try TransferItem.load(directory: site.jobDirectory("m/3"))?.first)
        #expect(item.state == .done && item.attempts == 0 && item.info["error"] == nil, "\(item)")
        #expect(watcher.terminate() == 0)
        watcher = try WatchProcess(site: site.root, ["--once"], logDirectory: dir.path)
        #expect(watcher.process.waitUntilExit() == 0)
        #expect(state(ids[0]) == .preprocessed, "\(watcher.log)")
    }

    @Test func rsyncOverSSHMovesTheDataAndAMissingFileFailsTheJobAfterItsRetries() throws {
        let sshd = try SSHServer()
        try configureRsync(sshd, "  on_transfer_error: {retries: 1}\n")
        let before = sshd.connections
        let ids = try submit([
            stageJob("r1", alias: "dtn"),
            #"{"app":"stage","workdir":"r2","transfers":{"input":"dtn:/in dir/missing.txt","result":"dtn:/out/r2.txt"}}"#,
        ])
        let log = try runSite(until: { ids.allSatisfy { self.state($0)?.isFinal == true } })
        let first = try shown(ids[0])
        #expect(state(ids[0]) == .jobFinished, "\(first)\n\(log)")
        #expect(try read(remote + "/out/r1 result.txt") == "alpha\nleaf\n")
        #expect(state(ids[1]) == .failed)
        let reason = try shown(ids[1])
        #expect(reason.contains("stage-in of slot input") && reason.contains("after 2 attempt(s)"), "\(reason)")
        #expect(reason.contains("missing.txt") && !reason.contains("rsync: rsync:"), "\(reason)")
        // Its stage-out will not run, and says so (issue 35, item 10).
        let items = try TransferItem.load(directory: site.jobDirectory("r2")) ?? []
        #expect(items.first { $0.direction == .out }?.state == .skipped, "\(items)")
        // No partial file left looking whole, on either side.
        #expect(!exists(site.jobDirectory("r2") + "/input.txt"))
        // Stage-ins, the retry and the stage-out shared one ssh connection (two if the first two raced to make it).
        let made = sshd.connections - before
        #expect(made >= 1 && made <= 2, "\(made) ssh connections for four or more rsyncs to one host")
    }

    @Test func aThousandJobsGoInBatchesNotAThousandConnections() throws {
        let sshd = try SSHServer()
        for i in 0..<1000 {
            try "\(i)\n".write(toFile: remote + "/in dir/f\(i)", atomically: false, encoding: .utf8)
        }
        try configureRsync(sshd, "  transfer_batch_size: 250\n", multiplex: false)
        try oneSlotApp(localPath: "input.txt")
        let before = sshd.connections
        let ids = try submit(
            (0..<1000).map { #"{"app":"one","workdir":"b/\#($0)","transfers":{"input":"dtn:/in dir/f\#($0)"}}"# })
        let watcher = try WatchProcess(site: site.root, logDirectory: dir.path)
        try waitUntil("every job is staged in", timeout: 120) {
            (try? Posix.listDirectory(site.activePath(.preprocessed)).count) == 1000
        }
        #expect(watcher.terminate() == 0)
        #expect(try read(site.jobDirectory("b/999") + "/input.txt") == "999\n")
        let made = sshd.connections - before
        #expect(made >= 4 && made <= 8, "\(made) ssh connections for 1,000 files in batches of 250")
        #expect(state(ids[0]) == .preprocessed)
    }

    @Test func aWatcherKilledDuringABatchLosesNothingAndMarksNothingDoneWithoutItsData() throws {
        let (sshd, ids, watcher) = try bigTransferUnderWay(workdir: "k")
        defer { withExtendedLifetime(sshd) {} }
        watcher.kill9()
        let items = try TransferItem.load(directory: site.jobDirectory("k")) ?? []
        #expect(items.first?.state != .done)
        #expect(!exists(site.jobDirectory("k") + "/big.bin"), "no partial file under the real name")
        #expect(state(ids[0]) == .ready)
        let again = try WatchProcess(site: site.root, logDirectory: dir.path)
        try waitUntil("the job is staged in", timeout: 120) { self.state(ids[0]) == .preprocessed }
        #expect(again.terminate() == 0)
        let size = (try FileManager.default.attributesOfItem(atPath: site.jobDirectory("k") + "/big.bin"))[.size]
        #expect(size as? Int == 300 << 20)
    }

    /// The command lines of the processes working in the site's staging directory (the rsyncs of transfers, and
    /// their ssh): with no watcher running, there should be none.
    func transferProcesses() -> [String] {
        ((try? Posix.listDirectory("/proc")) ?? []).compactMap { name -> String? in
            guard Int32(name) != nil,
                let cwd = try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/\(name)/cwd"),
                cwd.hasPrefix(site.stagingPath + "/"),
                let command = try? Posix.readFile("/proc/\(name)/cmdline", limit: 4096)
            else { return nil }
            return command.split(separator: 0).map { String(decoding: $0, as: UTF8.self) }.joined(separator: " ")
        }
    }

    /// The rsync endpoint down for a while (connections refused): its jobs' stage-ins are tried again with a
    /// backoff, without spending their retries, and go through once it is back; the items say ssh's own words
    /// meanwhile. Down for longer than `unreachable_timeout_sec`, the job fails saying for how long and why.
    @Test func anEndpointDownForAWhileFailsNothingAndSaysWhy() throws {
        let sshd = try SSHServer()
        try configureRsync(
            sshd, "  on_transfer_error: {retries: 0, unreachable_timeout_sec: 60}\n", multiplex: false)
        try oneSlotApp(localPath: "input.txt")
        sshd.down()
        let ids = try submit(
            (0..<4).map { #"{"app":"one","workdir":"u/\#($0)","transfers":{"input":"dtn:/in dir/a b;$x.txt"}}"# })
        let watcher = try WatchProcess(site: site.root, logDirectory: dir.path)
        try waitUntil("a stage-in has met the refused connection", timeout: 60) {
            ((try? TransferItem.load(directory: site.jobDirectory("u/0"))) ?? nil)?.first?.info["error"] != nil
        }
        let error = try #require(try TransferItem.load(directory: site.jobDirectory("u/0"))?.first?.info["error"])
        #expect(error.stringValue?.contains("Connection refused") == true, "ssh's own words: \(error)")
        // Down for several tries (1, 2, 4 s apart): nothing fails, whatever retries says.
        usleep(5_000_000)
        #expect(ids.allSatisfy { state($0) == .ready }, "\(ids.map { state($0) as Any })")
        try sshd.up()
        try waitUntil("every job is staged in once the endpoint is back", timeout: 90) {
            ids.allSatisfy { self.state($0) == .preprocessed }
        }
        #expect(try read(site.jobDirectory("u/3") + "/input.txt") == "alpha\n")

        // Down for good, with a short limit: the job fails, saying for how long and why.
        try read(site.settingsPath).replacingOccurrences(
            of: "unreachable_timeout_sec: 60", with: "unreachable_timeout_sec: 2"
        )
        .write(toFile: site.settingsPath, atomically: true, encoding: .utf8)
        sshd.down()
        let late = try submit([#"{"app":"one","workdir":"u/late","transfers":{"input":"dtn:/in dir/a b;$x.txt"}}"#])
        try waitUntil("the job fails", timeout: 60) { self.state(late[0]) == .failed }
        let reason = try shown(late[0])
        #expect(reason.contains("unreachable for") && reason.contains("Connection refused"), "\(reason)")
        #expect(watcher.terminate() == 0)
    }

    /// What a dead balsam process's children left running (found by the variable they inherit) ends when the next
    /// watcher starts; what a live one's run is left alone. Run as a uid of its own where it can (root, as in CI):
    /// every watcher ends its own user's orphans on the host, so another test's watcher starting at the same
    /// moment would otherwise end this one's first (it did, in CI); and another user's watcher leaves them alone.
    @Test func theNextWatcherEndsWhatADeadOnesChildrenLeftRunning() throws {
        let user: uid_t? = getuid() == 0 ? 50_000 + uid_t.random(in: 0..<10_000) : nil
        if let user { #expect(chownTree(dir.path, to: user)) }
        func sleeper(_ stamp: String) throws -> Spawned {
            var environment = ProcessInfo.processInfo.environment
            environment[Posix.parentVariable] = stamp
            let (program, arguments) = asUser(user, ["/bin/sleep", "300"])
            return try Spawned(program, arguments, environment: environment)
        }
        // Pid 1 did not start at tick 1: its "parent" is gone. This test process is alive.
        let orphan = try sleeper("\(Posix.hostName()).1-1")
        let kept = try sleeper(Posix.parentStamp)
        defer { kept.signal(SIGKILL) }
        let watcher = try WatchProcess(
            site: site.root, logDirectory: dir.path, env: ["HOME": dir.path], user: user)
        try waitUntil("the watcher says it ended the orphan", timeout: 30) {
            watcher.log.contains("recovery: ended \(orphan.processIdentifier) (sleep)")
        }
        #expect(orphan.waitUntilExit() == SIGKILL)
        #expect(kept.isRunning)
        #expect(watcher.terminate() == 0, "\(watcher.log)")
    }

    /// Watcher SIGKILLs at random moments of rsync stage-ins (batches of four 128 MB files): no rsync or ssh
    /// outlives its watcher, the next watcher fetches each file once more and whole, and nothing is left in the
    /// staging directory for fsck to find.
    @Test func watcherKillsDuringRsyncStageInsLeaveNoOrphanAndNoLeftover() throws {
        let sshd = try SSHServer()
        // Without ssh's shared connection: its master is kept on purpose, and would count as left behind.
        try configureRsync(sshd, "  transfer_batch_size: 4\n", multiplex: false)
        try oneSlotApp(localPath: "data.bin")
        var lines: [String] = []
        for i in 0..<8 {
            let path = remote + "/in dir/d\(i).bin"
            _ = FileManager.default.createFile(atPath: path, contents: nil)
            truncate(path, 128 << 20)
            lines.append(#"{"app":"one","workdir":"o/\#(i)","transfers":{"input":"dtn:/in dir/d\#(i).bin"}}"#)
        }
        let ids = try submit(lines)
        let seed = UInt64(UInt32(truncatingIfNeeded: time(nil)))
        print("rsync kills: seed \(seed)")
        var rng = SplitMix(seed: seed)
        var watcher = try WatchProcess(site: site.root, logDirectory: dir.path)
        var kills = 0
        for _ in 0..<6 {
            try waitUntil("a transfer runs", timeout: 60) {
                entries(site.stagingPath).contains {
                    $0.hasPrefix("transfer.") && $0.contains(".\(watcher.process.processIdentifier)-")
                }
                    || ids.allSatisfy { self.state($0) == .preprocessed }
            }
            if ids.allSatisfy({ self.state($0) == .preprocessed }) { break }
            usleep(UInt32(rng.next() % 800_000))
            watcher.kill9()
            kills += 1
            // At once (a transfer left running takes several seconds to end on its own).
            try waitUntil("nothing the killed watcher started runs", timeout: 2) { transferProcesses().isEmpty }
            watcher = try WatchProcess(site: site.root, logDirectory: dir.path)
        }
        try waitUntil("every job is staged in", timeout: 180) { ids.allSatisfy { self.state($0) == .preprocessed } }
        try waitUntil("the dead watchers' staging is gone", timeout: 60) {
            !entries(site.stagingPath).contains { $0.hasPrefix("transfer.") }
        }
        #expect(watcher.terminate() == 0)
        for i in 0..<8 {
            let size = try FileManager.default.attributesOfItem(atPath: site.jobDirectory("o/\(i)") + "/data.bin")[
                .size]
            #expect(size as? Int == 128 << 20, "o/\(i)")
        }
        let fsck = try balsam(["fsck"], site: site.root)
        #expect(fsck.status == 0, "\(fsck.stdout)\(fsck.stderr)")
        #expect(kills >= 1)
        withExtendedLifetime(sshd) {}
    }

    @Test func aJobKilledWhileItsTransferRunsStaysFailed() throws {
        let (sshd, ids, watcher) = try bigTransferUnderWay(workdir: "kj")
        defer { withExtendedLifetime(sshd) {} }
        #expect(try balsam(["kill", ids[0]], site: site.root).status == 0)
        // The transfer ends after (its staging tree goes); the job stays as the user left it.
        try waitUntil("the transfer's task ends", timeout: 120) {
            !entries(site.stagingPath).contains { $0.hasPrefix("transfer.") }
        }
        #expect(state(ids[0]) == .failed)
        #expect(watcher.terminate() == 0)
        #expect(state(ids[0]) == .failed)
    }

    @Test func globusThroughItsCLIAndAConsentErrorAsOneLine() throws {
        // No Globus service is reachable here: a `globus` that answers with the CLI's documented JSON.
        let fake = dir.path + "/globus"
        try """
        #!/bin/sh
        log=\(dir.path)/globus.log
        echo "$@" >> "$log"
        case "$1 $2" in
        "transfer "*)
            if [ -e \(dir.path)/consent ]; then
                echo "The resource you are trying to access requires you to consent to additional access." >&2
                echo "Please run:" >&2
                echo "  globus session consent 'urn:globus:auth:scope:transfer.api.globus.org:all[*https://auth.globus.org/scopes/EP/data_access]'" >&2
                echo "ConsentRequired" >&2
                exit 4
            fi
            while [ "$1" != "--batch" ]; do shift; done
            cat "$2" >> \(dir.path)/batches
            echo '{"DATA_TYPE": "transfer_result", "code": "Accepted", "task_id": "3fa85f64-5717-4562-b3fc-2c963f66afa6"}' ;;
        "task show")
            n=$(grep -c "task show" "$log")
            if [ "$n" -lt 2 ]; then echo '{"status": "ACTIVE", "nice_status": "OK", "bytes_transferred": 10}'
            else echo '{"status": "SUCCEEDED", "nice_status": null, "bytes_transferred": 20, "fatal_error": null}'; fi ;;
        *) exit 2 ;;
        esac
        """.write(toFile: fake, atomically: false, encoding: .utf8)
        chmod(fake, 0o755)
        try configure(
            "transfer_locations:\n  theta: globus://08925f04-569f-11e7-bef8-22000b9a448b\n"
                + "transfers:\n  globus_cli: \(fake)\n  globus_endpoint_id: 9d6d994a-6d04-11e5-ba46-22000b92c6ec\n"
                + "  on_transfer_error: {retries: 0}")
        try oneSlotApp(localPath: "input.dat")
        let ids = try submit([#"{"app":"one","workdir":"g","transfers":{"input":"theta:/proj/a b.dat"}}"#])
        let watcher = try WatchProcess(site: site.root, logDirectory: dir.path)
        try waitUntil("the job is staged in", timeout: 30) { self.state(ids[0]) == .preprocessed }
        let calls = try read(dir.path + "/globus.log")
        #expect(calls.contains("transfer 08925f04-569f-11e7-bef8-22000b9a448b 9d6d994a-6d04-11e5-ba46-22000b92c6ec"))
        #expect(calls.contains("--sync-level size") && calls.contains("--verify-checksum"), "\(calls)")
        #expect(calls.contains("task show 3fa85f64-5717-4562-b3fc-2c963f66afa6"))
        #expect(try read(dir.path + "/batches").contains("'/proj/a b.dat' \(site.jobDirectory("g"))/input.dat"))

        try "".write(toFile: dir.path + "/consent", atomically: false, encoding: .utf8)
        let refused = try submit([#"{"app":"one","workdir":"g2","transfers":{"input":"theta:/proj/x.dat"}}"#])
        try waitUntil("the job fails", timeout: 30) { self.state(refused[0]) == .failed }
        #expect(watcher.terminate() == 0)
        let reason = try shown(refused[0])
        #expect(reason.contains("Globus needs your consent: run globus session consent"), "\(reason)")
    }

    @Test func slotsAndPathsThatLeaveTheJobDirectoryAreRefused() throws {
        try configure("transfer_locations:\n  here: file://\(remote)")
        try Posix.makeDirectories(site.appsPath + "/bad")
        try """
        command_template: "true"
        transfers:
          input: {required: true, direction: in, local_path: ../escape.txt}
        """.write(toFile: site.appsPath + "/bad/app.yml", atomically: false, encoding: .utf8)
        let bad = try balsamSubmit(
            ["--from", "-"], site: site.root,
            stdin: Data(#"{"app":"bad","workdir":"x","transfers":{"input":"here:/a"}}"#.utf8))
        #expect(bad.status != 0 && bad.stderr.contains("must not contain '..'"), "\(bad.stderr)")
        let unknown = try balsamSubmit(
            ["--from", "-"], site: site.root,
            stdin: Data(
                #"{"app":"stage","workdir":"y","transfers":{"input":"nowhere:/a","result":"here:/r"}}"#.utf8))
        #expect(unknown.stderr.contains("no transfer location 'nowhere'"), "\(unknown.stderr)")
        let slot = try balsamSubmit(
            ["--from", "-"], site: site.root,
            stdin: Data(#"{"app":"stage","workdir":"z","transfers":{"inptu":"here:/a","result":"here:/r"}}"#.utf8))
        #expect(slot.stderr.contains("has no transfer slot 'inptu'"), "\(slot.stderr)")

        // A stage-out whose file is a link out of the job's directory is not followed.
        try Posix.makeDirectories(site.appsPath + "/leak")
        try """
        command_template: "ln -s /etc/hostname result.txt"
        transfers:
          result: {required: true, direction: out, local_path: result.txt}
        """.write(toFile: site.appsPath + "/leak/app.yml", atomically: false, encoding: .utf8)
        let ids = try submit([#"{"app":"leak","workdir":"l","transfers":{"result":"here:/out/leak.txt"}}"#])
        _ = try runSite(until: { self.state(ids[0])?.isFinal == true })
        #expect(state(ids[0]) == .failed)
        #expect(try shown(ids[0]).contains("leads out of the job's directory"))
        #expect(!exists(remote + "/out/leak.txt"))
    }
}

/// Gives `path` and everything under it to `uid` (and the group of the same number); false if any of it failed.
func chownTree(_ path: String, to uid: uid_t) -> Bool {
    var ok = lchown(path, uid, uid) == 0
    for case let name as String in FileManager.default.enumerator(atPath: path) ?? .init() {
        ok = lchown(path + "/" + name, uid, uid) == 0 && ok
    }
    return ok
}
