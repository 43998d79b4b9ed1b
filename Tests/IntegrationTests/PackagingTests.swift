import Foundation
import Spool
import TestSupport
import Testing

/// What a facility packages the commands with (packaging/): the Lmod module file, loaded by Debian's Lmod, and
/// the Spack recipe, read as Spack would read it (Spack itself is not on PyPI or in Debian: the recipe is parsed).
@Suite struct PackagingTests {
    static let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .deletingLastPathComponent().path
    static let lmod = "/usr/share/lmod/lmod/init/bash"
    static var version: String {
        ((try? String(contentsOfFile: root + "/VERSION", encoding: .utf8)) ?? "").trimmingCharacters(
            in: .whitespacesAndNewlines)
    }

    /// A prefix as install.sh leaves it: the built commands in bin, the man pages, the module file.
    func makePrefix(_ dir: TempDir, moduleAt relative: String) throws -> String {
        let prefix = dir.path + "/prefix"
        let fm = FileManager.default
        try fm.createDirectory(atPath: prefix + "/bin", withIntermediateDirectories: true)
        try fm.createDirectory(atPath: prefix + "/share/man/man1", withIntermediateDirectories: true)
        for command in ["balsam", "balsam-watch"] {
            try fm.createSymbolicLink(
                atPath: prefix + "/bin/" + command, withDestinationPath: binDirectory + "/" + command)
            try fm.copyItem(atPath: Self.root + "/man/\(command).1", toPath: prefix + "/share/man/man1/\(command).1")
        }
        let module = prefix + "/" + relative
        try fm.createDirectory(
            atPath: (module as NSString).deletingLastPathComponent, withIntermediateDirectories: true)
        try fm.copyItem(atPath: Self.root + "/packaging/lmod/balsam.lua", toPath: module)
        return prefix
    }

    func shell(_ script: String) throws -> (status: Int32, stdout: String, stderr: String) {
        try run(
            "/usr/bin/env", ["-i", "HOME=/tmp", "PATH=/usr/bin:/bin", "/bin/bash", "-c", ". \(Self.lmod); " + script])
    }

    @Test(.enabled(if: FileManager.default.fileExists(atPath: lmod)))
    func lmodLoadsTheModuleWhereverThePrefixIs() throws {
        let dir = try TempDir()
        let prefix = try makePrefix(dir, moduleAt: "share/modulefiles/balsam/\(Self.version).lua")
        let loaded = try shell(
            """
            module use \(prefix)/share/modulefiles && module load balsam && command -v balsam && balsam --version \
            && echo "root=$BALSAM_ROOT" && man -w balsam-watch && module -t list 2>&1
            """)
        #expect(loaded.status == 0, "\(loaded.stderr)")
        let lines = loaded.stdout.split(separator: "\n").map(String.init)
        #expect(lines.first == prefix + "/bin/balsam", "\(lines)")
        #expect(lines.contains(Self.version) && lines.contains("root=\(prefix)"), "\(lines)")
        #expect(lines.contains(prefix + "/share/man/man1/balsam-watch.1"), "\(lines)")
        #expect(lines.contains("balsam/\(Self.version)"), "\(lines)")
        // Unloaded, nothing of it is left on PATH.
        let unloaded = try shell(
            "module use \(prefix)/share/modulefiles && module load balsam && module unload balsam && command -v balsam || echo gone"
        )
        #expect(unloaded.stdout.hasSuffix("gone\n"), "\(unloaded.stdout)")
        // A module file out of its place says where it belongs, and loads nothing.
        let other = try TempDir()
        let misplaced = try makePrefix(other, moduleAt: "elsewhere/balsam/\(Self.version).lua")
        let refused = try shell(
            "module use \(misplaced)/elsewhere && module load balsam; command -v balsam || echo none")
        let said = refused.stderr.split(whereSeparator: \.isWhitespace).joined(separator: " ")  // Lmod wraps lines
        #expect(said.contains("must sit at PREFIX/share/modulefiles/balsam/VERSION.lua"), "\(said)")
        #expect(refused.stdout.hasSuffix("none\n"))
    }

    /// The recipe parses as Python, names this version and the license, and installs every command the package
    /// builds (the products of Package.swift), so a new command cannot be left out of it.
    @Test func theSpackRecipeBuildsEveryCommand() throws {
        let reader = """
            import ast, json, sys
            tree = ast.parse(open(sys.argv[1]).read())
            cls = next(n for n in tree.body if isinstance(n, ast.ClassDef))
            facts = {"class": cls.name, "bases": [b.id for b in cls.bases], "calls": {}, "commands": [], "methods": []}
            for node in cls.body:
                if isinstance(node, ast.Expr) and isinstance(node.value, ast.Call):
                    name = node.value.func.id
                    args = [a.value for a in node.value.args if isinstance(a, ast.Constant)]
                    facts["calls"].setdefault(name, []).append(args[0] if args else None)
                if isinstance(node, ast.Assign) and node.targets[0].id == "commands":
                    facts["commands"] = [e.value for e in node.value.elts]
                if isinstance(node, ast.FunctionDef):
                    facts["methods"].append(node.name)
            print(json.dumps(facts))
            """
        let dir = try TempDir()
        try dir.file("read.py", reader)
        let parsed = try run(
            "/usr/bin/python3",
            [dir.path + "/read.py", Self.root + "/packaging/spack/packages/balsam-swift/package.py"])
        #expect(parsed.status == 0, "\(parsed.stderr)")
        let facts = try #require(
            try JSONSerialization.jsonObject(with: Data(parsed.stdout.utf8)) as? [String: Any])
        let calls = facts["calls"] as? [String: [Any]] ?? [:]
        #expect(facts["class"] as? String == "BalsamSwift" && facts["bases"] as? [String] == ["Package"])
        let versions = calls["version"]?.compactMap { $0 as? String } ?? []
        #expect(versions.contains(Self.version) && versions.contains("main"), "\(versions)")
        #expect(calls["license"]?.compactMap { $0 as? String } == ["BSD-3-Clause"])
        let needs = Set(calls["depends_on"]?.compactMap { $0 as? String } ?? [])
        #expect(needs.isSuperset(of: ["curl", "sqlite@3:", "postgresql", "mpi", "pkgconfig"]), "\(needs)")
        #expect((facts["methods"] as? [String])?.contains("install") == true)
        let manifest = try String(contentsOfFile: Self.root + "/Package.swift", encoding: .utf8)
        let products = Set(
            manifest.split(separator: "\n").compactMap { line -> String? in
                guard let r = line.range(of: ".executable(name: \"") else { return nil }
                return String(line[r.upperBound...].prefix { $0 != "\"" })
            })
        let recipe = Set((facts["commands"] as? [String] ?? []) + ["balsam-server"])
        #expect(
            !products.isEmpty && recipe == products, "recipe \(recipe.sorted()) vs Package.swift \(products.sorted())")
    }
}
