import Foundation
import Synchronization
import TestSupport
import Testing

@testable import Spool

/// The host's append-only files are written through descriptors kept open (`AppendFiles`), which a process
/// working on many sites must close again. The rule: a descriptor handed to an append is never closed while that
/// append uses it. Threads appending at random to more files than are kept open (so that files are retired under
/// other threads' writes all the time): every append succeeds, and every line is in its own file exactly once.
/// fleet-bench found the race (1,000 sites in one process: "cannot write: Bad file descriptor").
@Suite struct AppendFilesTests {
    @Test func appendsUnderConstantEvictionLoseNothingAndMisplaceNothing() throws {
        let dir = try TempDir()
        let files = AppendFiles(capacity: 8)
        let paths = (0..<40).map { dir.path + "/log-\($0).jsonl" }
        let threads = 8
        let appends = 1500
        let seed = UInt64(saturating: Date().timeIntervalSince1970)
        let failures = Mutex<[String]>([])
        DispatchQueue.concurrentPerform(iterations: threads) { t in
            var rng = SplitMix(seed: seed &+ UInt64(t))
            for n in 0..<appends {
                let p = rng.below(paths.count)
                // Lines of several sizes, some past a pipe's atomic size, so a write takes its time.
                let line = "t\(t) n\(n) p\(p) " + String(repeating: "x", count: rng.below(6000)) + "\n"
                do { try files.append(paths[p], Array(line.utf8), sync: rng.below(50) == 0) } catch {
                    failures.withLock { $0.append("thread \(t) append \(n): \(error)") }
                }
            }
        }
        #expect(failures.withLock { $0 }.isEmpty, "seed \(seed): \(failures.withLock { $0.prefix(3) })")
        var seen = Set<String>()
        var misplaced = 0
        for (p, path) in paths.enumerated() {
            let text = (try? String(contentsOfFile: path, encoding: .utf8)) ?? ""
            for line in text.split(separator: "\n") {
                let fields = line.split(separator: " ")
                guard fields.count >= 3 else {
                    misplaced += 1
                    continue
                }
                if fields[2] != "p\(p)" { misplaced += 1 }
                let key = "\(fields[0]) \(fields[1])"
                #expect(!seen.contains(key), "seed \(seed): \(key) twice")
                seen.insert(key)
            }
        }
        #expect(misplaced == 0, "seed \(seed): \(misplaced) lines in another file's log, or torn")
        #expect(seen.count == threads * appends, "seed \(seed): \(seen.count) of \(threads * appends) lines")
    }
}
