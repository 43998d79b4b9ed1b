/// What a job needs, from its resource fields (the original's node manager rules).
public struct Need: Sendable, Equatable {
    /// Nodes; more than one means whole idle nodes.
    public var nodes: Int
    /// CPUs on its node (single-node jobs): `max(1, ranks_per_node × threads_per_rank / threads_per_core)`.
    public var cpus: Int
    /// GPUs on its node (single-node jobs): `ranks_per_node × gpus_per_rank`, rounded up.
    public var gpus: Int
    /// Share of its node: `1 / nodePackingCount`, or all of it when packing is off.
    public var occupancy: Double

    public init(_ job: Job, packing: Bool) {
        nodes = max(1, job.numNodes)
        cpus = max(1, job.ranksPerNode * job.threadsPerRank / max(1, job.threadsPerCore))
        gpus = Int(saturating: (Double(job.ranksPerNode) * job.gpusPerRank).rounded(.up))
        occupancy = packing && nodes == 1 ? 1 / Double(max(1, job.nodePackingCount)) : 1
    }
}

extension Need {
    /// Why a job with this need can never run on a node of the shape settings.yml gives (`gpu_ids`, and
    /// `cpus_per_node` less `reserved_cpus` when it is set), or nil. One rule for `balsam submit`'s warning and
    /// for what `show` and `ls` say of a job waiting to run; a launcher judges the same need against its
    /// allocation's nodes (where a node's CPUs are counted when `cpus_per_node` is not set), and
    /// PlacementTests holds the two to agreeing.
    public func whyNeverFits(_ job: Job, _ launcher: SiteSettings.Launcher) -> String? {
        // A multi-node job takes whole nodes, whatever GPUs they have (as a launcher places it).
        if nodes == 1 && gpus > launcher.gpuIDs.count {
            let ids = launcher.gpuIDs.joined(separator: ", ")
            return "it asks for \(gpus) GPU(s) per node (ranks_per_node \(job.ranksPerNode) × gpus_per_rank "
                + "\(job.gpusPerRank)) and this site's nodes have \(launcher.gpuIDs.count) "
                + "(launcher.gpu_ids in settings.yml: [\(ids)])"
        }
        if let declared = launcher.cpusPerNode, !launcher.oversubscribe {
            let usable = max(1, (0..<max(1, declared)).filter { !launcher.reservedCPUs.contains($0) }.count)
            if cpus > usable {
                return "it asks for \(cpus) CPUs per node (ranks_per_node \(job.ranksPerNode) × threads_per_rank "
                    + "\(job.threadsPerRank) / threads_per_core \(job.threadsPerCore)) and this site's nodes have "
                    + "\(usable) (launcher.cpus_per_node less reserved_cpus); a launcher will fail it unless "
                    + "launcher.oversubscribe is true"
            }
        }
        return nil
    }
}
