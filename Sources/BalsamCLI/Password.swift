import Spool

#if canImport(Glibc)
    import Glibc
#endif

/// A password from a file's first line, or from the terminal without echo (asked twice when `confirm`), or from
/// standard input's first line when it is not a terminal (an error naming `--password-file` when it has none).
public func readPassword(file: String?, confirm: Bool) throws -> String {
    if let file {
        let text = String(decoding: try Posix.readInput(file, limit: 4096), as: UTF8.self)
        return String(text.split(separator: "\n", omittingEmptySubsequences: false).first ?? "")
    }
    guard isatty(0) == 1 else {
        // A script pipes the password in; nothing there (</dev/null, a cron job) is a mistake, not a password.
        guard let line = readLine(strippingNewline: true), !line.isEmpty else {
            throw SpoolError(
                .usage,
                "no password: standard input is not a terminal and gave none; use --password-file FILE"
                    + " (or, for balsam login, --token-file FILE)")
        }
        return line
    }
    func ask(_ prompt: String) -> String {
        printError(prompt)
        var saved = termios()
        tcgetattr(0, &saved)
        var quiet = saved
        quiet.c_lflag &= ~tcflag_t(ECHO)
        tcsetattr(0, TCSAFLUSH, &quiet)
        defer { tcsetattr(0, TCSAFLUSH, &saved) }
        return readLine(strippingNewline: true) ?? ""
    }
    let first = ask("Password: ")
    if confirm && ask("Again: ") != first {
        throw SpoolError(.usage, "the two passwords differ")
    }
    return first
}
