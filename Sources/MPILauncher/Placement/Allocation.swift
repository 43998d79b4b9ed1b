import Spool

/// One node of the allocation: a launcher rank runs there.
public struct Node: Sendable, Equatable {
    /// Its index, which is also the rank that runs jobs on it.
    public var index: Int
    /// Its host name, as multi-node launch commands need it.
    public var host: String
    /// CPUs jobs may have.
    public var cpus: Int
    /// Their IDs: `0..<cpus` of the node less those the facility reserves, lowest first.
    public var cpuIDs: [Int]
    /// IDs of its GPUs, nearest-CPU first (`launcher.gpu_ids`).
    public var gpus: [String]
    /// Each GPU's nearest CPUs (by index in `gpus`): the node's sockets share its GPUs evenly, in order, and each
    /// socket's CPUs are split evenly among its GPUs, in order. A job's CPUs are taken near its GPUs first.
    public var gpuCPUs: [[Int]]

    /// A node of `cpus` CPUs in `sockets` equal parts, of which `reserved` (IDs) are never given to jobs.
    public init(index: Int, host: String, cpus: Int, gpus: [String], reserved: [Int] = [], sockets: Int = 1) {
        self.index = index
        self.host = host
        let ids = (0..<max(1, cpus)).filter { !reserved.contains($0) }
        cpuIDs = ids.isEmpty ? [0] : ids
        self.cpus = cpuIDs.count
        self.gpus = gpus
        gpuCPUs = Node.nearest(cpuIDs: cpuIDs, declared: max(1, cpus), gpus: gpus.count, sockets: max(1, sockets))
    }

    static func nearest(cpuIDs: [Int], declared: Int, gpus: Int, sockets: Int) -> [[Int]] {
        guard gpus > 0 else { return [] }
        let parts =
            gpus % sockets == 0 && declared % sockets == 0
            ? Node.bySocket(cpuIDs, declared: declared, sockets: sockets) : [cpuIDs]
        let perPart = gpus / parts.count
        return (0..<gpus).map { g in
            let part = parts[g / perPart]
            let share = part.count / perPart
            return Array(part.dropFirst((g % perPart) * share).prefix(share))
        }
    }

    /// CPU IDs `ids` by socket: the node's `declared` IDs in `sockets` equal ranges, socket s holding
    /// `s × declared / sockets ..<`; one group of all of them for one socket.
    static func bySocket(_ ids: [Int], declared: Int, sockets: Int) -> [[Int]] {
        guard sockets > 1, declared / sockets > 0 else { return [ids] }
        let span = declared / sockets
        return (0..<sockets).map { s in ids.filter { $0 / span == s } }
    }
}

/// Where a placed job runs and what it holds there.
public struct Assignment: Sendable, Equatable {
    /// Its nodes (indexes); the job is started from the first.
    public var nodes: [Int]
    /// CPUs held on each node (single-node jobs; whole nodes otherwise).
    public var cpus: Int
    /// GPU IDs held (single-node jobs).
    public var gpus: [String]
    /// Occupancy held on each node.
    public var occupancy: Double
    /// The CPU IDs held on each node (all of a node's for a multi-node job), in the order of the job's GPUs
    /// (each GPU's share nearest it; lowest first for a job without GPUs): rank k's share is the k-th, what
    /// balsam-bind and `{{ cpu_bind_list }}` bind it to.
    public var cpuIDs: [Int]

    public init(nodes: [Int], cpus: Int, gpus: [String], occupancy: Double, cpuIDs: [Int] = []) {
        self.nodes = nodes
        self.cpus = cpus
        self.gpus = gpus
        self.occupancy = occupancy
        self.cpuIDs = cpuIDs
    }
}

/// A node's free CPU IDs as a bit per ID, the lowest handed out first: taking and giving back cost the CPUs
/// concerned and a scan of 64-ID words from the lowest that may hold a free one, not the node's size (a set of
/// the node's IDs rebuilt at every job's end cost a node of many CPUs more than placing the job).
struct CPUPool: Sendable {
    private var words: [UInt64]
    private let full: [UInt64]
    /// No word below this one holds a free ID.
    private var lowest = 0

    init(_ ids: [Int]) {
        var words = [UInt64](repeating: 0, count: (ids.max() ?? 0) / 64 + 1)
        for id in ids where id >= 0 { words[id / 64] |= 1 << UInt64(id % 64) }
        self.words = words
        full = words
    }

    /// `n` free IDs (fewer when fewer are free), taken: those of `preferred` that are free, in its order, then the
    /// lowest.
    mutating func take(_ n: Int, preferring preferred: [Int]) -> [Int] {
        var out: [Int] = []
        for id in preferred where out.count < n && id >= 0 && id / 64 < words.count {
            let bit: UInt64 = 1 << UInt64(id % 64)
            if words[id / 64] & bit != 0 {
                words[id / 64] &= ~bit
                out.append(id)
            }
        }
        return out + take(n - out.count)
    }

    /// The lowest `n` free IDs (fewer when fewer are free), taken.
    mutating func take(_ n: Int) -> [Int] {
        guard n > 0 else { return [] }
        var out: [Int] = []
        out.reserveCapacity(n)
        var w = lowest
        while out.count < n && w < words.count {
            while words[w] != 0 && out.count < n {
                let bit = words[w].trailingZeroBitCount
                words[w] &= words[w] - 1
                out.append(w * 64 + bit)
            }
            if words[w] == 0 { w += 1 }
        }
        lowest = w
        return out
    }

    /// IDs taken before, free again.
    mutating func give(_ ids: [Int]) {
        for id in ids where id >= 0 && id / 64 < words.count {
            words[id / 64] |= full[id / 64] & (1 << UInt64(id % 64))
            lowest = min(lowest, id / 64)
        }
    }

    /// Every ID taken (a multi-node job holds the whole node).
    mutating func takeAll() {
        for w in words.indices { words[w] = 0 }
        lowest = words.count
    }

    /// Every ID free again.
    mutating func giveAll() {
        words = full
        lowest = 0
    }
}

/// The allocation's nodes and what is in use on each: first-fit placement of jobs, and release when they end.
public struct Allocation: Sendable {
    /// The nodes, in rank order.
    public private(set) var nodes: [Node]
    private var occupancy: [Double]
    private var busyCPUs: [Int]
    private var freeGPUs: [[String]]
    private var freeCPUs: [CPUPool]
    /// Nodes no job is placed on any more (their rank stopped answering).
    public private(set) var retired = Set<Int>()

    /// Slack for floating-point sums of occupancies (three jobs of 1/3 fill a node).
    static let epsilon = 0.001

    public init(nodes: [Node]) {
        self.nodes = nodes
        occupancy = nodes.map { _ in 0 }
        busyCPUs = nodes.map { _ in 0 }
        freeGPUs = nodes.map(\.gpus)
        freeCPUs = nodes.map { CPUPool($0.cpuIDs) }
    }

    /// Whether some node has room left for at least a small job.
    public var hasRoom: Bool {
        nodes.indices.contains {
            !retired.contains($0) && occupancy[$0] < 1 - Allocation.epsilon && busyCPUs[$0] < nodes[$0].cpus
        }
    }

    /// Places nothing on node `i` from now on.
    public mutating func retire(_ i: Int) { retired.insert(i) }

    /// Whether a job with this need could ever run here (on an empty allocation).
    public func canEverFit(_ need: Need) -> Bool {
        if need.nodes > 1 { return need.nodes <= nodes.count }
        return nodes.contains { need.cpus <= $0.cpus && need.gpus <= $0.gpus.count }
    }

    /// Places a job now (first fit in node order) and marks its resources used; nil when it does not fit now.
    public mutating func place(_ need: Need) -> Assignment? {
        if need.nodes > 1 {
            let idle = nodes.indices.filter { occupancy[$0] < Allocation.epsilon && !retired.contains($0) }
            guard idle.count >= need.nodes else { return nil }
            let chosen = Array(idle.prefix(need.nodes))
            for i in chosen {
                occupancy[i] = 1
                busyCPUs[i] = nodes[i].cpus
                freeCPUs[i].takeAll()
            }
            // Whole nodes: the job's GPUs on each are the first it needs of the node's (balsam-bind gives each
            // rank its own from them).
            return Assignment(
                nodes: chosen, cpus: 0, gpus: Array(nodes[chosen[0]].gpus.prefix(need.gpus)), occupancy: 1,
                cpuIDs: nodes[chosen[0]].cpuIDs)
        }
        for i in nodes.indices
        where !retired.contains(i) && occupancy[i] + need.occupancy <= 1 + Allocation.epsilon
            && busyCPUs[i] + need.cpus <= nodes[i].cpus
            && freeGPUs[i].count >= need.gpus
        {
            occupancy[i] += need.occupancy
            busyCPUs[i] += need.cpus
            let gpus = Array(freeGPUs[i].prefix(need.gpus))
            freeGPUs[i].removeFirst(need.gpus)
            // Each GPU's share of the job's CPUs near it, in the GPUs' order (rank k's CPUs near rank k's GPU).
            var cpuIDs: [Int] = []
            for (n, gpu) in gpus.enumerated() {
                let want = need.cpus / gpus.count + (n < need.cpus % gpus.count ? 1 : 0)
                let near = nodes[i].gpus.firstIndex(of: gpu).map { nodes[i].gpuCPUs[$0] } ?? []
                cpuIDs += freeCPUs[i].take(want, preferring: near)
            }
            if gpus.isEmpty { cpuIDs = freeCPUs[i].take(need.cpus) }
            return Assignment(nodes: [i], cpus: need.cpus, gpus: gpus, occupancy: need.occupancy, cpuIDs: cpuIDs)
        }
        return nil
    }

    /// Gives back what `assignment` held.
    public mutating func release(_ assignment: Assignment) {
        for i in assignment.nodes {
            occupancy[i] = max(0, occupancy[i] - assignment.occupancy)
            busyCPUs[i] = max(0, busyCPUs[i] - (assignment.nodes.count > 1 ? nodes[i].cpus : assignment.cpus))
            // GPUs go back in the node's own order, so the next job gets the lowest free IDs.
            let returned = Set(assignment.gpus)
            freeGPUs[i] = nodes[i].gpus.filter { returned.contains($0) || freeGPUs[i].contains($0) }
            if assignment.nodes.count > 1 { freeCPUs[i].giveAll() } else { freeCPUs[i].give(assignment.cpuIDs) }
        }
    }
}
