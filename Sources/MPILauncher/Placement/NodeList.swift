import Spool

/// The allocation's hosts as the batch scheduler tells them, for checking that the launcher's ranks cover the
/// allocation: Slurm's `SLURM_JOB_NODELIST` (`nid[001-003,007],login1`), PBS's `PBS_NODEFILE` (a file, one
/// line per slot), LSF's `LSB_HOSTS` (one word per slot), Cobalt's `COBALT_PARTNAME` (node numbers on a Cray:
/// `3835-3837,3840` are nid03835 ... nid03840). nil when none is set.
public enum SchedulerNodes {
    public static func hosts(environment: [String: String]) -> (source: String, hosts: [String])? {
        if let list = environment["SLURM_JOB_NODELIST"] ?? environment["SLURM_NODELIST"], !list.isEmpty {
            return ("SLURM_JOB_NODELIST", expandSlurm(list))
        }
        if let file = environment["PBS_NODEFILE"],
            let bytes = try? Posix.readFile(file, limit: 16 << 20)
        {
            return ("PBS_NODEFILE", unique(String(decoding: bytes, as: UTF8.self).split(whereSeparator: \.isNewline)))
        }
        if let list = environment["LSB_HOSTS"], !list.isEmpty {
            return ("LSB_HOSTS", unique(list.split(separator: " ")))
        }
        if let list = environment["COBALT_PARTNAME"], !list.isEmpty {
            return ("COBALT_PARTNAME", expandSlurm("nid[" + list + "]").map { "nid" + pad5($0.dropFirst(3)) })
        }
        return nil
    }

    /// The scheduler's hosts no rank runs on (a host matches a node by its full or its short name).
    static func uncovered(_ hosts: [String], by nodes: [Node]) -> [String] {
        let covered = Set(nodes.map(\.host))
        return hosts.filter { !covered.contains($0) && !covered.contains(String($0.prefix { $0 != "." })) }
    }

    private static func pad5(_ digits: Substring) -> String {
        String(repeating: "0", count: max(0, 5 - digits.count)) + digits
    }

    static func unique(_ words: [Substring]) -> [String] {
        var seen = Set<String>()
        return words.map { String($0) }.filter { !$0.isEmpty && seen.insert($0).inserted }
    }

    /// Expands Slurm's compressed host list: `a[1-3,5],b` → a1 a2 a3 a5 b, keeping zero padding (`nid[008-010]`).
    public static func expandSlurm(_ list: String) -> [String] {
        var hosts: [String] = []
        var depth = 0
        var item = ""
        for c in list + "," {
            if c == "[" { depth += 1 }
            if c == "]" { depth -= 1 }
            if c == "," && depth == 0 {
                hosts += expandItem(item)
                item = ""
            } else {
                item.append(c)
            }
        }
        return hosts.filter { !$0.isEmpty }
    }

    private static func expandItem(_ item: String) -> [String] {
        guard let open = item.firstIndex(of: "["), let close = item.lastIndex(of: "]") else { return [item] }
        let prefix = String(item[..<open])
        let suffix = String(item[item.index(after: close)...])
        var result: [String] = []
        for range in item[item.index(after: open)..<close].split(separator: ",") {
            let bounds = range.split(separator: "-")
            guard let low = Int(bounds[0]) else { continue }
            let high = bounds.count > 1 ? Int(bounds[1]) ?? low : low
            let width = bounds[0].count
            for n in low...max(low, high) {
                let digits = String(n)
                result.append(prefix + String(repeating: "0", count: max(0, width - digits.count)) + digits + suffix)
            }
        }
        return result
    }
}
