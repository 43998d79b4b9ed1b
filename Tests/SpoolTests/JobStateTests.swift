import Foundation
import TestSupport
import Testing

@testable import Spool

/// The legal transitions, written out independently of the implementation's table.
let legalPairs: Set<String> = [
    "CREATED>AWAITING_PARENTS", "CREATED>READY",
    "AWAITING_PARENTS>READY", "AWAITING_PARENTS>FAILED",
    "READY>STAGED_IN", "READY>FAILED",
    "STAGED_IN>PREPROCESSED", "STAGED_IN>FAILED",
    "PREPROCESSED>RUNNING", "PREPROCESSED>FAILED",
    "RUNNING>RUN_DONE", "RUNNING>RUN_ERROR", "RUNNING>RUN_TIMEOUT", "RUNNING>FAILED",
    "RUN_DONE>POSTPROCESSED", "RUN_DONE>RESTART_READY", "RUN_DONE>FAILED",
    "RUN_ERROR>RESTART_READY", "RUN_ERROR>POSTPROCESSED", "RUN_ERROR>FAILED",
    "RUN_TIMEOUT>RESTART_READY", "RUN_TIMEOUT>POSTPROCESSED", "RUN_TIMEOUT>FAILED",
    "RESTART_READY>RUNNING", "RESTART_READY>FAILED",
    "POSTPROCESSED>STAGED_OUT", "POSTPROCESSED>FAILED",
    "STAGED_OUT>JOB_FINISHED", "STAGED_OUT>FAILED",
    "FAILED>READY", "FAILED>RESTART_READY", "FAILED>AWAITING_PARENTS",
]

@Suite struct JobStateTests {
    @Test func thereAreFourteenStatesSpelledAsBalsam() {
        #expect(JobState.allCases.count == 14)
        #expect(
            JobState.allCases.map(\.rawValue).joined(separator: " ")
                == "CREATED AWAITING_PARENTS READY STAGED_IN PREPROCESSED RUNNING RUN_DONE RUN_ERROR RUN_TIMEOUT "
                + "RESTART_READY POSTPROCESSED STAGED_OUT JOB_FINISHED FAILED")
    }

    @Test(arguments: JobState.allCases)
    func everyPairMatchesTheTable(from: JobState) {
        for to in JobState.allCases {
            let legal = legalPairs.contains("\(from.rawValue)>\(to.rawValue)")
            #expect(from.canTransition(to: to) == legal, "\(from.rawValue) -> \(to.rawValue)")
            do {
                try from.validateTransition(to: to)
                #expect(legal, "\(from.rawValue) -> \(to.rawValue) was accepted")
            } catch {
                #expect(!legal, "\(from.rawValue) -> \(to.rawValue) was refused")
                #expect(error.description.contains(from.rawValue) && error.description.contains(to.rawValue))
                #expect(error.code == .invalidInput)
            }
        }
    }

    @Test func runnableAndFinalSets() {
        #expect(JobState.runnable == [.preprocessed, .restartReady])
        #expect(JobState.final == [.jobFinished, .failed])
        #expect(!JobState.stored.contains(.created))
        #expect(JobState.active.count == 11)
    }

    @Test func everyStateIsReachableAndEveryActiveStateCanEnd() {
        var reached: Set<JobState> = [.created]
        var frontier: [JobState] = [.created]
        while let s = frontier.popLast() {
            for n in s.successors where reached.insert(n).inserted { frontier.append(n) }
        }
        #expect(reached == Set(JobState.allCases))
        for state in JobState.active {
            #expect(state.canTransition(to: .failed), "\(state) cannot be killed")
            // Some path leads to JOB_FINISHED.
            var seen: Set<JobState> = [state]
            var stack = [state]
            while let s = stack.popLast() { for n in s.successors where seen.insert(n).inserted { stack.append(n) } }
            #expect(seen.contains(.jobFinished), "\(state) can never finish")
        }
        #expect(JobState.jobFinished.successors.isEmpty)
    }

    @Test func initialStateWaitsForUnfinishedParents() {
        #expect(JobState.initial(parentStates: []) == .ready)
        #expect(JobState.initial(parentStates: [.jobFinished, .jobFinished]) == .ready)
        for state in JobState.allCases where state != .jobFinished {
            #expect(JobState.initial(parentStates: [.jobFinished, state]) == .awaitingParents)
        }
    }

    @Test func randomWalksOnlyTakeLegalSteps() throws {
        var rng = SystemRandomNumberGenerator()
        for _ in 0..<200 {
            var record = StateRecord(initial: .ready, actor: "test")
            for _ in 0..<30 {
                let target = JobState.allCases.randomElement(using: &rng) ?? .failed
                let before = record.state
                if let next = try? record.moved(to: target, actor: "test", reason: nil) {
                    #expect(legalPairs.contains("\(before.rawValue)>\(target.rawValue)"))
                    #expect(next.history.last?.state == target)
                    record = next
                } else {
                    #expect(record.state == before)
                }
            }
            let parsed = try StateRecord(bytes: record.fileBytes(), path: "state")
            #expect(parsed.history == record.history && parsed.state == record.state)
        }
    }

    /// The state file is appended to: the last valid line is the current state, and a line cut short by a crash
    /// is skipped, also when a later append follows it.
    @Test func stateFilesAreAppendedAndSurviveTornLines() throws {
        let dir = try TempDir()
        let path = dir.path + "/state"
        var record = StateRecord(initial: .ready, actor: "submit")
        try Data(record.fileBytes()).write(to: URL(fileURLWithPath: path))
        record = try record.moved(to: .stagedIn, actor: "w", reason: "no stage-in")
        try Posix.appendLines(path, record.line(), sync: false)
        // A crash cuts the next write short.
        let torn = try record.moved(to: .preprocessed, actor: "w", reason: nil).line().dropLast(9)
        let fd = open(path, O_WRONLY | O_APPEND)
        _ = Array(torn).withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
        close(fd)
        var parsed = try StateRecord(bytes: Array(try Data(contentsOf: URL(fileURLWithPath: path))), path: path)
        #expect(parsed.state == .stagedIn && parsed.history.map(\.state) == [.ready, .stagedIn])
        // The next writer ends the fragment first, so its own line is whole.
        record = try record.moved(to: .preprocessed, actor: "w", reason: nil)
        record = try record.moved(to: .running, actor: "l", reason: nil)
        record.returnCode = 3
        try Posix.appendLines(path, record.line(), sync: false)
        parsed = try StateRecord(bytes: Array(try Data(contentsOf: URL(fileURLWithPath: path))), path: path)
        #expect(parsed.state == .running && parsed.attempts == 1 && parsed.returnCode == 3)
        #expect(parsed.history.map(\.state) == [.ready, .stagedIn, .running], "the torn line is not history")
        #expect(throws: SpoolError.self) { try StateRecord(bytes: Array("{\"state\":\"RUN".utf8), path: path) }
        // A file of the first format (one object with its history) still reads.
        let old =
            #"{"state":"RUN_DONE","since":"t2","actor":"l","attempts":1,"history":[{"state":"READY","time":"t0","actor":"s"},{"state":"RUN_DONE","time":"t2","actor":"l"}]}"#
        let first = try StateRecord(bytes: Array(old.utf8), path: path)
        #expect(first.state == .runDone && first.since == "t2" && first.attempts == 1 && first.history.count == 2)
    }

    @Test func parseIsCaseInsensitiveAndNamesTheStatesOnError() throws {
        #expect(try JobState.parse("run_done") == .runDone)
        #expect(throws: SpoolError.self) { try JobState.parse("DONE") }
    }
}
