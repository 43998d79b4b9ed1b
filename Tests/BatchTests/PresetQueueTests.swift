import Foundation
import Spool
import TestSupport
import Testing

/// Each preset's queues against its facility's guide, as transcribed here with the guide's address and the
/// version read (2026-12-06): every queue, node counts across each range and its edges, and wall times at and
/// past each limit; a batch job is accepted by a site made from the preset exactly when the guide allows it.
@Suite struct PresetQueueTests {
    /// A queue as the guide gives it: node range, and the longest wall time (minutes) from each size on.
    struct GuideQueue {
        var name: String
        var nodes: ClosedRange<Int>
        var wallTime: [(from: Int, minutes: Int)]

        func longest(_ n: Int) -> Int { wallTime.last { $0.from <= n }?.minutes ?? 0 }
    }

    static let guides: [String: [GuideQueue]] = [
        // argonne-lcf/user-guides docs/polaris/running-jobs/index.md (commit 11dbfa6): prod routes 10-24 nodes
        // to small (3 h), 25-99 to medium (6 h), 100-496 to large (24 h).
        "polaris": [
            GuideQueue(name: "debug", nodes: 1...2, wallTime: [(1, 60)]),
            GuideQueue(name: "debug-scaling", nodes: 1...10, wallTime: [(1, 60)]),
            GuideQueue(name: "prod", nodes: 10...496, wallTime: [(10, 180), (25, 360), (100, 1440)]),
            GuideQueue(name: "preemptable", nodes: 1...10, wallTime: [(1, 4320)]),
            GuideQueue(name: "demand", nodes: 1...56, wallTime: [(1, 60)]),
            GuideQueue(name: "capacity", nodes: 1...4, wallTime: [(1, 10080)]),
        ],
        // argonne-lcf/user-guides docs/aurora/running-jobs-aurora.md (commit 0037d9f): prod routes to tiny
        // (1-512, 6 h), small (513-1024, 12 h), medium (1025-1919, 18 h), large (1920-7300, 24 h).
        "aurora": [
            GuideQueue(name: "debug", nodes: 1...2, wallTime: [(1, 60)]),
            GuideQueue(name: "debug-scaling", nodes: 2...31, wallTime: [(2, 60)]),
            GuideQueue(
                name: "prod", nodes: 1...7300, wallTime: [(1, 360), (513, 720), (1025, 1080), (1920, 1440)]),
        ],
        // olcf/olcf-user-docs systems/frontier_user_guide.rst, Batch partition: 1-91 nodes 2 h, 92-183 6 h,
        // 184 and more 12 h; extended: up to 64 nodes, 24 h.
        "frontier": [
            GuideQueue(name: "batch", nodes: 1...9472, wallTime: [(1, 120), (92, 360), (184, 720)]),
            GuideQueue(name: "extended", nodes: 1...64, wallTime: [(1, 1440)]),
        ],
    ]

    @Test(arguments: ["polaris", "aurora", "frontier"])
    func queuesAcceptExactlyWhatTheGuideAllows(preset: String) throws {
        let dir = try TempDir()
        let platform = try #require(try Platform.builtIn().first { $0.name == preset })
        let site = try Site.create(at: dir.path + "/site", platform: platform, project: "p")
        let policy = try SiteSettings.load(site).scheduler
        let guide = try #require(Self.guides[preset])
        #expect(Set(policy.allowedQueues.keys) == Set(guide.map(\.name)), "\(preset): the guide's queues")
        var rng = SplitMix(seed: 3208)
        for queue in guide {
            var sizes = [
                queue.nodes.lowerBound - 1, queue.nodes.lowerBound, queue.nodes.upperBound,
                queue.nodes.upperBound + 1,
            ]
            for bin in queue.wallTime { sizes += [bin.from - 1, bin.from] }
            sizes += (0..<20).map { _ in 1 + Int(rng.next() % UInt64(queue.nodes.upperBound + 1)) }
            for nodes in sizes where nodes >= 1 {
                let allowedNodes = queue.nodes.contains(nodes)
                let longest = queue.longest(nodes)
                for minutes in [1, longest, longest + 1, 1 + Int(rng.next() % UInt64(max(1, longest * 2)))] {
                    var job = BatchJob(project: "p", queue: queue.name, numNodes: nodes, wallTimeMinutes: minutes)
                    let accepted = (try? job.validate(against: policy, active: [])) != nil
                    let allowed = allowedNodes && minutes >= 1 && minutes <= longest
                    #expect(accepted == allowed, "\(preset) \(queue.name): \(nodes) nodes, \(minutes) min")
                }
            }
        }
    }
}
