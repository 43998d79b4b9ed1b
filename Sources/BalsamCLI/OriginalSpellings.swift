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
    }

    /// The translation of `arguments` (without the program name), or nil when they are not an original spelling.
    public static func translate(_ arguments: [String]) throws(SpoolError) -> Translation? {
        let verbs = ["site": "init, start, stop, sync or platforms", "job": "create, ls, rm or modify"]
        if let group = arguments.first, let named = verbs[group], arguments.count == 1 || arguments[1].hasPrefix("-") {
            throw SpoolError(.usage, "\(group): give a command: \(named) (see balsam(1))")
        }
        guard arguments.count >= 2 else { return nil }
        let rest = Array(arguments.dropFirst(2))
        switch (arguments[0], arguments[1]) {
        case ("site", "init"):
            // As the original: the platform is asked for when not given (a menu on a terminal).
            return .builtin(["init", "--choose-platform"] + rest)
        case ("site", "platforms"):
            return .builtin(["platforms"] + rest)
        case ("site", "start"):
            return .program("balsam-watch", ["--daemon"] + rest)
        case ("site", "stop"):
            return .program("balsam-watch", ["--stop"] + rest)
        case ("site", "sync"):
            // The original stopped the site, pushed its settings and restarted it; here the watcher rereads
            // settings.yml by itself, and this pushes the site to its server now.
            return .builtin(["sync", "push"] + rest)
        case ("job", "create"):
            return .program(
                "balsam-submit",
                try rewrite(
                    rest, command: "job create",
                    rules: [
                        "-lp": .rename("--launch-param"), "-pid": .rename("--parent-id"), "-y": .dropFlag,
                        "--yes": .dropFlag, "-tag": .rename("--tag"),
                        // The same SLOT=ALIAS:/path, see balsam-transfer(1).
                        "-s": .rename("--transfer"), "--stage-data": .rename("--transfer"),
                        "--site": .siteDirectory,
                    ]))
        case ("job", "ls"):
            return .builtin(
                ["ls"]
                    + (try rewrite(
                        rest, command: "job ls",
                        rules: [
                            "-t": .rename("--tag"), "-ns": .rename("--exclude-state"), "-v": .rename("--json"),
                            "--verbose": .rename("--json"), "-w": .workdirContaining, "--workdir": .workdirContaining,
                            "--site": .siteDirectory,
                        ])))
        case ("job", "rm"):
            return .builtin(
                ["rm"]
                    + (try rewrite(
                        rest, command: "job rm",
                        rules: [
                            "-i": .positional, "--id": .positional, "-t": .rename("--tag"), "-y": .rename("--yes"),
                            "-ns": .rename("--exclude-state"), "-w": .workdirContaining,
                            "--workdir": .workdirContaining, "--site": .siteDirectory,
                        ])))
        case ("job", "modify"):
            return .builtin(try modify(rest))
        case ("job", _), ("site", _):
            throw SpoolError(
                .usage,
                "\(arguments[0]): '\(arguments[1])' is not one of its commands: \(verbs[arguments[0]] ?? "")"
                    + " (see balsam(1))")
        case ("app", "ls"):
            return .builtin(
                ["app", "ls"]
                    + (try rewrite(
                        rest, command: "app ls", rules: ["-v": .rename("--json"), "--verbose": .rename("--json")])))
        case ("queue", "ls"):
            return .builtin(
                ["queue", "ls"]
                    + (try rewrite(
                        rest, command: "queue ls",
                        rules: [
                            "-h": .rename("--history"), "-v": .rename("--json"), "--verbose": .rename("--json"),
                            "-n": .refuse("it lists every batch job; use head"),
                            "--num": .refuse("it lists every batch job; use head"),
                        ])))
        case ("queue", "submit"):
            return .builtin(
                ["queue", "submit"]
                    + (try rewrite(
                        rest, command: "queue submit",
                        rules: [
                            "-j": .dropWithValue, "--job-mode": .dropWithValue,
                            "-p": .refuse("launcher partitions are not supported; submit one batch job per mode"),
                            "--part": .refuse("launcher partitions are not supported; submit one batch job per mode"),
                        ])))
        case ("queue", "term"):
            throw SpoolError(
                .usage,
                "'balsam queue term SCHEDULER_ID' is 'balsam queue rm ID' here, with the ID 'balsam queue ls' shows")
        default:
            return nil
        }
    }

    /// `job modify -i ID... | -t K=V... -s STATE`: the original sets the state; here a user asks for a run again
    /// (`retry`) or an end (`kill`), judged by the state machine.
    private static func modify(_ arguments: [String]) throws(SpoolError) -> [String] {
        var selection: [String] = []
        var state: String?
        var i = 0
        while i < arguments.count {
            let word = arguments[i]
            let value = i + 1 < arguments.count ? arguments[i + 1] : nil
            switch word {
            case "-i", "--id", "-t", "--tag", "-s", "--state":
                guard let value else { throw SpoolError(.usage, "job modify: \(word) needs a value") }
                if word == "-s" || word == "--state" {
                    state = value
                } else {
                    selection += word == "-t" || word == "--tag" ? ["--tag", value] : [value]
                }
                i += 2
            case "-y", "--yes":
                selection.append("--yes")
                i += 1
            default:
                selection.append(word)
                i += 1
            }
        }
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
