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

    /// A site from `preset`, and the command for `job` placed on an allocation of two nodes of its shape.
    func launch(
        _ preset: String, ranks: Int, threads: Int = 1, threadsPerCore: Int = 1, nodes: Int = 1, gpus: Double = 0
    )
        throws -> Placed
    {
        let dir = try TempDir()
        let platform = try #require(try Platform.builtIn().first { $0.name == preset })
        let site = try Site.create(at: dir.path + "/site", platform: platform, project: "p")
        let settings = try SiteSettings.load(site)
        let app = try App(name: "app", commandTemplate: "./app")
        let shape = (0..<2).map {
            Node(
                index: $0, host: "h\($0)", cpus: settings.launcher.cpusPerNode ?? 8, gpus: settings.launcher.gpuIDs,
                reserved: settings.launcher.reservedCPUs)
        }
        var allocation = Allocation(nodes: shape)
        let job = shapedJob(nodes: nodes, rpn: ranks, tpr: threads, tpc: threadsPerCore, gpr: gpus, app: "app")
        let placed = allocation.place(Need(job, packing: true))
        let assignment = try #require(placed)
        let spec = try TaskCommand(site: site, settings: settings.launcher).spec(
            job, app: app, assignment: assignment, nodes: shape)
        return Placed(script: spec.script, environment: spec.environment)
    }

    func list(_ ranks: [ClosedRange<Int>], siblings: Int? = nil) -> String {
        "list:"
            + ranks.map { r in
                (Array(r) + (siblings.map { s in r.map { $0 + s } } ?? [])).map(String.init).joined(separator: ",")
            }
            .joined(separator: ":")
    }

    @Test func polaris() throws {
        // One rank: started directly (as the original's LocalAppRun), with the GPU nearest cores 0-7.
        let one = try launch("polaris", ranks: 1, gpus: 1)
        #expect(one.script == "./app" && one.environment["CUDA_VISIBLE_DEVICES"] == "3")
        // 4 ranks x 8 threads on one node: ALCF's mpiexec -n 4 --ppn 4 --depth 8 with a CPU list per rank.
        let four = try launch("polaris", ranks: 4, threads: 8)
        #expect(
            four.script
                == "mpiexec -n 4 --ppn 4 --hosts h0 --cpu-bind \(list([0...7, 8...15, 16...23, 24...31])) -d 8 ./app")
        // Two hardware threads per core: each rank's 4 cores and their siblings at +32.
        let ht = try launch("polaris", ranks: 4, threads: 8, threadsPerCore: 2)
        #expect(
            ht.script
                == "mpiexec -n 4 --ppn 4 --hosts h0 --cpu-bind \(list([0...3, 4...7, 8...11, 12...15], siblings: 32)) -d 8 ./app"
        )
        // 2 nodes x 4 ranks, a GPU each: whole nodes, 8 cores per rank.
        let wide = try launch("polaris", ranks: 4, nodes: 2, gpus: 1)
        #expect(
            wide.script
                == "mpiexec -n 8 --ppn 4 --hosts h0,h1 --cpu-bind \(list([0...7, 8...15, 16...23, 24...31])) -d 1 ./app"
        )
    }

    @Test func aurora() throws {
        let one = try launch("aurora", ranks: 1, gpus: 1)
        #expect(one.script == "./app" && one.environment["ZE_AFFINITY_MASK"] == "0.0")
        let two = try launch("aurora", ranks: 2, gpus: 1)
        #expect(two.environment["ZE_AFFINITY_MASK"] == "0.0,0.1", "one tile per rank: \(two.environment)")
        // Cores 0 and 52 are the system's (the ALCF's Aurora page): ranks bind to the others.
        let four = try launch("aurora", ranks: 4, threads: 8)
        #expect(
            four.script
                == "mpiexec -n 4 --ppn 4 --hosts h0 --cpu-bind \(list([1...8, 9...16, 17...24, 25...32])) -d 8 --envall ./app"
        )
        let wide = try launch("aurora", ranks: 12, nodes: 2, gpus: 1)
        let ids = (0..<104).filter { $0 != 0 && $0 != 52 }
        let perRank = (0..<12).map { k in ids[(k * 8)..<(k * 8 + 8)].map(String.init).joined(separator: ",") }
        #expect(
            wide.script
                == "mpiexec -n 24 --ppn 12 --hosts h0,h1 --cpu-bind list:\(perRank.joined(separator: ":")) -d 1 --envall ./app"
        )
        #expect(!wide.script.contains(",52,") && !four.script.contains("list:0,"))
    }

    @Test func perlmutter() throws {
        // NERSC: srun -n, --ntasks-per-node, -c in hardware threads, --cpu-bind=cores, --gpus-per-task.
        let cpu = try launch("perlmutter-cpu", ranks: 4, threads: 8)
        #expect(
            cpu.script
                == "srun -n 4 --ntasks-per-node 4 --nodelist h0 --nodes 1 --cpus-per-task 8 --cpu-bind cores --overlap ./app"
        )
        let wideCPU = try launch("perlmutter-cpu", ranks: 4, nodes: 2)
        #expect(wideCPU.script.contains("-n 8 --ntasks-per-node 4 --nodelist h0,h1 --nodes 2 --cpus-per-task 64 "))
        let gpu = try launch("perlmutter-gpu", ranks: 4, nodes: 2, gpus: 1)
        #expect(
            gpu.script
                == "srun -n 8 --ntasks-per-node 4 --nodelist h0,h1 --nodes 2 --cpus-per-task 32 --cpu-bind cores "
                + "--gpus-per-task 1 --overlap ./app")
        let one = try launch("perlmutter-gpu", ranks: 1, gpus: 1)
        #expect(one.script == "./app" && one.environment["CUDA_VISIBLE_DEVICES"] == "0")
    }

    @Test func frontier() throws {
        // OLCF: srun -N 2 -n 16 -c 7 --gpus-per-task=1 --gpu-bind=closest, one GCD per rank; --overlap, as the
        // launcher's own step holds a core of each node (without it a job using all 56 waits for ever).
        let wide = try launch("frontier", ranks: 8, threads: 7, nodes: 2, gpus: 1)
        #expect(
            wide.script
                == "srun -N 2 -n 16 --ntasks-per-node 8 --nodelist h0,h1 -c 7 --gpus-per-task 1 --gpu-bind closest "
                + "--overlap ./app")
        let one = try launch("frontier", ranks: 1, gpus: 2)
        #expect(one.script == "./app" && one.environment["ROCR_VISIBLE_DEVICES"] == "0,1")
    }

    @Test func genericAndLocal() throws {
        let slurm = try launch("generic-slurm", ranks: 4, threads: 2)
        #expect(
            slurm.script == "srun -n 4 --ntasks-per-node 4 --nodelist h0 --nodes 1 --cpus-per-task 2 --overlap ./app")
        let pbs = try launch("generic-pbs", ranks: 2)
        #expect(pbs.script.hasPrefix("mpirun -n 2 --map-by ppr:2:node --host h0:2 "), "\(pbs.script)")
        let local = try launch("local", ranks: 1)
        #expect(local.script == "./app")
    }
}
