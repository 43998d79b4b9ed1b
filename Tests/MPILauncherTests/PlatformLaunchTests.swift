import Foundation
import MPILauncher
import Spool
import TestSupport
import Testing

/// Each platform preset's launch commands, rendered for representative jobs placed by the launcher on nodes of
/// the preset's shape, against the command lines the facilities document (balsam(1), PLATFORM PRESETS).
@Suite struct PlatformLaunchTests {
    struct Placed {
        var script: String
        var environment: [String: String]
    }

    /// A site made from `platform` in `dir`: its launcher settings, the app `./app`, nodes of the preset's shape
    /// (`cpus` where the preset does not say), and the command maker.
    struct PresetSite {
        let settings: SiteSettings.Launcher
        let app: App
        let command: TaskCommand

        init(_ platform: Platform, in dir: TempDir) throws {
            let site = try Site.create(at: dir.path + "/site", platform: platform, project: "p")
            settings = try SiteSettings.load(site).launcher
            app = try App(name: "app", commandTemplate: "./app")
            command = TaskCommand(site: site, settings: settings)
        }

        func node(_ index: Int = 0, cpus: Int) -> Node {
            Node(
                index: index, host: "h\(index)", cpus: settings.cpusPerNode ?? cpus, gpus: settings.gpuIDs,
                reserved: settings.reservedCPUs, sockets: settings.socketsPerNode)
        }
    }

    /// A site from `preset`, and the command for `job` placed on an allocation of two nodes of its shape.
    func launch(
        _ preset: String, ranks: Int, threads: Int = 1, threadsPerCore: Int = 1, nodes: Int = 1, gpus: Double = 0
    )
        throws -> Placed
    {
        let dir = try TempDir()
        let preset = try PresetSite(try #require(try Platform.builtIn().first { $0.name == preset }), in: dir)
        let shape = (0..<2).map { preset.node($0, cpus: 8) }
        var allocation = Allocation(nodes: shape)
        let job = shapedJob(nodes: nodes, rpn: ranks, tpr: threads, tpc: threadsPerCore, gpr: gpus, app: "app")
        let placed = allocation.place(Need(job, packing: true))
        let assignment = try #require(placed)
        let spec = try preset.command.spec(job, app: preset.app, assignment: assignment, nodes: shape)
        return Placed(script: spec.script, environment: spec.environment)
    }

    /// `jobs` jobs of this shape placed one after another on one node of `preset`'s shape: their commands.
    func launchPacked(_ preset: String, jobs: Int, ranks: Int, threads: Int, gpus: Double) throws -> [Placed] {
        let dir = try TempDir()
        let preset = try PresetSite(try #require(try Platform.builtIn().first { $0.name == preset }), in: dir)
        let node = preset.node(cpus: 8)
        var allocation = Allocation(nodes: [node])
        var placed: [Placed] = []
        for _ in 0..<jobs {
            let job = shapedJob(nodes: 1, rpn: ranks, tpr: threads, tpc: 1, gpr: gpus, npc: jobs, app: "app")
            let placedNow = allocation.place(Need(job, packing: true))
            let assignment = try #require(placedNow)
            let spec = try preset.command.spec(job, app: preset.app, assignment: assignment, nodes: [node])
            placed.append(Placed(script: spec.script, environment: spec.environment))
        }
        return placed
    }

    /// The CPU lists `ranges` name, one per rank, as balsam-bind's `--cpus` takes them.
    func cores(_ ranges: [ClosedRange<Int>], siblings: Int? = nil) -> [String] {
        ranges.map { r in
            (Array(r) + (siblings.map { s in r.map { $0 + s } } ?? [])).map(String.init).joined(separator: ",")
        }
    }

    /// What balsam-bind gives each local rank in `script`: its devices and CPUs (nil when the script has none).
    static func perRank(_ script: String) -> (devices: [String]?, cpus: [String]?, variable: String?) {
        let words = script.split(separator: " ").map { $0.replacingOccurrences(of: "'", with: "") }
        func after(_ flag: String) -> String? { words.firstIndex(of: flag).map { words[$0 + 1] } }
        return (
            after("--devices").map { $0.split(separator: ";", omittingEmptySubsequences: false).map(String.init) },
            after("--cpus").map { $0.split(separator: ";").map(String.init) }, after("--variable")
        )
    }

    @Test func polaris() throws {
        // One rank: started directly (as the original's LocalAppRun), with the GPU nearest cores 0-7.
        let one = try launch("polaris", ranks: 1, gpus: 1)
        #expect(one.script == "./app" && one.environment["CUDA_VISIBLE_DEVICES"] == "3")
        // The guide's 4 ranks x 8 threads with a GPU each (set_affinity_gpu_polaris.sh: GPU 3 - local rank; the
        // --cpu-bind list of 8 cores each): PALS binds nothing, balsam-bind binds each rank.
        let four = try launch("polaris", ranks: 4, threads: 8, gpus: 1)
        #expect(four.script.hasPrefix("mpiexec -n 4 --ppn 4 --hosts h0 --cpu-bind none "))
        let bound = Self.perRank(four.script)
        #expect(bound.variable == "CUDA_VISIBLE_DEVICES" && bound.devices == ["3", "2", "1", "0"])
        #expect(bound.cpus == cores([0...7, 8...15, 16...23, 24...31]))
        // Packed: the second 2-rank job of 4 threads a rank gets GPUs 1 and 0 and the cores nearest them, as the
        // first got 3 and 2 with theirs (GPU 3 - k nearest cores 8k to 8k+7).
        let packed = try launchPacked("polaris", jobs: 2, ranks: 2, threads: 4, gpus: 1)
        #expect(packed.map { Self.perRank($0.script).devices ?? [] } == [["3", "2"], ["1", "0"]])
        #expect(
            packed.map { Self.perRank($0.script).cpus ?? [] }
                == [cores([0...3, 8...11]), cores([16...19, 24...27])], "\(packed.map(\.script))")
        // Two hardware threads per core: each rank's 4 cores and their siblings at +32.
        let ht = try launch("polaris", ranks: 4, threads: 8, threadsPerCore: 2)
        #expect(Self.perRank(ht.script).cpus == cores([0...3, 4...7, 8...11, 12...15], siblings: 32))
        // 2 nodes x 4 ranks, a GPU each: whole nodes, every rank masked to its own GPU (the issue: none before).
        let wide = try launch("polaris", ranks: 4, nodes: 2, gpus: 1)
        #expect(Self.perRank(wide.script).devices == ["3", "2", "1", "0"])
        #expect(Self.perRank(wide.script).cpus == cores([0...7, 8...15, 16...23, 24...31]))
    }

    @Test func aurora() throws {
        let one = try launch("aurora", ranks: 1, gpus: 1)
        #expect(one.script == "./app" && one.environment["ZE_AFFINITY_MASK"] == "0.0")
        let two = try launch("aurora", ranks: 2, gpus: 1)
        #expect(Self.perRank(two.script).devices == ["0.0", "0.1"], "one tile per rank")
        #expect(two.script.contains("--tiles 2"), "FLAT masks: card x 2 + tile")
        // The guide's 12 ranks x 8 cores, a tile each, on 2 nodes: 6 ranks per socket, cores 0 and 52 kept for
        // the system (--cpu-bind list:1-8:9-16:...:41-48:53-60:...:93-100).
        let wide = try launch("aurora", ranks: 12, threads: 8, nodes: 2, gpus: 1)
        #expect(wide.script.hasPrefix("mpiexec -n 24 --ppn 12 --hosts h0,h1 --cpu-bind none --envall "))
        let bound = Self.perRank(wide.script)
        #expect(bound.devices == (0..<6).flatMap { ["\($0).0", "\($0).1"] })
        let guide: [ClosedRange<Int>] =
            (0..<6).map { 1 + 8 * $0...8 + 8 * $0 } + (0..<6).map { 53 + 8 * $0...60 + 8 * $0 }
        #expect(bound.cpus == cores(guide), "\(bound.cpus ?? [])")
    }

    @Test func perlmutter() throws {
        // -c in hardware threads (2 a core): 4 ranks of 8 threads hold 8 cores each, -c 16; a whole node's ranks
        // -c 2 x floor(128 / ranks per node), NERSC's rule.
        let cpu = try launch("perlmutter-cpu", ranks: 4, threads: 8)
        #expect(
            cpu.script.hasPrefix(
                "srun -n 4 --ntasks-per-node 4 --nodelist h0 --nodes 1 --cpus-per-task 16 --cpu-bind none --overlap "))
        // A part of a node stays on one socket; a whole node's ranks are spread over both, half on each.
        #expect(Self.perRank(cpu.script).cpus == cores([0...7, 8...15, 16...23, 24...31]))
        let whole = try launch("perlmutter-cpu", ranks: 8, threads: 16, nodes: 2)
        #expect(whole.script.contains(" --cpus-per-task 32 "), "NERSC's srun -n 16 -c 32 for 8 ranks a node")
        #expect(Self.perRank(whole.script).cpus == cores((0..<8).map { 16 * $0...16 * $0 + 15 }))
        let wideCPU = try launch("perlmutter-cpu", ranks: 4, nodes: 2)
        #expect(wideCPU.script.contains("-n 8 --ntasks-per-node 4 --nodelist h0,h1 --nodes 2 --cpus-per-task 64 "))
        // 4 ranks a node, a GPU each, Slurm's GPU binding off (it broke CUDA IPC): GPU 3 nearest the first cores.
        let gpu = try launch("perlmutter-gpu", ranks: 4, nodes: 2, gpus: 1)
        #expect(
            gpu.script.contains(" --cpu-bind none --gpu-bind none --overlap ")
                && !gpu.script.contains("--gpus-per-task"))
        #expect(Self.perRank(gpu.script).devices == ["3", "2", "1", "0"])
        let one = try launch("perlmutter-gpu", ranks: 1, gpus: 1)
        #expect(one.script == "./app" && one.environment["CUDA_VISIBLE_DEVICES"] == "3")
    }

    @Test func frontier() throws {
        // The guide's srun -N2 -n16 -c7 --gpus-per-task=1 --gpu-bind=closest, as its hello_jobstep prints it: rank
        // k on hardware threads 8k+1 to 8k+7 with GCD 4, 5, 2, 3, 6, 7, 0, 1. Slurm binds nothing here.
        let wide = try launch("frontier", ranks: 8, threads: 7, nodes: 2, gpus: 1)
        #expect(
            wide.script.hasPrefix(
                "srun -N 2 -n 16 --ntasks-per-node 8 --nodelist h0,h1 -c 7 --cpu-bind none --gpu-bind none --overlap "))
        let bound = Self.perRank(wide.script)
        #expect(bound.variable == "ROCR_VISIBLE_DEVICES" && bound.devices == ["4", "5", "2", "3", "6", "7", "0", "1"])
        #expect(bound.cpus == cores((0..<8).map { 8 * $0 + 1...8 * $0 + 7 }))
        let one = try launch("frontier", ranks: 1, gpus: 2)
        #expect(one.script == "./app" && one.environment["ROCR_VISIBLE_DEVICES"] == "4,5")
    }

    @Test func genericAndLocal() throws {
        let slurm = try launch("generic-slurm", ranks: 4, threads: 2)
        #expect(
            slurm.script.hasPrefix(
                "srun -n 4 --ntasks-per-node 4 --nodelist h0 --nodes 1 --cpus-per-task 2 --cpu-bind none --overlap "))
        #expect(Self.perRank(slurm.script).cpus == cores([0...1, 2...3, 4...5, 6...7]))
        let pbs = try launch("generic-pbs", ranks: 2)
        #expect(pbs.script.hasPrefix("mpirun -n 2 --map-by ppr:2:node --bind-to none --host h0:2 "), "\(pbs.script)")
        let local = try launch("local", ranks: 1)
        #expect(local.script == "./app")
    }

    /// Every preset, jobs of random shapes packed onto a node until it is full: no device is any two ranks'
    /// (of one job or two) when each asks for at least one, no CPU is any two ranks', and every rank has as many
    /// devices as it asked for.
    @Test func packedRanksNeverShareADeviceOrACPU() throws {
        var rng = SplitMix(seed: 3205)
        for platform in try Platform.builtIn() {
            let dir = try TempDir()
            let preset = try PresetSite(platform, in: dir)
            let node = preset.node(cpus: 16)
            for _ in 0..<20 {
                var allocation = Allocation(nodes: [node])
                var devicesHeld: [String] = []
                var cpusHeld: [String] = []
                while true {
                    let ranks = 1 + Int(rng.next() % 4)
                    let gpus = node.gpus.isEmpty ? 0 : Double(rng.next() % 3)
                    let job = shapedJob(
                        nodes: 1, rpn: ranks, tpr: 1 + Int(rng.next() % 4), tpc: 1, gpr: gpus, app: "app")
                    guard let assignment = allocation.place(Need(job, packing: true)) else { break }
                    let spec = try preset.command.spec(job, app: preset.app, assignment: assignment, nodes: [node])
                    if ranks == 1 {
                        let mine =
                            spec.environment[preset.settings.gpuVariable].map {
                                $0.split(separator: ",").map(String.init)
                            } ?? []
                        #expect(mine.count == Int(saturating: gpus))
                        devicesHeld += mine
                        continue
                    }
                    let bound = Self.perRank(spec.script)
                    if gpus >= 1 {
                        let devices = try #require(bound.devices)
                        #expect(devices.count == ranks)
                        for list in devices { #expect(list.split(separator: ",").count == Int(saturating: gpus)) }
                        devicesHeld += devices.flatMap { $0.split(separator: ",").map(String.init) }
                    }
                    for list in bound.cpus ?? [] { cpusHeld += list.split(separator: ",").map(String.init) }
                }
                #expect(Set(devicesHeld).count == devicesHeld.count, "\(platform.name): \(devicesHeld)")
                #expect(Set(cpusHeld).count == cpusHeld.count, "\(platform.name): a CPU bound to two ranks")
            }
        }
    }

    /// Every GPU preset, jobs of a GPU per rank packed onto a node until it is full: each rank's CPUs are among its
    /// GPU's nearest (the guides' pairing: Polaris's GPU 3 - k with cores 8k to 8k+7, Frontier's closest GCD,
    /// Aurora's tiles by socket), whatever the order the jobs came in.
    @Test func eachRanksCPUsAreNearItsGPU() throws {
        var rng = SplitMix(seed: 3233)
        for platform in try Platform.builtIn() where !platform.gpuIDs.isEmpty {
            let dir = try TempDir()
            let preset = try PresetSite(platform, in: dir)
            let node = preset.node(cpus: 16)
            let block = node.gpuCPUs.map(\.count).min() ?? 1
            for _ in 0..<20 {
                var allocation = Allocation(nodes: [node])
                while true {
                    let ranks = 2 + Int(rng.next() % 3)
                    let job = shapedJob(
                        nodes: 1, rpn: ranks, tpr: 1 + Int(rng.next() % UInt64(block)), tpc: 1, gpr: 1, app: "app")
                    guard let assignment = allocation.place(Need(job, packing: true)) else { break }
                    let spec = try preset.command.spec(job, app: preset.app, assignment: assignment, nodes: [node])
                    let bound = Self.perRank(spec.script)
                    let devices = try #require(bound.devices)
                    let cpus = try #require(bound.cpus)
                    for (device, list) in zip(devices, cpus) {
                        let near = Set(node.gpuCPUs[try #require(node.gpus.firstIndex(of: device))].map(String.init))
                        #expect(
                            Set(list.split(separator: ",").map(String.init)).isSubset(of: near),
                            "\(platform.name): \(device) with CPUs \(list)")
                    }
                }
            }
        }
    }
}
