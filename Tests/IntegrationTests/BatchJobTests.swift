import Foundation
import Spool
import TestSupport
import Testing

#if canImport(Glibc)
    import Glibc
#endif

/// Whether a Slurm cluster answers (dev/test starts one and exports SLURM_CONF).
let slurmAvailable: Bool = {
    guard ProcessInfo.processInfo.environment["SLURM_CONF"] != nil,
        let r = try? run("/usr/bin/sinfo", ["-h", "-o", "%D"])
    else { return false }
    return r.status == 0 && !r.stdout.isEmpty
}()

/// Open MPI as root, as in CI.
let mpiRootEnvironment = ["OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1"]

/// Batch jobs end to end: `balsam queue`, the watcher's scheduler service, the local scheduler and a real Slurm
/// cluster (several emulated nodes, started by dev/test), and the elastic queue.
@Suite(.serialized) struct BatchJobTests {
    let dir: TempDir

    init() throws { dir = try TempDir() }

    /// A new site of `scheduler` with quick rounds, and an app `name` running `command`.
    /// With `platform`, the site is made from that preset (`balsam init --platform`) instead.
    func makeSite(_ scheduler: String, app command: String = "echo node=$SLURMD_NODENAME", platform: String? = nil)
        throws -> Site
    {
        let path = dir.path + "/" + scheduler + "-\(UUID().uuidString.prefix(6))"
        let r = try balsam(
            ["init", path]
                + (platform.map { ["--platform", $0, "--project", "default"] } ?? ["--scheduler", scheduler]))
        #expect(r.status == 0, "\(r.stderr)")
        try edit(path, ["sync_period": "0.2", "idle_ttl_sec": "1", "kill_grace_sec": "0.2"])
        try #require(try balsam(["app", "create", "work", "--command-template", command], site: path).status == 0)
        return try Site.open(path)
    }

    /// Sets `key: value` in settings.yml, where the key is first written.
    func edit(_ site: String, _ values: [String: String]) throws {
        var lines = try read(site + "/settings.yml").split(separator: "\n", omittingEmptySubsequences: false)
            .map(String.init)
        for (key, value) in values {
            let i = try #require(lines.firstIndex { $0.trimmingCharacters(in: .whitespaces).hasPrefix(key + ":") })
            let indent = lines[i].prefix { $0 == " " }
            lines[i] = indent + key + ": " + value
        }
        try lines.joined(separator: "\n").write(toFile: site + "/settings.yml", atomically: true, encoding: .utf8)
    }

    /// Submits "wide", a 2-node job whose ranks say their PMI rank and size and their Slurm node.
    func submitWideJob(_ site: Site) throws {
        let app = [
            "app", "create", "wide", "--command-template",
            #"sh -c 'echo rank=$PMI_RANK of $PMI_SIZE on $SLURMD_NODENAME'"#,
        ]
        try #require(try balsam(app, site: site.root).status == 0)
        let wide = try balsam(["submit", "-a", "wide", "-w", "wide", "--num-nodes", "2"], site: site.root)
        try #require(wide.status == 0, "\(wide.stderr)")
    }

    /// The 2-node job's ranks ran one on each of the allocation's two nodes (srun may add lines of its own: the
    /// emulated nodes cannot bind CPUs).
    func expectWideRanksOnBothNodes(_ site: Site) throws {
        let ranks = Set(
            try read(site.dataPath + "/wide/job.out").split(separator: "\n").map(String.init).filter {
                $0.hasPrefix("rank=")
            })
        #expect(
            ranks == ["rank=0 of 2 on n1", "rank=1 of 2 on n2"] || ranks == ["rank=0 of 2 on n2", "rank=1 of 2 on n1"],
            "\(ranks)")
    }

    func submitJobs(_ site: Site, _ count: Int) throws {
        let lines = (0..<count).map { "{\"app\":\"work\",\"workdir\":\"w/\($0)\"}" }.joined(separator: "\n")
        let r = try balsamSubmit(["--from", "-"], site: site.root, stdin: Data((lines + "\n").utf8))
        try #require(r.status == 0, "\(r.stderr)")
    }

    func batchJobs(_ site: Site) throws -> [BatchJob] { try BatchJobStore(site: site).all().jobs }

    func batchJob(_ site: Site, _ id: Int) -> BatchJob? { try? BatchJobStore(site: site).load(id) }

    func finishedJobs(_ site: Site) -> Int { (try? Query(site: site).countByState()[.jobFinished]) ?? 0 }

    func queueSubmit(_ site: Site, _ args: [String]) throws -> (status: Int32, stdout: String, stderr: String) {
        try balsam(["queue", "submit"] + args, site: site.root)
    }

    /// A local site with `jobs` jobs of `command`, a batch job for them, and a watcher, once the batch job runs.
    func runningLocalBatchJob(_ command: String, jobs: Int, minutes: Int = 30) throws -> (Site, WatchProcess) {
        let site = try makeSite("local", app: command)
        try submitJobs(site, jobs)
        #expect(try queueSubmit(site, ["-n", "1", "-t", String(minutes)]).status == 0)
        let watcher = try WatchProcess(site: site.root, logDirectory: dir.path, env: mpiRootEnvironment)
        try waitUntil("the batch job runs", timeout: 60) { batchJob(site, 1)?.state == .running }
        return (site, watcher)
    }

    /// Starts the watcher, waits until the site's `jobs` jobs are runnable, then asks for the batch job: its
    /// launcher (idle after 1 s here) must not start before there is work (under load it did, and left idle).
    func watchThenQueue(_ site: Site, jobs: Int, _ args: [String], env: [String: String] = [:]) throws -> WatchProcess {
        let watcher = try WatchProcess(site: site.root, logDirectory: dir.path, env: env)
        try waitUntil("the jobs are runnable", timeout: 60) {
            ((try? Query(site: site).countByState()) ?? [:])[.preprocessed] == jobs
        }
        #expect(try queueSubmit(site, args).status == 0)
        return watcher
    }

    func leasedJobs(_ site: Site) -> Int {
        ((try? Lease.all(site)) ?? []).reduce(0) { $0 + ((try? $1.jobIDs()) ?? []).count }
    }

    // MARK: - Local scheduler

    @Test func aLocalBatchJobRunsTheSitesJobsAndEndsCompleted() throws {
        let site = try makeSite("local", app: "sleep 0.2; echo hi")
        try submitJobs(site, 5)
        let r = try queueSubmit(site, ["-n", "1", "-t", "5"])
        #expect(r.status == 0 && r.stdout == "1\n", "\(r.stderr)")
        #expect(r.stderr.contains("no balsam-watch is running for this site"), "a hint while nobody will submit it")
        #expect(batchJob(site, 1)?.state == .pendingSubmission)
        let watcher = try WatchProcess(site: site.root, logDirectory: dir.path, env: mpiRootEnvironment)
        try waitUntil("the batch job ends", timeout: 60) { batchJob(site, 1)?.state == .finished }
        let job = try #require(batchJob(site, 1))
        #expect(job.outcome == .completed && job.exitCode == 0, "\(job.message ?? "")\n\(watcher.log)")
        #expect(job.startTime != nil && job.endTime != nil && job.submitTime != nil)
        #expect(job.schedulerID.flatMap { Int32($0) } != nil)
        #expect(job.history.map(\.state).contains(.queued))
        #expect(finishedJobs(site) == 5)
        let listing = try balsam(["queue", "ls", "--history"], site: site.root)
        #expect(listing.stdout.contains("finished(completed)") && listing.stderr.isEmpty, "\(listing.stderr)")
        #expect(try balsam(["queue", "ls"], site: site.root).stdout.split(separator: "\n").count == 1)
        #expect(watcher.terminate() == 0)
        try checkUtilization(site, job)
    }

    /// The batch job's launcher wrote its id into every RUNNING event, and `balsam report utilization` gives it
    /// the busy node-seconds of those runs (share 1: one job per node) over the node-seconds it held.
    func checkUtilization(_ site: Site, _ job: BatchJob) throws {
        let start = try #require(job.startTime.flatMap(Timestamp.seconds))
        let end = try #require(job.endTime.flatMap(Timestamp.seconds))
        var started: [String: Double] = [:]
        var busy = 0.0
        var runs = 0
        for name in entries(site.eventsPath) where name.hasSuffix(".jsonl") {
            for line in try read(site.eventsPath + "/" + name).split(separator: "\n") {
                let e = try JSONValue.parse(String(line)).objectValue ?? [:]
                let id = e["job"]?.stringValue ?? ""
                let t = Timestamp.seconds(e["t"]?.stringValue ?? "") ?? 0
                if e["to"]?.stringValue == "RUNNING" {
                    #expect(e["data"]?.objectValue?["batch_job"]?.intValue == job.id, "\(line)")
                    started[id] = t
                } else if e["from"]?.stringValue == "RUNNING", let since = started.removeValue(forKey: id) {
                    #expect(t - since >= 0.2)
                    busy += max(0, min(t, end) - max(since, start))  // the part within the batch job's times
                    runs += 1
                }
            }
        }
        #expect(runs == 5 && busy > 0)
        let report = try balsam(["report", "utilization", "--json", "--batch-job", String(job.id)], site: site.root)
        let o = try JSONValue.parse(report.stdout).objectValue ?? [:]
        let use = try #require(o["batch_jobs"]?.arrayValue?.first?.objectValue, "\(report.stdout) \(report.stderr)")
        #expect(abs((use["busy_node_seconds"]?.doubleValue ?? -1) - busy) < 1e-6, "\(use) against \(busy)")
        let mean = use["mean_utilization"]?.doubleValue ?? -1
        #expect(abs(mean - busy / (end - start)) < 1e-6 && mean > 0 && mean <= 1, "\(use)")
    }

    @Test func aBatchJobThatFailsAtOnceShowsTheEndOfItsOutput() throws {
        let site = try makeSite("local", app: "echo hi")
        try "#!/bin/bash\necho 'loading modules'\necho 'mpirun has detected an attempt to run as root' >&2\nexit 1\n"
            .write(toFile: site.root + "/job-template.sh", atomically: false, encoding: .utf8)
        #expect(try queueSubmit(site, ["-n", "1", "-t", "5"]).status == 0)
        let watcher = try WatchProcess(site: site.root, logDirectory: dir.path, env: mpiRootEnvironment)
        try waitUntil("the batch job ends", timeout: 60) { batchJob(site, 1)?.state == .finished }
        let job = try #require(batchJob(site, 1))
        let message = job.message ?? ""
        #expect(job.outcome == .failed && message.contains("exit code 1"), "\(message)")
        #expect(message.contains("attempt to run as root") && message.contains("loading modules"), "\(message)")
        #expect(message.contains(site.root + "/batchjobs/scripts/"), "names the output file: \(message)")
        let listing = try balsam(["queue", "ls", "--history"], site: site.root)
        #expect(listing.stdout.contains("attempt to run as root"), "\(listing.stdout)")
        #expect(watcher.terminate() == 0)
    }

    @Test func submissionsOutsideTheSitesPolicyAreRefusedAndNothingIsMade() throws {
        let site = try makeSite("local")
        let cases: [([String], Int32, String)] = [
            (["-n", "2", "-t", "5"], 64, "2 nodes: queue 'local' allows 1 to 1"),
            (["-n", "1", "-t", "5000"], 64, "allows 1 to 1440"),
            (["-n", "1", "-t", "5", "-q", "prod"], 64, "queue 'prod' is not allowed on this site (allowed: local"),
            (["-n", "1", "-t", "5", "-A", "other"], 64, "project 'other' is not allowed"),
            (["-n", "1", "-t", "5", "-x", "gpus=2"], 64, "unknown parameter 'gpus'"),
        ]
        for (args, status, message) in cases {
            let r = try queueSubmit(site, args)
            #expect(r.status == status && r.stderr.contains(message), "\(args): \(r.status) \(r.stderr)")
        }
        #expect(try batchJobs(site).isEmpty)
        #expect(try queueSubmit(site, ["-n", "1", "-t", "5"]).status == 0)
        let full = try queueSubmit(site, ["-n", "1", "-t", "5"])
        #expect(full.status == 75 && full.stderr.contains("max_queued_jobs"), "\(full.stderr)")
        #expect(try batchJobs(site).count == 1)
    }

    @Test func aBatchJobRemovedBeforeSubmissionIsDroppedAndNeverSubmitted() throws {
        let site = try makeSite("local")
        #expect(try queueSubmit(site, ["-n", "1", "-t", "5"]).status == 0)
        #expect(try balsam(["queue", "rm", "1"], site: site.root).status == 0)
        let once = try run(binDirectory + "/balsam-watch", ["--site", site.root, "--once"])
        #expect(once.status == 0, "\(once.stderr)")
        let job = try #require(batchJob(site, 1))
        #expect(job.state == .finished && job.outcome == .cancelled && job.schedulerID == nil)
        #expect(entries(site.root + "/batchjobs/scripts").isEmpty)
        let again = try balsam(["queue", "rm", "1"], site: site.root)
        #expect(again.status == 75 && again.stderr.contains("already ended"))
        let missing = try balsam(["queue", "rm", "9"], site: site.root)
        #expect(missing.status == 66 && missing.stderr.contains("no batch job 9"))
    }

    @Test func cancellingARunningLocalBatchJobStopsItsLauncherAndItsJobs() throws {
        let (site, watcher) = try runningLocalBatchJob("sleep 300", jobs: 2)
        try waitUntil("a job runs", timeout: 60) { leasedJobs(site) > 0 }
        let pid = try #require(batchJob(site, 1)?.schedulerID.flatMap { Int32($0) })
        #expect(batchJob(site, 1)?.state == .running)
        #expect(try balsam(["queue", "rm", "1"], site: site.root).status == 0)
        try waitUntil("the batch job ends", timeout: 60) { batchJob(site, 1)?.state == .finished }
        #expect(batchJob(site, 1)?.outcome == .cancelled, "\(batchJob(site, 1)?.message ?? "")")
        #expect(kill(pid, 0) != 0, "the batch job's processes are gone")
        try waitUntil("the launcher's lease is released", timeout: 30) { ((try? Lease.all(site)) ?? []).isEmpty }
        #expect(watcher.terminate() == 0)
    }

    @Test func aWatcherRestartedWhileABatchJobRunsFollowsItToTheEnd() throws {
        let (site, first) = try runningLocalBatchJob("sleep 1", jobs: 4, minutes: 5)
        first.kill9()
        let second = try WatchProcess(site: site.root, logDirectory: dir.path, env: mpiRootEnvironment)
        try waitUntil("the batch job ends", timeout: 60) { batchJob(site, 1)?.state == .finished }
        let job = try #require(batchJob(site, 1))
        #expect(job.outcome == .completed && job.exitCode == 0, "\(job.message ?? "")\n\(second.log)")
        #expect(entries(site.root + "/batchjobs/scripts").filter { $0.hasSuffix(".sh") }.count == 1, "submitted once")
        try waitUntil("every job finished", timeout: 30) { finishedJobs(site) == 4 }
        #expect(second.terminate() == 0)
    }

    // MARK: - Faults

    @Test func aBatchJobThatVanishesFromTheSchedulerEndsLost() throws {
        let (site, watcher) = try runningLocalBatchJob("sleep 300", jobs: 1)
        let pid = try #require(batchJob(site, 1)?.schedulerID.flatMap { Int32($0) })
        // The scheduler forgets it: its processes die and its records go.
        for file in entries(site.root + "/batchjobs/local") {
            try FileManager.default.removeItem(atPath: site.root + "/batchjobs/local/" + file)
        }
        kill(-pid, SIGKILL)
        try waitUntil("the batch job ends", timeout: 30) { batchJob(site, 1)?.state == .finished }
        let job = try #require(batchJob(site, 1))
        #expect(job.outcome == .lost && job.message?.contains("no longer known to the scheduler") == true)
        #expect(watcher.terminate() == 0)
    }

    /// A directory holding fake scheduler commands (fault injection: a real Slurm never prints garbage on demand).
    func fakeCommands(_ scripts: [String: String]) throws -> String {
        let bin = dir.path + "/fake-\(UUID().uuidString.prefix(6))"
        try FileManager.default.createDirectory(atPath: bin, withIntermediateDirectories: true)
        for (name, body) in scripts {
            try ("#!/bin/sh\n" + body + "\n").write(toFile: bin + "/" + name, atomically: true, encoding: .utf8)
            chmod(bin + "/" + name, 0o755)
        }
        return bin
    }

    /// Polaris's qsub line, as the ALCF documents it: nodes as `select=N:system=polaris`; the launcher given the
    /// allocation's wall time less a margin. (A PBS Professional server does not run here: qsub is a recorder.)
    @Test func aPolarisBatchJobAsksForNodesAsPolarisDoes() throws {
        let site = try makeSite("pbs", platform: "polaris")
        #expect(try read(site.settingsPath).contains("node_select: system=polaris"))
        #expect(try queueSubmit(site, ["-n", "2", "-t", "30", "-q", "debug-scaling", "-A", "default"]).status == 0)
        let bin = try fakeCommands([
            "qsub": #"printf '%s\n' "$@" > "$(dirname "$0")/qsub.args"; echo 4242.polaris-pbs-01"#,
            "qstat": "echo '{\"Jobs\": {}}'",
        ])
        let once = try run(
            binDirectory + "/balsam-watch", ["--site", site.root, "--once"], env: ["PATH": bin + ":/usr/bin:/bin"])
        #expect(once.status == 0, "\(once.stderr)")
        let args = try read(bin + "/qsub.args").split(separator: "\n").map(String.init)
        #expect(args.contains("select=2:system=polaris,walltime=00:30:00"), "\(args)")
        #expect(args.contains("debug-scaling") && args.contains("default"), "\(args)")
        let script = try read(try #require(args.last))
        #expect(script.contains("--wall-time-min 28.5"), "\(script)")
    }

    @Test func schedulerFaultsLeaveAClearStateAndMessage() throws {
        let cases: [(String, [String: String], String)] = [
            ("missing", [:], "sbatch: not found in PATH"),
            (
                "garbage", ["sbatch": "echo 'hello there'", "squeue": "true"],
                "sbatch printed no job ID: hello there; looking for job"
            ),
            (
                "error", ["sbatch": "echo 'sbatch: error: invalid partition specified: debug' >&2; exit 1"],
                "exited with status 1: sbatch: error: invalid partition specified"
            ),
        ]
        for (what, scripts, message) in cases {
            let site = try makeSite("slurm")
            #expect(try queueSubmit(site, ["-n", "1", "-t", "5"]).status == 0)
            let bin = try fakeCommands(scripts)
            let once = try run(binDirectory + "/balsam-watch", ["--site", site.root, "--once"], env: ["PATH": bin])
            #expect(once.status == 0, "\(what): \(once.stderr)")
            var job = try #require(batchJob(site, 1))
            if what == "garbage" {
                // The answer could not be read: the scheduler may have the job, so the next round looks for it
                // by name (here it is not there) before calling the submission failed. It is never resubmitted.
                #expect(job.state == .pendingSubmission && job.submitUncertain, "\(job.json)")
                #expect(job.message?.contains(message) == true, "\(job.message ?? "no message")")
                let again = try run(
                    binDirectory + "/balsam-watch", ["--site", site.root, "--once"], env: ["PATH": bin])
                #expect(again.status == 0, "\(again.stderr)")
                job = try #require(batchJob(site, 1))
                #expect(job.message?.contains("the scheduler shows no job named") == true, "\(job.message ?? "")")
                #expect(entries(site.root + "/batchjobs/scripts").filter { $0.hasSuffix(".sh") }.count == 1)
            } else {
                #expect(job.message?.contains(message) == true, "\(what): \(job.message ?? "no message")")
            }
            #expect(job.state == .submitFailed, "\(what)")
        }

        // Submitted, then the scheduler's listing cannot be read: the record stays, with the reason.
        let site = try makeSite("slurm")
        #expect(try queueSubmit(site, ["-n", "1", "-t", "5"]).status == 0)
        let bin = try fakeCommands(["sbatch": "echo 42", "squeue": "echo 'garbage'"])
        let first = try run(binDirectory + "/balsam-watch", ["--site", site.root, "--once"], env: ["PATH": bin])
        #expect(first.status == 0 && batchJob(site, 1)?.state == .queued, "\(first.stderr)")
        let second = try run(binDirectory + "/balsam-watch", ["--site", site.root, "--once"], env: ["PATH": bin])
        #expect(second.status == 0, "\(second.stderr)")
        #expect(second.stderr.contains("cannot read squeue's line 'garbage'"), "\(second.stderr)")
        let job = try #require(batchJob(site, 1))
        #expect(job.state == .queued && job.schedulerID == "42")
        #expect(job.message?.contains("cannot poll the scheduler") == true, "\(job.message ?? "")")
    }

    // MARK: - Slurm (a real cluster of emulated nodes)

    @Test func continuousIntegrationHasASlurmCluster() {
        if ProcessInfo.processInfo.environment["CI"] == "true" {
            #expect(slurmAvailable, "dev/test starts a Slurm cluster and exports SLURM_CONF")
        }
    }

    /// Made from the generic Slurm platform preset (balsam init --platform generic-slurm), the launcher started
    /// each way its job template says: srun (the template as written: MPICH through PMI-2, the cluster's PMI
    /// named by SLURM_MPI_TYPE), mpiexec.hydra -genvnone (its comment's line; then a 2-node job started by Hydra
    /// inside the launcher's step, whose srun shares the nodes through SLURM_OVERLAP), and Open MPI's mpirun
    /// (its other comment's line). The first two run in dev/test's MPICH phase, the last in the Open MPI one.
    @Test(.enabled(if: slurmAvailable), arguments: ["srun", "hydra", "mpirun"])
    func aSlurmBatchJobRunsTheSitesJobsAcrossTwoNodes(starter: String) throws {
        guard (starter != "mpirun") == TestMPI.isMPICH else { return }
        let site = try makeSite("slurm", app: "echo node=$SLURMD_NODENAME; sleep 0.3", platform: "generic-slurm")
        let template = try read(site.root + "/job-template.sh")
        #expect(
            template.contains("\nexec srun --ntasks-per-node 1 --nodes {{ num_nodes }} --cpu-bind none {{ launcher }}"))
        let line: String? =
            starter == "hydra"
            ? "exec mpiexec.hydra -genvnone -n {{ num_nodes }} -ppn 1 {{ launcher }} {{ launcher_args }}"
            : starter == "mpirun"
                ? "exec mpirun -n {{ num_nodes }} --map-by ppr:1:node --bind-to none {{ launcher }} {{ launcher_args }}"
                : nil
        if let line {
            let lines = template.split(separator: "\n").map { $0.hasPrefix("exec srun") ? line : String($0) }
            try lines.joined(separator: "\n").write(
                toFile: site.root + "/job-template.sh", atomically: true, encoding: .utf8)
        }
        var count = 12
        if starter == "hydra" {
            try edit(
                site.root,
                [
                    "mpi_launcher":
                        #""mpiexec.hydra -genvnone -n {{ ranks }} -ppn {{ ranks_per_node }} -hosts {{ hosts }} {{ command }}""#
                ])
            try submitWideJob(site)
            count += 1
        }
        try submitJobs(site, 12)
        let watcher = try watchThenQueue(
            site, jobs: count, ["-n", "2", "-t", "5", "-q", "debug", "-A", "default"],
            env: mpiRootEnvironment.merging(["SLURM_MPI_TYPE": "pmi2"]) { a, _ in a })
        try waitUntil("the batch job ends", timeout: 90) { batchJob(site, 1)?.state == .finished }
        let job = try #require(batchJob(site, 1))
        #expect(job.outcome == .completed && job.exitCode == 0, "\(job.message ?? "")\n\(watcher.log)")
        #expect(job.startTime != nil && job.endTime != nil && job.history.map(\.state).contains(.running))
        #expect(finishedJobs(site) == count, "\(watcher.log)")
        var nodes = Set<String>()
        for i in 0..<12 { nodes.insert(try read(site.dataPath + "/w/\(i)/job.out").trimmingCharacters(in: .newlines)) }
        #expect(nodes == ["node=n1", "node=n2"], "one launcher rank on each of the allocation's two nodes")
        if starter == "hydra" {
            try expectWideRanksOnBothNodes(site)
        }
        #expect(watcher.terminate() == 0)
    }

    /// As on Perlmutter and Frontier: the batch job starts the MPICH launcher with `srun --ntasks-per-node 1
    /// --mpi=pmi2` (PMI from Slurm, no mpiexec), and a 2-node job is started by `srun ... --overlap` inside that
    /// step, the way the Perlmutter presets write it. Run in dev/test's MPICH phase (`BALSAM_TEST_MPI=mpich`).
    @Test(.enabled(if: slurmAvailable && TestMPI.isMPICH))
    func srunStartsTheMPICHLauncherAndItsMultiNodeJobs() throws {
        let site = try makeSite("slurm", app: "echo node=$SLURMD_NODENAME; sleep 0.3", platform: "generic-slurm")
        let launcher = CommandTemplate.shellQuote(binDirectory + "/balsam-launcher")
        try """
        #!/bin/bash
        export BALSAM_SITE={{ site_path }}
        cd {{ site_path }}
        exec srun --ntasks-per-node 1 --nodes {{ num_nodes }} --mpi=pmi2 --cpu-bind none \(launcher) {{ launcher_args }}
        """.write(toFile: site.root + "/job-template.sh", atomically: true, encoding: .utf8)
        try edit(
            site.root,
            [
                "mpi_launcher":
                    #""srun -n {{ ranks }} --ntasks-per-node {{ ranks_per_node }} --nodelist {{ hosts }} --nodes {{ num_nodes }} --overlap --mpi=pmi2 {{ command }}""#
            ])
        try submitJobs(site, 8)
        try submitWideJob(site)
        let watcher = try watchThenQueue(site, jobs: 9, ["-n", "2", "-t", "5", "-q", "debug", "-A", "default"])
        try waitUntil("the batch job ends", timeout: 90) { batchJob(site, 1)?.state == .finished }
        let job = try #require(batchJob(site, 1))
        #expect(job.outcome == .completed && job.exitCode == 0, "\(job.message ?? "")\n\(watcher.log)")
        #expect(finishedJobs(site) == 9)
        var nodes = Set<String>()
        for i in 0..<8 { nodes.insert(try read(site.dataPath + "/w/\(i)/job.out").trimmingCharacters(in: .newlines)) }
        #expect(nodes == ["node=n1", "node=n2"], "one launcher rank on each of the allocation's two nodes")
        try expectWideRanksOnBothNodes(site)
        #expect(watcher.terminate() == 0)
    }

    /// A Slurm preset's own job template and launch line on the test cluster, whose nodes declare GPUs (gres
    /// `gpu`, dev/slurm-start): the batch job asks for whole nodes (and their GPUs), a 2-node job and a job
    /// holding a whole node start with the preset's `srun` line inside the launcher's step, and single-rank jobs
    /// are packed (with a GPU each, on a GPU preset). Changed from the preset only where the emulated machine differs: the node's size
    /// (2 CPUs, one hardware thread each, one socket, none reserved), the launcher's path, and the PMI (`SLURM_MPI_TYPE=pmi2` in sbatch's
    /// environment, as Cray's Slurm defaults to its own). Run in dev/test's MPICH phase.
    @Test(.enabled(if: slurmAvailable && TestMPI.isMPICH), arguments: ["perlmutter-gpu", "frontier", "perlmutter-cpu"])
    func aSlurmPresetRunsItsJobsOnTheTestCluster(platform: String) throws {
        let site = try makeSite("slurm", app: "echo node=$SLURMD_NODENAME", platform: platform)
        let variable = platform == "frontier" ? "ROCR_VISIBLE_DEVICES" : "CUDA_VISIBLE_DEVICES"
        try edit(
            site.root,
            ["cpus_per_node": "2", "reserved_cpus": "[]", "cpu_siblings_offset": "null", "sockets_per_node": "1"])
        let template = try read(site.root + "/job-template.sh")
        let gpus = platform == "perlmutter-cpu" ? "0" : "1"
        #expect(template.contains("#SBATCH --exclusive"), "the launcher counts every CPU of its nodes")
        if gpus != "0" { #expect(template.contains("#SBATCH --gpus-per-node="), "the batch job asks for GPUs") }
        try template.replacingOccurrences(
            of: "{{ launcher }}", with: CommandTemplate.shellQuote(binDirectory + "/balsam-launcher")
        ).write(toFile: site.root + "/job-template.sh", atomically: true, encoding: .utf8)
        try #require(
            try balsam(
                [
                    "app", "create", "gpus", "--command-template",
                    "sh -c 'echo rank=$PMI_RANK of $PMI_SIZE on $SLURMD_NODENAME gpu=$\(variable)'",
                ],
                site: site.root
            ).status == 0)
        let jobs = [
            ["-a", "gpus", "-w", "wide", "-n", "2", "-g", gpus],
            ["-a", "gpus", "-w", "full", "-rpn", "2", "-g", gpus == "0" ? "0" : "2"],
            ["-a", "gpus", "-w", "one/0", "-g", gpus], ["-a", "gpus", "-w", "one/1", "-g", gpus],
        ]
        for job in jobs {
            let r = try balsam(["submit"] + job, site: site.root)
            try #require(r.status == 0, "\(r.stderr)")
        }
        let queue = platform == "frontier" ? "batch" : "debug"
        let watcher = try watchThenQueue(
            site, jobs: 4, ["-n", "2", "-t", "5", "-q", queue, "-A", "default"], env: ["SLURM_MPI_TYPE": "pmi2"])
        try waitUntil("the batch job ends", timeout: 120) { batchJob(site, 1)?.state == .finished }
        let job = try #require(batchJob(site, 1))
        #expect(job.outcome == .completed && job.exitCode == 0, "\(job.message ?? "")\n\(watcher.log)")
        #expect(finishedJobs(site) == 4, "\(watcher.log)")
        func lines(_ workdir: String) -> [String] {
            // (srun may add lines of its own: the emulated nodes cannot bind CPUs or GPUs.)
            ((try? read(site.dataPath + "/" + workdir + "/job.out")) ?? "").split(separator: "\n").map(String.init)
                .filter { $0.hasPrefix("rank=") }
        }
        let wide = Set(lines("wide").map { $0.components(separatedBy: " gpu=")[0] })
        #expect(
            wide == ["rank=0 of 2 on n1", "rank=1 of 2 on n2"] || wide == ["rank=0 of 2 on n2", "rank=1 of 2 on n1"],
            "\(lines("wide"))")
        #expect(Set(lines("full").map { $0.prefix(11) }) == ["rank=0 of 2", "rank=1 of 2"], "\(lines("full"))")
        // Packed single-rank jobs: the launcher names one GPU each (no srun).
        let packed = ["one/0", "one/1"].flatMap(lines)
        let gpu = gpus == "0" ? #"gpu=$"# : #"gpu=[0-7]$"#
        #expect(
            packed.count == 2 && packed.allSatisfy { $0.range(of: gpu, options: .regularExpression) != nil },
            "\(packed)")
        #expect(watcher.terminate() == 0)
    }

    @Test(.enabled(if: slurmAvailable && FileManager.default.isExecutableFile(atPath: "/usr/bin/qsub")))
    func aPBSBatchJobThroughTheTorqueWrappersRunsAcrossTwoNodesAndOneIsCancelled() throws {
        // Made from the generic PBS platform preset.
        let site = try makeSite("pbs", app: "echo node=$SLURMD_NODENAME; sleep 0.3", platform: "generic-pbs")
        try submitJobs(site, 8)
        let watcher = try watchThenQueue(site, jobs: 8, ["-n", "2", "-t", "5"], env: mpiRootEnvironment)
        try waitUntil("the batch job ends", timeout: 90) { batchJob(site, 1)?.state == .finished }
        let job = try #require(batchJob(site, 1))
        #expect(job.outcome == .completed, "\(job.message ?? "")\n\(watcher.log)")
        #expect(finishedJobs(site) == 8)
        var nodes = Set<String>()
        for i in 0..<8 { nodes.insert(try read(site.dataPath + "/w/\(i)/job.out").trimmingCharacters(in: .newlines)) }
        #expect(nodes == ["node=n1", "node=n2"], "qsub -l select=2 gave two nodes")

        try #require(
            try balsam(["app", "create", "long", "--command-template", "sleep 300"], site: site.root).status == 0)
        let lines = "{\"app\":\"long\",\"workdir\":\"long/0\"}\n"
        try #require(try balsamSubmit(["--from", "-"], site: site.root, stdin: Data(lines.utf8)).status == 0)
        #expect(try queueSubmit(site, ["-n", "1", "-t", "5"]).status == 0)
        try waitUntil("batch job 2 runs its job", timeout: 60) {
            batchJob(site, 2)?.state == .running && leasedJobs(site) > 0
        }
        #expect(try balsam(["queue", "rm", "2"], site: site.root).status == 0)
        try waitUntil("batch job 2 ends", timeout: 60) { batchJob(site, 2)?.state == .finished }
        #expect(batchJob(site, 2)?.outcome == .cancelled, "\(batchJob(site, 2)?.message ?? "")")
        #expect(watcher.terminate() == 0)
    }

    @Test(.enabled(if: slurmAvailable)) func queuedAndRunningSlurmBatchJobsAreCancelled() throws {
        let site = try makeSite("slurm", app: "sleep 300")
        try submitJobs(site, 1)
        // Something else holds every node, so the first batch job waits in the queue.
        let blocker = try run(
            "/usr/bin/sbatch", ["--parsable", "-N", "4", "--exclusive", "-o", "/dev/null", "--wrap", "sleep 300"])
        try #require(blocker.status == 0, "\(blocker.stderr)")
        let blockerID = blocker.stdout.trimmingCharacters(in: .whitespacesAndNewlines)
        defer { _ = try? run("/usr/bin/scancel", [blockerID]) }
        #expect(try queueSubmit(site, ["-n", "1", "-t", "5"]).status == 0)
        let watcher = try WatchProcess(site: site.root, logDirectory: dir.path, env: mpiRootEnvironment)
        try waitUntil("batch job 1 is queued", timeout: 30) { batchJob(site, 1)?.state == .queued }
        #expect(try balsam(["queue", "rm", "1"], site: site.root).status == 0)
        try waitUntil("batch job 1 ends", timeout: 30) { batchJob(site, 1)?.state == .finished }
        #expect(batchJob(site, 1)?.outcome == .cancelled && batchJob(site, 1)?.startTime == nil)

        _ = try run("/usr/bin/scancel", [blockerID])
        #expect(try queueSubmit(site, ["-n", "1", "-t", "5"]).status == 0)
        try waitUntil("batch job 2 runs its job", timeout: 60) {
            batchJob(site, 2)?.state == .running && leasedJobs(site) > 0
        }
        #expect(try balsam(["queue", "rm", "2"], site: site.root).status == 0)
        try waitUntil("batch job 2 ends", timeout: 60) { batchJob(site, 2)?.state == .finished }
        let second = try #require(batchJob(site, 2))
        #expect(
            second.outcome == .cancelled && second.startTime != nil && second.endTime != nil, "\(second.message ?? "")")
        let left = try run("/usr/bin/squeue", ["-h", "-j", second.schedulerID ?? "0", "-o", "%T"])
        #expect(!left.stdout.contains("RUNNING") && !left.stdout.contains("PENDING"))
        #expect(watcher.terminate() == 0)
    }

    @Test(.enabled(if: slurmAvailable)) func aSlurmBatchJobPastItsTimeLimitEndsTimedOut() throws {
        let site = try makeSite("slurm")
        try "#!/bin/bash\n# Ignores the launcher: runs past its time limit.\nsleep 600\n".write(
            toFile: site.root + "/job-template.sh", atomically: true, encoding: .utf8)
        #expect(try queueSubmit(site, ["-n", "1", "-t", "1"]).status == 0)
        let watcher = try WatchProcess(site: site.root, logDirectory: dir.path, env: mpiRootEnvironment)
        try waitUntil("the batch job ends", timeout: 150) { batchJob(site, 1)?.state == .finished }
        let job = try #require(batchJob(site, 1))
        #expect(job.outcome == .timedOut, "\(job.message ?? "")")
        #expect(job.message?.contains("timed out at its wall time of 1 min") == true)
        #expect(watcher.terminate() == 0)
    }

    @Test(.enabled(if: slurmAvailable)) func aRestartedWatcherFindsItsSubmissionInsteadOfSubmittingTwice() throws {
        let site = try makeSite("slurm")
        // The watcher died between the scheduler's answer and recording it: the record says a submission began.
        var record = BatchJob(project: "default", queue: "debug", numNodes: 1, wallTimeMinutes: 5)
        record = try BatchJobStore(site: site).create(record)
        record.submitTime = Timestamp.now()
        try BatchJobStore(site: site).save(record)
        let name = record.schedulerName(site: site)
        let submitted = try run("/usr/bin/sbatch", ["--parsable", "-J", name, "-o", "/dev/null", "--wrap", "sleep 60"])
        try #require(submitted.status == 0, "\(submitted.stderr)")
        let id = submitted.stdout.trimmingCharacters(in: .whitespacesAndNewlines)
        defer { _ = try? run("/usr/bin/scancel", [id]) }
        let once = try run(binDirectory + "/balsam-watch", ["--site", site.root, "--once"])
        #expect(once.status == 0, "\(once.stderr)")
        let job = try #require(batchJob(site, 1))
        #expect(job.schedulerID == id && (job.state == .queued || job.state == .running), "\(job.message ?? "")")
        let named = try run("/usr/bin/squeue", ["-h", "--name", name, "-o", "%i"])
        #expect(named.stdout.split(separator: "\n") == [Substring(id)], "exactly one job of that name")
    }

    /// A batch job the elastic queue asked for fails at once (here a job template that exits 3; in the field a
    /// launcher that cannot start): it asks again after its period doubled for each failure in a row, never each
    /// period (it asked for 120 batch jobs in two minutes before).
    @Test func theElasticQueueWaitsLongerAfterEachFailedBatchJob() throws {
        let site = try makeSite("local", app: "true")
        try "#!/bin/bash\necho 'cannot start' >&2\nexit 3\n".write(
            toFile: site.root + "/job-template.sh", atomically: true, encoding: .utf8)
        var text = try read(site.settingsPath)
        text = text.replacingOccurrences(
            of: "elastic_queue: null",
            with: """
                elastic_queue:
                  service_period: 0.2
                  submit_project: local
                  submit_queue: local
                  use_backfill: false
                  min_num_nodes: 1
                  max_num_nodes: 1
                  min_wall_time_min: 1
                  max_wall_time_min: 5
                  max_queued_jobs: 1
                """)
        try text.write(toFile: site.settingsPath, atomically: true, encoding: .utf8)
        try submitJobs(site, 3)
        let watcher = try WatchProcess(site: site.root, logDirectory: dir.path)
        defer { _ = watcher.terminate() }
        // The warning for the third failure in a row says it waits 8 s: no fourth batch job can exist yet.
        try waitUntil("three batch jobs failed in a row", timeout: 60) {
            watcher.log.contains("its last 3 batch job(s) failed")
        }
        let asked = try batchJobs(site)
        #expect(asked.count == 3 && asked.allSatisfy { $0.outcome == .failed }, "\(asked.map(\.json))")
        #expect(watcher.log.contains("asking again 2 s after") && watcher.log.contains("asking again 8 s after"))
    }

    @Test(.enabled(if: slurmAvailable)) func theElasticQueueServesTheBacklogThenStops() throws {
        let site = try makeSite("slurm", app: "sleep 0.2")
        var text = try read(site.settingsPath)
        text = text.replacingOccurrences(
            of: "elastic_queue: null",
            with: """
                elastic_queue:
                  service_period: 0.5
                  submit_project: default
                  submit_queue: debug
                  use_backfill: true
                  min_num_nodes: 1
                  max_num_nodes: 2
                  min_wall_time_min: 1
                  max_wall_time_min: 5
                  max_queue_wait_time_min: 10
                  max_queued_jobs: 1
                """)
        try text.write(toFile: site.settingsPath, atomically: true, encoding: .utf8)
        // Every node busy: no backfill window, so nothing is asked for however large the backlog.
        let blocker = try run(
            "/usr/bin/sbatch", ["--parsable", "-N", "4", "--exclusive", "-o", "/dev/null", "--wrap", "sleep 300"])
        try #require(blocker.status == 0, "\(blocker.stderr)")
        let blockerID = blocker.stdout.trimmingCharacters(in: .whitespacesAndNewlines)
        defer { _ = try? run("/usr/bin/scancel", [blockerID]) }
        try waitUntil("the blocker runs", timeout: 30) {
            (try? run("/usr/bin/squeue", ["-h", "-j", blockerID, "-o", "%T"]))?.stdout.contains("RUNNING") == true
        }
        try submitJobs(site, 10)
        // The cluster's PMI for the launcher's srun (the test cluster's MpiDefault is none).
        let watcher = try WatchProcess(
            site: site.root, ["--verbose"], logDirectory: dir.path,
            env: mpiRootEnvironment.merging(["SLURM_MPI_TYPE": "pmi2"]) { a, _ in a })
        try waitUntil("two elastic rounds without a window", timeout: 30) {
            watcher.log.components(separatedBy: "no backfill window").count >= 3
        }
        #expect(try batchJobs(site).isEmpty)
        _ = try run("/usr/bin/scancel", [blockerID])
        try waitUntil("every job finished", timeout: 120) { finishedJobs(site) == 10 }
        let asked = try batchJobs(site)
        #expect(asked.count == 1 && asked.first?.origin == "elastic queue", "\(asked.map(\.json))")
        #expect(asked.first?.numNodes == 2 && asked.first?.wallTimeMinutes == 5)
        try waitUntil("the elastic batch job ends (its launcher idles out)", timeout: 60) {
            batchJob(site, 1)?.state == .finished
        }
        // With the backlog served, later rounds ask for nothing more.
        let rounds = watcher.log.components(separatedBy: "nothing to ask for").count
        try waitUntil("three more elastic rounds", timeout: 30) {
            watcher.log.components(separatedBy: "nothing to ask for").count >= rounds + 3
        }
        #expect(try batchJobs(site).count == 1)
        #expect(watcher.terminate() == 0)
    }
}
