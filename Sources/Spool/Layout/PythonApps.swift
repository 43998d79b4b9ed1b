/// Apps defined as Python classes (the original client's `ApplicationDefinition`) at a site: the runner that
/// loads their pickled class in the site's Python, and the hook files that call the class's methods.
public enum PythonApps {
    /// The runner's source (Sources/Spool/Python/balsam_runner.py, built into the binaries).
    public static var runnerSource: [UInt8] { PackageResources.balsam_runner_py }

    /// Where a site keeps its copy of the runner.
    public static func runnerPath(_ site: Site) -> String { site.root + "/lib/balsam_runner.py" }

    /// Writes the runner into `SITE/lib/` unless the copy there is this one; returns its path.
    @discardableResult
    public static func installRunner(_ site: Site) throws(SpoolError) -> String {
        let path = runnerPath(site)
        if (try? Posix.readFile(path, limit: 1 << 22)) == runnerSource { return path }
        try Posix.makeDirectories(site.root + "/lib")
        try Posix.replaceFile(path, runnerSource, sync: true)
        return path
    }

    /// The class methods that become hooks, by hook file.
    public static let methods: [(hook: App.Hook, method: String)] = [
        (.preprocess, "preprocess"), (.postprocess, "postprocess"), (.onError, "handle_error"),
        (.onTimeout, "handle_timeout"), (.shellPreamble, "shell_preamble"),
    ]

    /// The methods `classText` (base64 of `dill.dumps(cls)`) defines itself, read from the pickle's strings
    /// without running it: a class pickled by value carries its methods' names. One pickled by reference (a
    /// class of an importable module) names none, and gets no class hooks.
    public static func overriddenMethods(classText: String) -> Set<String> {
        let strings = Pickle.strings(inBase64: classText)
        return Set(methods.map(\.method).filter { strings.contains($0) })
    }

    /// The hook file that calls `method` of the app's class through the runner, in `python`.
    public static func hookFile(_ hook: App.Hook, python: String, runner: String) -> String {
        let q = CommandTemplate.shellQuote
        if hook == .shellPreamble {
            // Sourced before the job's command: the class's shell_preamble(), evaluated in the job's directory.
            return """
                # Made by Balsam from the app's Python class: its shell_preamble(), run in the site's Python.
                __balsam_preamble=$(\(q(python)) \(q(runner)) preamble) || return 1
                eval "$__balsam_preamble"
                unset __balsam_preamble

                """
        }
        let method = methods.first { $0.hook == hook }?.method ?? hook.rawValue
        return """
            #!/bin/sh
            # Made by Balsam from the app's Python class: calls its \(method)() through the site's Python runner.
            exec \(q(python)) \(q(runner)) hook \(hook.rawValue)

            """
    }

    /// After `python.executable` changed from `old` to `new`: every class hook file still exactly as the site
    /// wrote it for `old` (apps without a `python_executable` of their own) is written again for `new`; a file
    /// a user edited is left alone. Returns how many were rewritten.
    @discardableResult
    public static func rewriteHooks(_ site: Site, from old: String, to new: String) throws(SpoolError) -> Int {
        guard old != new else { return 0 }
        let runner = runnerPath(site)
        var rewritten = 0
        for name in try Posix.listDirectory(site.appsPath).sorted() {
            let dir = site.appsPath + "/" + name
            guard Posix.exists(dir + "/" + App.classFileName) else { continue }
            for (hook, _) in methods {
                let path = dir + "/" + hook.rawValue
                guard
                    (try? Posix.readFile(path, limit: 4096)) == Array(hookFile(hook, python: old, runner: runner).utf8)
                else { continue }
                try Posix.replaceFile(
                    path, Array(hookFile(hook, python: new, runner: runner).utf8), sync: true,
                    mode: hook == .shellPreamble ? 0o666 : 0o777)
                rewritten += 1
            }
        }
        return rewritten
    }

    /// Makes or replaces app `app` from a Python class: `app.yml`, `class.b64`, and a hook file for each method
    /// in `overridden` (others removed), all written in a staging directory and renamed into place.
    public static func install(
        _ app: App, classText: String, overridden: Set<String>, site: Site, python: String
    ) throws(SpoolError) {
        try app.validate()
        let runner = try installRunner(site)
        let dir = site.appsPath + "/" + app.name
        let staging = site.tmpPath + "/app-\(app.name).\(getpid())"
        let old = site.tmpPath + "/app-\(app.name).\(getpid()).old"
        Posix.removeTree(staging)
        Posix.removeTree(old)
        do throws(SpoolError) {
            try Posix.mkdir(staging)
            try Posix.createFile(staging + "/app.yml", Array(app.yamlText().utf8), sync: true)
            try Posix.createFile(staging + "/" + App.classFileName, Array((classText + "\n").utf8), sync: true)
            for (hook, method) in methods where overridden.contains(method) {
                let path = staging + "/" + hook.rawValue
                try Posix.createFile(
                    path, Array(hookFile(hook, python: app.pythonExecutable ?? python, runner: runner).utf8),
                    sync: true)
                if hook != .shellPreamble { try Posix.makeExecutable(path) }
            }
            if Posix.exists(dir) {
                // Two renames: the old definition steps aside, the new one takes its place, the old one goes.
                try Posix.rename(dir, old)
                do throws(SpoolError) { try Posix.renameNoReplace(staging, dir) } catch {
                    try? Posix.rename(old, dir)
                    throw error
                }
                Posix.removeTree(old)
            } else {
                try Posix.renameNoReplace(staging, dir)
            }
            try Posix.fsyncDirectory(site.appsPath)
        } catch {
            Posix.removeTree(staging)
            throw error
        }
    }
}

#if canImport(Glibc)
    import Glibc
#endif
