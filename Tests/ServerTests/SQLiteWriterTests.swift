import Foundation
import Spool
import TestSupport
import Testing

@testable import Server

/// SQLite's writers (`SQLiteFile`): a process's transactions take the writer turn in turn and give it back on
/// every ending (commit, a body that throws, a commit refused at its end), and the log is checkpointed off the
/// writers' path. Random transactions from many threads, through two spellings of one file (two turns: the
/// writers of each meet the other's in SQLite's busy handler, as two processes do), lose nothing, keep nothing
/// rolled back, never wedge, and the committed data reaches the database file while the writers go on.
@Suite struct SQLiteWriterTests {
    struct Refused: Error {}

    @Test func randomTransactionsFromManyThreadsLoseNothingAndTheLogIsCheckpointed() async throws {
        let dir = try TempDir()
        let path = dir.path + "/db.sqlite"
        let seed = UInt64(saturating: Date().timeIntervalSince1970)
        let first = try Database(.sqlite(path: path), threads: 4)
        let second = try Database(.sqlite(path: dir.path + "/./db.sqlite"), threads: 2)
        try first.withConnection { c in
            try c.executeScript(
                """
                CREATE TABLE parent (id INTEGER PRIMARY KEY, pad TEXT);
                CREATE TABLE child (id INTEGER PRIMARY KEY,
                    parent_id INTEGER REFERENCES parent(id) DEFERRABLE INITIALLY DEFERRED);
                """)
        }
        let pad = String(repeating: "x", count: 4000)
        let writers = 8
        let kept = try await withThrowingTaskGroup(of: (kept: [Int], dropped: [Int]).self) { group in
            for writer in 0..<writers {
                group.addTask {
                    var rng = SplitMix(seed: seed &+ UInt64(writer))
                    let database = writer % 4 == 3 ? second : first
                    var kept: [Int] = []
                    var dropped: [Int] = []
                    for round in 0..<100 {
                        let ids = (0..<4).map { writer * 1_000_000 + round * 10 + $0 }
                        // 0–4: committed; 5: the body throws; 6: refused at COMMIT; 7: a read outside a transaction.
                        let kind = rng.next() % 8
                        let outcome: Bool = try await database.run { c in
                            do {
                                switch kind {
                                case 7:
                                    _ = try c.query("SELECT count(*) FROM parent")
                                    return false
                                default:
                                    try c.transaction {
                                        for id in ids {
                                            try c.execute(
                                                "INSERT INTO parent (id, pad) VALUES (\(.of(id)), \(.text(pad)))")
                                        }
                                        // A child of no parent is refused by the deferred key at COMMIT, and
                                        // rolled back by the failed commit.
                                        if kind == 5 { throw Refused() }
                                        if kind == 6 {
                                            try c.execute("INSERT INTO child (parent_id) VALUES (\(.of(-1 - ids[0])))")
                                        }
                                    }
                                    return true
                                }
                            } catch is Refused {
                                return false
                            } catch let error as StoreError where kind == 6 && error.kind == .constraint {
                                return false
                            }
                        }
                        if outcome { kept += ids } else if kind != 7 { dropped += ids }
                    }
                    return (kept, dropped)
                }
            }
            var all: (kept: [Int], dropped: [Int]) = ([], [])
            for try await part in group {
                all.kept += part.kept
                all.dropped += part.dropped
            }
            return all
        }
        let stored = try await first.run { c in try c.query("SELECT id FROM parent ORDER BY id").map { $0.int(0) } }
        #expect(stored == kept.kept.sorted(), "seed \(seed): the committed rows, each once")
        #expect(Set(stored).isDisjoint(with: kept.dropped), "seed \(seed): nothing rolled back is kept")
        let integrity = try await first.run { c in try c.query("PRAGMA integrity_check").first?.text(0) }
        #expect(integrity == "ok")
        // Every turn was given back: one more transaction from each spelling goes through.
        for database in [first, second] {
            try await database.run { c in try c.transaction { _ = try c.execute("DELETE FROM child") } }
        }
        // Over 1,000 pages went through the log: a checkpoint made in the background copies them to the file
        // while the connections stay open (SQLite's own checkpoint at close is not what is tested).
        let written = kept.kept.count * 4000
        #expect(written > 1000 * 4096 + (1 << 20), "seed \(seed): the test writes enough to need a checkpoint")
        try await waitFor("the database file holds the log's first thousand pages", timeout: 30) {
            (try? FileManager.default.attributesOfItem(atPath: path)[.size] as? Int).map { $0 >= 1000 * 4096 } ?? false
        }
        let log = (try? FileManager.default.attributesOfItem(atPath: path + "-wal")[.size] as? Int) ?? 0
        #expect(log <= Int(SQLiteFile.inlinePages + 1000) * 4120, "the log stays bounded: \(log) bytes")
        _ = first
        _ = second
    }
}
