import Logging
import Processes
import Spool

#if canImport(Glibc)
    import Glibc
#endif

/// The engine's apps and hooks: an app's definition read once per change, its hooks run (a shell command, or a
/// Python class's method in a warm worker) with the job's environment, and the move each hook's outcome makes.
extension Engine {
    /// Whether the app has a file for `hook` (executable or not: one that is not is an error when it would run).
    func hasHook(_ hook: App.Hook, app name: String) -> Bool {
        let key = name + "/" + hook.rawValue
        if let known = hookFiles[key] { return known }
        let exists = Posix.exists(site.appsPath + "/" + key)
        hookFiles[key] = exists
        return exists
    }

    func app(_ name: String) throws(SpoolError) -> App {
        if let app = apps[name] { return app }
        if let message = missingApps[name] { throw SpoolError(.notFound, message) }
        do {
            let app = try site.app(name)
            apps[name] = app
            return app
        } catch {
            missingApps[name] = error.description
            throw error
        }
    }

    /// The warm hook server for `hook`'s file when it is a class hook exactly as the site wrote it (a file the user
    /// changed runs as a file) and `python.warm_workers` is on.
    func warmHooks(_ hook: App.Hook, path: String) -> WarmHooks? {
        guard settings.python.warmWorkers, hook != .shellPreamble else { return nil }
        let python = settings.python.executable
        let runner = PythonApps.runnerPath(site)
        let key = path + "\u{0}" + python
        if classHookFiles[key] == nil {
            let expected = Array(PythonApps.hookFile(hook, python: python, runner: runner).utf8)
            classHookFiles[key] = (try? Posix.readFile(path, limit: 4096)) == expected
        }
        guard classHookFiles[key] == true else { return nil }
        if let server = warm[python] { return server }
        let server = WarmHooks(python: python, runner: runner)
        warm[python] = server
        return server
    }

    /// Runs `hook` if the job's app has it, then moves the job where the hook chose, or to `fallback`.
    func runHook(_ hook: App.Hook, _ loaded: JobStore.Loaded, default fallback: JobState) throws(SpoolError) {
        let app = try self.app(loaded.job.app)
        let path = site.appsPath + "/" + app.name + "/" + hook.rawValue
        guard app.hooks.contains(hook) else {
            if Posix.exists(path) {
                try move(loaded, to: .failed, reason: "hook \(hook.rawValue) of app \(app.name) is not executable")
            } else {
                try move(loaded, to: fallback, reason: nil)
            }
            return
        }
        let runner = HookRunner(
            timeoutSeconds: settings.hookTimeoutSeconds, tailLines: settings.errorTailLines, shouldStop: shouldStop)
        let outcome = try runner.run(
            path, hook: hook.rawValue, directory: loaded.directory, environment: environment(for: loaded, app: app),
            warm: warmHooks(hook, path: path))
        let name = "hook \(hook.rawValue)"
        switch outcome.status {
        case .exited(0):
            break
        case .stopped:
            throw SpoolError(.conflict, "\(name) of job \(loaded.job.id) was stopped by a shutdown; it runs again")
        case .exited(let code):
            try move(loaded, to: .failed, reason: "\(name) exited with status \(code)" + tail(outcome.tail))
            return
        case .signaled(let signal):
            try move(loaded, to: .failed, reason: "\(name) was killed by signal \(signal)" + tail(outcome.tail))
            return
        case .timedOut:
            let limit = Int(saturating: settings.hookTimeoutSeconds)
            try move(loaded, to: .failed, reason: "\(name) did not finish within \(limit) s" + tail(outcome.tail))
            return
        }
        var next = fallback
        var reason: String?
        var dataUpdate: [String: JSONValue] = [:]
        switch outcome.result {
        case nil: break
        case .object(let o)?:
            if let requested = o["state"], requested != .null {
                guard let text = requested.stringValue, let state = JobState(rawValue: text),
                    loaded.record.state.canTransition(to: state)
                else {
                    try move(
                        loaded, to: .failed,
                        reason: "\(name) asked for state \(requested.serialized()), "
                            + "not a legal successor of \(loaded.record.state.rawValue)")
                    return
                }
                next = state
            }
            reason = o["reason"]?.stringValue
            if case .object(let d)? = o["data"] { dataUpdate = d }
        case .string(let problem)?:
            try move(loaded, to: .failed, reason: "\(name): \(problem)")
            return
        case let other?:
            try move(loaded, to: .failed, reason: "\(name): result must be a JSON object, not \(other.kindName)")
            return
        }
        // The change of data is in the event too: the event logs are the changelog the sync pushes.
        let eventData: [String: JSONValue] = dataUpdate.isEmpty ? [:] : ["data": .object(dataUpdate)]
        try move(loaded, to: next, reason: reason ?? "\(name) chose \(next.rawValue)", eventData: eventData) {
            job, record in
            for (key, value) in dataUpdate {
                if value == .null { job.data[key] = nil } else { job.data[key] = value }
            }
            if next == .restartReady && loaded.record.state == .runError { record.errorRetries += 1 }
            if next == .restartReady && loaded.record.state == .runTimeout { record.timeoutRetries += 1 }
        }
    }

    func tail(_ text: String) -> String { text.isEmpty ? "" : "; last output:\n" + text }

    /// After RUN_ERROR or RUN_TIMEOUT: the app's hook if it has one, else its retry policy.
    func afterRun(_ loaded: JobStore.Loaded, hook: App.Hook) throws(SpoolError) {
        if hook == .onTimeout && loaded.record.interrupted {
            // Its launcher's operator (or batch system) stopped it: not the job's doing, so no hook, no retry spent.
            try move(
                loaded, to: .restartReady, reason: "run again: its launcher was interrupted (no retry counted)")
            return
        }
        let app = try self.app(loaded.job.app)
        let isError = hook == .onError
        let policy = isError ? app.onError : app.onTimeout
        let spent = isError ? loaded.record.errorRetries : loaded.record.timeoutRetries
        let what = isError ? "RUN_ERROR" : "RUN_TIMEOUT"
        let fallback: JobState = spent < policy.retries ? .restartReady : .failed
        if app.hooks.contains(hook) || hasHook(hook, app: app.name) {
            try runHook(hook, loaded, default: fallback)
            return
        }
        if fallback == .restartReady {
            try move(loaded, to: .restartReady, reason: "\(what): retry \(spent + 1) of \(policy.retries)") {
                _, record in
                if isError { record.errorRetries += 1 } else { record.timeoutRetries += 1 }
            }
        } else {
            let code = loaded.record.returnCode.map { " (return code \($0))" } ?? ""
            // The run's own reason when it says more than its status (a Python app's exception).
            let why = loaded.record.reason.flatMap { $0.contains(": ") ? ": " + $0 : nil } ?? ""
            try move(
                loaded, to: .failed, reason: "\(what)\(code) and no retries left (\(policy.retries) allowed)\(why)")
        }
    }

    func environment(for loaded: JobStore.Loaded, app: App) -> [String: String] {
        var env: [String: String] = [:]
        for key in ["PATH", "HOME", "USER", "LANG", "TMPDIR"] {
            if let value = getenv(key) { env[key] = String(cString: value) }
        }
        for (k, v) in app.environmentVariables { env[k] = v }
        let job = loaded.job
        env["BALSAM_SITE"] = site.root
        env["BALSAM_JOB_ID"] = job.id
        env["BALSAM_JOB_DIR"] = loaded.directory
        env["BALSAM_WORKDIR"] = job.workdir
        env["BALSAM_APP"] = job.app
        env["BALSAM_STATE"] = loaded.record.state.rawValue
        env["BALSAM_ATTEMPT"] = String(loaded.record.attempts)
        env["BALSAM_PARAMETERS"] = JSONValue.object(job.parameters).serialized()
        env["BALSAM_DATA"] = JSONValue.object(job.data).serialized()
        if let rc = loaded.record.returnCode { env["BALSAM_RETURN_CODE"] = String(rc) }
        return env
    }
}
