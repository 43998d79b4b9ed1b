import Foundation
import Spool
import TestSupport
import Testing

/// `balsam site init` with platform presets: named, chosen from the menu on a terminal (a pseudo-terminal made by
/// util-linux's script(1)), refused with the names when neither; a user's own presets, and broken ones.
@Suite struct PlatformTests {
    let dir: TempDir

    init() throws { dir = try TempDir() }

    @Test func everyPresetMakesASiteWhoseSettingsLoadAndWhosePolicyTakesABatchJob() throws {
        let listing = try balsam(["platforms"])
        #expect(listing.status == 0, "\(listing.stderr)")
        for preset in [
            "local", "generic-slurm", "generic-pbs", "polaris", "aurora", "perlmutter-cpu", "perlmutter-gpu",
            "frontier",
        ] {
            #expect(listing.stdout.contains(preset), "balsam platforms lists \(preset)")
            let path = dir.path + "/" + preset
            let made = try balsam(["init", path, "--platform", preset, "--project", "proj"])
            #expect(made.status == 0 && made.stdout == path + "\n", "\(preset): \(made.stderr)")
            let settings = try SiteSettings.load(try Site.open(path))
            #expect(settings.scheduler.allowedProjects == ["proj"])
            let queue = try #require(settings.scheduler.allowedQueues.keys.sorted().first)
            let submitted = try balsam(
                ["queue", "submit", "-n", "1", "-t", "10", "-q", queue, "-A", "proj"], site: path)
            #expect(submitted.status == 0, "\(preset): \(submitted.stderr)")
            let about = try balsam(["platforms", preset])
            #expect(about.status == 0 && about.stdout.contains("Exercised here"), "\(about.stdout)")
        }
        let polaris = try read(dir.path + "/polaris/settings.yml")
        #expect(polaris.contains("cpus_per_node: 32") && polaris.contains("cpu_siblings_offset: 32"))
        #expect(polaris.contains(#"gpu_ids: ["3", "2", "1", "0"]"#) && polaris.contains("filesystems"))
        #expect(try read(dir.path + "/polaris/job-template.sh").contains("#PBS -l filesystems={{ filesystems }}"))
        #expect(try read(dir.path + "/perlmutter-gpu/settings.yml").contains("queue_option: --qos"))
        #expect(try read(dir.path + "/aurora/settings.yml").contains("gpu_variable: ZE_AFFINITY_MASK"))
    }

    @Test func withoutATerminalThePlatformMustBeNamed() throws {
        let path = dir.path + "/unnamed"
        let r = try balsam(["site", "init", path])
        #expect(r.status == 64 && r.stderr.contains("--platform") && r.stderr.contains("polaris"), "\(r.stderr)")
        #expect(!FileManager.default.fileExists(atPath: path))
        let unknown = try balsam(["init", path, "--platform", "summit"])
        #expect(unknown.status == 64 && unknown.stderr.contains("known: "), "\(unknown.stderr)")
        let noProject = try balsam(["init", path, "--platform", "polaris"])
        #expect(noProject.status == 64 && noProject.stderr.contains("--project"), "\(noProject.stderr)")
        #expect(!FileManager.default.fileExists(atPath: path))
        let both = try balsam(["init", path, "--platform", "local", "--scheduler", "slurm"])
        #expect(both.status == 64)
    }

    @Test func theMenuOnATerminalTakesANameOrANumberAndAsksForTheProject() throws {
        let path = dir.path + "/menu"
        // script(1) gives balsam a pseudo-terminal; the answers come through it as typed.
        let command =
            CommandTemplate.shellQuote(binDirectory + "/balsam") + " site init " + CommandTemplate.shellQuote(path)
        let r = try run("/usr/bin/script", ["-qec", command, "/dev/null"], stdin: Data("polaris\nmyproj\n".utf8))
        #expect(r.status == 0, "\(r.stdout)\n\(r.stderr)")
        #expect(
            r.stdout.contains("1) ") && r.stdout.contains("Polaris (ALCF) [polaris]")
                && r.stdout.contains("Platform [1]:"))
        #expect(r.stdout.contains("ALCF project (allocation) to charge"), "the preset's own prompt: \(r.stdout)")
        let settings = try read(path + "/settings.yml")
        #expect(settings.contains("scheduler_class: pbs") && settings.contains(#"allowed_projects: ["myproj"]"#))
        // A number picks the numbered line; the local preset needs no project.
        let lines = r.stdout.split(whereSeparator: \.isNewline)
        let localLine = try #require(lines.first { $0.contains("[local]") })
        let number = String(localLine.drop { $0 == " " }.prefix { $0.isNumber })
        let second = dir.path + "/menu2"
        let command2 =
            CommandTemplate.shellQuote(binDirectory + "/balsam") + " site init " + CommandTemplate.shellQuote(second)
        let r2 = try run("/usr/bin/script", ["-qec", command2, "/dev/null"], stdin: Data("\(number)\n".utf8))
        #expect(r2.status == 0, "\(r2.stdout)")
        #expect(try read(second + "/settings.yml").contains("scheduler_class: local"), "\(number): \(r2.stdout)")
    }

    @Test func aUsersOwnPresetWorksAndABrokenOneNamesTheFileAndKey() throws {
        let presets = dir.path + "/presets"
        try FileManager.default.createDirectory(atPath: presets + "/mine", withIntermediateDirectories: true)
        try """
        title: My cluster
        about: Made for the test.
        scheduler: slurm
        project: {prompt: Account, default: acct}
        launcher: {cpus_per_node: 12, mpi_launcher: "srun -n {{ ranks }} {{ command }}"}
        queues:
          short: {max_nodes: 3, max_walltime: 30}
        """.write(toFile: presets + "/mine/mine.yml", atomically: true, encoding: .utf8)
        try "#!/bin/bash\n# mine\nexec {{ launcher }} {{ launcher_args }}\n".write(
            toFile: presets + "/mine/job-template.sh", atomically: true, encoding: .utf8)
        let listed = try balsam(["platforms", "--platform-dir", presets])
        #expect(listed.stdout.contains("mine") && listed.stdout.contains("My cluster"), "\(listed.stdout)")
        let path = dir.path + "/mine-site"
        let made = try balsam(["init", path, "--platform", "mine", "--platform-dir", presets])
        #expect(made.status == 0, "\(made.stderr)")
        #expect(try read(path + "/job-template.sh").contains("# mine"))
        let settings = try SiteSettings.load(try Site.open(path))
        #expect(settings.launcher.cpusPerNode == 12 && settings.scheduler.allowedProjects == ["acct"])
        #expect(settings.scheduler.allowedQueues["short"]?.maxNodes == 3)

        try
            "title: Broken\nscheduler: slurm\nlauncher: {cpus_per_node: many}\nqueues: {q: {max_nodes: 1, max_walltime: 5}}\n"
            .write(toFile: presets + "/mine/mine.yml", atomically: true, encoding: .utf8)
        let broken = try balsam(["init", dir.path + "/broken", "--platform", "mine", "--platform-dir", presets])
        #expect(broken.status == 65, "\(broken.stderr)")
        #expect(
            broken.stderr.contains("mine/mine.yml") && broken.stderr.contains("launcher.cpus_per_node"),
            "\(broken.stderr)")
        try "title: Broken\nscheduler: slurm\nqueues: {q: {max_nodes: 1, max_walltime: 5}}\nnodes: 4\n"
            .write(toFile: presets + "/mine/mine.yml", atomically: true, encoding: .utf8)
        let unknownKey = try balsam(["platforms", "--platform-dir", presets])
        #expect(unknownKey.status == 65 && unknownKey.stderr.contains("unknown key 'nodes'"), "\(unknownKey.stderr)")
        #expect(!FileManager.default.fileExists(atPath: dir.path + "/broken"))
    }
}
