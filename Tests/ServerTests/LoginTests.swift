import Foundation
import TestSupport
import Testing

/// `balsam login`: the client file the original client reads, and clear failures.
@Suite struct LoginTests {
    @Test("balsam login writes a 0600 client file that the original client and a site token work with")
    func login() async throws {
        let server = try await LiveServer(.sqlite)
        defer { Task { try? await server.stop() } }
        let dir = server.dir
        try dir.file("pw", "judy-password\n")
        let clientFile = dir.path + "/home/.balsam/client.yml"
        let balsam = binDirectory + "/balsam"
        let made = try await runOffPool(
            balsam,
            [
                "login", server.url, "--user", "judy", "--password-file", dir.path + "/pw", "--register",
                "--client-file", clientFile,
            ])
        #expect(made.status == 0, "\(made.stderr)")
        #expect(made.stdout.contains("logged in to \(server.url) as judy"))
        var st = stat()
        #expect(stat(clientFile, &st) == 0 && st.st_mode & 0o777 == 0o600)
        let text = try read(clientFile)
        #expect(text.contains("api_root: \(server.url)") && text.contains("token: ey"))
        #expect(text.contains("client_class: balsam.client.BasicAuthRequestsClient"))
        #expect(text.contains("retry_count: 2") && made.stdout.contains("shows a refusal within 10 s"))

        if let python = PythonTools.clientPython {
            let listed = try await runOffPool(
                python,
                [
                    "-c",
                    "from balsam.api import Site; Site.objects.create(name='s', path='/s'); print(Site.objects.count())",
                ],
                env: ["BALSAM_CLIENT_PATH": clientFile])
            #expect(
                listed.status == 0 && listed.stdout.trimmingCharacters(in: .whitespacesAndNewlines) == "1",
                "\(listed.stdout) \(listed.stderr)")
            // A refusal (the site's name is taken) reaches the script with the server's reason, after the
            // retries the file allows: the client read 2 from it (its own default, 10, waits half an hour).
            let refused = try await runOffPool(
                python,
                [
                    "-c",
                    """
                    import time
                    from balsam.api import Site
                    print("retry_count", Site.objects._client.retry_count)
                    start = time.monotonic()
                    try:
                        Site.objects.create(name='s', path='/s2')
                    except Exception as e:
                        print("refused after", round(time.monotonic() - start, 1), "s:", e)
                    """,
                ],
                env: ["BALSAM_CLIENT_PATH": clientFile])
            #expect(refused.stdout.contains("retry_count 2"), "\(refused.stdout) \(refused.stderr)")
            #expect(
                refused.stdout.contains("refused after") && refused.stdout.contains("name"),
                "\(refused.stdout) \(refused.stderr)")
        }

        // A site token instead of a password.
        let args = ["--db", server.db, "--secret-file", dir.path + "/secret"]
        let token = try run(
            binDirectory + "/balsam-server", ["token", "create", "--user", "judy", "--site", "s"] + args)
        try dir.file("token", token.stdout)
        let withToken = try await runOffPool(
            balsam, ["login", server.url, "--token-file", dir.path + "/token", "--client-file", dir.path + "/c2.yml"])
        #expect(withToken.status == 0, "\(withToken.stderr)")
        #expect(try read(dir.path + "/c2.yml").contains(token.stdout.trimmingCharacters(in: .whitespacesAndNewlines)))

        // A wrong password: status 65 and the server's reason; nothing written.
        try dir.file("bad", "wrong-password\n")
        let wrong = try await runOffPool(
            balsam,
            [
                "login", server.url, "--user", "judy", "--password-file", dir.path + "/bad", "--client-file",
                dir.path + "/c3.yml",
            ])
        #expect(wrong.status == 65 && wrong.stderr.contains("incorrect user name or password"), "\(wrong.stderr)")
        #expect(!exists(dir.path + "/c3.yml"))

        // No terminal and no --password-file: not an empty password, but 64 saying what to use; a piped one works.
        let none = try await runOffPool(
            balsam, ["login", server.url, "--user", "judy", "--client-file", dir.path + "/c5.yml"], stdin: Data())
        #expect(none.status == 64 && none.stderr.contains("--password-file"), "\(none.stderr)")
        let piped = try await runOffPool(
            balsam, ["login", server.url, "--user", "judy", "--client-file", dir.path + "/c5.yml"],
            stdin: Data("judy-password\n".utf8))
        #expect(piped.status == 0, "\(piped.stderr)")

        // No server there: status 69 naming the URL.
        try await server.stop()
        let gone = try await runOffPool(
            balsam,
            [
                "login", server.url, "--user", "judy", "--password-file", dir.path + "/pw", "--client-file",
                dir.path + "/c4.yml",
            ])
        #expect(gone.status == 69 && gone.stderr.contains(server.url), "\(gone.stderr)")
    }

    @Test("balsam-server user add and passwd; closed registration refuses the API's register")
    func operatorCommands() async throws {
        let server = try await LiveServer(.sqlite, arguments: ["--registration", "closed"])
        defer { Task { try? await server.stop() } }
        let dir = server.dir
        try dir.file("pw", "kate-password\n")
        try dir.file("pw2", "kate-password-2\n")
        let tool = binDirectory + "/balsam-server"
        let args = ["--db", server.db]
        let added = try run(tool, ["user", "add", "kate", "--password-file", dir.path + "/pw"] + args)
        #expect(added.status == 0 && added.stdout.contains("added user kate"), "\(added.stderr)")
        let again = try run(tool, ["user", "add", "kate", "--password-file", dir.path + "/pw"] + args)
        #expect(again.status == 65 && again.stderr.contains("taken"), "\(again.stderr)")
        try dir.file("short", "short\n")
        let weak = try run(tool, ["user", "add", "leo", "--password-file", dir.path + "/short"] + args)
        #expect(weak.status == 65 && weak.stderr.contains("8 to 1024"), "\(weak.stderr)")
        let old = try await server.login("kate", "kate-password")
        #expect(try await server.request("GET", "/sites/", token: old).status == 200)
        let changed = try run(tool, ["user", "passwd", "kate", "--password-file", dir.path + "/pw2"] + args)
        #expect(changed.status == 0, "\(changed.stderr)")
        #expect(changed.stdout.contains("1 login token revoked"), "\(changed.stdout)")
        // A token made with the old password is revoked with it (issue 23, 11).
        #expect(try await server.request("GET", "/sites/", token: old).status == 401)
        let new = try await server.login("kate", "kate-password-2")
        #expect(try await server.request("GET", "/sites/", token: new).status == 200)
        let register = try await server.request(
            "POST", "/auth/password/register", json: ["username": "mallory", "password": "mallory-password"])
        #expect(register.status == 403)
        let badDB = try run(tool, ["migrate", "--db", "mysql://nope"])
        #expect(badDB.status == 69 && badDB.stderr.contains("sqlite:PATH"), "\(badDB.stderr)")
        // No PostgreSQL there: serve does not start, and says why (the password is not echoed).
        let noServer = try run(
            tool, ["serve", "--db", "postgresql://u:secret-pw@127.0.0.1:1/x", "--listen", "127.0.0.1:0"], timeout: 60)
        #expect(noServer.status == 69 && noServer.stderr.contains("cannot connect to PostgreSQL"), "\(noServer.stderr)")
        #expect(!noServer.stderr.contains("secret-pw"), "\(noServer.stderr)")
    }
}
