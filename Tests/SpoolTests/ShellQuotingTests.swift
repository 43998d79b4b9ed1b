import Foundation
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
}
