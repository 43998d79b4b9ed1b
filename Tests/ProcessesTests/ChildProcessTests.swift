import Foundation
import Processes
import Spool
import TestSupport
import Testing

@Suite struct ChildProcessTests {
    private func child(_ script: String, timeout: Double = 30) -> ChildProcess {
        ChildProcess(
            executable: "/bin/sh", arguments: ["-c", script], environment: ["PATH": "/usr/bin:/bin", "X": "y z"],
            directory: "/tmp", timeoutSeconds: timeout)
    }

    /// The case that ruled out swift-subprocess: callers blocking every thread of the cooperative pool.
    @Test func blockingCallersOnEveryPoolThreadStillFinish() async throws {
        let callers = ProcessInfo.processInfo.activeProcessorCount * 3
        let script = "exit 7"
        let endings = await withTaskGroup(of: ChildProcess.Ending?.self) { group in
            for _ in 0..<callers {
                group.addTask { try? child(script).run(output: .capture(limit: 100)).ending }
            }
            return await group.reduce(into: []) { $0.append($1) }
        }
        #expect(endings == Array(repeating: .exited(7), count: callers))
    }

    @Test func capturesBothOutputsWithExactlyTheEnvironmentAndDirectoryGiven() throws {
        let outcome = try child(
            "echo \"$X\"; pwd; echo oops >&2; echo \"$BALSAM_SPAWNED_BY\"; env | grep -v ^BALSAM_SPAWNED_BY= | grep -c ."
        ).run(output: .capture(limit: 1000))
        #expect(outcome.ending == .exited(0))
        // The one variable added: who started it (so what a killed parent left running can be found).
        #expect(String(decoding: outcome.output, as: UTF8.self) == "y z\n/tmp\n\(Posix.parentStamp)\n3\n")
        #expect(String(decoding: outcome.errors, as: UTF8.self) == "oops\n")
    }

    /// Unmarked (a scheduler's command, whose batch job inherits its environment): no `BALSAM_SPAWNED_BY`, not even
    /// one the caller's environment had.
    @Test func anUnmarkedChildCarriesNoMark() throws {
        var unmarked = ChildProcess(
            executable: "/bin/sh", arguments: ["-c", "echo \"[$BALSAM_SPAWNED_BY]\""],
            environment: ["PATH": "/usr/bin:/bin", Posix.parentVariable: "elsewhere.1-1"], directory: "/tmp",
            timeoutSeconds: 30)
        unmarked.marksDescendants = false
        #expect(String(decoding: try unmarked.run(output: .capture(limit: 100)).output, as: UTF8.self) == "[]\n")
    }

    @Test func outputBeyondTheLimitIsCutAndSaidSo() throws {
        let outcome = try child("printf 'a%.0s' $(seq 5000)").run(output: .capture(limit: 100))
        let text = String(decoding: outcome.output, as: UTF8.self)
        #expect(text.hasPrefix(String(repeating: "a", count: 100)) && text.contains("cut at 100 bytes"))
    }

    @Test func aTimeoutStopsTheWholeGroupEvenWhenTheOutputStaysOpen() throws {
        let dir = try TempDir()
        let marker = dir.path + "/grandchild"
        // A grandchild in the background holds the output open and would outlive a kill of the shell alone.
        var hanging = child("(sleep 30; touch \(marker)) & echo $! > \(dir.path)/pid; sleep 30", timeout: 0.5)
        hanging.graceSeconds = 0.5
        let started = Date()
        let outcome = try hanging.run(output: .capture(limit: 100))
        #expect(outcome.ending == .timedOut)
        #expect(Date().timeIntervalSince(started) < 10)
        let pid = try #require(Int32(try read(dir.path + "/pid").trimmingCharacters(in: .whitespacesAndNewlines)))
        let deadline = Date().addingTimeInterval(10)
        while kill(pid, 0) == 0 && Date() < deadline { usleep(10_000) }
        #expect(kill(pid, 0) != 0, "the grandchild was stopped with its group")
    }

    @Test func shouldStopEndsItAtOnce() throws {
        var stopping = child("sleep 30", timeout: 60)
        stopping.shouldStop = { true }
        #expect(try stopping.run(output: .capture(limit: 10)).ending == .stopped)
    }

    @Test func aMissingProgramIsAnErrorNamingIt() throws {
        let missing = ChildProcess(executable: "/nonexistent/tool", environment: [:], directory: "/", timeoutSeconds: 5)
        #expect { _ = try missing.run(output: .capture(limit: 10)) } throws: {
            "\($0)".contains("/nonexistent/tool")
        }
    }
}
