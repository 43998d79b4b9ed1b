import Foundation
import Spool
import TestSupport
import Testing

/// End-to-end tests: the real `balsam` and `balsam-submit` binaries against a real site on disk.
@Suite struct CommandTests {
    let dir: TempDir
    let site: String

    init() throws {
        dir = try TempDir()
        site = dir.path + "/site"
        let r = try balsam(["init", site, "--name", "demo"])
        #expect(r.status == 0 && r.stdout == site + "\n")
        let a = try balsam(["app", "create", "hello", "--command-template", "echo hello {{ name }}"], site: site)
        #expect(a.status == 0, "\(a.stderr)")
    }

    @Test func submitListShowRoundTrip() throws {
        let s = try balsamSubmit(
            ["-a", "hello", "-w", "runs/1", "-p", "name=world", "--tag", "exp=a", "-n", "2", "-rpn", "4", "-t", "5"],
            site: site)
        #expect(s.status == 0, "\(s.stderr)")
        let id = s.stdout.trimmingCharacters(in: .whitespacesAndNewlines)
        #expect(JobID.isValid(id))
        let via = try balsam(["submit", "-a", "hello", "-w", "runs/2", "-p", "name=you", "--tag", "exp=b"], site: site)
        #expect(via.status == 0, "balsam submit dispatches to balsam-submit: \(via.stderr)")
        #expect(via.stderr.contains("no balsam-watch is running for this site") && via.stderr.contains("READY"))

        let ls = try balsam(["ls"], site: site)
        #expect(ls.status == 0)
        let lines = ls.stdout.split(separator: "\n")
        #expect(lines.count == 3 && lines[0].hasPrefix("ID") && lines[1].contains(id) && lines[1].contains("READY"))
        #expect(lines[1].contains("runs/1") && lines[1].contains("exp=a"))

        let json = try balsam(["ls", "--json", "--tag", "exp=a"], site: site)
        let objects = json.stdout.split(separator: "\n").map { try? JSONValue.parse(String($0)) }
        #expect(objects.count == 1)
        let o = try #require(objects[0]?.objectValue)
        #expect(o["id"] == .string(id) && o["state"] == .string("READY") && o["num_nodes"] == .int(2))
        #expect(
            o["ranks_per_node"] == .int(4) && o["wall_time_min"] == .int(5)
                && o["parameters"] == .object(["name": .string("world")]))

        let show = try balsam(["show", id], site: site)
        #expect(show.status == 0 && show.stdout.contains("state:     READY") && show.stdout.contains("history:"))
        let byWorkdir = try balsam(["show", "runs/2", "--json"], site: site)
        #expect(try JSONValue.parse(byWorkdir.stdout).objectValue?["workdir"] == .string("runs/2"))
        let missing = try balsam(["show", "nope"], site: site)
        #expect(missing.status == 66)
    }

    @Test func listFilters() throws {
        let input = (0..<6).map { i in
            #"{"app":"hello","workdir":"w/\#(i)","parameters":{"name":"n"},"tags":{"parity":"\#(i % 2 == 0 ? "even" : "odd")"}}"#
        }.joined(separator: "\n")
        let s = try balsamSubmit(["--from", "-"], site: site, stdin: Data(input.utf8))
        #expect(s.status == 0, "\(s.stderr)")
        let ids = s.stdout.split(separator: "\n").map(String.init)
        #expect(ids.count == 6)
        func count(_ args: [String]) throws -> Int {
            let r = try balsam(["ls", "--json"] + args, site: site)
            #expect(r.status == 0, "\(r.stderr)")
            return r.stdout.split(separator: "\n").count
        }
        #expect(try count([]) == 6)
        #expect(try count(["--tag", "parity=even"]) == 3)
        #expect(try count(["--state", "READY"]) == 6)
        #expect(try count(["--state", "RUNNING"]) == 0)
        #expect(try count(["--exclude-state", "READY"]) == 0)
        #expect(try count(["--app", "hello"]) == 6)
        #expect(try count(["--app", "other"]) == 0)
        #expect(try count(["--workdir", "w/3"]) == 1)
        #expect(try count(["--id", ids[2], "--id", ids[4]]) == 2)
        let byState = try balsam(["ls", "--by-state", "--json"], site: site)
        #expect(try JSONValue.parse(byState.stdout).objectValue?["READY"] == .int(6))
        let ingest = try balsam(["ingest"], site: site)
        #expect(ingest.status == 0 && ingest.stdout.contains("materialized 6"))
        #expect(try count(["--tag", "parity=odd"]) == 3)
        #expect(FileManager.default.fileExists(atPath: site + "/data/w/5/job.json"))
        let bad = try balsam(["ls", "--state", "DONE"], site: site)
        #expect(bad.status == 64 && bad.stderr.contains("unknown state 'DONE'"))
    }

    /// `-w` is one workdir, or a glob; the original's `-w` (contains) is translated; a command that would change
    /// more than one job asks on a terminal (`-y` does not), and `--dry-run` changes nothing.
    @Test func workdirIsExactOrAGlobAndManyJobsAreAskedAbout() throws {
        let workdirs = ["w/1", "w/10", "w/11", "w/2", "slow/1"]
        let input = workdirs.map { #"{"app":"hello","workdir":"\#($0)","parameters":{"name":"n"}}"# }
        let s = try balsamSubmit(["--from", "-"], site: site, stdin: Data(input.joined(separator: "\n").utf8))
        try #require(s.status == 0, "\(s.stderr)")
        func listed(_ args: [String]) throws -> [String] {
            let r = try balsam(["ls"] + args, site: site)
            #expect(r.status == 0, "\(r.stderr)")
            return r.stdout.split(separator: "\n").dropFirst().map { String($0.split(separator: " ").last ?? "") }
                .sorted()
        }
        #expect(try listed(["-w", "w/1"]) == ["w/1"])
        #expect(try listed(["-w", "w/1/"]) == ["w/1"])
        #expect(try listed(["-w", "w/1*"]) == ["w/1", "w/10", "w/11"])
        #expect(try listed(["-w", "*/1"]) == ["slow/1", "w/1"])
        #expect(try listed(["-w", "w/[12]"]) == ["w/1", "w/2"])
        // The original's spelling: workdirs containing the text (slow/1 too).
        let original = try balsam(["job", "ls", "-w", "w/1"], site: site)
        #expect(original.stdout.split(separator: "\n").count == 5, "w/1, w/10, w/11, slow/1: \(original.stdout)")
        // --by-state counts what the filters select.
        let counts = try balsam(["ls", "--by-state", "--json", "-w", "w/1*"], site: site)
        #expect(try JSONValue.parse(counts.stdout).objectValue?["READY"] == .int(3), "\(counts.stdout)")

        let dry = try balsam(["rm", "-w", "w/1*", "--dry-run"], site: site)
        #expect(dry.status == 0 && dry.stderr.contains("would remove 3 jobs"), "\(dry.stderr)")
        #expect(dry.stdout.contains("w/10") && !dry.stdout.contains("w/2"), "\(dry.stdout)")
        #expect(try listed([]).count == 5, "--dry-run removed nothing")

        // On a terminal: asked, with the count; "n" changes nothing and exits 1.
        let bin = CommandTemplate.shellQuote(binDirectory + "/balsam")
        let command = "BALSAM_SITE=\(CommandTemplate.shellQuote(site)) \(bin) rm -w 'w/*'"
        let no = try run("/usr/bin/script", ["-qec", command, "/dev/null"], stdin: Data("n\n".utf8))
        #expect(no.stdout.contains("remove 4 jobs (w/1, w/10, w/11, w/2)? [y/N]"), "\(no.stdout)")
        #expect(no.stdout.contains("nothing changed") && no.status == 1, "\(no.status) \(no.stdout)")
        #expect(try listed([]).count == 5)
        // One job is not asked about; -y is not asked.
        let one = try run(
            "/usr/bin/script", ["-qec", command.replacingOccurrences(of: "w/*", with: "w/2"), "/dev/null"])
        #expect(one.status == 0 && !one.stdout.contains("[y/N]"), "\(one.stdout)")
        let yes = try run(
            "/usr/bin/script",
            ["-qec", command.replacingOccurrences(of: "rm -w 'w/*'", with: "job rm -y -w w/1"), "/dev/null"])
        #expect(yes.status == 0 && !yes.stdout.contains("[y/N]"), "the original's -y: \(yes.stdout)")
        #expect(try listed([]) == [], "w/1, w/10, w/11 and slow/1 contain 'w/1'")
    }

    @Test func bulkFailuresNameTheLinesAndSubmitNothing() throws {
        var input = Data()
        input.append(Data(#"{"app":"hello","workdir":"ok","parameters":{"name":"n"}}"#.utf8 + [0x0A]))
        input.append(
            Data(#"{"app":"hello","workdir":"bad","parameters":{"name":""#.utf8 + [0xC3, 0x28] + #""}}"#.utf8 + [0x0A]))
        input.append(Data("{broken\n".utf8))
        input.append(Data(#"{"app":"hello","workdir":"../x","parameters":{"name":"n"}}"#.utf8 + [0x0A]))
        let path = dir.path + "/jobs.jsonl"
        try input.write(to: URL(fileURLWithPath: path))
        let r = try balsamSubmit(["--from", path], site: site)
        #expect(r.status == 65)
        #expect(r.stderr.contains("jobs.jsonl:2: malformed JSON: invalid UTF-8"))
        #expect(r.stderr.contains("jobs.jsonl:3: malformed JSON"))
        #expect(r.stderr.contains("jobs.jsonl:4: field 'workdir'"))
        #expect(r.stderr.contains("3 line(s) failed; nothing from"))
        #expect(r.stdout.isEmpty)
        #expect(try stateCounts(site) == [:])
    }

    @Test(arguments: [
        (["-a", "nope", "-w", "x"], 66, "no app 'nope'"),
        (["-a", "hello", "-w", "x"], 65, "missing required parameter 'name'"),
        (["-a", "hello", "-w", "x", "-p", "name=a", "-p", "extra=1"], 65, "no parameter 'extra'"),
        (["-a", "hello", "-w", "/abs", "-p", "name=a"], 65, "must be relative"),
        (["-a", "hello", "-w", "a/../b", "-p", "name=a"], 65, "must not contain '..'"),
        (["-a", "hello", "-w", "x", "-p", "name=a", "--parent", "01M891VR1Q54AF41C3ME0190FN"], 65, "unknown parent"),
        (["-a", "hello", "-w", "x", "-p", "name=a", "-n", "0"], 65, "'num_nodes'"),
        // Every number out of range is bad data naming its field, however it is out (issue 25, 13).
        (["-a", "hello", "-w", "x", "-p", "name=a", "-n", "-1"], 65, "'num_nodes' must be between 1 and"),
        (["-a", "hello", "-w", "x", "-p", "name=a", "-n", "2000000"], 65, "'num_nodes' must be between 1 and"),
        (["-a", "hello", "-w", "x", "-p", "name=a", "-n", "99999999999999999999"], 65, "\"99999999999999999999\""),
        (["-a", "hello", "-w", "x", "-p", "name=a", "-g", "-1"], 65, "'gpus_per_rank' must be a number"),
        (["-a", "hello", "-w", "x", "-p", "name=a", "-g", "nan"], 65, "not \"nan\""),
        (["-a", "hello", "-w", "x", "-p", "name=a", "-t", "-5"], 65, "'wall_time_min' must be between"),
        (["-a", "hello", "-w", "x", "-p", "name=a", "--wall-time-min", "-1"], 65, "'wall_time_min'"),
        (["-a", "hello", "-w", "x", "-p", "noequals"], 64, "KEY=VALUE"),
        (["-a", "hello", "-w", "x", "-p", "name=x", "-p", "name=y"], 64, "'name' twice"),
        (["-a", "hello"], 64, "-w/--workdir"),
        ([], 64, "Give -a APP"),
    ])
    func badSubmissionsExitWithSysexits(args: [String], status: Int32, message: String) throws {
        let r = try balsamSubmit(args, site: site)
        #expect(r.status == status, "\(r.stderr)")
        #expect(r.stderr.contains(message), "\(r.stderr)")
        #expect(!FileManager.default.fileExists(atPath: site + "/data/x"))
    }

    /// Inputs staged into the workdir first, as users of the original did: the directory is the job's, its
    /// files kept (StagedWorkdirTests generates the trees).
    @Test func aWorkdirHoldingOnlyStagedInputsIsTheJobsDirectory() throws {
        try FileManager.default.createDirectory(atPath: site + "/data/manual/1", withIntermediateDirectories: true)
        try "mesh".write(toFile: site + "/data/manual/1/input.dat", atomically: false, encoding: .utf8)
        let r = try balsamSubmit(["-a", "hello", "-w", "manual/1", "-p", "name=x"], site: site)
        #expect(r.status == 0, "\(r.stderr)")
        #expect(try read(site + "/data/manual/1/input.dat") == "mesh")
        #expect(try stateCounts(site) == ["READY": 1])
    }

    /// The client's venv activated puts the original Balsam's `balsam` first on PATH (issue 35, item 7): our
    /// commands that still run say so, naming both, and nothing when ours comes first.
    @Test func anotherBalsamFirstOnPathIsNamed() throws {
        let venv = try TempDir()
        try venv.file("bin/balsam", "#!/bin/sh\necho \"Error: No such command '$1'.\" >&2; exit 2\n")
        chmod(venv.path + "/bin/balsam", 0o755)
        let shadowed = try run(
            binDirectory + "/balsam-submit", ["-a", "hello", "-w", "shadow/1", "-p", "name=a", "--site", site],
            env: ["PATH": venv.path + "/bin:" + binDirectory + ":/usr/bin:/bin"])
        #expect(shadowed.status == 0, "\(shadowed.stderr)")
        #expect(
            shadowed.stderr.contains("the balsam first on PATH is \(venv.path)/bin/balsam")
                && shadowed.stderr.contains("\(binDirectory)/balsam"), "\(shadowed.stderr)")
        let ours = try run(
            binDirectory + "/balsam-submit", ["-a", "hello", "-w", "shadow/2", "-p", "name=a", "--site", site],
            env: ["PATH": binDirectory + ":" + venv.path + "/bin:/usr/bin:/bin"])
        #expect(ours.status == 0 && !ours.stderr.contains("first on PATH"), "\(ours.stderr)")
    }

    /// Every original spelling balsam(1) lists, and each of its two groups, answers `--help` with its own usage
    /// and exit 0 (issue 35, item 9): the list is read from the man page, so a spelling added there is walked.
    @Test func everyOriginalSpellingHasItsOwnHelp() throws {
        let page = try read(repositoryRoot + "/man/balsam.1")
        let section =
            try #require(page.components(separatedBy: ".Ss The original Balsam's spellings").last)
            .components(separatedBy: ".Sh ").first ?? ""
        var spellings: [String] = []
        for line in section.split(separator: "\n") where line.hasPrefix(".It Cm ") {
            let words = line.dropFirst(".It Cm ".count).split(separator: " ")
            guard words.count >= 2, ["site", "job", "app", "queue"].contains(words[0]) else { continue }
            // "site start | stop": both.
            var i = 1
            while i < words.count, !words[i].hasPrefix("Ar"), !words[i].hasPrefix("Fl"), !words[i].hasPrefix("Op") {
                if words[i] != "|" { spellings.append("\(words[0]) \(words[i])") }
                i += 1
            }
        }
        #expect(spellings.count >= 12, "\(spellings)")
        for spelling in ["site", "job"] + spellings {
            let r = try balsam(spelling.split(separator: " ").map(String.init) + ["--help"])
            #expect(r.status == 0, "balsam \(spelling) --help: \(r.stderr)")
            #expect(
                r.stdout.lowercased().contains("usage: balsam \(spelling)"), "balsam \(spelling) --help: \(r.stdout)")
        }
    }

    /// The original's `site init` names itself in its messages (issue 35, item 10).
    @Test func siteInitSaysItsOwnName() throws {
        let r = try balsam(["site", "init", site, "--platform", "local"])
        #expect(r.status == 73 && r.stderr.hasPrefix("balsam site init: "), "\(r.stderr)")
    }

    @Test func existingWorkdirIsRefused() throws {
        #expect(try balsamSubmit(["-a", "hello", "-w", "x", "-p", "name=a"], site: site).status == 0)
        let r = try balsamSubmit(["-a", "hello", "-w", "x", "-p", "name=b"], site: site)
        #expect(r.status == 73 && r.stderr.contains("workdir 'x' already exists"))
        #expect(try stateCounts(site) == ["READY": 1])
        // The same workdir twice in one input is taken too: 73, as balsam-submit(1) says.
        let twice = #"{"app":"hello","workdir":"y","parameters":{"name":"n"}}"# + "\n"
        let dup = try balsamSubmit(["--from", "-"], site: site, stdin: Data((twice + twice).utf8))
        #expect(
            dup.status == 73 && dup.stderr.contains("<stdin>:2: workdir 'y' is used by another job"), "\(dup.stderr)")
        #expect(try stateCounts(site) == ["READY": 1])
    }

    @Test func handMadeDirectoriesAndSymlinks() throws {
        try dir.file("made/job.json", #"{"app":"hello","parameters":{"name":"dir"}}"#)
        try dir.file("made/input.txt", "data")
        let r = try balsamSubmit([dir.path + "/made", "--json"], site: site)
        #expect(r.status == 0, "\(r.stderr)")
        #expect(try JSONValue.parse(r.stdout).objectValue?["workdir"] == .string("made"))
        #expect(FileManager.default.fileExists(atPath: site + "/data/made/input.txt"))
        try FileManager.default.createDirectory(atPath: dir.path + "/real", withIntermediateDirectories: true)
        try dir.file("real/job.json", #"{"app":"hello","parameters":{"name":"dir"}}"#)
        try FileManager.default.createSymbolicLink(atPath: dir.path + "/alias", withDestinationPath: dir.path + "/real")
        let l = try balsamSubmit([dir.path + "/alias"], site: site)
        #expect(l.status == 65 && l.stderr.contains("symbolic link"))
        #expect(FileManager.default.fileExists(atPath: dir.path + "/real/job.json"))
    }

    @Test func siteDiscoveryAndNonSites() throws {
        let inside = site + "/data"
        let r = try run(binDirectory + "/balsam", ["ls", "--by-state"], cwd: inside)
        #expect(r.status == 0, "walks up from the current directory: \(r.stderr)")
        let notSite = try run(binDirectory + "/balsam", ["ls", "--site", dir.path])
        #expect(notSite.status == 66 && notSite.stderr.contains("not a Balsam site"))
        let nowhere = try run(binDirectory + "/balsam", ["ls"], cwd: "/")
        #expect(nowhere.status == 66 && nowhere.stderr.contains("BALSAM_SITE"))
        let unknown = try balsam(["frobnicate"], site: site)
        #expect(unknown.status == 64 && unknown.stderr.contains("balsam-frobnicate"))
        let again = try balsam(["init", site])
        #expect(again.status == 73)
    }

    @Test func initMakesMissingParentsWithTheJobTemplate() throws {
        let deep = dir.path + "/new/path/site"
        let r = try balsam(["init", deep, "--scheduler", "slurm"])
        #expect(r.status == 0, "\(r.stderr)")
        #expect(r.stdout == deep + "\n")
        #expect(try read(deep + "/job-template.sh").contains("mpirun -n {{ num_nodes }}"))
        #expect(try read(deep + "/settings.yml").contains("slurm"))
        let underFile = try balsam(["init", site + "/settings.yml/x/site"])
        #expect(underFile.status == 73 && underFile.stderr.contains("not a directory"), "\(underFile.stderr)")
    }

    @Test(.enabled(if: canMount)) func aFailedInitLeavesNothingBehindNotEvenTheParentsItMade() throws {
        // Room for the parents and a few of the site's directories, not all of them.
        let fs = try SmallFilesystem(size: "1m", inodes: 12)
        let r = try balsam(["init", fs.path + "/a/b/site"])
        #expect(r.status == 74 && r.stderr.contains("No space left"), "\(r.stderr)")
        #expect(entries(fs.path).isEmpty, "left behind: \(entries(fs.path))")
    }

    @Test func theOriginalBalsamSpellingsWork() throws {
        let other = dir.path + "/original"
        // Not on a terminal, the original's spelling needs the platform named (PlatformTests: the menu).
        let initialized = try balsam(["site", "init", other, "-n", "orig", "--platform", "local"])
        #expect(initialized.status == 0 && initialized.stdout == other + "\n", "\(initialized.stderr)")
        #expect(try Site.open(other).name == "orig")
        let created = try balsam(
            [
                "job", "create", "-w", "o/1", "-a", "hello", "-p", "name=x", "--tag", "exp=a", "-n", "1", "-rpn", "2",
                "-lp", "cpu-bind=none", "-t", "5", "-y",
            ], site: site)
        #expect(created.status == 0, "\(created.stderr)")
        let id = created.stdout.trimmingCharacters(in: .whitespacesAndNewlines)
        let child = try balsam(["job", "create", "-w", "o/2", "-a", "hello", "-p", "name=y", "-pid", id], site: site)
        #expect(child.status == 0, "\(child.stderr)")
        let listed = try balsam(["job", "ls", "-t", "exp=a", "-v"], site: site)
        let job = try #require(try JSONValue.parse(listed.stdout).objectValue, "\(listed.stderr)")
        #expect(job["id"] == .string(id) && job["ranks_per_node"] == .int(2))
        #expect(job["launch_params"]?.objectValue?["cpu-bind"] == .string("none"))
        #expect(try balsam(["job", "ls", "-ns", "READY", "-t", "exp=a"], site: site).stdout.contains(id) == false)
        let killed = try balsam(["job", "modify", "-i", id, "-s", "FAILED"], site: site)
        #expect(killed.status == 0, "\(killed.stderr)")
        #expect(try balsam(["show", id, "--json"], site: site).stdout.contains("\"state\":\"FAILED\""))
        let retried = try balsam(["job", "modify", "-t", "exp=a", "-s", "READY"], site: site)
        #expect(retried.status == 0, "\(retried.stderr)")
        let odd = try balsam(["job", "modify", "-i", id, "-s", "RUNNING"], site: site)
        #expect(odd.status == 64 && odd.stderr.contains("balsam retry"), "\(odd.stderr)")
        let removed = try balsam(["job", "rm", "-i", id, "-y"], site: site)
        #expect(removed.status == 0, "\(removed.stderr)")
        #expect(try balsam(["show", id], site: site).status == 66)
        #expect(try balsam(["app", "ls", "-v"], site: site).stdout.contains("\"name\":\"hello\""))
        let queued = try balsam(["queue", "submit", "-n", "1", "-t", "5", "-j", "mpi", "-A", "local"], site: site)
        #expect(queued.status == 0, "\(queued.stderr)")
        #expect(try balsam(["queue", "ls", "-h"], site: site).stdout.contains("pending_submission"))
        // -s SLOT=ALIAS:/path is our --transfer (hello has no transfer slot 'in').
        let staged = try balsam(
            ["job", "create", "-w", "o/3", "-a", "hello", "-p", "name=x", "-s", "in=x:/y"], site: site)
        #expect(staged.status == 65 && staged.stderr.contains("'in'"), "\(staged.stderr)")
        let here = try balsam(["job", "create", "-w", "o/4", "-a", "hello", "-p", "name=z", "--site", site])
        #expect(here.status == 0, "--site DIR: \(here.stderr)")
        let byID = try balsam(["job", "create", "-w", "o/5", "-a", "hello", "-p", "name=z", "--site", "123"])
        #expect(byID.status == 64 && byID.stderr.contains("not a site directory"), "\(byID.stderr)")
        #expect(try balsam(["job", "frob"], site: site).status == 64)
    }

    @Test func adoptingADirectoryWhoseJobJSONIsASymlinkIsBadData() throws {
        try dir.file("real.json", #"{"app":"hello","parameters":{"name":"x"}}"#)
        try FileManager.default.createDirectory(atPath: dir.path + "/linked", withIntermediateDirectories: true)
        try FileManager.default.createSymbolicLink(
            atPath: dir.path + "/linked/job.json", withDestinationPath: dir.path + "/real.json")
        let r = try balsamSubmit([dir.path + "/linked"], site: site)
        #expect(r.status == 65 && r.stderr.contains("symbolic link"), "\(r.status) \(r.stderr)")
    }

    @Test func argumentsThatAreNotUTF8AreBadData() throws {
        for (option, value) in [("-w", "a\\377b"), ("-p", "name=\\377")] {
            let other = option == "-w" ? "-p name=x" : "-w utf"
            let script = "exec \"$0\" -a hello \(other) \(option) \"$(printf '\(value)')\""
            let r = try run("/bin/sh", ["-c", script, binDirectory + "/balsam-submit"], env: ["BALSAM_SITE": site])
            #expect(r.status == 65 && r.stderr.contains("not valid UTF-8"), "\(option): \(r.status) \(r.stderr)")
        }
        #expect(try stateCounts(site) == [:], "nothing was submitted")
    }

    @Test func bulkInputEdgeCases() throws {
        let nul = #"{"app":"hello","workdir":"n","parameters":{"name":"a\u0000b"}}"#
        let r = try balsamSubmit(["--from", "-"], site: site, stdin: Data(nul.utf8))
        #expect(r.status == 65 && r.stderr.contains("parameters.name") && r.stderr.contains("NUL"), "\(r.stderr)")
        let empty = try balsamSubmit(["--from", "-"], site: site, stdin: Data())
        #expect(empty.status == 0 && empty.stderr.contains("nothing was submitted"), "\(empty.stderr)")
        // An input that is a symlink (as /dev/stdin is) is followed: it is not a spool file.
        try dir.file("jobs.jsonl", #"{"app":"hello","workdir":"via-link","parameters":{"name":"l"}}"# + "\n")
        try FileManager.default.createSymbolicLink(atPath: dir.path + "/link.jsonl", withDestinationPath: "jobs.jsonl")
        let linked = try balsamSubmit(["--from", dir.path + "/link.jsonl"], site: site)
        #expect(linked.status == 0, "\(linked.stderr)")
        let piped = try balsamSubmit(
            ["--from", "/dev/stdin"], site: site,
            stdin: Data(#"{"app":"hello","workdir":"via-stdin","parameters":{"name":"s"}}"#.utf8))
        #expect(piped.status == 0, "\(piped.stderr)")
        #expect(try stateCounts(site) == ["READY": 2])
    }

    @Test func appCommands() throws {
        let c = try balsam(
            [
                "app", "create", "sim", "--command-template", "sim -n {{ n }} -o {{ out }}", "--param",
                "out=result.txt", "--env", "OMP=1",
            ], site: site)
        #expect(c.status == 0, "\(c.stderr)")
        let ls = try balsam(["app", "ls"], site: site)
        #expect(ls.stdout.contains("hello") && ls.stdout.contains("sim -n {{ n }}"))
        let show = try balsam(["app", "show", "sim", "--json"], site: site)
        let o = try #require(try JSONValue.parse(show.stdout).objectValue)
        #expect(o["parameters"]?.objectValue?["n"]?.objectValue?["required"] == .bool(true))
        #expect(o["parameters"]?.objectValue?["out"]?.objectValue?["default"] == .string("result.txt"))
        #expect(o["environment_variables"] == .object(["OMP": .string("1")]))
        let bad = try balsam(["app", "create", "x", "--command-template", "echo {{ a"], site: site)
        #expect(bad.status == 65 && bad.stderr.contains("closing"))
        let dup = try balsam(["app", "create", "sim", "--command-template", "echo"], site: site)
        #expect(dup.status == 73)
        let missing = try balsam(["app", "show", "nope"], site: site)
        #expect(missing.status == 66)
    }

    @Test(.enabled(if: canMount)) func readOnlySiteExitsWithIOError() throws {
        let fs = try SmallFilesystem(size: "2m")
        let roSite = fs.path + "/site"
        #expect(try balsam(["init", roSite]).status == 0)
        #expect(
            try balsam(["app", "create", "hello", "--command-template", "echo {{ name }}"], site: roSite).status == 0)
        try fs.remountReadOnly()
        let r = try balsamSubmit(["-a", "hello", "-w", "x", "-p", "name=a"], site: roSite)
        #expect(r.status == 74 && r.stderr.contains("Read-only file system"), "\(r.stderr)")
        let ls = try balsam(["ls"], site: roSite)
        #expect(ls.status == 0, "queries work on a read-only site")
    }

    @Test(.enabled(if: canMount)) func fullFilesystemExitsWithIOErrorAndKeepsJobs() throws {
        let fs = try SmallFilesystem(size: "1m")
        let small = fs.path + "/site"
        #expect(try balsam(["init", small]).status == 0)
        #expect(
            try balsam(["app", "create", "hello", "--command-template", "echo {{ name }}"], site: small).status == 0)
        #expect(try balsamSubmit(["-a", "hello", "-w", "kept", "-p", "name=a"], site: small).status == 0)
        fs.fill()
        let big = (0..<100).map {
            #"{"app":"hello","workdir":"m/\#($0)","parameters":{"name":"\#(String(repeating: "z", count: 4000))"}}"#
        }
        let r = try balsamSubmit(["--from", "-"], site: small, stdin: Data(big.joined(separator: "\n").utf8))
        #expect(r.status == 74 && r.stderr.contains("No space left"), "\(r.stderr)")
        #expect(try stateCounts(small) == ["READY": 1])
        #expect(entries(small + "/tmp").isEmpty && entries(small + "/data/.balsam-staging").isEmpty)
    }
}

/// `balsam ls --by-state --json`, without the states that have no jobs.
func stateCounts(_ site: String) throws -> [String: Int] {
    let r = try balsam(["ls", "--by-state", "--json"], site: site)
    let counts = try JSONValue.parse(r.stdout).objectValue ?? [:]
    #expect(counts.count == JobState.stored.count, "every stored state is reported")
    return counts.compactMapValues { $0.intValue }.filter { $0.value > 0 }
}
