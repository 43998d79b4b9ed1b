internal import Yams

#if canImport(Glibc)
    import Glibc
#endif

/// An app: `SITE/apps/NAME/app.yml` plus optional hook executables beside it. Attribute names are the
/// original `ApplicationDefinition`'s; `on_error` and `on_timeout` are ours.
public struct App: Sendable, Equatable {
    /// One declared parameter of the command template.
    public struct Parameter: Sendable, Equatable {
        /// Whether every job must give a value.
        public var required: Bool
        /// The value used when a job gives none (optional parameters only).
        public var defaultValue: JSONValue?
        /// A sentence for `balsam app show`.
        public var help: String

        /// Makes a parameter.
        public init(required: Bool, defaultValue: JSONValue? = nil, help: String = "") {
            self.required = required
            self.defaultValue = defaultValue
            self.help = help
        }
    }

    /// What to do after an error or a timeout: retry up to `retries` times, then fail.
    public struct RetryPolicy: Sendable, Equatable {
        /// Retries before the job is `FAILED`.
        public var retries: Int

        /// Makes a policy.
        public init(retries: Int) { self.retries = retries }
    }

    /// Executables beside `app.yml` that the watcher and launcher run at fixed points of the lifecycle.
    public enum Hook: String, CaseIterable, Sendable {
        case preprocess, postprocess
        case onError = "on-error"
        case onTimeout = "on-timeout"
        case shellPreamble = "shell-preamble"
    }

    /// The app's name: its directory under `SITE/apps`.
    public var name: String
    /// What the app does.
    public var description: String = ""
    /// The shell command, with `{{ name }}` placeholders.
    public var commandTemplate: CommandTemplate
    /// Declared parameters by name.
    public var parameters: [String: Parameter] = [:]
    /// Variables added to the environment of every run.
    public var environmentVariables: [String: String] = [:]
    /// Globs deleted from a job's directory once it has finished.
    public var cleanupFiles: [String] = []
    /// Transfer slots (stored now; used by stage-in and stage-out later).
    public var transfers: [String: JSONValue] = [:]
    /// After `RUN_ERROR`: retries before `FAILED` (default 0).
    public var onError = RetryPolicy(retries: 0)
    /// After `RUN_TIMEOUT`: retries before `FAILED` (default 3; the original retries forever).
    public var onTimeout = RetryPolicy(retries: 3)
    /// Hook executables present beside `app.yml`.
    public var hooks: Set<Hook> = []
    /// A Python app (`python_app: true`): a job runs the `run()` method of the class in `class.b64` through the
    /// site's Python runner, and its return value or exception comes back with the job. No command template.
    public var isPython = false
    /// The Python that runs this app's class (`python_executable`; nil: the site's `python.executable`).
    public var pythonExecutable: String?
    /// Whether `class.b64` (a pickled `ApplicationDefinition`, as the original client sends it) is beside
    /// `app.yml`: the app's class hooks and Python runs load it.
    public var hasClass = false

    /// The pickled class's file name in the app's directory.
    public static let classFileName = "class.b64"

    /// Largest `app.yml` read.
    static let fileLimit = 1 << 20

    /// Makes an app and checks that its template and parameters agree.
    public init(name: String, commandTemplate: String, parameters: [String: Parameter] = [:]) throws(SpoolError) {
        self.name = name
        self.commandTemplate = try CommandTemplate(commandTemplate)
        self.parameters = parameters
        try validate()
    }

    /// Makes an app, unchecked, a Python app (no template) when `python`; call `validate()` once it is filled in.
    public init(name: String, commandTemplate: String, python: Bool) throws(SpoolError) {
        self.name = name
        self.commandTemplate = try CommandTemplate(commandTemplate)
        self.isPython = python
    }

    /// An app name is a plain file name: letters, digits, `_`, `-` and `.`, not starting with `.` or `-`.
    public static func validateName(_ name: String) throws(SpoolError) {
        let ok =
            !name.isEmpty && name.utf8.count <= 128 && name.first != "." && name.first != "-"
            && name.utf8.allSatisfy { c in
                (c >= 0x30 && c <= 0x39) || (c | 0x20 >= 0x61 && c | 0x20 <= 0x7A) || "_-.".utf8.contains(c)
            }
        if !ok {
            throw SpoolError(.invalidInput, "app name '\(name)' must be letters, digits, '_', '-' or '.'")
        }
    }

    /// Every placeholder is a declared parameter and every parameter is used; optional ones have defaults.
    public func validate() throws(SpoolError) {
        try App.validateName(name)
        if isPython {
            if !commandTemplate.source.isEmpty {
                throw SpoolError(
                    .invalidInput, "app '\(name)': a Python app (python_app: true) has no command_template")
            }
            return try validatePolicies()
        }
        do { try commandTemplate.checkQuotable() } catch {
            throw SpoolError(.invalidInput, "app '\(name)': \(error.message)")
        }
        let used = commandTemplate.placeholders
        for placeholder in used where parameters[placeholder] == nil {
            throw SpoolError(
                .invalidInput, "app '\(name)': command_template uses '{{ \(placeholder) }}', which is not a parameter")
        }
        for (param, spec) in parameters.sorted(by: { $0.key < $1.key }) {
            if !used.contains(param) {
                throw SpoolError(.invalidInput, "app '\(name)': parameter '\(param)' is not used in command_template")
            }
            if !spec.required && spec.defaultValue == nil {
                throw SpoolError(.invalidInput, "app '\(name)': optional parameter '\(param)' needs a default")
            }
        }
        try validatePolicies()
    }

    private func validatePolicies() throws(SpoolError) {
        if onError.retries < 0 || onTimeout.retries < 0 {
            throw SpoolError(.invalidInput, "app '\(name)': retries must not be negative")
        }
    }

    /// Checks a job's parameters: every required one present, none undeclared. Errors name the parameter.
    /// A Python app's job whose parameters are pickled (`serialized`) is checked by its `run()` call.
    public func checkParameters(_ given: [String: JSONValue], serialized: Bool = false) throws(SpoolError) {
        if isPython && serialized { return }
        try Self.checkParameters(given, declared: parameters, app: name)
    }

    /// The rule itself, for an app named `name` declaring `parameters`: the server gives it too, before a job made
    /// through its API reaches the site, so that what it takes the site takes.
    public static func checkParameters(
        _ given: [String: JSONValue], declared parameters: [String: Parameter], app name: String
    ) throws(SpoolError) {
        for key in given.keys.sorted() where parameters[key] == nil {
            let declared = parameters.keys.sorted().joined(separator: ", ")
            throw SpoolError(
                .invalidInput,
                "app '\(name)' has no parameter '\(key)' (its parameters: \(declared.isEmpty ? "none" : declared))")
        }
        for (key, spec) in parameters.sorted(by: { $0.key < $1.key }) where spec.required && given[key] == nil {
            throw SpoolError(.invalidInput, "missing required parameter '\(key)' of app '\(name)'")
        }
    }

    /// The command line for a job's parameters, defaults filled in, every value shell-quoted.
    public func render(_ given: [String: JSONValue]) throws(SpoolError) -> String {
        try checkParameters(given)
        var values: [String: JSONValue] = [:]
        for (key, spec) in parameters { values[key] = given[key] ?? spec.defaultValue }
        return try commandTemplate.render(values)
    }

    // MARK: - app.yml

    /// Loads `DIRECTORY/app.yml` and notes which hook executables are present.
    public static func load(directory: String, name: String) throws(SpoolError) -> App {
        let path = directory + "/app.yml"
        let bytes = try Posix.readFile(path, limit: fileLimit)
        guard let text = String(validating: bytes, as: UTF8.self) else {
            throw SpoolError(.invalidInput, "app.yml is not valid UTF-8", path: path)
        }
        var app: App
        do { app = try parse(yaml: text, name: name) } catch {
            throw SpoolError(error.code, error.message, path: path, cause: error.cause)
        }
        // Hooks are run, so they must be executable; the shell preamble is sourced, so it need only be readable.
        // access(2) answers whether it is; its failure means "no hook", not an error.
        for hook in Hook.allCases
        where access(directory + "/" + hook.rawValue, hook == .shellPreamble ? R_OK : X_OK) == 0 {
            app.hooks.insert(hook)
        }
        app.hasClass = access(directory + "/" + classFileName, R_OK) == 0
        if app.isPython && !app.hasClass {
            throw SpoolError(
                .invalidInput, "a Python app (python_app: true) needs its class in \(classFileName) beside app.yml",
                path: path)
        }
        return app
    }

    static let keys: Set<String> = [
        "description", "command_template", "parameters", "environment_variables", "cleanup_files", "transfers",
        "on_error", "on_timeout", "python_app", "python_executable",
    ]

    /// Parses `app.yml` text.
    public static func parse(yaml text: String, name: String) throws(SpoolError) -> App {
        let root: JSONValue
        do { root = try YAML.parse(text) } catch { throw SpoolError(.invalidInput, "malformed YAML: \(error)") }
        guard case .object(let o) = root else { throw SpoolError(.invalidInput, "app.yml must be a mapping") }
        for key in o.keys where !keys.contains(key) {
            throw SpoolError(.invalidInput, "unknown key '\(key)' (app keys: \(keys.sorted().joined(separator: ", ")))")
        }
        let isPython: Bool
        switch o["python_app"] {
        case nil, .null?: isPython = false
        case .bool(let b)?: isPython = b
        default: throw fieldError("python_app", "must be true or false")
        }
        let template: String
        switch o["command_template"] {
        case .string(let t)?: template = t
        case nil, .null?: if isPython { template = "" } else { fallthrough }
        default: throw fieldError("command_template", "is required and must be a string")
        }
        var parameters: [String: Parameter] = [:]
        if let v = o["parameters"], v != .null {
            guard case .object(let params) = v else { throw fieldError("parameters", "must be a mapping") }
            for (param, spec) in params {
                switch spec {
                case .null:
                    parameters[param] = Parameter(required: true)
                case .object(let s):
                    let required: Bool
                    switch s["required"] {
                    case .bool(let b)?: required = b
                    case nil, .null?: required = s["default"] == nil || s["default"] == .null
                    default: throw fieldError("parameters.\(param).required", "must be true or false")
                    }
                    let def = s["default"].flatMap { $0 == .null ? nil : $0 }
                    parameters[param] = Parameter(
                        required: required, defaultValue: def, help: s["help"]?.stringValue ?? "")
                default:
                    throw fieldError("parameters.\(param)", "must be a mapping with required, default and help")
                }
            }
        }
        var app = try App(uncheckedName: name, commandTemplate: template, parameters: parameters)
        app.isPython = isPython
        switch o["python_executable"] {
        case nil, .null?: break
        case .string(let path)? where !path.isEmpty: app.pythonExecutable = path
        default: throw fieldError("python_executable", "must be a path to a Python")
        }
        app.description = o["description"]?.stringValue ?? ""
        if case .object(let env)? = o["environment_variables"] {
            for (k, v) in env where v != .null { app.environmentVariables[k] = v.stringValue ?? v.serialized() }
        }
        if case .array(let globs)? = o["cleanup_files"] {
            app.cleanupFiles = globs.compactMap(\.stringValue)
        } else if let v = o["cleanup_files"], v != .null {
            throw fieldError("cleanup_files", "must be a list of globs")
        }
        if case .object(let t)? = o["transfers"] { app.transfers = t }
        app.onError = try policy(o["on_error"], key: "on_error", default: 0)
        app.onTimeout = try policy(o["on_timeout"], key: "on_timeout", default: 3)
        try app.validate()
        return app
    }

    private init(uncheckedName: String, commandTemplate: String, parameters: [String: Parameter]) throws(SpoolError) {
        self.name = uncheckedName
        self.commandTemplate = try CommandTemplate(commandTemplate)
        self.parameters = parameters
    }

    static func policy(_ value: JSONValue?, key: String, default def: Int) throws(SpoolError) -> RetryPolicy {
        switch value {
        case nil, .null?: return RetryPolicy(retries: def)
        case .object(let o)?:
            guard let r = o["retries"]?.intValue, r >= 0 else {
                throw fieldError("\(key).retries", "must be a whole number of retries")
            }
            return RetryPolicy(retries: r)
        default: throw fieldError(key, "must be a mapping like {retries: 2}")
        }
    }

    /// `app.yml` text: commented, in the order a reader wants.
    public func yamlText() -> String {
        func q(_ s: String) -> String { JSONValue.string(s).serialized() }
        var text = "# Balsam app '\(name)'. See balsam-spool(5), section APPS.\n"
        text += "description: \(q(description))\n"
        if isPython {
            text += "# A Python app: jobs run the run() method of the class in \(App.classFileName).\n"
            text += "python_app: true\n"
        } else {
            text += "# {{ name }} placeholders; every value is shell-quoted when a job's command is made.\n"
            text += "command_template: \(q(commandTemplate.source))\n"
        }
        if let pythonExecutable { text += "python_executable: \(q(pythonExecutable))\n" }
        text += "parameters:" + (parameters.isEmpty ? " {}\n" : "\n")
        for (param, spec) in parameters.sorted(by: { $0.key < $1.key }) {
            text += "  \(param):\n    required: \(spec.required)\n"
            if let def = spec.defaultValue { text += "    default: \(def.serialized())\n" }
            text += "    help: \(q(spec.help))\n"
        }
        text += "environment_variables:" + (environmentVariables.isEmpty ? " {}\n" : "\n")
        for (k, v) in environmentVariables.sorted(by: { $0.key < $1.key }) { text += "  \(q(k)): \(q(v))\n" }
        text += "# Globs deleted from the job's directory after JOB_FINISHED.\n"
        text += "cleanup_files: [\(cleanupFiles.map(q).joined(separator: ", "))]\n"
        text += "transfers: \(JSONValue.object(transfers).serialized())\n"
        text += "# Retries after RUN_ERROR / RUN_TIMEOUT before the job is FAILED.\n"
        text += "on_error: {retries: \(onError.retries)}\n"
        text += "on_timeout: {retries: \(onTimeout.retries)}\n"
        return text
    }

    /// The app as JSON, for `balsam app show --json`.
    public var json: JSONValue {
        .object([
            "name": .string(name), "description": .string(description),
            "command_template": .string(commandTemplate.source),
            "parameters": .object(
                parameters.mapValues { p in
                    .object([
                        "required": .bool(p.required), "default": p.defaultValue ?? .null, "help": .string(p.help),
                    ])
                }),
            "environment_variables": .object(environmentVariables.mapValues { .string($0) }),
            "cleanup_files": .array(cleanupFiles.map { .string($0) }), "transfers": .object(transfers),
            "on_error": .object(["retries": .int(onError.retries)]),
            "on_timeout": .object(["retries": .int(onTimeout.retries)]),
            "hooks": .array(hooks.map(\.rawValue).sorted().map { .string($0) }),
            "python_app": .bool(isPython), "python_executable": pythonExecutable.map(JSONValue.string) ?? .null,
            "python_class": .bool(hasClass),
        ])
    }
}

/// YAML documents as JSON values (settings and apps are small; Yams does the parsing).
enum YAML {
    struct Failure: Error, CustomStringConvertible {
        var description: String
    }

    static func parse(_ text: String) throws(Failure) -> JSONValue {
        let node: Node?
        do { node = try Yams.compose(yaml: text) } catch { throw failure(error, text: text) }
        guard let node else { return .null }
        return convert(node)
    }

    /// What went wrong where: "line 3, column 12: PROBLEM (CONTEXT at line 2, column 1)", then the line itself
    /// and a caret under the column.
    static func failure(_ error: any Error, text: String) -> Failure {
        let found: (context: YamlError.Context?, problem: String, mark: Mark)
        switch error as? YamlError {
        case .scanner(let context, let problem, let mark, _)?, .parser(let context, let problem, let mark, _)?,
            .composer(let context, let problem, let mark, _)?:
            found = (context, problem, mark)
        case .reader(let problem, let offset, _, _)?:
            return Failure(description: problem + (offset.map { " at byte \($0)" } ?? ""))
        default:
            return Failure(description: "\(error)".trimmingSpaces().split(separator: "\n").joined(separator: " "))
        }
        var description = "line \(found.mark.line), column \(found.mark.column): \(found.problem)"
        if let context = found.context {
            description += " (\(context.text) at line \(context.mark.line), column \(context.mark.column))"
        }
        let lines = text.split(separator: "\n", omittingEmptySubsequences: false)
        if found.mark.line >= 1 && found.mark.line <= lines.count {
            let line = lines[found.mark.line - 1].prefix(200)
            description +=
                "\n  " + line + "\n  " + String(repeating: " ", count: max(0, min(found.mark.column - 1, 200))) + "^"
        }
        return Failure(description: description)
    }

    static func convert(_ node: Node) -> JSONValue {
        switch node {
        case .scalar:
            switch Tag.Name(rawValue: node.tag.description) {
            case .null: return .null
            case .bool: return node.bool.map(JSONValue.bool) ?? .string(node.string ?? "")
            case .int: return node.int.map(JSONValue.int) ?? .string(node.string ?? "")
            case .float: return node.float.map(JSONValue.double) ?? .string(node.string ?? "")
            default: return .string(node.string ?? "")
            }
        case .mapping(let mapping):
            var o: [String: JSONValue] = [:]
            for (key, value) in mapping { o[key.string ?? ""] = convert(value) }
            return .object(o)
        case .sequence(let sequence):
            return .array(sequence.map(convert))
        case .alias:
            return .null
        }
    }
}
