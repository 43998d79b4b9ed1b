import Spool

/// The original Balsam's command spellings (`balsam site init`, `balsam job create|ls|rm|modify`, `balsam app ls`,
/// `balsam queue submit|ls|rm`), turned into this Balsam's own commands before parsing, so that a Balsam user's
/// habits and scripts keep working. Options are renamed where the two differ; an original option with no
/// equivalent here is refused with a message that says what to use instead.
public enum OriginalSpellings {
    /// What to run instead.
    public enum Translation: Sendable, Equatable {
        /// A built-in `balsam` subcommand with these arguments.
        case builtin([String])
        /// Another program (`balsam-submit`, `balsam-watch`) with these arguments.
        case program(String, [String])
        /// Nothing to run: print this usage (`--help`) and exit 0.
        case help(String)
    }

    /// How one original option maps onto ours.
    private enum Rule {
        /// Our option of another name (the value, if any, follows as it is).
        case rename(String)
        /// An option that takes a value and means nothing here (both job modes run on our launcher, say).
        case dropWithValue
        /// A flag that means nothing here (`job create -y`: creating jobs is never asked about).
        case dropFlag
        /// An option we do not have: the message says what to do instead.
        case refuse(String)
        /// The option's value becomes a positional argument (`job rm -i ID` is our `rm ID`).
        case positional
        /// `-w TEXT`: the original selects workdirs containing TEXT; ours is exact or a glob, so `*TEXT*`.
        case workdirContaining
        /// `--site X`: the original's site name or ID; a site directory here, passed on when X is one.
        case siteDirectory

        /// What `--help` says of it.
        var meaning: String {
            switch self {
            case .rename(let ours): "is \(ours)"
            case .dropWithValue, .dropFlag: "accepted and ignored"
            case .refuse(let instead): "not supported: \(instead)"
            case .positional: "its value is a job ID argument"
            case .workdirContaining: "selects workdirs containing the text (--workdir '*TEXT*')"
            case .siteDirectory: "the site's directory (not a name or ID on a server)"
            }
        }
    }

    /// One original spelling: its words, what it runs here (a built-in command's words, or another program's
    /// name and first arguments), the original options renamed or refused on the way, and one line saying it.
    /// The translation and `--help` both come from it.
    private struct Spelling {
        var words: String
        var program: String?
        var prefix: [String]
        var rules: [String: Rule] = [:]
        var summary: String
    }

    private static let siteOption: [String: Rule] = ["--site": .siteDirectory]

    /// Every spelling, in balsam(1)'s order. `job modify` is translated by `modify` (the state it sets decides
    /// the command).
    private static let spellings: [Spelling] = [
        Spelling(
            words: "site init", prefix: ["init", "--choose-platform"],
            summary: "makes a site; the platform is asked for when not given, as the original does"),
        Spelling(words: "site platforms", prefix: ["platforms"], summary: "lists the platform presets"),
        Spelling(
            words: "site start", program: "balsam-watch", prefix: ["--daemon"],
            summary: "starts the site's daemon, balsam-watch(1), in the background"),
        Spelling(
            words: "site stop", program: "balsam-watch", prefix: ["--stop"],
            summary: "stops the site's daemon and waits until it has ended"),
        // The original stopped the site, pushed its settings and restarted it; here the watcher rereads
        // settings.yml by itself, and this pushes the site to its server now.
        Spelling(
            words: "site sync", prefix: ["sync", "push"],
            summary: "pushes the site to its server now (settings.yml is reread by the watcher by itself)"),
        Spelling(
            words: "job create", program: "balsam-submit", prefix: [],
            rules: [
                "-lp": .rename("--launch-param"), "-pid": .rename("--parent-id"), "-y": .dropFlag, "--yes": .dropFlag,
                "-tag": .rename("--tag"),
                // The same SLOT=ALIAS:/path, see balsam-transfer(1).
                "-s": .rename("--transfer"), "--stage-data": .rename("--transfer"), "--site": .siteDirectory,
            ], summary: "makes one job, as balsam-submit(1) -a APP -w WORKDIR does"),
        Spelling(
            words: "job ls", prefix: ["ls"],
            rules: [
                "-t": .rename("--tag"), "-ns": .rename("--exclude-state"), "-v": .rename("--json"),
                "--verbose": .rename("--json"), "-w": .workdirContaining, "--workdir": .workdirContaining,
                "--site": .siteDirectory,
            ], summary: "lists jobs (-w selects workdirs containing the text, as the original)"),
        Spelling(
            words: "job rm", prefix: ["rm"],
            rules: [
                "-i": .positional, "--id": .positional, "-t": .rename("--tag"), "-y": .rename("--yes"),
                "-ns": .rename("--exclude-state"), "-w": .workdirContaining, "--workdir": .workdirContaining,
                "--site": .siteDirectory,
            ], summary: "removes jobs and their directories"),
        Spelling(
            words: "job modify", prefix: ["retry"],
            rules: [
                "-i": .positional, "--id": .positional, "-t": .rename("--tag"), "--tag": .rename("--tag"),
                "-y": .rename("--yes"),
            ],
            summary: "sets jobs' state as the original's -s did, through their lifecycle here: -s READY or "
                + "RESTART_READY runs them again (balsam retry [--restart]), -s FAILED ends them (balsam kill)"),
        Spelling(
            words: "app ls", prefix: ["app", "ls"], rules: ["-v": .rename("--json"), "--verbose": .rename("--json")],
            summary: "lists the site's apps"),
        Spelling(
            words: "queue ls", prefix: ["queue", "ls"],
            rules: [
                "-h": .rename("--history"), "-v": .rename("--json"), "--verbose": .rename("--json"),
                "-n": .refuse("it lists every batch job; use head"),
                "--num": .refuse("it lists every batch job; use head"),
            ], summary: "lists the site's batch jobs, balsam-queue(1)"),
        Spelling(
            words: "queue submit", prefix: ["queue", "submit"],
            rules: [
                "-j": .dropWithValue, "--job-mode": .dropWithValue,
                "-p": .refuse("launcher partitions are not supported; submit one batch job per mode"),
                "--part": .refuse("launcher partitions are not supported; submit one batch job per mode"),
            ], summary: "asks the scheduler for an allocation that runs a launcher, balsam-queue(1)"),
    ]

    /// The groups that exist only as the original's spellings, with their commands.
    private static let groups = ["site", "job"]

    /// The translation of `arguments` (without the program name), or nil when they are not an original spelling.
    /// `--help` anywhere in a spelling prints that spelling's own usage (`help`).
    public static func translate(_ arguments: [String]) throws(SpoolError) -> Translation? {
        guard let group = arguments.first else { return nil }
        let wantsHelp = arguments.contains("--help")
        if groups.contains(group) && (arguments.count == 1 || arguments[1].hasPrefix("-") || arguments[1] == "help") {
            if wantsHelp || arguments.dropFirst().first == "help" { return .help(help(group: group)) }
            throw SpoolError(.usage, "\(group): give a command: \(commands(of: group)) (see balsam(1))")
        }
        guard arguments.count >= 2 else { return nil }
        let words = arguments[0] + " " + arguments[1]
        let rest = Array(arguments.dropFirst(2))
        if words == "queue term" {
            throw SpoolError(
                .usage,
                "'balsam queue term SCHEDULER_ID' is 'balsam queue rm ID' here, with the ID 'balsam queue ls' shows")
        }
        guard let spelling = spellings.first(where: { $0.words == words }) else {
            if groups.contains(group) {
                throw SpoolError(
                    .usage,
                    "\(group): '\(arguments[1])' is not one of its commands: \(commands(of: group)) (see balsam(1))")
            }
            return nil
        }
        // A spelling that is our own command of the same words (app ls, queue ls|submit) has our own help.
        let ours = spelling.program == nil && spelling.prefix == [arguments[0], arguments[1]]
        if wantsHelp && !ours { return .help(help(spelling)) }
        if words == "job modify" { return .builtin(try modify(rest, rules: spelling.rules)) }
        let translated = spelling.prefix + (try rewrite(rest, command: words, rules: spelling.rules))
        if let program = spelling.program { return .program(program, translated) }
        return .builtin(translated)
    }

    /// The original spellings of `group`, for messages.
    private static func commands(of group: String) -> String {
        let names = spellings.filter { $0.words.hasPrefix(group + " ") }.map {
            String($0.words.dropFirst(group.count + 1))
        }
        return names.dropLast().joined(separator: ", ") + " or " + (names.last ?? "")
    }

    /// `balsam GROUP --help`: the group's spellings, one line each.
    private static func help(group: String) -> String {
        var text = "usage: balsam \(group) COMMAND [options]  (the original Balsam's spelling; see balsam(1))\n\n"
        for spelling in spellings where spelling.words.hasPrefix(group + " ") {
            text += "  balsam \(spelling.words): \(spelling.summary)\n"
        }
        return text + "\n'balsam \(group) COMMAND --help' says more of each.\n"
    }

    /// `balsam WORDS --help`: what the spelling does, what it runs here, and its original options.
    private static func help(_ spelling: Spelling) -> String {
        let runs = (spelling.program.map { [$0] } ?? ["balsam"]) + spelling.prefix
        var text = "usage: balsam \(spelling.words) [options]  (the original Balsam's spelling; see balsam(1))\n\n"
        text += "It \(spelling.summary).\nIt runs: \(runs.joined(separator: " ")) [options]"
        if spelling.words == "job modify" { text += "  (or balsam kill, for -s FAILED)" }
        let command = runs.filter { !$0.hasPrefix("-") }.joined(separator: " ")
        text += "; '\(command) --help' lists the options.\n"
        if !spelling.rules.isEmpty {
            text += "\nThe original's options, as taken here:\n"
            for (name, rule) in spelling.rules.sorted(by: { $0.key < $1.key }) {
                text += "  \(name): \(rule.meaning)\n"
            }
        }
        return text
    }

    /// `job modify -i ID... | -t K=V... -s STATE`: the original sets the state; here a user asks for a run again
    /// (`retry`) or an end (`kill`), judged by the state machine.
    private static func modify(_ arguments: [String], rules: [String: Rule]) throws(SpoolError) -> [String] {
        // The state it sets decides the command; the rest is the selection, taken by the table's rules.
        var rest: [String] = []
        var state: String?
        var i = 0
        while i < arguments.count {
            let word = arguments[i]
            if word == "-s" || word == "--state" {
                guard i + 1 < arguments.count else { throw SpoolError(.usage, "job modify: \(word) needs a value") }
                state = arguments[i + 1]
                i += 2
            } else {
                rest.append(word)
                i += 1
            }
        }
        let selection = try rewrite(rest, command: "job modify", rules: rules)
        guard let state else { throw SpoolError(.usage, "job modify: -s/--state STATE is required") }
        switch state.uppercased() {
        case "READY", "PREPROCESSED": return ["retry"] + selection
        case "RESTART_READY": return ["retry", "--restart"] + selection
        case "FAILED": return ["kill"] + selection
        default:
            throw SpoolError(
                .usage,
                "job modify: jobs move to \(state) only through their lifecycle here; "
                    + "-s READY or RESTART_READY runs them again (balsam retry), -s FAILED ends them (balsam kill), "
                    + "and balsam modify changes their fields")
        }
    }

    private static func rewrite(_ arguments: [String], command: String, rules: [String: Rule]) throws(SpoolError)
        -> [String]
    {
        var out: [String] = []
        var i = 0
        while i < arguments.count {
            let word = arguments[i]
            // --opt=value spellings are looked up by their name.
            let name = word.hasPrefix("--") ? String(word.prefix { $0 != "=" }) : word
            let inline = name.count < word.count ? String(word.dropFirst(name.count + 1)) : nil
            guard let rule = rules[name] else {
                out.append(word)
                i += 1
                continue
            }
            let takesValue = inline == nil && i + 1 < arguments.count
            switch rule {
            case .rename(let ours):
                out.append(inline.map { ours + "=" + $0 } ?? ours)
                i += 1
            case .dropFlag:
                i += 1
            case .dropWithValue:
                i += takesValue ? 2 : 1
            case .positional:
                guard let value = inline ?? (takesValue ? arguments[i + 1] : nil) else {
                    throw SpoolError(.usage, "\(command): \(word) needs a value")
                }
                out.append(value)
                i += inline == nil ? 2 : 1
            case .refuse(let instead):
                throw SpoolError(.usage, "\(command): \(word) is not supported here: \(instead)")
            case .workdirContaining, .siteDirectory:
                guard let value = inline ?? (takesValue ? arguments[i + 1] : nil) else {
                    throw SpoolError(.usage, "\(command): \(word) needs a value")
                }
                if case .workdirContaining = rule {
                    out += ["--workdir", WorkdirPattern.containing(value).text]
                } else if (try? Site.open(value)) != nil {
                    out += ["--site", value]
                } else {
                    throw SpoolError(
                        .usage,
                        "\(command): --site \(value): not a site directory. Here --site names the site's directory "
                            + "(or set BALSAM_SITE, or run inside it); a site known to a server by name or ID is "
                            + "reached through the server's API (Job.objects.create in Python, or this command "
                            + "on a machine holding the site)")
                }
                i += inline == nil ? 2 : 1
            }
        }
        return out
    }
}
