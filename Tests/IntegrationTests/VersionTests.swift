import Foundation
import Spool
import TestSupport
import Testing

/// One version, written in the repository's `VERSION` (a semantic version; releases are tagged `vVERSION`), and
/// every command's `--version` says it (issue 32, item 3).
@Suite struct VersionTests {
    static let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .deletingLastPathComponent()

    @Test func everyCommandPrintsTheRepositorysVersion() throws {
        let version = try String(contentsOf: Self.root.appendingPathComponent("VERSION"), encoding: .utf8)
            .trimmingCharacters(in: .whitespacesAndNewlines)
        let parts = version.split(separator: ".")
        #expect(
            parts.count == 3 && parts.allSatisfy { UInt($0) != nil }, "VERSION '\(version)' is not MAJOR.MINOR.PATCH")
        #expect(BalsamVersion.string == version)
        for program in ["balsam-task-guard", "balsam-bind"] {
            let source = try String(
                contentsOf: Self.root.appendingPathComponent("Sources/\(program)/main.c"), encoding: .utf8)
            #expect(source.contains("#define BALSAM_VERSION \"\(version)\""), "\(program)")
        }
        for command in [
            "balsam", "balsam-submit", "balsam-watch", "balsam-launcher", "balsam-server", "balsam-task-guard",
            "balsam-bind",
        ] {
            let result = try run(binDirectory + "/" + command, ["--version"])
            #expect(result.status == 0, "\(command): \(result.stderr)")
            #expect(result.stdout == version + "\n", "\(command): \(result.stdout.debugDescription)")
        }
        #expect(FileManager.default.fileExists(atPath: Self.root.appendingPathComponent("LICENSE").path))
    }
}
