import Foundation
import Spool
import TestSupport
import Testing

@testable import Batch

/// The adapters' parsers on scheduler output: Slurm's captured live, the others' written in their documented
/// formats (Fixtures/SOURCES.md says which is which).
@Suite struct ParseTests {
    func fixture(_ name: String) throws -> String {
        let here = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
        return try String(contentsOf: here.appendingPathComponent("Fixtures/" + name), encoding: .utf8)
    }

    @Test func slurmSqueueEveryStateIsReadAndMapped() throws {
        let statuses = try SlurmScheduler.parseList(try fixture("slurm-squeue.txt"))
        let byName = Dictionary(statuses.map { ($0.name ?? "", $0) }, uniquingKeysWith: { a, _ in a })
        #expect(byName["fail"]?.phase == .ended(.failed) && byName["fail"]?.reason == "NonZeroExitCode")
        #expect(byName["cxl"]?.phase == .ended(.cancelled))
        #expect(byName["tmo"]?.phase == .ended(.timedOut) && byName["tmo"]?.endTime != nil)
        #expect(byName["holds"]?.phase == .running && byName["holds"]?.endTime == nil)
        #expect(byName["pending"]?.phase == .queued && byName["pending"]?.startTime == nil)
        #expect(byName["pending"]?.reason == "Resources")
        #expect(byName["balsam-x"]?.phase == .ended(.completed))
        #expect(byName["fail"]?.startTime == SchedulerTime.local("2026-11-25T14:39:48"))
        let lines = try fixture("slurm-squeue.txt").split(separator: "\n").count
        #expect(statuses.count == lines)
    }

    @Test func slurmOutputThatCannotBeReadIsAnErrorNotADroppedLine() throws {
        #expect(throws: SpoolError.self) { try SlurmScheduler.parseList("12|RUNNING|x|debug\n") }
        #expect(throws: SpoolError.self) { try SlurmScheduler.parseList("12|EXPLODED|x|debug|1|N/A|N/A|N/A|None\n") }
        #expect(throws: SpoolError.self) {
            try SlurmScheduler.parseSubmit("sbatch: error: Batch job submission failed")
        }
        #expect(try SlurmScheduler.parseSubmit(try fixture("slurm-sbatch.txt")) == "6")
        #expect(try SlurmScheduler.parseSubmit("77;cluster2\n") == "77")
    }

    @Test func slurmScontrolAndSacctGiveTheExitCodeAndTimes() throws {
        let failed = try #require(try SlurmScheduler.parseShowJob(try fixture("slurm-scontrol-failed.txt")))
        #expect(failed.id == "2" && failed.phase == .ended(.failed) && failed.exitCode == 3)
        #expect(failed.endTime == SchedulerTime.local("2026-11-25T14:39:48"))
        let cancelled = try #require(
            try SlurmScheduler.parseAccounting(try fixture("slurm-sacct-c-cancelled.txt"), id: "3"))
        #expect(cancelled.phase == .ended(.cancelled) && cancelled.exitCode == 0 && cancelled.name == "cxl")
        #expect(try SlurmScheduler.parseAccounting(try fixture("slurm-sacct-disabled.txt"), id: "2") == nil)
        #expect(SlurmScheduler.exitCode("0:15") == 143 && SlurmScheduler.exitCode("3:0") == 3)
    }

    @Test func slurmIdleNodesAreTheBackfillWindows() throws {
        #expect(try SlurmScheduler.parseIdle(try fixture("slurm-sinfo-idle.txt")) == [.init(nodes: 3, minutes: 60)])
        #expect(try SlurmScheduler.parseIdle("4|infinite\n") == [.init(nodes: 4, minutes: BackfillWindow.unlimited)])
        #expect(try SlurmScheduler.parseIdle("") == [])
        #expect(throws: SpoolError.self) { try SlurmScheduler.parseIdle("four nodes\n") }
    }

    @Test func pbsJSONKeepsOnlyOurJobsAndReadsEndings() throws {
        let statuses = try PBSScheduler.parseJSON(try fixture("pbs-qstat-f-F-json.txt"), owner: "root")
        #expect(statuses.map(\.id) == ["101.polaris-pbs-01", "102.polaris-pbs-01"])
        #expect(
            statuses[0].phase == .running && statuses[0].startTime == PBSScheduler.ctime("Wed Nov 25 08:31:15 2026"))
        #expect(statuses[1].phase == .queued && statuses[1].reason?.hasPrefix("Not Running") == true)
        let finished = try PBSScheduler.parseJSON(try fixture("pbs-qstat-x-finished.txt"), owner: nil)
        #expect(finished.first?.phase == .ended(.timedOut) && finished.first?.exitCode == -29, "\(finished)")
        #expect(try PBSScheduler.parseJSON(#"{"timestamp":1,"pbs_version":"x","pbs_server":"s"}"#, owner: nil).isEmpty)
        #expect(throws: SpoolError.self) { try PBSScheduler.parseJSON("qstat: Unknown Job Id 9", owner: nil) }
        #expect(throws: SpoolError.self) {
            try PBSScheduler.parseJSON(#"{"Jobs":{"1.s":{"job_state":"Z"}}}"#, owner: nil)
        }
    }

    @Test func pbsTextOfTorqueStyleQstat() throws {
        let statuses = try PBSScheduler.parseText(try fixture("pbs-torque-qstat-f.txt"), owner: "root")
        #expect(statuses.count == 6)
        #expect(statuses.filter { $0.phase == .running }.map(\.name) == ["torque-run"])
        #expect(statuses.filter { $0.phase == .ended(.completed) }.count == 5)
        #expect(try PBSScheduler.parseText(try fixture("pbs-torque-qstat-f.txt"), owner: "alice").isEmpty)
        #expect(throws: SpoolError.self) { try PBSScheduler.parseText("garbage\n", owner: nil) }
        #expect(throws: SpoolError.self) { try PBSScheduler.parseText("Job Id: 1\n\tjob_state = Z\n", owner: nil) }
    }

    @Test func lsfJSONAndSubmission() throws {
        let statuses = try LSFScheduler.parseJSON(try fixture("lsf-bjobs-json.txt"))
        #expect(statuses.map(\.phase) == [.running, .ended(.timedOut), .queued])
        #expect(statuses[1].exitCode == 140 && statuses[1].endTime != nil)
        #expect(try LSFScheduler.parseSubmit("Job <4242> is submitted to queue <batch>.\n") == "4242")
        #expect(throws: SpoolError.self) { try LSFScheduler.parseSubmit("Request aborted by esub.") }
    }

    @Test func cobaltQstatAndLog() throws {
        let statuses = try CobaltScheduler.parseList(try fixture("cobalt-qstat.txt"))
        #expect(statuses.map(\.id) == ["512345", "512346"] && statuses.map(\.phase) == [.running, .queued])
        #expect(statuses[0].name == "balsam-0a1b2c3d-6")
        let ended = try #require(CobaltScheduler.parseLog(try fixture("cobalt-cobaltlog.txt"), id: "512340"))
        #expect(ended.phase == .ended(.failed) && ended.exitCode == 3)
        #expect(throws: SpoolError.self) { try CobaltScheduler.parseList("JobID State\n1 exploded\n") }
    }

    @Test func durationsAndTimes() {
        #expect(SchedulerTime.minutes("01:30:00") == 90 && SchedulerTime.minutes("1-00:00:00") == 1440)
        #expect(SchedulerTime.minutes("45") == 45 && SchedulerTime.minutes("x") == nil)
        #expect(SchedulerTime.local("N/A") == nil && SchedulerTime.local("Unknown") == nil)
        let t = SchedulerTime.local("2026-11-25T14:39:48")
        #expect(t?.hasPrefix("2026-11-25T") == true && t?.hasSuffix("Z") == true)
    }
}
