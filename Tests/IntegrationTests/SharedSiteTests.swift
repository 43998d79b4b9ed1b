import Foundation
import Spool
import TestSupport
import Testing

#if canImport(Glibc)
    import Glibc
#endif

/// A site a project's group shares (`balsam init --group`), used by two real users made for the test (root
/// only, as CI is): one makes it and runs its watcher, the other submits and launches there, and each sees and
/// reads the other's work; the watcher's claim stays one process's.
@Suite(.serialized) struct SharedSiteTests {
    static let canMakeUsers =
        getuid() == 0 && FileManager.default.isExecutableFile(atPath: "/usr/sbin/useradd")
        && FileManager.default.isExecutableFile(atPath: "/usr/sbin/runuser")

    /// Two users in one new group, removed afterwards.
    final class Project {
        let group: String
        let alice: String
        let bob: String
        init() throws {
            let tag = String(UInt32.random(in: 0..<1_000_000))
            group = "bproj" + tag
            alice = "balice" + tag
            bob = "bbob" + tag
            try Self.must("/usr/sbin/groupadd", [group])
            for user in [alice, bob] {
                try Self.must("/usr/sbin/useradd", ["-M", "-N", "-g", "users", "-G", group, user])
            }
        }
        deinit {
            for user in [alice, bob] { _ = try? TestSupport.run("/usr/sbin/userdel", [user]) }
            _ = try? TestSupport.run("/usr/sbin/groupdel", [group])
        }
        static func must(_ program: String, _ arguments: [String]) throws {
            let result = try TestSupport.run(program, arguments)
            if result.status != 0 { throw SpoolError(.unavailable, "\(program) \(arguments): \(result.stderr)") }
        }
        /// `command` run as `user` with the usual umask (022), in a shell, with the built commands on PATH.
        func shell(as user: String, _ command: String, site: String) throws -> (
            status: Int32, stdout: String, stderr: String
        ) {
            try TestSupport.run(
                "/usr/sbin/runuser",
                [
                    "-u", user, "--", "/usr/bin/env", "-i", "HOME=/tmp", "PATH=\(binDirectory):/usr/bin:/bin",
                    "BALSAM_SITE=\(site)", "/bin/bash", "-c", "umask 022; " + command,
                ], timeout: 120)
        }
    }

    @Test(.enabled(if: canMakeUsers))
    func twoMembersOfAGroupWorkOneSite() throws {
        let project = try Project()
        let dir = try TempDir()
        // The project's directory, as a facility makes it: the group's, group-writable.
        chown(dir.path, 0, try SharedSite.group(named: project.group))
        chmod(dir.path, 0o2775)
        let site = dir.path + "/shared"
        let made = try project.shell(as: project.alice, "balsam init --group \(project.group) \(site)", site: site)
        #expect(made.status == 0, "\(made.stderr)")
        #expect(
            try project.shell(
                as: project.alice, "balsam app create hello --command-template 'echo hello {{ name }}'", site: site
            ).status == 0)
        // The other member submits (before: exit 73, Permission denied) and runs the launcher.
        let submitted = try project.shell(as: project.bob, "balsam submit -a hello -w bob/1 -p name=bob", site: site)
        #expect(submitted.status == 0, "\(submitted.stderr)")
        // The creator's watcher holds the site; the other member's is refused and names it.
        let watcher = try Spawned(
            "/usr/sbin/runuser",
            [
                "-u", project.alice, "--", "/usr/bin/env", "-i", "HOME=/tmp", "PATH=\(binDirectory):/usr/bin:/bin",
                "BALSAM_SITE=\(site)", "/bin/bash", "-c", "umask 022; exec balsam-watch",
            ],
            environment: [:], stdout: .file(dir.path + "/watch.log"), stderr: .file(dir.path + "/watch.log"))
        defer {
            watcher.terminate()
            _ = watcher.wait(timeout: 30)
        }
        try waitUntil("the creator's watcher takes the site", timeout: 30) {
            ((try? read(site + "/watcher.json")) ?? "").contains("pid")
        }
        let second = try project.shell(as: project.bob, "balsam-watch --once", site: site)
        #expect(second.status == 69, "a second watcher, another member's: \(second.stderr)")
        try waitUntil("the job is ready", timeout: 30) {
            (try? project.shell(as: project.bob, "balsam ls --state PREPROCESSED --json", site: site).stdout.contains(
                "bob/1")) == true
        }
        let launched = try project.shell(
            as: project.bob, "balsam-launcher --wall-time-min 1 --idle-timeout 1", site: site)
        #expect(launched.status == 0, "\(launched.stderr)")
        try waitUntil("the job finishes", timeout: 30) {
            (try? project.shell(as: project.alice, "balsam ls --state JOB_FINISHED --json", site: site).stdout.contains(
                "bob/1")) == true
        }
        let output = try project.shell(as: project.alice, "cat \(site)/data/bob/1/job.out", site: site)
        #expect(output.stdout.contains("hello bob"), "\(output.stdout) \(output.stderr)")
        // What each made belongs to the group and the group may change it.
        var st = stat()
        #expect(stat(site + "/data/bob/1", &st) == 0)
        #expect(st.st_gid == (try SharedSite.group(named: project.group)))
        #expect(st.st_mode & S_ISGID != 0 && st.st_mode & 0o070 == 0o070, "\(String(st.st_mode, radix: 8))")
        // And the creator may remove the other's job, as a project's members do.
        let removed = try project.shell(as: project.alice, "balsam rm -w bob/1 --yes", site: site)
        #expect(removed.status == 0, "\(removed.stderr)")
    }

    @Test func aGroupThatDoesNotExistIsNamed() throws {
        let dir = try TempDir()
        let result = try balsam(["init", "--group", "no-such-group-32", dir.path + "/s"])
        #expect(
            result.status == 64 && result.stderr.contains("--group no-such-group-32: no such group"), "\(result.stderr)"
        )
        #expect(!exists(dir.path + "/s"))
    }
}
