import Foundation
import Spool
import TestSupport
import Testing

/// The harness every integration test runs programs through: it must neither hang nor lose output.
@Suite struct SupportTests {
    @Test func aLargeStandardErrorBeforeTheOutputDoesNotStall() throws {
        let r = try run("/bin/sh", ["-c", "head -c 1000000 /dev/zero | tr '\\\\0' x >&2; echo done"], timeout: 60)
        #expect(r.status == 0)
        #expect(r.stdout == "done\n")
        #expect(r.stderr.utf8.count == 1_000_000)
    }

    @Test func aStuckProgramIsKilledAtItsDeadline() throws {
        let started = Date()
        #expect(throws: SpoolError.self) { try run("/bin/sleep", ["60"], timeout: 1) }
        #expect(Date().timeIntervalSince(started) < 50, "the deadline ended the wait, not the program")
    }
}
