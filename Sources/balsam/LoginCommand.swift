import ArgumentParser
import BalsamCLI
import Spool
import Sync

#if canImport(Glibc)
    import Glibc
#endif

struct LoginCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "login",
        abstract: "Log in to a balsam-server and write the client file the original Python client reads.",
        discussion: """
            Asks for the password (or reads --password-file), logs in, and writes ~/.balsam/client.yml (or \
            $BALSAM_CLIENT_PATH, or --client-file) mode 0600 with the server's URL and the token. With \
            --token-file, an existing token (balsam-server token create) is checked and written instead. \
            The file sets the original client's retry_count to 2 (--retry-count): it retries every failed \
            request, a refusal too, waiting 1, 2, 4, ... s, so its default of 10 hides a refusal for half an \
            hour; with 2 a refusal reaches you within 10 s. See balsam(1) and balsam-server(8).
            """)

    @Argument(help: "The server's URL, such as http://127.0.0.1:8080 or https://balsam.example.org.")
    var url: String

    @Option(name: [.short, .long], help: "The user name (default: $USER).")
    var user: String?

    @Option(name: .long, help: ArgumentHelp("Read the password from this file's first line.", valueName: "file"))
    var passwordFile: String?

    @Option(
        name: .long,
        help: ArgumentHelp(
            "Use the token in this file instead of a password (for scripts and sites).", valueName: "file"))
    var tokenFile: String?

    @Flag(name: .long, help: "Register the user first (servers with open registration).")
    var register = false

    @Option(
        name: .long, help: ArgumentHelp("Write the client file here instead of the default.", valueName: "file"))
    var clientFile: String?

    @Option(name: .long, help: ArgumentHelp("Trust this CA bundle for HTTPS.", valueName: "file"))
    var caFile: String?

    @Option(
        name: .long,
        help: ArgumentHelp(
            "The original client's retry_count to write (0-10): it gives up on a failed request after n + 1 more tries.",
            valueName: "n"))
    var retryCount = ClientFile.recommendedRetries

    func validate() throws {
        if !(0...10).contains(retryCount) { throw ValidationError("--retry-count must be 0 to 10.") }
        if tokenFile != nil && (passwordFile != nil || register) {
            throw ValidationError("--token-file cannot be combined with --password-file or --register.")
        }
    }

    func run() throws {
        try reportingErrors("balsam login") {
            let path = clientFile ?? ClientFile.defaultPath
            var file: ClientFile
            let who: String
            do {
                if let tokenFile {
                    let text = String(decoding: try Posix.readInput(tokenFile, limit: 16_384), as: UTF8.self)
                    let token = String(text.split(whereSeparator: \.isWhitespace).first ?? "")
                    (who, file) = try Login.token(url: url, token: token, caFile: caFile)
                } else {
                    who = user ?? getenv("USER").map { String(cString: $0) } ?? ""
                    if who.isEmpty { throw SpoolError(.usage, "give the user name with --user") }
                    let password = try readPassword(file: passwordFile, confirm: register && passwordFile == nil)
                    file = try Login.password(
                        url: url, username: who, password: password, register: register, caFile: caFile)
                }
            } catch let error as SyncError {
                throw error.spoolError
            }
            file.retryCount = retryCount
            try file.write(to: path)
            print("logged in to \(file.apiRoot) as \(who); wrote \(path)")
            print(
                "retry_count: \(retryCount): the original Python client reading it shows a refusal within "
                    + "\(Self.secondsToRefusal(retryCount)) s")
        }
    }

    /// The longest the original client takes to give up on a refused request with `retries`: it sleeps
    /// 2^k s plus up to 1 s after try k, for k = 0 ... retries.
    static func secondsToRefusal(_ retries: Int) -> Int { (1 << (retries + 1)) - 1 + retries + 1 }
}
