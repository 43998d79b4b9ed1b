import Foundation
import Spool
import TestSupport
import Testing

#if canImport(Glibc)
    import Glibc
#endif

/// The MPI the launcher tests run under: Open MPI's `mpirun`, or, with `BALSAM_TEST_MPI=mpich`, MPICH's
/// `mpiexec.mpich`. The launcher is the same binary (built beside the tests): it opens the MPI that started it.
enum TestMPI {
    static let isMPICH = ProcessInfo.processInfo.environment["BALSAM_TEST_MPI"] == "mpich"

    /// The command that starts `ranks` ranks of `launcher` on this machine (each standing for a node).
    static func command(ranks: Int, _ launcher: [String], environment: inout [String: String]) -> [String] {
        if isMPICH { return ["/usr/bin/mpiexec.mpich", "-n", String(ranks), "-ppn", "1"] + launcher }
        // Root in CI; no ssh: every rank is local.
        environment["OMPI_ALLOW_RUN_AS_ROOT"] = "1"
        environment["OMPI_ALLOW_RUN_AS_ROOT_CONFIRM"] = "1"
        environment["OMPI_MCA_plm_rsh_agent"] = "false"
        return ["/usr/bin/mpirun", "--oversubscribe", "--bind-to", "none", "-n", String(ranks)] + launcher
    }

    /// The site's launch template for multi-node jobs, and the shell's text for a rank's number and the count.
    static var multiNodeTemplate: String {
        isMPICH
            ? "mpiexec.mpich -n {{ ranks }} -hosts {{ hosts }} {{ command }}"
            : "mpirun --oversubscribe --bind-to none -n {{ ranks }} --host {{ host_slots }} {{ env_flags }} {{ command }}"
    }
    static var rankAndSize: String {
        isMPICH ? "$PMI_RANK of $PMI_SIZE" : "$OMPI_COMM_WORLD_RANK of $OMPI_COMM_WORLD_SIZE"
    }
}

/// `balsam-launcher`, run for real: under MPI (several ranks on this machine stand for several nodes, see
/// `TestMPI`) or alone (one rank, the local machine).
final class LauncherProcess {
    let process: Spawned
    let logPath: String

    init(site: String, ranks: Int?, _ args: [String] = [], logDirectory: String) throws {
        logPath = logDirectory + "/launcher-\(UUID().uuidString.prefix(6)).log"
        let launcher = [binDirectory + "/balsam-launcher", "--site", site] + args
        var environment = ProcessInfo.processInfo.environment
        environment["BALSAM_SITE"] = nil
        let program: String
        let arguments: [String]
        if let ranks {
            let command = TestMPI.command(ranks: ranks, launcher, environment: &environment)
            program = command[0]
            arguments = Array(command.dropFirst())
        } else {
            program = launcher[0]
            arguments = Array(launcher.dropFirst())
        }
        process = try Spawned(
            program, arguments, environment: environment, stdout: .file(logPath), stderr: .file(logPath))
    }

    var log: String { (try? String(contentsOfFile: logPath, encoding: .utf8)) ?? "" }

    /// Waits for the launcher to exit; its status, or nil (and the test fails) after `timeout` seconds.
    func wait(timeout: Double = 60) -> Int32? {
        if let status = process.wait(timeout: timeout) { return status }
        Issue.record("the launcher did not exit within \(timeout) s; log:\n\(log)")
        process.signal(SIGKILL)
        process.waitUntilExit()
        return nil
    }
}

/// One line of the event log.
struct LoggedEvent {
    var job: String
    var from: JobState
    var to: JobState
    var time: String
    var data: [String: JSONValue]
}

func loggedEvents(_ site: Site) throws -> [LoggedEvent] {
    try read(site.eventsPath + "/" + Posix.hostName() + ".jsonl").split(separator: "\n").compactMap { line in
        guard case .object(let o) = try JSONValue.parse(String(line)), let job = o["job"]?.stringValue,
            let from = o["from"]?.stringValue.flatMap(JobState.init(rawValue:)),
            let to = o["to"]?.stringValue.flatMap(JobState.init(rawValue:)), let time = o["t"]?.stringValue
        else { return nil }
        return LoggedEvent(job: job, from: from, to: to, time: time, data: o["data"]?.objectValue ?? [:])
    }
}

/// A job's run: where the event log says it was placed, and when its command says it started and ended (the
/// commands of these tests print `start NS` and `end NS` from the clock; the launcher may record one job's end
/// after it started the next, so event times would overlap where the processes did not).
struct Run {
    var job: String
    var nodes: [Int]
    var gpus: [String]
    var start: Int
    var end: Int

    func overlaps(_ other: Run) -> Bool { start < other.end && other.start < end }
}

/// Wraps a command so that it prints its start and end times (nanoseconds) into job.out.
func timed(_ command: String) -> String { "echo start $(date +%s%N); \(command); echo end $(date +%s%N)" }

func runs(_ site: Site) throws -> [Run] {
    var placed: [String: (nodes: [Int], gpus: [String])] = [:]
    for e in try loggedEvents(site) where e.to == .running {
        var nodes: [Int] = []
        if case .array(let list)? = e.data["nodes"] { nodes = list.compactMap(\.intValue) }
        placed[e.job] = (nodes, e.data["gpus"]?.stringValue?.split(separator: ",").map(String.init) ?? [])
    }
    return try placed.map { id, where_ in
        let out = try read(site.jobDirectory(try Query(site: site).find(id).workdir) + "/job.out")
        func time(_ word: String) -> Int {
            out.split(separator: "\n").first { $0.hasPrefix(word + " ") }.flatMap { Int($0.dropFirst(word.count + 1)) }
                ?? 0
        }
        return Run(job: id, nodes: where_.nodes, gpus: where_.gpus, start: time("start"), end: time("end"))
    }
}

@Suite(.serialized) struct LauncherTests {
    let dir: TempDir
    let site: Site

    init() throws {
        dir = try TempDir()
        site = try makeSite(dir)
    }

    /// Writes settings.yml: the launcher keys given, the rest defaults.
    func configure(_ launcher: String, processing: String = "") throws {
        try "launcher:\n\(launcher)\n\(processing)".write(toFile: site.settingsPath, atomically: false, encoding: .utf8)
    }

    func app(_ name: String, _ command: String) throws {
        try site.createApp(try App(name: name, commandTemplate: command))
    }

    /// Submits jobs (JSON lines) and makes them runnable the way the watcher does.
    @discardableResult
    func submit(_ lines: [String]) throws -> [String] {
        var submission = Submission(site: site)
        let ids = try submission.accept(Array(lines.joined(separator: "\n").utf8)).accepted.map(\.job.id)
        var ingest = Ingest(site: site, actor: "test")
        ingest.advance = { _, state in state == .ready ? [(.stagedIn, nil), (.preprocessed, nil)] : [] }
        _ = try ingest.run()
        return ids
    }

    func state(_ id: String) -> JobState? { try? Query(site: site).find(id).state }

    /// Waits until the job in `workdir`, whose command writes its pid to `pid` first, runs; its pid.
    func runningPID(_ workdir: String) throws -> Int32 {
        let pidFile = site.jobDirectory(workdir) + "/pid"
        try waitUntil("the job runs") { (try? read(pidFile))?.hasSuffix("\n") ?? false }
        return try #require(Int32(try read(pidFile).trimmingCharacters(in: .whitespacesAndNewlines)))
    }

    /// One job (`echo $$ > pid; exec sleep 60` in `workdir`) running under a single-rank launcher that does not go
    /// idle: its id, the launcher, and the job's pid.
    func longJobRunning(_ workdir: String) throws -> (id: String, launcher: LauncherProcess, pid: Int32) {
        try app("long", "echo $$ > pid; exec sleep 60")
        let ids = try submit([#"{"app":"long","workdir":"\#(workdir)"}"#])
        let launcher = try LauncherProcess(
            site: site.root, ranks: nil, ["--wall-time-min", "5", "--idle-timeout", "60"], logDirectory: dir.path)
        return (ids[0], launcher, try runningPID(workdir))
    }

    @Test func aLauncherThatLostItsLeaseStopsItsJobsAndExits() throws {
        try configure("  lease_timeout_sec: 1")
        let (id, launcher, jobPID) = try longJobRunning("l")
        kill(launcher.process.processIdentifier, SIGSTOP)
        defer { kill(launcher.process.processIdentifier, SIGCONT) }
        // Stopped past its lease: the watcher's pass reaps the lease and takes the job back.
        try waitUntil("the lease is reaped", timeout: 30) {
            _ = try run(binDirectory + "/balsam-watch", ["--site", site.root, "--once"])
            return try Lease.all(site).isEmpty
        }
        let takenBack = try #require(state(id))
        kill(launcher.process.processIdentifier, SIGCONT)
        let status = launcher.wait(timeout: 30)
        #expect(status != nil && status != 0, "it says it did not end well: \(launcher.log)")
        #expect(launcher.log.contains("lost the lease"), "\(launcher.log)")
        try waitUntil("the job's process is stopped", timeout: 15) { kill(jobPID, 0) != 0 }
        #expect(state(id) == takenBack, "the launcher recorded nothing for a job no longer its own")
    }

    @Test func aJobAskingForMoreCPUsThanANodeHasIsFailedWithTheReasonOrTakesTheWholeNode() throws {
        try configure("  cpus_per_node: 2")
        try app("quick", "echo ran")
        let ids = try submit([#"{"app":"quick","workdir":"wide","ranks_per_node":3,"threads_per_rank":2}"#])
        var launcher = try LauncherProcess(
            site: site.root, ranks: nil, ["--wall-time-min", "5", "--idle-timeout", "1"], logDirectory: dir.path)
        #expect(launcher.wait() == 0, "\(launcher.log)")
        #expect(state(ids[0]) == .failed)
        let reason = try balsam(["show", ids[0], "--json"], site: site.root).stdout
        #expect(reason.contains("asks for 6 CPUs per node") && reason.contains("launcher.oversubscribe"), "\(reason)")

        try configure("  cpus_per_node: 2\n  oversubscribe: true")
        let more = try submit([#"{"app":"quick","workdir":"wide2","threads_per_rank":3}"#])
        launcher = try LauncherProcess(
            site: site.root, ranks: nil, ["--wall-time-min", "5", "--idle-timeout", "1"], logDirectory: dir.path)
        #expect(launcher.wait() == 0, "\(launcher.log)")
        #expect(state(more[0]) == .runDone, "\(launcher.log)")
    }

    /// With the default python.executable (`python3`, found on PATH as a shell would), the warm worker starts;
    /// its run fails for the missing library, saying so.
    /// One job of a Python app (a class that is no class: the runner's load fails) run by a launcher alone,
    /// with `python` as the site's python.executable; the job's ID and the launcher, once it has ended.
    func runPythonJob(python: String) throws -> (String, LauncherProcess) {
        try configure("  cpus_per_node: 2\npython:\n  executable: \(python)")
        try Posix.makeDirectories(site.appsPath + "/Py")
        try "python_app: true\nparameters: {x: {required: true}}\n".write(
            toFile: site.appsPath + "/Py/app.yml", atomically: false, encoding: .utf8)
        try "gAQu\n".write(toFile: site.appsPath + "/Py/class.b64", atomically: false, encoding: .utf8)
        let ids = try submit([#"{"app":"Py","workdir":"p","parameters":{"x":1}}"#])
        let launcher = try LauncherProcess(
            site: site.root, ranks: nil, ["--wall-time-min", "5", "--idle-timeout", "1"], logDirectory: dir.path)
        #expect(launcher.wait() == 0, "\(launcher.log)")
        #expect(state(ids[0]) == .runError)
        return (ids[0], launcher)
    }

    @Test func aPythonAppWhoseSitePythonLacksItsLibrariesFailsSayingWhatIsMissing() throws {
        _ = try runPythonJob(python: "python3")
        let events = try read(site.eventsPath + "/" + entries(site.eventsPath)[0])
        #expect(events.contains("lacks dill"), "\(events)")
        #expect(try read(PythonApps.runnerPath(site)).contains("def serve("), "the launcher wrote the runner")
    }

    /// A python.executable that is not there: the launcher says so at start, and each job's reason names the
    /// setting (exit status 127, as a shell's "not found").
    @Test func aMissingSitePythonIsNamedAtStartAndInTheJobsReason() throws {
        let (id, launcher) = try runPythonJob(python: "no-such-python3")
        #expect(launcher.log.contains("python.executable 'no-such-python3' (settings.yml) is not on PATH"))
        let shown = try balsam(["show", id, "--json"], site: site.root).stdout
        let reason = try JSONValue.parse(shown).objectValue?["state_reason"]?.stringValue ?? ""
        #expect(reason.hasPrefix("exit status 127: ") && reason.contains("python.executable"), "\(reason)")
    }

    /// A launcher started by hand (no batch job) logs its time on its nodes; the utilization report counts
    /// those nodes as held while it ran, so "available" is not 0 under "busy".
    @Test func aLauncherStartedByHandCountsItsNodesAsHeld() throws {
        try configure("  cpus_per_node: 2")
        try app("nap", "sleep 0.3")
        _ = try submit((0..<4).map { #"{"app":"nap","workdir":"n/\#($0)"}"# })
        let launcher = try LauncherProcess(
            site: site.root, ranks: nil, ["--wall-time-min", "5", "--idle-timeout", "1"], logDirectory: dir.path)
        #expect(launcher.wait() == 0, "\(launcher.log)")
        let log = try read(LauncherSession.logPath(site))
        let session = try #require(try JSONValue.parse(log.trimmingCharacters(in: .newlines)).objectValue, "\(log)")
        #expect(session["nodes"]?.intValue == 1 && session["batch_job"] == nil && session["end"]?.stringValue != nil)
        let report = try balsam(["report", "utilization", "--json", "--bin", "1"], site: site.root)
        let bins = try JSONValue.parse(report.stdout).objectValue?["bins"]?.arrayValue ?? []
        let pairs = bins.compactMap { $0.objectValue }.map {
            ($0["busy"]?.doubleValue ?? -1, $0["available"]?.doubleValue ?? -1)
        }
        #expect(!pairs.isEmpty && pairs.contains { $0.0 > 0 }, "\(report.stdout)")
        // (Within the clocks' milliseconds: a run's times and its lease's are read apart.)
        #expect(pairs.allSatisfy { $0.1 > 0 && $0.0 <= $0.1 + 0.01 }, "busy under available: \(pairs)")
    }

    @Test func aJobWhoseDirectoryWasDeletedIsFailedNotRetriedForEver() throws {
        try app("quick", "true")
        let ids = try submit([#"{"app":"quick","workdir":"gone"}"#, #"{"app":"quick","workdir":"kept"}"#])
        try FileManager.default.removeItem(atPath: site.jobDirectory("gone"))
        let launcher = try LauncherProcess(
            site: site.root, ranks: nil, ["--wall-time-min", "5", "--idle-timeout", "1"], logDirectory: dir.path)
        #expect(launcher.wait() == 0, "\(launcher.log)")
        #expect(state(ids[0]) == .failed && state(ids[1]) == .runDone)
        #expect(try Lease.all(site).isEmpty)
        #expect(try read(site.rejectedPath + "/\(ids[0]).entry.reason").contains("data/gone is gone"))
        #expect(try loggedEvents(site).contains { $0.job == ids[0] && $0.to == .failed })
        #expect(launcher.log.components(separatedBy: "is gone").count == 2, "said once: \(launcher.log)")
        let show = try balsam(["show", ids[0]], site: site.root)
        #expect(show.status == 66 && show.stderr.contains("FAILED; its directory is gone"), "\(show.stderr)")
    }

    @Test func fsckReportsAndFailsAWaitingJobWhoseDirectoryIsGone() throws {
        try app("quick", "true")
        let ids = try submit([#"{"app":"quick","workdir":"vanished"}"#])
        try FileManager.default.moveItem(
            atPath: site.jobDirectory("vanished"), toPath: site.jobDirectory("renamed-by-hand"))
        let check = try balsam(["fsck"], site: site.root)
        #expect(check.status == 65 && check.stdout.contains("directory is gone"), "\(check.stdout) \(check.stderr)")
        #expect(check.stdout.contains("moved or renamed by hand"), "the renamed copy is reported too")
        let repair = try balsam(["fsck", "--repair"], site: site.root)
        #expect(repair.stdout.contains("directory is gone (deleted or renamed by hand) (repaired)"), "\(repair.stdout)")
        #expect(repair.stdout.contains("removed from the indexes (repaired)"), "\(repair.stdout)")
        #expect(state(ids[0]) == nil, "failed, then removed; not brought back by the renamed copy")
        #expect(try balsam(["ls", "--state", "READY"], site: site.root).stdout.contains(ids[0]) == false)
    }

    @Test func aKilledTaskServerHasItsJobsStoppedBeforeTheyAreRecordedEnded() throws {
        try app("long", "echo $$ > pid; exec sleep 60")
        let ids = try submit([#"{"app":"long","workdir":"orphan"}"#])
        let launcher = try LauncherProcess(
            site: site.root, ranks: nil, ["--wall-time-min", "5", "--idle-timeout", "1"], logDirectory: dir.path)
        let jobPID = try runningPID("orphan")
        let found = try run("/usr/bin/pgrep", ["-P", String(launcher.process.processIdentifier), "balsam-task-gua"])
        let guardPID = try #require(Int32(found.stdout.split(separator: "\n").first ?? ""), "\(found)")
        kill(guardPID, SIGKILL)
        try waitUntil("the job's end is recorded", timeout: 30) { state(ids[0]) != .running }
        #expect(kill(jobPID, 0) != 0, "its process was stopped before its end was recorded")
        #expect(state(ids[0]) == .failed || state(ids[0]) == .runError)
        let ended = try loggedEvents(site).first { $0.job == ids[0] && $0.to == .runError }
        #expect(ended?.data["tail"]?.stringValue?.contains("task server died; its processes were stopped") == true)
        #expect(launcher.wait() == 0, "\(launcher.log)")
    }

    @Test func aJobThatEscapesItsProcessGroupDiesWithItsKilledLauncher() throws {
        // The escaped process says its own pid (setsid may fork first): `$!` could name a process already gone.
        try app("escape", #"setsid sh -c 'echo $$ > pid.tmp; mv pid.tmp pid; exec sleep 60' & wait"#)
        _ = try submit([#"{"app":"escape","workdir":"esc"}"#])
        let launcher = try LauncherProcess(
            site: site.root, ranks: nil, ["--wall-time-min", "5", "--idle-timeout", "60"], logDirectory: dir.path)
        let escaped = try runningPID("esc")
        #expect(getsid(escaped) == escaped, "it left the job's session and process group")
        kill(launcher.process.processIdentifier, SIGKILL)
        try waitUntil("the escaped process is stopped", timeout: 30) { kill(escaped, 0) != 0 }
    }

    @Test func twoRanksPackSingleNodeJobsByNodePackingCount() throws {
        try configure("  cpus_per_node: 16")
        try app("nap", timed("sleep 0.4"))
        let quarter = (0..<12).map { #"{"app":"nap","workdir":"q/\#($0)","node_packing_count":4}"# }
        let half = (0..<6).map { #"{"app":"nap","workdir":"h/\#($0)","node_packing_count":2}"# }
        let ids = try submit(quarter + half)
        let launcher = try LauncherProcess(
            site: site.root, ranks: 2, ["--wall-time-min", "5", "--idle-timeout", "1"], logDirectory: dir.path)
        #expect(launcher.wait() == 0, "\(launcher.log)")
        for id in ids { #expect(state(id) == .runDone) }

        let all = try runs(site)
        #expect(all.count == ids.count)
        let occupancy = Dictionary(uniqueKeysWithValues: ids.enumerated().map { ($1, $0 < 12 ? 0.25 : 0.5) })
        var mostAtOnce = [0, 0]
        for run in all {
            #expect(run.nodes.count == 1)
            let node = run.nodes[0]
            let together = all.filter { $0.nodes == [node] && $0.start <= run.start && run.start < $0.end }
            let used = together.map { occupancy[$0.job] ?? 1 }.reduce(0, +)
            #expect(used <= 1.001, "node \(node) over-packed at \(run.start): \(used)")
            mostAtOnce[node] = max(mostAtOnce[node], together.count)
        }
        #expect(mostAtOnce.allSatisfy { $0 >= 2 }, "both nodes ran several jobs at once: \(mostAtOnce)")
    }

    @Test func aTwoNodeJobRunsOverTwoRanksWhileSingleNodeJobsRunOnTheOthers() throws {
        try configure(
            """
              cpus_per_node: 4
              mpi_launcher: "\(TestMPI.multiNodeTemplate)"
            """)
        try app(
            "wide",
            #"sh -c 'echo start $(date +%s%N); echo rank=\#(TestMPI.rankAndSize) job=$BALSAM_JOB_ID; sleep 1; echo end $(date +%s%N)'"#
        )
        try app("nap", timed("sleep 0.5"))
        let ids = try submit(
            (0..<2).map { #"{"app":"nap","workdir":"s/\#($0)"}"# } + [#"{"app":"wide","workdir":"w","num_nodes":2}"#]
                + (2..<6).map { #"{"app":"nap","workdir":"s/\#($0)"}"# })
        let launcher = try LauncherProcess(
            site: site.root, ranks: 4, ["--wall-time-min", "5", "--idle-timeout", "1"], logDirectory: dir.path)
        #expect(launcher.wait() == 0, "\(launcher.log)")
        for id in ids { #expect(state(id) == .runDone, "\(id)") }
        let out = try read(site.jobDirectory("w") + "/job.out")
        #expect(out.contains("rank=0 of 2 job=\(ids[2])") && out.contains("rank=1 of 2 job=\(ids[2])"), "\(out)")
        let all = try runs(site)
        let wide = try #require(all.first { $0.job == ids[2] })
        #expect(wide.nodes.count == 2)
        let beside = all.filter { $0.job != wide.job && $0.overlaps(wide) }
        #expect(!beside.isEmpty, "single-node jobs ran while the two-node job did")
        for run in beside { #expect(Set(run.nodes).isDisjoint(with: wide.nodes), "\(run.job) on \(run.nodes)") }
    }

    /// Two packed 2-rank jobs with a (stand-in) GPU per rank, started by the real MPI: each rank, through
    /// balsam-bind, sees only its own device and runs on its own CPU, and no device or CPU is two ranks'.
    @Test func multiRankJobsBindEachRankToItsOwnDeviceAndCPUs() throws {
        try configure(
            """
              cpus_per_node: 4
              gpu_ids: [0, 1, 2, 3]
              mpi_launcher: "\(TestMPI.multiNodeTemplate)"
            """)
        try app(
            "ranks",
            #"sh -c 'echo rank=$BALSAM_LOCAL_RANK gpus=$CUDA_VISIBLE_DEVICES cpus=$BALSAM_RANK_CPUS allowed=$(grep Cpus_allowed_list /proc/self/status | cut -f2); sleep 0.5'"#
        )
        let ids = try submit(
            (0..<2).map {
                #"{"app":"ranks","workdir":"r/\#($0)","ranks_per_node":2,"gpus_per_rank":1,"node_packing_count":2}"#
            })
        let launcher = try LauncherProcess(
            site: site.root, ranks: 1, ["--wall-time-min", "5", "--idle-timeout", "1"], logDirectory: dir.path)
        #expect(launcher.wait() == 0, "\(launcher.log)")
        for id in ids { #expect(state(id) == .runDone, "\(id)") }
        let online = Int(sysconf(Int32(_SC_NPROCESSORS_ONLN)))
        var devices: [String] = []
        var cpus: [String] = []
        for k in 0..<2 {
            let lines = try read(site.jobDirectory("r/\(k)") + "/job.out").split(separator: "\n").filter {
                $0.hasPrefix("rank=")
            }
            #expect(lines.count == 2, "\(lines)")
            for line in lines {
                let fields = Dictionary(
                    uniqueKeysWithValues: line.split(separator: " ").map {
                        let pair = $0.split(separator: "=", maxSplits: 1)
                        return (String(pair[0]), pair.count > 1 ? String(pair[1]) : "")
                    })
                let mine = fields["gpus"] ?? ""
                #expect(mine.split(separator: ",").count == 1, "one device per rank: \(line)")
                devices.append(mine)
                let list = fields["cpus"] ?? ""
                cpus.append(list)
                // Where this machine has the CPU, the kernel holds the rank to it.
                if let cpu = Int(list), cpu < online { #expect(fields["allowed"] == list, "\(line)") }
            }
        }
        #expect(Set(devices) == ["0", "1", "2", "3"], "\(devices)")
        #expect(Set(cpus) == ["0", "1", "2", "3"], "\(cpus)")
    }

    @Test func gpusAreAssignedWithoutOverlap() throws {
        try configure("  cpus_per_node: 16\n  gpu_ids: [0, 1, 2, 3]")
        try app("gpu", timed(#"sh -c 'echo gpus=$CUDA_VISIBLE_DEVICES; sleep 0.3'"#))
        let one = (0..<6).map { #"{"app":"gpu","workdir":"one/\#($0)","gpus_per_rank":1,"node_packing_count":4}"# }
        let two = (0..<4).map {
            #"{"app":"gpu","workdir":"two/\#($0)","gpus_per_rank":2,"node_packing_count":4}"#
        }
        let ids = try submit(one + two)
        let launcher = try LauncherProcess(
            site: site.root, ranks: nil, ["--wall-time-min", "5", "--idle-timeout", "1"], logDirectory: dir.path)
        #expect(launcher.wait() == 0, "\(launcher.log)")
        let all = try runs(site)
        #expect(all.count == ids.count)
        for (i, id) in ids.enumerated() {
            let run = try #require(all.first { $0.job == id })
            #expect(run.gpus.count == (i < 6 ? 1 : 2))
            let listing = try Query(site: site).find(id)
            let out = try read(site.jobDirectory(listing.workdir) + "/job.out")
            #expect(out.contains("gpus=" + run.gpus.joined(separator: ",")), "\(out)")
            for other in all where other.job != id && other.overlaps(run) {
                #expect(Set(other.gpus).isDisjoint(with: run.gpus), "\(id) and \(other.job) share a GPU")
            }
        }
        #expect(all.contains { run in all.contains { $0.job != run.job && $0.overlaps(run) } }, "jobs shared the node")
    }

    /// A job that cannot fit (a GPU asked of a site without any, issue 35, item 4): `submit` warns, `show` and
    /// `ls` say why it waits (the settings' rule and the running launcher's words), and a `balsam modify` that
    /// makes it fit is seen by the launcher that left it, which runs it. FitRuleTests holds the rule to the
    /// launcher's verdict for every shape.
    @Test func aJobChangedToFitRunsUnderTheLauncherThatLeftIt() throws {
        try configure("  cpus_per_node: 4\n  gpu_ids: []")
        try app("g", "echo ran")
        let made = try balsamSubmit(["-a", "g", "-w", "g/1", "--gpus-per-rank", "1"], site: site.root)
        #expect(made.status == 0, "\(made.stderr)")
        #expect(
            made.stderr.contains("cannot run on this site's nodes as configured") && made.stderr.contains("gpu_ids"))
        let id = made.stdout.trimmingCharacters(in: .whitespacesAndNewlines)
        let watcher = try WatchProcess(site: site.root, logDirectory: dir.path)
        let launcher = try LauncherProcess(
            site: site.root, ranks: nil, ["--wall-time-min", "5", "--idle-timeout", "120"], logDirectory: dir.path)
        try waitUntil("the launcher says it leaves the job for others", timeout: 60) {
            (try? balsam(["show", "g/1"], site: site.root).stdout)?.contains("waiting:   launcher") == true
        }
        let shown = try balsam(["show", "g/1"], site: site.root).stdout
        #expect(
            shown.contains("waiting:   cannot run on this site's nodes as configured: it asks for 1 GPU(s)"), "\(shown)"
        )
        let listed = try balsam(["ls"], site: site.root)
        #expect(listed.stdout.contains("PREPROCESSED*") && listed.stderr.contains("1 job(s) cannot run"), "\(listed)")
        let json = try balsam(["ls", "--json"], site: site.root).stdout
        #expect(json.contains(#""waiting":["#) && json.contains("gpu_ids"), "\(json)")
        // Changed to fit: the same launcher, still running, looks again and runs it.
        let modified = try balsam(["modify", "-w", "g/1", "--gpus-per-rank", "0"], site: site.root)
        #expect(modified.status == 0, "\(modified.stderr)")
        try waitUntil("the job runs and finishes", timeout: 60) { self.state(id) == .jobFinished }
        #expect(!(try balsam(["show", "g/1"], site: site.root).stdout.contains("waiting:")))
        launcher.process.terminate()
        #expect(launcher.wait() == 128 + SIGTERM, "\(launcher.log)")
        #expect(watcher.terminate() == 0)
    }

    @Test func aJobThatOutlivesTheLauncherTimesOutAndIsRetriedUnderTheNext() throws {
        try configure("  kill_grace_sec: 0.5")
        try app("long", "if [ -e first ]; then echo second run; else touch first; echo first run; sleep 60; fi")
        let id = try #require(try submit([#"{"app":"long","workdir":"l"}"#]).first)
        let watcher = try WatchProcess(site: site.root, logDirectory: dir.path)
        let first = try LauncherProcess(
            site: site.root, ranks: nil, ["--wall-time-min", "0.05", "--idle-timeout", "30"], logDirectory: dir.path)
        #expect(first.wait() == 0, "\(first.log)")
        try waitUntil("the watcher's timeout policy makes the job RESTART_READY") { state(id) == .restartReady }
        let second = try LauncherProcess(
            site: site.root, ranks: nil, ["--wall-time-min", "5", "--idle-timeout", "1"], logDirectory: dir.path)
        #expect(second.wait() == 0, "\(second.log)")
        try waitUntil("the job finishes") { state(id) == .jobFinished }
        #expect(watcher.terminate() == 0)
        let history = try #require(try Query(site: site).find(id).record).history.map(\.state)
        #expect(history.contains(.runTimeout) && history.filter { $0 == .running }.count == 2, "\(history)")
        let out = try read(site.jobDirectory("l") + "/job.out")
        #expect(out.hasPrefix("first run\n") && out.contains("==> balsam-launcher: run again at "), "\(out)")
        #expect(out.hasSuffix("second run\n"))
    }

    /// SIGTERM (a batch system's cancel) or SIGINT (Ctrl-C): the launcher ends cleanly and exits 128 + the
    /// signal; its jobs were interrupted, not too long, and the watcher runs them again without spending a retry.
    @Test(arguments: [SIGTERM, SIGINT]) func aSignalEndsTheLauncherCleanlyAndItsJobsRunAgain(signal: Int32) throws {
        try configure("  kill_grace_sec: 0.5\n  cpus_per_node: 4")
        try app("forever", "sleep 600")
        let ids = try submit((0..<3).map { #"{"app":"forever","workdir":"t/\#($0)","node_packing_count":4}"# })
        let launcher = try LauncherProcess(
            site: site.root, ranks: nil, ["--wall-time-min", "5", "--idle-timeout", "60"], logDirectory: dir.path)
        try waitUntil("the jobs run") { ids.allSatisfy { state($0) == .running } }
        kill(launcher.process.processIdentifier, signal)
        #expect(launcher.wait(timeout: 20) == 128 + signal, "\(launcher.log)")
        for id in ids {
            #expect(state(id) == .runTimeout)
            let record = try #require(try Query(site: site).find(id).record)
            #expect(record.reason == "interrupted: its launcher was stopped by a signal" && record.interrupted)
        }
        #expect(try Lease.all(site).isEmpty, "the lease is released")
        #expect(SiteIndex(site: site).activeState(of: ids[0]) == .runTimeout)
        let once = try run(binDirectory + "/balsam-watch", ["--site", site.root, "--once"])
        #expect(once.status == 0, "\(once.stderr)")
        for id in ids {
            let record = try #require(try Query(site: site).find(id).record)
            #expect(record.state == .restartReady && record.timeoutRetries == 0, "\(record)")
        }
    }

    @Test func aKillRequestStopsRunningJobsOnEveryRank() throws {
        try configure("  kill_grace_sec: 0.5")
        try app("forever", "echo $$ > pid; sleep 600")
        // Each job takes a whole node: the first runs on rank 0's node, the second on rank 1's.
        let ids = try submit([#"{"app":"forever","workdir":"f0"}"#, #"{"app":"forever","workdir":"f1"}"#])
        let launcher = try LauncherProcess(
            site: site.root, ranks: 2, ["--wall-time-min", "5", "--idle-timeout", "1"], logDirectory: dir.path)
        let pidFiles = ["f0", "f1"].map { site.jobDirectory($0) + "/pid" }
        try waitUntil("the jobs run") {
            ids.allSatisfy { state($0) == .running } && pidFiles.allSatisfy { !((try? read($0)) ?? "").isEmpty }
        }
        #expect(Set(try runs(site).flatMap(\.nodes)) == [0, 1], "one job per rank")
        let pids = try pidFiles.map {
            try #require(Int32(try read($0).trimmingCharacters(in: .whitespacesAndNewlines)))
        }
        let r = try balsam(["kill"] + ids, site: site.root)
        #expect(r.status == 0 && r.stdout.contains("requested"), "\(r)")
        try waitUntil("the jobs are FAILED", timeout: 10) { ids.allSatisfy { state($0) == .failed } }
        for (id, pid) in zip(ids, pids) {
            #expect(try Query(site: site).find(id).record?.reason == "killed by the user")
            #expect(kill(pid, 0) != 0 || (try? read("/proc/\(pid)/stat"))?.contains(") Z ") == true, "\(id) stopped")
            #expect(!exists(site.controlPath + "/kill." + id), "the request is done")
        }
        #expect(launcher.wait() == 0, "\(launcher.log)")
    }

    @Test func jobsTooLongForTheTimeLeftOrWithoutTheTagsAreLeftAlone() throws {
        try configure("  cpus_per_node: 4")
        try app("nap", timed("true"))
        let ids = try submit([
            #"{"app":"nap","workdir":"long","wall_time_min":30}"#,
            #"{"app":"nap","workdir":"untagged","node_packing_count":4}"#,
            #"{"app":"nap","workdir":"fits","wall_time_min":1,"tags":{"run":"yes"},"node_packing_count":4}"#,
            #"{"app":"nap","workdir":"huge","num_nodes":3,"tags":{"run":"yes"}}"#,
        ])
        let launcher = try LauncherProcess(
            site: site.root, ranks: nil, ["--wall-time-min", "10", "--idle-timeout", "1", "--tag", "run=yes"],
            logDirectory: dir.path)
        #expect(launcher.wait() == 0, "\(launcher.log)")
        #expect(state(ids[0]) == .preprocessed && state(ids[1]) == .preprocessed && state(ids[3]) == .preprocessed)
        #expect(state(ids[2]) == .runDone)
        let log = launcher.log
        #expect(log.contains("job \(ids[0]) left for other launchers: its tags lack run=yes"), "\(log)")
        #expect(log.contains("job \(ids[3]) left for other launchers: it needs more than this allocation has"))
        // With the tag, the 30-minute job is still too long for 10 minutes less the ending margin.
        let second = try LauncherProcess(
            site: site.root, ranks: nil, ["--wall-time-min", "10", "--idle-timeout", "1"], logDirectory: dir.path)
        #expect(second.wait() == 0)
        #expect(second.log.contains("job \(ids[0]) left for other launchers: it needs 30 min and 8 min are left"))
        #expect(state(ids[0]) == .preprocessed && state(ids[1]) == .runDone)
    }

    @Test func twoLaunchersOnOneSiteRunEachJobExactlyOnce() throws {
        let count = ProcessInfo.processInfo.environment["BALSAM_LAUNCH_JOBS"].flatMap(Int.init) ?? 2000
        try configure("  cpus_per_node: 4")
        try app("mark", #"echo $BALSAM_JOB_ID >> "$BALSAM_SITE/runs.log""#)
        let ids = try submit((0..<count).map { #"{"app":"mark","workdir":"m/\#($0)","node_packing_count":4}"# })
        let args = ["--wall-time-min", "5", "--idle-timeout", "2"]
        let a = try LauncherProcess(site: site.root, ranks: nil, args, logDirectory: dir.path)
        let b = try LauncherProcess(site: site.root, ranks: 2, args, logDirectory: dir.path)
        #expect(a.wait(timeout: 300) == 0, "\(a.log)")
        #expect(b.wait(timeout: 300) == 0, "\(b.log)")
        let lines = try read(site.root + "/runs.log").split(separator: "\n").map(String.init)
        #expect(lines.count == count, "every job ran once")
        #expect(Set(lines) == Set(ids))
        let counts = try Query(site: site).countByState()
        #expect(counts[.runDone] == count)
        #expect(try Lease.all(site).isEmpty, "both leases were released")
    }

    /// A launcher of this host killed while no watcher runs: the watcher that starts takes its jobs back within
    /// seconds (its process is gone), not after the whole lease timeout counted from its first look.
    @Test func aDeadLaunchersLeaseIsReapedSoonByAWatcherThatStarts() throws {
        try configure("  lease_timeout_sec: 120\n  kill_grace_sec: 0.3")
        let (id, launcher, _) = try longJobRunning("dl")
        launcher.process.signal(SIGKILL)
        launcher.process.waitUntilExit()
        let watcher = try WatchProcess(site: site.root, logDirectory: dir.path)
        try waitUntil("the dead launcher's lease is reaped", timeout: 40) { try Lease.all(site).isEmpty }
        #expect(watcher.terminate() == 0)
        let history = try #require(try Query(site: site).find(id).record).history.map(\.state)
        #expect(history.contains(.runTimeout), "\(history)")
    }

    @Test func afterALauncherIsKilledEveryJobEndsAndNoneRunsTwiceAtOnce() throws {
        try configure("  cpus_per_node: 4\n  lease_timeout_sec: 2\n  kill_grace_sec: 0.3")
        // A job holds a lock while it runs: a second copy running at the same time finds it taken.
        try app(
            "locked",
            #"exec 9>>lock; flock -n 9 || echo "$BALSAM_JOB_ID" >> "$BALSAM_SITE/double"; sleep 1; echo ok"#)
        let ids = try submit((0..<16).map { #"{"app":"locked","workdir":"k/\#($0)","node_packing_count":4}"# })
        let watcher = try WatchProcess(site: site.root, logDirectory: dir.path)
        let first = try LauncherProcess(
            site: site.root, ranks: 2, ["--wall-time-min", "5", "--idle-timeout", "30"], logDirectory: dir.path)
        try waitUntil("jobs run") { (try Query(site: site).countByState()[.running] ?? 0) >= 4 }
        let lease = try #require(try Lease.all(site).first)
        let rank0 = try #require(Int32(lease.name.split(separator: ".").dropLast().last ?? ""))
        kill(rank0, SIGKILL)
        #expect(first.wait() != 0, "mpirun reports the dead rank")
        try waitUntil("the watcher ends the expired lease", timeout: 30) { try Lease.all(site).isEmpty }
        let second = try LauncherProcess(
            site: site.root, ranks: nil, ["--wall-time-min", "5", "--idle-timeout", "2"], logDirectory: dir.path)
        try waitUntil("every job has finished", timeout: 90) {
            ids.allSatisfy { state($0) == .jobFinished }
        }
        #expect(second.wait() == 0, "\(second.log)")
        #expect(watcher.terminate() == 0)
        #expect(
            !exists(site.root + "/double"),
            "no job ran twice at the same time: \((try? read(site.root + "/double")) ?? "")")
        let timedOut = try ids.filter {
            try Query(site: site).find($0).record?.history.contains { $0.state == .runTimeout } == true
        }
        #expect(!timedOut.isEmpty, "the killed launcher's running jobs timed out and ran again")
        #expect(try Fsck(site: site).run(repair: false).problems.isEmpty)
    }

    /// A job that leaves a daemon behind (setsid: outside its process group) and one that leaves a background
    /// process in its group: both are killed when their job ends, while the launcher runs on, and the job's
    /// output says so.
    @Test func whatAJobLeavesRunningEndsWithIt() throws {
        try app("daemon", #"setsid sleep 300 & echo $! > daemon.pid; sleep 300 & echo $! > child.pid; echo done"#)
        let ids = try submit([#"{"app":"daemon","workdir":"d"}"#])
        let launcher = try LauncherProcess(
            site: site.root, ranks: nil, ["--wall-time-min", "5", "--idle-timeout", "60"], logDirectory: dir.path)
        try waitUntil("the job has ended") { state(ids[0]) == .runDone }
        for name in ["daemon.pid", "child.pid"] {
            let pid = try #require(
                Int32(try read(site.jobDirectory("d") + "/" + name).trimmingCharacters(in: .whitespacesAndNewlines)))
            try waitUntil("\(name) is gone", timeout: 10) {
                kill(pid, 0) != 0 || ((try? read("/proc/\(pid)/stat")) ?? "").contains(") Z ")
            }
        }
        #expect(launcher.process.isRunning, "ended by the job's end, not the launcher's")
        let output = try read(site.jobDirectory("d") + "/job.out")
        #expect(output.contains("done") && output.contains("leaving processes running; they were killed"), "\(output)")
        launcher.process.terminate()
        _ = launcher.wait()
    }

    /// With `launcher.max_output_mb`, a job's output is cut at the cap, with a note where, in the job's history
    /// and in its event; what it writes after (a job that goes on printing) is cut again. Without, nothing is cut.
    @Test func outputPastTheSiteCapIsCutAndRecorded() throws {
        try configure("  max_output_mb: 1")
        // 3 MB at once, then more lines for a second and a half (cut again at each look).
        try app(
            "chatty", #"head -c 3000000 /dev/zero | tr '\0' x; for i in $(seq 30); do echo line $i; sleep 0.05; done"#)
        try app("quiet", "head -c 100000 /dev/zero | tr '\\0' y")
        let ids = try submit([#"{"app":"chatty","workdir":"o/c"}"#, #"{"app":"quiet","workdir":"o/q"}"#])
        let launcher = try LauncherProcess(
            site: site.root, ranks: nil, ["--wall-time-min", "5", "--idle-timeout", "1"], logDirectory: dir.path)
        #expect(launcher.wait() == 0, "\(launcher.log)")
        #expect(ids.allSatisfy { state($0) == .runDone })
        let cap = 1 << 20
        let output = try Data(contentsOf: URL(fileURLWithPath: site.jobDirectory("o/c") + "/job.out"))
        #expect(output.count <= cap + 200, "\(output.count) bytes kept")
        #expect(String(decoding: output.suffix(100), as: UTF8.self).contains("output cut here: launcher.max_output_mb"))
        let record = try #require(try Query(site: site).find(ids[0]).record)
        #expect(
            record.history.last?.reason == "output cut at \(cap) bytes (launcher.max_output_mb)", "\(record.history)")
        let events = try entries(site.eventsPath).map { try read(site.eventsPath + "/" + $0) }.joined()
        #expect(events.contains(#""output_cut_bytes":\#(cap)"#))
        // Under the cap: untouched.
        let quiet = try Data(contentsOf: URL(fileURLWithPath: site.jobDirectory("o/q") + "/job.out"))
        #expect(quiet.count == 100_000)
        #expect(try Query(site: site).find(ids[1]).record?.history.last?.reason == nil)
    }

    /// The processes of the tree under `pid` (it included), from /proc.
    func tree(_ pid: Int32) -> [Int32] {
        var parents: [Int32: [Int32]] = [:]
        for name in entries("/proc") {
            guard let child = Int32(name), let stat = try? read("/proc/\(name)/stat"),
                let close = stat.lastIndex(of: ")")
            else { continue }
            let fields = stat[stat.index(after: close)...].split(separator: " ")
            if fields.count > 1, let parent = Int32(fields[1]) { parents[parent, default: []].append(child) }
        }
        var all = [pid]
        var i = 0
        while i < all.count {
            all += parents[all[i]] ?? []
            i += 1
        }
        return all
    }

    /// A node of a two-node launcher freezes (its rank, task server and jobs stopped) for longer than the lease:
    /// rank 0 notices, logs which node, gives its job back (RUN_TIMEOUT, retried on the other node) and places
    /// nothing more there; when the node runs again its rank stops the job it had rather than run it on.
    @Test func aFrozenNodesJobsAreGivenBackAndNotRunOnWhenItReturns() throws {
        try configure("  lease_timeout_sec: 2\n  kill_grace_sec: 0.3")
        try app("long", #"echo $$ >> "$BALSAM_SITE/pids.$BALSAM_JOB_ID"; sleep 5"#)
        // One job per node (each takes a whole node): the second runs on rank 1's node.
        let ids = try submit((0..<4).map { #"{"app":"long","workdir":"f/\#($0)","node_packing_count":1}"# })
        let watcher = try WatchProcess(site: site.root, logDirectory: dir.path)
        let launcher = try LauncherProcess(
            site: site.root, ranks: 2, ["--wall-time-min", "5", "--idle-timeout", "3"], logDirectory: dir.path)
        try waitUntil("both nodes run a job") { (try Query(site: site).countByState()[.running] ?? 0) == 2 }
        // Rank 1: the launcher rank whose MPI rank variable says 1.
        let ranks =
            (try? run("/usr/bin/pgrep", ["-x", "balsam-launcher"]))?.stdout.split(separator: "\n")
            .compactMap { Int32($0) } ?? []
        let rank1 = try #require(
            ranks.first { pid in
                let environment = (try? Posix.readFile("/proc/\(pid)/environ", limit: 1 << 20)) ?? []
                let words = environment.split(separator: 0).map { String(decoding: $0, as: UTF8.self) }
                return (words.contains("OMPI_COMM_WORLD_RANK=1") || words.contains("PMI_RANK=1"))
                    && ((try? read("/proc/\(pid)/cmdline")) ?? "").contains(site.root)
            })
        let frozen = tree(rank1)
        for pid in frozen { kill(pid, SIGSTOP) }
        try waitUntil("rank 0 gives the frozen node's job back", timeout: 30) {
            launcher.log.contains("rank 1 (node ") && launcher.log.contains("silent for")
        }
        let givenBack = try ids.filter {
            try Query(site: site).find($0).record?.history.contains {
                $0.state == .runTimeout && ($0.reason ?? "").contains("silent")
            } == true
        }
        #expect(givenBack.count == 1, "\(launcher.log)")
        for pid in frozen { kill(pid, SIGCONT) }
        // Back, the node stops the job it had: its process is gone long before its 5 s would end.
        let jobPIDs = frozen.filter { pid in ((try? read("/proc/\(pid)/cmdline")) ?? "").hasPrefix("sleep") }
        try waitUntil("the returning node stops its old job", timeout: 3) {
            jobPIDs.allSatisfy { kill($0, 0) != 0 || ((try? read("/proc/\($0)/stat")) ?? "").contains(") Z ") }
        }
        try waitUntil("every job has finished", timeout: 90) { ids.allSatisfy { state($0) == .jobFinished } }
        #expect(launcher.wait() == 0, "\(launcher.log)")
        #expect(launcher.log.contains("answers again"), "\(launcher.log)")
        #expect(watcher.terminate() == 0)
        #expect(try Fsck(site: site).run(repair: false).problems.isEmpty)
    }
}
