import Foundation
import Spool
import TestSupport
import Testing

/// The watcher's rule for a lease's age (`LeaseAges`), on generated histories: the age is the watcher's
/// monotonic time since the heartbeat stamp last changed, so nothing a clock says (the launcher's, stepped or
/// skewed; the stamp's values) can make a live lease look old or a dead one young.
@Suite struct LeaseAgeTests {
    /// One look of the watcher: the stamp it finds (nil: no holder file) and its monotonic time.
    struct Look {
        var stamp: Lease.Stamp?
        var now: Double
    }

    /// A random history: the launcher beats (a new stamp, which may be anywhere: its clock stepped either way)
    /// or not, or its holder file is missing, between looks a random time apart.
    static func history(_ rng: inout SplitMix) -> [Look] {
        var looks: [Look] = []
        var now = Double(rng.next() % 1_000_000)
        var stamp: Lease.Stamp? = Lease.Stamp(seconds: Int(rng.next() % 2_000_000_000), nanoseconds: 0)
        for _ in 0..<Int(rng.next() % 40 + 1) {
            switch rng.next() % 10 {
            case 0..<4:
                stamp = Lease.Stamp(
                    seconds: Int(rng.next() % 2_000_000_000), nanoseconds: Int(rng.next() % 1_000_000_000))
            case 4: stamp = nil
            case 5: if stamp == nil { stamp = Lease.Stamp(seconds: 1, nanoseconds: 1) }
            default: break
            }
            now += Double(rng.next() % 300_000) / 1000
            looks.append(Look(stamp: stamp, now: now))
        }
        return looks
    }

    static func ages(_ looks: [Look]) -> [Double] {
        var ages = LeaseAges()
        return looks.map { ages.age(of: "L", stamp: $0.stamp, now: $0.now) }
    }

    @Test func anAgeIsTheMonotonicTimeSinceTheStampLastChanged() {
        var rng = SplitMix(seed: 33)
        for _ in 0..<2000 {
            let looks = Self.history(&rng)
            let ages = Self.ages(looks)
            var changed: Double?
            var previous: Lease.Stamp?
            for (look, age) in zip(looks, ages) {
                guard let stamp = look.stamp else {
                    #expect(age == .infinity, "no holder file: no heartbeat")
                    changed = nil
                    previous = nil
                    continue
                }
                if changed == nil || stamp != previous { changed = look.now }
                previous = stamp
                #expect(age == look.now - (changed ?? look.now), "\(looks)")
                #expect(age <= look.now - looks[0].now, "never older than what was watched")
            }
        }
    }

    @Test func noClockStepOrSkewChangesAnAge() {
        var rng = SplitMix(seed: 34)
        for _ in 0..<2000 {
            let looks = Self.history(&rng)
            // The launcher's clock off by any amount, or stepped at any look: the stamps change where they did.
            let offset = Int(rng.next() % 100_000) - 50_000
            let skewed = looks.map { look in
                Look(
                    stamp: look.stamp.map { Lease.Stamp(seconds: $0.seconds + offset, nanoseconds: $0.nanoseconds) },
                    now: look.now)
            }
            #expect(Self.ages(skewed) == Self.ages(looks))
        }
    }

    @Test func aNextWatcherOnThisBootGoesOnCountingAndAnotherBootStartsAfresh() throws {
        let dir = try TempDir()
        #expect(try balsam(["init", dir.path + "/site"]).status == 0)
        let site = try Site.open(dir.path + "/site")
        let stamp = Lease.Stamp(seconds: 5, nanoseconds: 6)
        var first = LeaseAges()
        #expect(first.age(of: "L", stamp: stamp, now: 100) == 0)
        try first.save(site)
        var next = LeaseAges.load(site)
        #expect(next.age(of: "L", stamp: stamp, now: 250) == 150)
        // Written on another boot (or host): its monotonic times mean nothing here.
        let text = try String(contentsOfFile: LeaseAges.path(site), encoding: .utf8)
        try text.replacingOccurrences(of: #""boot":""#, with: #""boot":"x"#)
            .write(toFile: LeaseAges.path(site), atomically: true, encoding: .utf8)
        var other = LeaseAges.load(site)
        #expect(other.age(of: "L", stamp: stamp, now: 250) == 0)
    }
}
