import Foundation
import MPILauncher
import Spool
import TestSupport
import Testing

/// A job of app `app` with this shape, for placement and launch-command tests.
func shapedJob(
    nodes: Int = 1, rpn: Int = 1, tpr: Int = 1, tpc: Int = 1, gpr: Double = 0, npc: Int = 1, app: String = "a"
) -> Job {
    var job = Job(workdir: "w", app: app)
    job.numNodes = nodes
    job.ranksPerNode = rpn
    job.threadsPerRank = tpr
    job.threadsPerCore = tpc
    job.gpusPerRank = gpr
    job.nodePackingCount = npc
    return job
}

@Suite struct PlacementTests {

    func nodes(_ n: Int, cpus: Int = 16, gpus: [String] = []) -> [Node] {
        (0..<n).map { Node(index: $0, host: "h\($0)", cpus: cpus, gpus: gpus) }
    }

    @Test("reserved CPUs are never handed out, and a node counts only the others")
    func reservedCPUsAreNeverHandedOut() throws {
        let node = Node(index: 0, host: "h0", cpus: 8, gpus: [], reserved: [0, 4])
        #expect(node.cpus == 6 && node.cpuIDs == [1, 2, 3, 5, 6, 7])
        var a = Allocation(nodes: [node])
        let two = Need(shapedJob(rpn: 2, npc: 8), packing: true)
        let placed = (0..<3).compactMap { _ in a.place(two) }
        #expect(placed.map(\.cpuIDs) == [[1, 2], [3, 5], [6, 7]])
        #expect(a.place(two) == nil, "six CPUs are taken")
        a.release(try #require(placed.dropFirst().first))
        let again = a.place(two)
        #expect(again?.cpuIDs == [3, 5])
        #expect(Need(shapedJob(rpn: 7), packing: true).cpus > node.cpus, "a 7-CPU job cannot fit on 6")
    }

    /// Random places and releases on a node with reserved CPUs (and on one of thousands of CPUs), against a
    /// model: each job gets the lowest free IDs, never a reserved or held one.
    @Test(arguments: [(130, [0, 64, 65, 129]), (5000, [1, 4999])])
    func cpuIDsFollowTheLowestFreeModel(cpus: Int, reserved: [Int]) throws {
        let node = Node(index: 0, host: "h0", cpus: cpus, gpus: [], reserved: reserved)
        var a = Allocation(nodes: [node])
        var free = Set(node.cpuIDs)
        var held: [Assignment] = []
        var rng = SplitMix(seed: 25)
        for _ in 0..<2000 {
            if !held.isEmpty && Int.random(in: 0..<3, using: &rng) == 0 {
                let k = Int.random(in: 0..<held.count, using: &rng)
                let gone = held.remove(at: k)
                a.release(gone)
                free.formUnion(gone.cpuIDs)
            } else {
                let n = Int.random(in: 1...9, using: &rng)
                let need = Need(shapedJob(rpn: n, npc: 1000), packing: true)
                guard let placed = a.place(need) else {
                    #expect(free.count < n || held.count >= 1000, "room for \(n) of \(free.count) free")
                    continue
                }
                let expected = Array(free.sorted().prefix(n))
                #expect(placed.cpuIDs == expected, "lowest free first")
                free.subtract(placed.cpuIDs)
                held.append(placed)
            }
        }
        #expect(!held.flatMap(\.cpuIDs).contains { reserved.contains($0) })
    }

    @Test func singleNodeJobsArePackedFirstFitByOccupancy() {
        var a = Allocation(nodes: nodes(2))
        let quarter = Need(shapedJob(npc: 4), packing: true)
        let places = (0..<8).compactMap { _ in a.place(quarter)?.nodes }
        #expect(places == [[0], [0], [0], [0], [1], [1], [1], [1]])
        #expect(a.place(quarter) == nil, "two nodes hold eight jobs of a quarter node")
        // A half-node job fits once two quarters are released from one node.
        let half = Need(shapedJob(npc: 2), packing: true)
        #expect(a.place(half) == nil)
        a.release(Assignment(nodes: [1], cpus: 1, gpus: [], occupancy: 0.25))
        a.release(Assignment(nodes: [1], cpus: 1, gpus: [], occupancy: 0.25))
        #expect(a.place(half)?.nodes == [1])
        // Without packing every job takes a whole node.
        #expect(Need(shapedJob(npc: 4), packing: false).occupancy == 1)
    }

    @Test func cpusLimitPackingAndNeverFittingJobsAreRecognized() {
        var a = Allocation(nodes: nodes(1, cpus: 4))
        let need = Need(shapedJob(rpn: 2, tpr: 2, npc: 8), packing: true)
        #expect(need.cpus == 4)
        #expect(a.place(need) != nil)
        #expect(a.place(need) == nil, "the node's 4 CPUs are taken although occupancy is 1/8")
        #expect(!a.canEverFit(Need(shapedJob(rpn: 8), packing: true)), "8 CPUs on a 4-CPU node")
        #expect(!a.canEverFit(Need(shapedJob(nodes: 2), packing: true)), "2 nodes in a 1-node allocation")
        #expect(!a.canEverFit(Need(shapedJob(gpr: 1), packing: true)), "a GPU on a node without GPUs")
    }

    @Test func multiNodeJobsTakeWholeIdleNodesWhileOthersKeepRunning() {
        var a = Allocation(nodes: nodes(4))
        let small = a.place(Need(shapedJob(npc: 4), packing: true))
        #expect(small?.nodes == [0])
        let wide = a.place(Need(shapedJob(nodes: 2), packing: true))
        #expect(wide?.nodes == [1, 2], "node 0 is busy, so the first two idle nodes")
        #expect(a.place(Need(shapedJob(nodes: 2), packing: true)) == nil, "only node 3 is idle")
        #expect(a.place(Need(shapedJob(npc: 4), packing: true))?.nodes == [0], "small jobs still pack beside")
        if let wide { a.release(wide) }
        #expect(a.place(Need(shapedJob(nodes: 4), packing: true)) == nil, "node 0 is still in use")
        #expect(a.place(Need(shapedJob(nodes: 2), packing: true))?.nodes == [1, 2])
    }

    @Test func gpusAreAssignedWithoutOverlapAndReturned() {
        var a = Allocation(nodes: nodes(1, gpus: ["0", "1", "2", "3"]))
        let one = a.place(Need(shapedJob(gpr: 1, npc: 4), packing: true))
        let two = a.place(Need(shapedJob(rpn: 2, gpr: 1, npc: 4), packing: true))
        #expect(one?.gpus == ["0"] && two?.gpus == ["1", "2"])
        #expect(a.place(Need(shapedJob(rpn: 2, gpr: 1, npc: 4), packing: true)) == nil, "one GPU is left")
        if let one { a.release(one) }
        #expect(a.place(Need(shapedJob(rpn: 2, gpr: 1, npc: 4), packing: true))?.gpus == ["0", "3"])
    }

    @Test func slurmNodeListsExpand() {
        #expect(
            SchedulerNodes.expandSlurm("nid[008-010,012],login1") == ["nid008", "nid009", "nid010", "nid012", "login1"])
        #expect(SchedulerNodes.expandSlurm("a1,b[1-2]") == ["a1", "b1", "b2"])
        #expect(SchedulerNodes.hosts(environment: ["LSB_HOSTS": "h1 h1 h2"])?.hosts == ["h1", "h2"])
        #expect(
            SchedulerNodes.hosts(environment: ["COBALT_PARTNAME": "3835-3837,12"])?.hosts == [
                "nid03835", "nid03836", "nid03837", "nid00012",
            ])
    }
}

@Suite struct CommandTests {
    @Test func singleAndMultiNodeCommandsAndEnvironment() throws {
        let dir = try TempDir()
        let site = try makeSite(dir)
        var app = try App(name: "sim", commandTemplate: "simulate {{ n }}", parameters: ["n": .init(required: true)])
        app.environmentVariables = ["SIM_MODE": "fast"]
        try site.createApp(app)
        try "module load x\n".write(toFile: site.appsPath + "/sim/shell-preamble", atomically: false, encoding: .utf8)
        app = try App.load(directory: site.appsPath + "/sim", name: "sim")
        #expect(app.hooks.contains(.shellPreamble), "a readable preamble counts; it is sourced, not run")
        var settings = SiteSettings.Launcher()
        settings.gpuIDs = ["0", "1"]
        let env = ["PATH": "/bin", "OMPI_COMM_WORLD_RANK": "1", "PMIX_RANK": "1", "OMPI_ALLOW_RUN_AS_ROOT": "1"]
        let command = TaskCommand(site: site, settings: settings)
        var job = Job(workdir: "j", app: "sim")
        job.id = "01J00000000000000000000000"
        job.parameters = ["n": .int(3)]
        job.threadsPerRank = 4
        let nodes = [
            Node(index: 0, host: "n0", cpus: 8, gpus: ["0", "1"]), Node(index: 1, host: "n1", cpus: 8, gpus: []),
        ]

        let single = try command.spec(
            job, app: app, assignment: Assignment(nodes: [0], cpus: 4, gpus: ["1"], occupancy: 1), nodes: nodes)
        #expect(single.script == ". \(site.appsPath)/sim/shell-preamble && simulate 3")
        #expect(single.environment["CUDA_VISIBLE_DEVICES"] == "1" && single.environment["OMP_NUM_THREADS"] == "4")
        #expect(single.environment["SIM_MODE"] == "fast" && single.environment["BALSAM_JOB_ID"] == job.id)
        #expect(single.environment["PATH"] == nil, "the node's own environment is the base, not rank 0's")
        let base = TaskCommand.baseEnvironment(env)
        #expect(base["OMPI_COMM_WORLD_RANK"] == nil && base["PMIX_RANK"] == nil)
        #expect(base["OMPI_ALLOW_RUN_AS_ROOT"] == "1" && base["PATH"] == "/bin")

        job.numNodes = 2
        job.ranksPerNode = 4
        job.launchParams = ["bind-to": "core"]
        let wide = try command.spec(
            job, app: app, assignment: Assignment(nodes: [0, 1], cpus: 0, gpus: [], occupancy: 1), nodes: nodes)
        #expect(
            wide.script.hasSuffix(
                "mpirun -n 8 --map-by ppr:4:node --bind-to none --host n0:4,n1:4 -x BALSAM_JOB_DIR -x BALSAM_JOB_ID "
                    + "-x OMP_NUM_THREADS -x SIM_MODE --bind-to core simulate 3"))

        settings.mpiLauncher = "srun"
        let srun = try TaskCommand(site: site, settings: settings).spec(
            job, app: app, assignment: Assignment(nodes: [0, 1], cpus: 0, gpus: [], occupancy: 1), nodes: nodes)
        #expect(
            srun.script.hasSuffix(
                "srun -n 8 --ntasks-per-node 4 --nodelist n0,n1 --nodes 2 --cpus-per-task 4 --cpu-bind none --overlap --bind-to core simulate 3"
            ))
        settings.mpiLauncher = "launch {{ rank }}"
        #expect(throws: SpoolError.self) {
            try TaskCommand(site: site, settings: settings).spec(
                job, app: app, assignment: Assignment(nodes: [0, 1], cpus: 0, gpus: [], occupancy: 1), nodes: nodes)
        }
    }

    @Test func messagesRoundTrip() throws {
        let messages: [Message] = [
            .start(TaskSpec(id: "a", directory: "/d", script: "echo 'x'", environment: ["K": "v=1"])),
            .kill(id: "a"), .stop, .ended(TaskRunner.Ended(id: "a", status: 143, error: "why")), .stopped,
        ]
        for message in messages { #expect(try Message(bytes: message.encoded()) == message) }
        #expect(throws: SpoolError.self) { try Message(bytes: Array("{}".utf8)) }
    }
}

/// A job's environment never carries what the MPI runtime told the launcher's rank about itself (issue 32,
/// item 6: `PALS_*` under Cray PALS) nor the devices the launcher's own step was given, and keeps everything else
/// of the node's.
@Suite struct BaseEnvironmentTests {
    @Test func runtimeVariablesOfEveryProcessManagerAreDroppedOthersKept() {
        var rng = SplitMix(seed: 32)
        let runtime = [
            "OMPI_COMM_WORLD_RANK", "PMIX_RANK", "PMI_RANK", "PMI_FD", "PRTE_MCA_x", "OPAL_PREFIX", "HYDRA_CONTROL_FD",
            "MPI_LOCALRANKID", "MPI_LOCALNRANKS", "PALS_RANKID", "PALS_NODEID", "PALS_LOCAL_RANKID", "PALS_APID",
        ]
        let kept =
            [
                "PATH", "HOME", "SLURMD_NODENAME", "OMPI_ALLOW_RUN_AS_ROOT", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM",
                "MPICH_GPU_SUPPORT_ENABLED", "PALSX", "CUDA_DEVICE_ORDER", "PBS_NODEFILE",
            ] + TaskCommand.deviceVariables.sorted()
        for _ in 0..<200 {
            var env: [String: String] = [:]
            for name in runtime + kept where rng.next() % 2 == 0 { env[name] = String(rng.next() % 100) }
            // Names made from the prefixes with random tails, which must go too.
            let prefix = TaskCommand.mpiRuntimePrefixes[Int(rng.next() % UInt64(TaskCommand.mpiRuntimePrefixes.count))]
            env[prefix + "X\(rng.next() % 1000)"] = "1"
            let base = TaskCommand.baseEnvironment(env)
            for (name, value) in env {
                let runtimeName =
                    TaskCommand.mpiRuntimePrefixes.contains { name.hasPrefix($0) }
                    && !name.hasPrefix("OMPI_ALLOW_RUN_AS_ROOT") || TaskCommand.deviceVariables.contains(name)
                #expect(base[name] == (runtimeName ? nil : value), "\(name)")
            }
            #expect(base.keys.allSatisfy { !$0.hasPrefix("PALS_") && !$0.hasPrefix("PMI_") })
        }
    }
}

/// Which process's view of its rank and node a launcher trusts (issue 32, items 2 and 7), over generated
/// environments.
@Suite struct RankEnvironmentTests {
    @Test func aWorldThatIsNotTheStartersIsRefusedByTheFirstVariableSet() {
        var rng = SplitMix(seed: 3207)
        let names = ["OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "SLURM_STEP_NUM_TASKS"]
        for _ in 0..<500 {
            var env: [String: String] = [:]
            for name in names where rng.next() % 2 == 0 { env[name] = String(rng.next() % 4) }
            let size = 1 + Int(rng.next() % 3)
            let said = names.first { env[$0] != nil }.flatMap { env[$0] }.flatMap { Int($0) }
            let refused = Launch.worldMismatch(size: size, library: "libX", env)
            #expect((refused != nil) == (said.map { $0 > 1 && $0 != size } ?? false), "\(env) size \(size)")
            if let refused, env["OMPI_COMM_WORLD_SIZE"] == nil, env["PMI_SIZE"] == nil {
                #expect(refused.contains("srun --mpi=pmi2"), "srun's PMI is named: \(refused)")
            }
        }
    }

    @Test func slurmsNodeNameIsTrustedOnlyWhenTheVariablesAreTheRanksOwn() {
        var rng = SplitMix(seed: 3217)
        for _ in 0..<300 {
            var env: [String: String] = [:]
            if rng.next() % 4 != 0 { env["SLURMD_NODENAME"] = "n\(rng.next() % 3)" }
            if rng.next() % 2 == 0 { env["PMI_RANK"] = String(rng.next() % 2) }
            if rng.next() % 2 == 0 { env["SLURM_PROCID"] = String(rng.next() % 2) }
            let own = env["PMI_RANK"] == nil || env["SLURM_PROCID"] == nil || env["PMI_RANK"] == env["SLURM_PROCID"]
            let expected = env["SLURMD_NODENAME"].flatMap { own ? $0 : nil } ?? Launch.nodeName([:])
            #expect(Launch.nodeName(env) == expected, "\(env)")
        }
        let base = TaskCommand.baseEnvironment(["SLURM_JOB_ID": "7", "PATH": "/bin"])
        #expect(base["SLURM_OVERLAP"] == "1", "a job's srun shares the launcher's nodes")
        #expect(TaskCommand.baseEnvironment(["PATH": "/bin"])["SLURM_OVERLAP"] == nil)
    }
}

@Suite struct TaskRunnerTests {
    func waitForEnd(_ runner: TaskRunner, timeout: Double = 20) -> [TaskRunner.Ended] {
        let deadline = Date().addingTimeInterval(timeout)
        var ended: [TaskRunner.Ended] = []
        while runner.count > 0 && Date() < deadline {
            ended += runner.poll()
            usleep(5_000)
        }
        return ended
    }

    @Test func jobsRunInTheirDirectoryAndAppendTheirOutput() throws {
        let dir = try TempDir()
        let runner = TaskRunner(grace: 0.5, guardPath: binDirectory + "/balsam-task-guard")
        let env = ["PATH": "/usr/bin:/bin", "X": "42"]
        #expect(
            runner.start(TaskSpec(id: "a", directory: dir.path, script: "echo $X; pwd; exit 3", environment: env))
                == nil)
        #expect(waitForEnd(runner) == [TaskRunner.Ended(id: "a", status: 3, error: nil)])
        #expect(runner.start(TaskSpec(id: "a", directory: dir.path, script: "echo again", environment: env)) == nil)
        #expect(waitForEnd(runner).first?.status == 0)
        let out = try read(dir.path + "/job.out")
        #expect(out.hasPrefix("42\n\(dir.path)\n"))
        #expect(out.contains("==> balsam-launcher: run again at ") && out.hasSuffix("again\n"))

        #expect(runner.start(TaskSpec(id: "b", directory: dir.path + "/nope", script: "true", environment: env)) == nil)
        let missing = waitForEnd(runner).first
        #expect(missing?.status == 126, "job.out cannot be opened in a missing directory")
        #expect(missing?.error?.contains("nope/job.out") == true, "\(String(describing: missing))")

        // Several at once, each reported once.
        for i in 0..<20 {
            #expect(
                runner.start(TaskSpec(id: "m\(i)", directory: dir.path, script: "exit \(i)", environment: env)) == nil)
        }
        let all = waitForEnd(runner)
        #expect(Set(all.map(\.id)) == Set((0..<20).map { "m\($0)" }))
        #expect(all.allSatisfy { $0.status == Int32($0.id.dropFirst())! })
    }

    @Test func aKillStopsTheWholeProcessGroupAfterTheGracePeriod() throws {
        let dir = try TempDir()
        let runner = TaskRunner(grace: 0.3, guardPath: binDirectory + "/balsam-task-guard")
        // The job ignores SIGTERM and starts a child that does too: only SIGKILL of the group ends them.
        let script = "trap '' TERM; (trap '' TERM; sleep 60) & echo $! > child.pid; sleep 60"
        #expect(
            runner.start(TaskSpec(id: "k", directory: dir.path, script: script, environment: ["PATH": "/usr/bin:/bin"]))
                == nil)
        let pidFile = dir.path + "/child.pid"
        let deadline = Date().addingTimeInterval(10)
        while (try? read(pidFile))?.isEmpty ?? true, Date() < deadline { usleep(5_000) }
        let child = try #require(Int32(try read(pidFile).trimmingCharacters(in: .whitespacesAndNewlines)))
        runner.kill("k")
        let ended = waitForEnd(runner)
        #expect(ended.first?.status == 128 + SIGKILL)
        // Gone, or a zombie waiting for whoever inherited it to reap it: either way no longer running.
        let state = (try? read("/proc/\(child)/stat"))?.split(separator: ")").last?.split(separator: " ").first
        #expect(state == nil || state == "Z", "the job's child is gone too (state \(state ?? "none"))")
    }
}

/// The rule `balsam submit` warns by and `balsam show` says (`Need.whyNeverFits`, from settings.yml alone) and a
/// launcher's own verdict on nodes of that shape (a CPU count past the node's is FAILED unless oversubscribe, then
/// `Allocation.canEverFit`) agree on every job shape and node shape (issue 35, item 4).
@Suite struct FitRuleTests {
    @Test func theSettingsRuleAndTheLaunchersVerdictAgree() {
        let seed = UInt64(saturating: Date().timeIntervalSince1970 * 1000)
        var random = SplitMix(seed: seed)
        for n in 0..<20_000 {
            var launcher = SiteSettings.Launcher()
            launcher.cpusPerNode = Int.random(in: 1...16, using: &random)
            launcher.gpuIDs = (0..<Int.random(in: 0...4, using: &random)).map(String.init)
            launcher.reservedCPUs = (0..<Int.random(in: 0...3, using: &random)).map { _ in
                Int.random(in: 0...17, using: &random)
            }
            launcher.oversubscribe = Bool.random(using: &random)
            let job = shapedJob(
                nodes: Int.random(in: 1...3, using: &random), rpn: Int.random(in: 1...8, using: &random),
                tpr: Int.random(in: 1...4, using: &random), tpc: Int.random(in: 1...2, using: &random),
                gpr: [0, 0.25, 0.5, 1, 2][Int.random(in: 0..<5, using: &random)],
                npc: Int.random(in: 1...4, using: &random))
            let nodes = (0..<4).map {
                Node(
                    index: $0, host: "h\($0)", cpus: launcher.cpusPerNode ?? 1, gpus: launcher.gpuIDs,
                    reserved: launcher.reservedCPUs)
            }
            var need = Need(job, packing: true)
            let widest = nodes.map(\.cpus).max() ?? 1
            var launcherNeverRuns = false
            if need.cpus > widest {
                if launcher.oversubscribe { need.cpus = widest } else { launcherNeverRuns = true }
            }
            if !Allocation(nodes: nodes).canEverFit(need) { launcherNeverRuns = true }
            let said = Need(job, packing: true).whyNeverFits(job, launcher)
            #expect(
                (said != nil) == launcherNeverRuns,
                "seed \(seed), case \(n): \(job.numNodes) node(s), \(need), \(launcher): \(said ?? "fits")")
            if !((said != nil) == launcherNeverRuns) { return }
        }
    }
}
