import Foundation
import TestSupport
import Testing

@testable import Spool

/// A parameter is data, never code (issue 23, 14): each place a placeholder may stand, rendered with hostile
/// values and run by bash (as the launcher runs a job), prints the value exactly, and runs nothing it holds.
@Suite struct ShellQuotingTests {
    static let hostile = [
        "$(touch pwned)", "`touch pwned`", "'; touch pwned; '", "\"; touch pwned; \"", "it's", "say \"hi\"",
        "back\\slash", "trailing\\", "two\nlines", "$HOME", "${HOME}", "*", "a b  c", "$((1+1))", "\\$(touch pwned)",
        "'\"$(touch pwned)\"'", "", "-n", "é ✓", "!!", "~",
    ]

    /// Templates that print `x` alone on a line, once per context (bare, double, single, mixed, substitution).
    static let templates = [
        "printf '%s\\n' {{ x }}", "printf '%s\\n' \"{{ x }}\"", "printf '%s\\n' '{{ x }}'",
        "printf '%s\\n' \"[{{ x }}]\"", "printf '%s\\n' '[{{ x }}]'", "printf '%s\\n' \"$(printf '%s' {{ x }})\"",
        "printf '%s\\n' \"it's {{ x }}\"", "printf '%s\\n' pre{{ x }}post", "printf '%s\\n' $(printf %s x)'{{ x }}'",
    ]

    /// What each template prints for `value`.
    static func expected(_ template: String, _ value: String) -> String {
        switch template {
        case templates[3], templates[4]: "[\(value)]"
        case templates[6]: "it's \(value)"
        case templates[7]: "pre\(value)post"
        case templates[8]: "x\(value)"
        default: value
        }
    }

    @Test("every context prints hostile values literally and runs none of them", arguments: templates)
    func literal(_ template: String) throws {
        let parsed = try CommandTemplate(template)
        try parsed.checkQuotable()
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("quote-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        for value in Self.hostile {
            let command = try parsed.render(["x": .string(value)])
            let process = Process()
            process.executableURL = URL(fileURLWithPath: "/bin/bash")
            process.arguments = ["-c", command]
            process.currentDirectoryURL = URL(fileURLWithPath: dir)
            let pipe = Pipe()
            process.standardOutput = pipe
            try process.run()
            let output = pipe.fileHandleForReading.readDataToEndOfFile()
            process.waitUntilExit()
            let printed = String(decoding: output, as: UTF8.self)
            var want = Self.expected(template, value)
            // $( ) drops the trailing newlines of what it captures, as it does for any command.
            if template == Self.templates[5] { while want.hasSuffix("\n") { want.removeLast() } }
            #expect(printed == want + "\n", "\(template) with \(value.debugDescription) ran: \(command)")
            #expect(
                !FileManager.default.fileExists(atPath: dir + "/pwned"), "\(template) ran \(value.debugDescription)")
        }
    }

    @Test(
        "placeholders where no quoting keeps a value literal are refused, saying where",
        arguments: [
            ("cat <<EOF\n{{ x }}\nEOF", "here-document"), ("echo `echo {{ x }}`", "backticks"),
            ("echo $(( {{ x }} + 1 ))", "arithmetic"), ("echo ${A:-{{ x }}}", "${...}"),
            ("echo hi # {{ x }}", "comment"),
            ("echo \\{{ x }}", "backslash"), ("echo $'{{ x }}'", "$'...'"),
        ])
    func refused(_ template: String, _ place: String) throws {
        let parsed = try CommandTemplate(template)
        #expect { try parsed.checkQuotable() } throws: { "\($0)".contains(place) && "\($0)".contains("{{ x }}") }
        #expect(throws: SpoolError.self) { _ = try parsed.render(["x": .string("v")]) }
        #expect(throws: SpoolError.self) {
            _ = try App(name: "a", commandTemplate: template, parameters: ["x": App.Parameter(required: true)])
        }
    }

    @Test("what is not a here-document or a comment stays quotable")
    func notRefused() throws {
        for template in ["cat <<< {{ x }}", "echo a#{{ x }}", "echo \"#{{ x }}\"", "echo \"$(echo {{ x }})\" '<<'"] {
            try CommandTemplate(template).checkQuotable()
        }
    }

    /// Contexts from bash's grammar, each with `X` where a placeholder goes: where bash reads a word, and where it
    /// evaluates text as arithmetic or code (issue 31, item 4).
    static let contexts = [
        "echo X", "printf '%s\\n' X", "echo \"X\"", "echo 'X'", "echo pre\"X\"post", "v=X; echo \"$v\"",
        "v=X echo hi", "cat <<< X", "echo hi > X", "[[ X -eq 1 ]]", "[[ X == 1 ]]", "(( X ))", "((X))",
        "echo $(( X ))", "echo $[ X ]", "let X", "let v=X", "declare -i v=X", "declare X", "typeset -i v=X",
        "local v=X", "export X", "readonly X", "a[X]=1", "echo ${a[X]}", "trap X EXIT", "printf -v X '%s' 1",
        "printf -v v X", "read X", "read -a X", "unset X", "unset -v X", "test -v X", "[ -v X ]", "eval X",
        "source X", ". X", "X", "X arg", "command X", "builtin X", "exec X", "time X", "alias a=X", "mapfile X",
        "getopts ab X", "wait -p X", "cat <<EOF\nX\nEOF", "cat <<'EOF'\nX\nEOF", "cat <<-EOF\n\tX\n\tEOF",
        "cat << X\nhi\nX", "cat <<EOF\nhi\nEOF\necho X", "echo `echo X`", "echo ${v:-X}", "echo $'X'",
        "echo hi # X", "echo \\X", "for i in X; do echo \"$i\"; done", "case X in *) echo hi;; esac",
        "echo $(echo X)", "echo \"$(printf '%s' X)\"", "f() { echo X; }; f", "{# note #} echo X",
        "echo {# note #} X", "if [ -n X ]; then echo y; fi", "[ X = 1 ] || echo no", "test X -eq 1 || true",
        "if [ -v X ]; then echo y; fi", "while [[ X ]]; do break; done", "! [[ X -eq 1 ]]", "{ let X; }",
        "if echo X; then echo y; fi", "time eval X",
    ]

    /// Values that run `touch pwned` wherever bash evaluates them, and the ones of the first round.
    static let payloads =
        hostile + [
            "a[$(touch pwned)]", "a[$(touch pwned)]=1", "x[`touch pwned`]", "1; touch pwned", "$(touch pwned)=1",
            "EOF\ntouch pwned\nEOF", "\ntouch pwned\n", "1 ]] || touch pwned; [[ 1", "0)) ; touch pwned; ((0",
            "v;touch pwned", "touch pwned", "-i v=a[$(touch pwned)]", "#{{ x }}",
        ]

    /// Templates made from the contexts: alone, two joined by an operator, and one inside another's `$( )`.
    static func generatedTemplates(count: Int, seed: UInt64) -> [String] {
        var random = SplitMix(seed: seed)
        func pick() -> String { contexts[Int(random.next() % UInt64(contexts.count))] }
        var out = contexts.map { $0.replacingOccurrences(of: "X", with: "{{ x }}") }
        let joins = ["; ", " && ", " || ", " | ", "\n", " & "]
        while out.count < count {
            let a = pick().replacingOccurrences(of: "X", with: "{{ x }}")
            let b = pick().replacingOccurrences(of: "X", with: random.next() % 2 == 0 ? "{{ x }}" : "lit")
            switch random.next() % 3 {
            case 0: out.append(a + joins[Int(random.next() % UInt64(joins.count))] + b)
            case 1: out.append("echo \"$(" + a + ")\"")
            default: out.append(b + "\n" + a)
            }
        }
        return out
    }

    /// The rule, on generated templates: a template the checker takes runs no payload, for every payload; and
    /// the safe contexts are taken (the rule is not vacuous).
    @Test func noAcceptedTemplateRunsAPayload() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("ctx-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        var accepted: [(String, CommandTemplate)] = []
        for text in Self.generatedTemplates(count: 260, seed: 31) {
            guard let template = try? CommandTemplate(text), (try? template.checkQuotable()) != nil else { continue }
            accepted.append((text, template))
        }
        let acceptedTexts = Set(accepted.map(\.0))
        for safe in [
            "echo {{ x }}", "printf '%s\\n' {{ x }}", "cat <<< {{ x }}", "v={{ x }}; echo \"$v\"",
            "cat <<EOF\nhi\nEOF\necho {{ x }}", "{# note #} echo {{ x }}", "for i in {{ x }}; do echo \"$i\"; done",
            "if echo {{ x }}; then echo y; fi",
        ] {
            #expect(acceptedTexts.contains(safe), "\(safe) should be accepted")
        }
        for unsafe in [
            "[[ {{ x }} -eq 1 ]]", "(( {{ x }} ))", "let {{ x }}", "declare -i v={{ x }}", "a[{{ x }}]=1",
            "trap {{ x }} EXIT", "printf -v {{ x }} '%s' 1", "read {{ x }}", "eval {{ x }}", "{{ x }}", "unset {{ x }}",
            "if [ -v {{ x }} ]; then echo y; fi", "while [[ {{ x }} ]]; do break; done", "! [[ {{ x }} -eq 1 ]]",
            "{ let {{ x }}; }", "time eval {{ x }}",
        ] {
            #expect(!acceptedTexts.contains(unsafe), "\(unsafe) should be refused")
        }
        // Every accepted template with every payload, each run by its own bash from one driver.
        var files: [String: String] = [:]
        var n = 0
        for (text, template) in accepted {
            for value in Self.payloads {
                let command = try template.render(["x": .string(value)])
                let file = dir + "/cmd.\(n)"
                try command.write(toFile: file, atomically: false, encoding: .utf8)
                files[file] = "\(text.debugDescription) with \(value.debugDescription)"
                n += 1
            }
        }
        let output = try run(
            "/bin/bash",
            [
                "-c",
                "for f in cmd.*; do timeout 5 bash \"$f\" </dev/null >/dev/null 2>&1; "
                    + "if [ -e pwned ]; then echo \"$f\"; rm -f pwned; fi; done",
            ], cwd: dir, timeout: 600
        ).stdout
        let ran = output.split(separator: "\n").map { files[dir + "/" + $0] ?? String($0) }
        #expect(ran.isEmpty, "accepted templates ran payloads: \(ran.prefix(20))")
        #expect(accepted.count > 40, "only \(accepted.count) of the generated templates were accepted")
    }

    /// `launch_params` keys become unquoted flags of the MPI launch line (issue 31, item 5): generated keys,
    /// hostile and plain, are either refused by the job's reader or stand in bash as exactly one literal word.
    @Test func launchParamKeysAreFlagsOrRefused() throws {
        var random = SplitMix(seed: 5)
        let alphabet = Array("ab-_=09;|&$()`'\" \\\n\t<>*?[]{}#~!".unicodeScalars)
        var keys = [
            "cpu-bind", "-d", "--env=FOO", "a;touch pwned;", "$(touch pwned)", "a\ntouch pwned", "--", "-", "=x",
            "---x", "x y", "*", "",
        ]
        for _ in 0..<400 {
            var key = ""
            for _ in 0..<(1 + Int(random.next() % 12)) {
                key.unicodeScalars.append(alphabet[Int(random.next() % UInt64(alphabet.count))])
            }
            keys.append(key)
        }
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("lp-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        var accepted: [String] = []
        for key in keys {
            let job: JSONValue = .object([
                "workdir": .string("w"), "app": .string("a"), "launch_params": .object([key: .string("v")]),
            ])
            let read = try? Job(json: job)
            #expect((read != nil) == (Job.launchParamKeyProblem(key) == nil), "\(key.debugDescription)")
            if read != nil { accepted.append(key) }
        }
        #expect(accepted.contains("cpu-bind") && accepted.contains("--env=FOO") && !accepted.contains("a;touch pwned;"))
        // Each accepted key, as the launch line writes it, is one word that bash prints back unchanged.
        let script = accepted.map { "printf '%s\\n' \($0.hasPrefix("-") ? $0 : "--" + $0)" }.joined(separator: "\n")
        let printed = try run("/bin/bash", ["-c", script], cwd: dir).stdout
        #expect(printed == accepted.map { ($0.hasPrefix("-") ? $0 : "--" + $0) + "\n" }.joined())
        #expect(!FileManager.default.fileExists(atPath: dir + "/pwned"))
    }
}
