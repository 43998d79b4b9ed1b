import Foundation
import Spool
import TestSupport
import Testing

/// HTTPS as a facility runs it: nginx (from Debian) terminating TLS in front of balsam-server, with a test CA.
@Suite struct HTTPSTests {
    /// A CA, a certificate for 127.0.0.1 signed by it, and another CA that signed nothing.
    func makeCertificates(_ dir: TempDir) throws {
        let p = dir.path
        let steps: [[String]] = [
            [
                "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "\(p)/ca.key", "-out", "\(p)/ca.pem",
                "-days",
                "2", "-subj", "/CN=balsam test CA",
            ],
            [
                "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "\(p)/other.key", "-out", "\(p)/other.pem",
                "-days", "2", "-subj", "/CN=another CA",
            ],
            [
                "req", "-newkey", "rsa:2048", "-nodes", "-keyout", "\(p)/server.key", "-out", "\(p)/server.csr",
                "-subj",
                "/CN=127.0.0.1",
            ],
            [
                "x509", "-req", "-in", "\(p)/server.csr", "-CA", "\(p)/ca.pem", "-CAkey", "\(p)/ca.key",
                "-CAcreateserial", "-out", "\(p)/server.pem", "-days", "2", "-extfile", "\(p)/san.cnf",
            ],
        ]
        try dir.file("san.cnf", "subjectAltName=IP:127.0.0.1\n")
        for args in steps {
            let r = try run("/usr/bin/openssl", args)
            #expect(r.status == 0, "openssl \(args.joined(separator: " ")): \(r.stderr)")
        }
    }

    /// nginx in `dir`, on a free port, proxying to `backend`; returns the process and the HTTPS URL.
    func startProxy(_ dir: TempDir, backend: String) async throws -> (Spawned, String) {
        let p = dir.path
        try FileManager.default.createDirectory(atPath: p + "/nginx-tmp", withIntermediateDirectories: true)
        for port in (0..<20).map({ _ in Int.random(in: 20000...40000) }) {
            try dir.file(
                "nginx.conf",
                """
                daemon off;
                pid \(p)/nginx.pid;
                error_log \(p)/nginx-error.log;
                events {}
                http {
                    access_log off;
                    client_body_temp_path \(p)/nginx-tmp/body;
                    proxy_temp_path \(p)/nginx-tmp/proxy;
                    fastcgi_temp_path \(p)/nginx-tmp/fastcgi;
                    uwsgi_temp_path \(p)/nginx-tmp/uwsgi;
                    scgi_temp_path \(p)/nginx-tmp/scgi;
                    server {
                        listen 127.0.0.1:\(port) ssl;
                        ssl_certificate \(p)/server.pem;
                        ssl_certificate_key \(p)/server.key;
                        client_max_body_size 64m;
                        location / { proxy_pass \(backend); }
                    }
                }
                """)
            let nginx = try Spawned(
                "/usr/sbin/nginx", ["-p", p, "-c", p + "/nginx.conf", "-e", p + "/nginx-error.log"])
            let url = "https://127.0.0.1:\(port)"
            let deadline = Date().addingTimeInterval(20)
            while Date() < deadline && nginx.isRunning {
                let probe = try run(
                    "/usr/bin/curl", ["-s", "-o", "/dev/null", "--cacert", p + "/ca.pem", url + "/auth/how"])
                if probe.status == 0 { return (nginx, url) }
                try await Task.sleep(for: .milliseconds(50))
            }
            if nginx.isRunning { nginx.terminate() }
        }
        throw ServerTestError(description: "nginx did not start: \((try? read(p + "/nginx-error.log")) ?? "")")
    }

    @Test(
        "through a TLS proxy: login and sync work with the test CA; another CA is refused with a clear error",
        .enabled(if: FileManager.default.isExecutableFile(atPath: "/usr/sbin/nginx"), "nginx-light (dev/install-deps)"))
    func throughTLS() async throws {
        let server = try await LiveServer(.sqlite)
        defer { Task { try? await server.stop() } }
        let dir = server.dir
        try makeCertificates(dir)
        let (nginx, url) = try await startProxy(dir, backend: server.url)
        defer {
            nginx.terminate()
            nginx.waitUntilExit()
        }
        try dir.file("pw", "wes-password\n")
        let balsam = binDirectory + "/balsam"
        let login = try await runOffPool(
            balsam,
            [
                "login", url, "--user", "wes", "--password-file", dir.path + "/pw", "--register", "--ca-file",
                dir.path + "/ca.pem", "--client-file", dir.path + "/client.yml",
            ])
        #expect(login.status == 0, "\(login.stderr)")
        let wrong = try await runOffPool(
            balsam,
            [
                "login", url, "--user", "wes", "--password-file", dir.path + "/pw", "--ca-file",
                dir.path + "/other.pem",
                "--client-file", dir.path + "/c2.yml",
            ])
        #expect(wrong.status == 69 && wrong.stderr.contains("certificate"), "\(wrong.stderr)")
        #expect(!exists(dir.path + "/c2.yml"))

        // A site syncing over HTTPS with the CA file.
        let token = try tokenIn(dir.path + "/client.yml")
        try dir.file("token", token)
        let site = try makeSite(dir)
        try setSync(site, url: url, tokenFile: dir.path + "/token", caFile: dir.path + "/ca.pem")
        #expect(try balsamSubmit(["-a", "hello", "-w", "tls/1", "-p", "name=x"], site: site.root).status == 0)
        let pushed = try await runOffPool(balsam, ["sync", "push", "--site", site.root])
        #expect(pushed.status == 0, "\(pushed.stderr)")
        let jobs = try await server.request("GET", "/jobs/?limit=0", token: token)
        #expect(jobs.object["count"] as? Int == 1)
    }
}

/// The token of a client file, as `balsam login` wrote it.
func tokenIn(_ path: String) throws -> String {
    for line in try read(path).split(separator: "\n") where line.hasPrefix("token: ") {
        return String(line.dropFirst("token: ".count))
    }
    throw ServerTestError(description: "no token in \(path)")
}
