import ArgumentParser
import BalsamCLI
import Spool

struct AppCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "app",
        abstract: "List, show and create apps.",
        subcommands: [AppList.self, AppShow.self, AppCreate.self])
}

struct AppList: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "ls", abstract: "List the site's apps.")

    @OptionGroup var siteOption: SiteOption

    @Flag(name: .long, help: "Print one JSON object per app per line.")
    var json = false

    func run() throws {
        try reportingErrors("balsam app ls") {
            let site = try siteOption.open()
            var rows: [[String]] = []
            var failed = false
            for name in try site.appNames() {
                do {
                    let app = try site.app(name)
                    if json {
                        print(app.json.serialized())
                    } else {
                        let command = app.isPython ? "(Python: the class's run())" : app.commandTemplate.source
                        rows.append([app.name, command, app.description])
                    }
                } catch {
                    printError("balsam app ls: \(error)")
                    failed = true
                }
            }
            if !json { print(table(["NAME", "COMMAND_TEMPLATE", "DESCRIPTION"], rows)) }
            if failed { throw SpoolError(.invalidInput, "some apps could not be read") }
        }
    }
}

struct AppShow: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "show", abstract: "Show one app.")

    @OptionGroup var siteOption: SiteOption

    @Argument(help: "The app's name.")
    var name: String

    @Flag(name: .long, help: "Print the app as one JSON object.")
    var json = false

    func run() throws {
        try reportingErrors("balsam app show") {
            let app = try siteOption.open().app(name)
            if json {
                print(app.json.serialized())
            } else {
                print(app.yamlText(), terminator: "")
                let hooks = app.hooks.map(\.rawValue).sorted()
                print("# hooks: " + (hooks.isEmpty ? "none" : hooks.joined(separator: ", ")))
            }
        }
    }
}

struct AppCreate: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "create",
        abstract: "Create an app from a command template.",
        discussion: """
            Placeholders of the template that no --param declares become required parameters. Writes \
            SITE/apps/NAME/app.yml; edit it to add environment variables, cleanup globs or policies.
            """)

    @OptionGroup var siteOption: SiteOption

    @Argument(help: "The app's name: letters, digits, '_', '-' and '.'.")
    var name: String

    @Option(name: .long, help: "The shell command, with {{ name }} placeholders.")
    var commandTemplate: String

    @Option(
        name: .long,
        help: ArgumentHelp(
            "A parameter: NAME (required) or NAME=DEFAULT (optional). Repeatable.", valueName: "name[=default]"))
    var param: [String] = []

    @Option(name: .long, help: "What the app does.")
    var description: String = ""

    @Option(
        name: .long, help: ArgumentHelp("An environment variable for every run, KEY=VALUE.", valueName: "key=value"))
    var env: [String] = []

    @Option(name: .long, help: "Retries after RUN_ERROR before FAILED.")
    var onErrorRetries: Int = 0

    @Option(name: .long, help: "Retries after RUN_TIMEOUT before FAILED.")
    var onTimeoutRetries: Int = 3

    func run() throws {
        try reportingErrors("balsam app create") {
            let site = try siteOption.open()
            var parameters: [String: App.Parameter] = [:]
            for p in param {
                if let eq = p.firstIndex(of: "=") {
                    parameters[String(p[..<eq])] = App.Parameter(
                        required: false, defaultValue: parameterValue(String(p[p.index(after: eq)...])))
                } else {
                    parameters[p] = App.Parameter(required: true)
                }
            }
            for placeholder in try CommandTemplate(commandTemplate).placeholders where parameters[placeholder] == nil {
                parameters[placeholder] = App.Parameter(required: true)
            }
            var app = try App(name: name, commandTemplate: commandTemplate, parameters: parameters)
            app.description = description
            for e in env {
                let (k, v) = try keyValue(e, option: "--env")
                app.environmentVariables[k] = v
            }
            app.onError = App.RetryPolicy(retries: onErrorRetries)
            app.onTimeout = App.RetryPolicy(retries: onTimeoutRetries)
            try app.validate()
            try site.createApp(app)
            print(site.appsPath + "/" + name + "/app.yml")
        }
    }
}
