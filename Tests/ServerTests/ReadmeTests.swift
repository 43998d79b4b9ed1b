import Foundation
import Spool
import TestSupport
import Testing

/// The README's shell blocks, run as written, one after another in one shell (as a reader types them: the
/// site a block makes is the next one's), in a home directory of their own. A block the test cannot run says
/// why in an HTML comment on the line above it (`<!-- not run by ReadmeTests: why -->`).
@Suite struct ReadmeTests {
    static let readme = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .deletingLastPathComponent().appendingPathComponent("README.md").path

    /// The README's `sh` blocks: their first line's number, their text, and why one is not run.
    static func blocks() throws -> [(line: Int, text: String, skipped: String?)] {
        let lines = try String(contentsOfFile: readme, encoding: .utf8).components(separatedBy: "\n")
        var found: [(Int, String, String?)] = []
        var i = 0
        while i < lines.count {
            guard lines[i] == "```sh" else {
                i += 1
                continue
            }
            let previous = i > 0 ? lines[i - 1] : ""
            let marker = "<!-- not run by ReadmeTests: "
            let skipped = previous.hasPrefix(marker) ? String(previous.dropFirst(marker.count).dropLast(4)) : nil
            var body: [String] = []
            var j = i + 1
            while j < lines.count && lines[j] != "```" {
                body.append(lines[j])
                j += 1
            }
            found.append((i + 2, body.joined(separator: "\n"), skipped))
            i = j + 1
        }
        return found
    }

    /// Whether something accepts connections on 127.0.0.1:`port`.
    func listening(_ port: Int) throws -> Bool {
        try run("/bin/bash", ["-c", "exec 3<>/dev/tcp/127.0.0.1/\(port)"]).status == 0
    }

    @Test(.enabled(if: PythonTools.clientPython != nil || PythonTools.required, "dev/test makes the client's venv"))
    func everyShellBlockOfTheReadmeRunsAsWritten() throws {
        let blocks = try ReadmeTests.blocks()
        let run = blocks.filter { $0.skipped == nil }
        #expect(run.count >= 5, "the site, transfer, server, sync and report blocks: \(blocks.map(\.line))")
        for block in blocks where block.skipped != nil { #expect(block.skipped?.isEmpty == false) }

        // The blocks use the server's default address, as a reader would.
        #expect(!(try listening(8080)), "something else listens on 127.0.0.1:8080")
        let dir = try TempDir()
        let home = dir.path + "/home"
        try Posix.makeDirectories(home)
        // The client's venv's bin/ (its python3 finds its packages from there), after ours: it holds the
        // original's own `balsam` command too.
        let python = try #require(PythonTools.clientPython, "BALSAM_CLIENT_PYTHON is not set (dev/test sets it)")
        let path = binDirectory + ":" + Posix.parentPath(python) + ":/usr/local/bin:/usr/bin:/bin"
        var script = """
            set -ex
            unset BALSAM_SITE BALSAM_CLIENT_PATH BALSAM_SERVER_DB BALSAM_SERVER_SECRET_FILE
            exec >\(CommandTemplate.shellQuote(dir.path + "/out.log")) 2>&1
            cleanup() {
                [ -n "${BALSAM_SITE:-}" ] && balsam-watch --stop --site "$BALSAM_SITE" || true
                kill $(jobs -p) 2>/dev/null || true
                pkill -f "$HOME/" || true
            }
            trap cleanup EXIT

            """
        for block in run {
            script += "echo '== README.md, the block at line \(block.line)'\n" + block.text + "\n"
        }
        // What the blocks started works: the site's sync reached the server.
        script += """
            echo '== after the blocks: the sync reaches the server'
            for i in $(seq 300); do
                balsam sync status --json | grep -q '"last_success":"' && exit 0
                sleep 0.1
            done
            balsam sync status
            exit 1

            """
        try script.write(toFile: dir.path + "/readme.sh", atomically: true, encoding: .utf8)
        let result = try TestSupport.run(
            "/bin/bash", [dir.path + "/readme.sh"], stdin: Data("a-readme-password\n".utf8),
            env: [
                "HOME": home, "USER": "alice", "PATH": path, "OMPI_ALLOW_RUN_AS_ROOT": "1",
                "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1", "OMPI_MCA_plm_rsh_agent": "false",
            ], cwd: home, timeout: 300)
        let log = (try? read(dir.path + "/out.log")) ?? ""
        #expect(result.status == 0, "\(log)")
        #expect(FileManager.default.fileExists(atPath: home + "/utilization.png"), "the report block drew its plot")
    }
}
