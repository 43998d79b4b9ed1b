import Foundation
import Spool
import TestSupport
import Testing

/// What one logged-in user sends must never take the server down for the others, nor store what a site cannot
/// read (issue 23): each refusal is a 400 naming the field, and the server answers the next request.
@Suite struct HostileInputTests {
    /// `{"x": [[[...]]]}` nested `depth` lists deep, pickled: 300 is within the JSON reader's limit and beyond a
    /// job's parameters'; 100,000 is 267 KB of base64, under the parameters' size limit.
    static func nestedPickle(_ depth: Int) -> String {
        var bytes: [UInt8] = [0x80, 4, UInt8(ascii: "}"), 0x8C, 1, UInt8(ascii: "x")]
        for _ in 0..<depth { bytes += [UInt8(ascii: "]"), UInt8(ascii: "(")] }
        bytes += Array(repeating: UInt8(ascii: "e"), count: depth) + [UInt8(ascii: "s"), UInt8(ascii: ".")]
        return Data(bytes).base64EncodedString()
    }

    @Test("crafted and deep pickles get a 400 naming the field; the server lives on", arguments: Backend.available)
    func pickles(_ backend: Backend) async throws {
        let server = try await LiveServer(backend)
        defer { Task { try? await server.stop() } }
        let alice = try await server.user("alice")
        let (siteID, appID) = try await server.siteAndApp(alice)
        for (what, pickle) in [
            ("a length of 2^63 - 1", "gASN/////////38u"), ("100,000 deep", Self.nestedPickle(100_000)),
            ("300 deep", Self.nestedPickle(300)), ("cut short", "gAR9lIwEbmFtZZSMBndvcmxk"),
        ] {
            let reply = try await server.request(
                "POST", "/jobs/", json: [["app_id": appID, "workdir": "w/1", "serialized_parameters": pickle]],
                token: alice)
            #expect(reply.status == 400, "\(what): \(reply.status) \(reply.text)")
            #expect(reply.object["field"] as? String == "[0].serialized_parameters", "\(what): \(reply.text)")
            #expect(try await server.request("GET", "/auth/how").status == 200, "\(what) took the server down")
        }
        // A Python app's parameters may hold objects only Python loads (a complex number here): they pass.
        let complex = "gASVLgAAAAAAAACMCGJ1aWx0aW5zlIwHY29tcGxleJSTlEc/8AAAAAAAAEdAAAAAAAAAAIaUUpQu"
        let python = try await server.request(
            "POST", "/jobs/", json: [["app_id": appID, "workdir": "w/2", "serialized_parameters": complex]],
            token: alice)
        #expect(python.status == 201, "\(python.text)")

        for cls in ["gASMEGNvbW1hbmRfdGVtcGxhdGWN/////////38u", "gASMEGNvbW1hbmRfdGVtcGxhdGWMB2VjaG8gaGmN/////////38u"]
        {
            let reply = try await server.request(
                "POST", "/apps/",
                json: ["site_id": siteID, "name": "Evil", "serialized_class": cls, "source_code": ""], token: alice)
            #expect(reply.status == 400, "\(reply.text)")
            #expect(reply.object["field"] as? String == "serialized_class", "\(reply.text)")
        }
        #expect(try await server.request("GET", "/auth/how").status == 200)
    }

    @Test("a NUL in a string, or an unknown ordering, is a 400 naming the field", arguments: Backend.available)
    func stringsAndOrderings(_ backend: Backend) async throws {
        let server = try await LiveServer(backend)
        defer { Task { try? await server.stop() } }
        let alice = try await server.user("alice")
        let (siteID, _) = try await server.siteAndApp(alice)
        let site = try await server.request(
            "POST", "/sites/", json: ["name": "nul", "path": "/data/ok\u{0}/../../etc"], token: alice)
        #expect(site.status == 400 && site.object["field"] as? String == "path", "\(site.text)")
        let app = try await server.request(
            "PUT", "/apps/1", json: ["description": "a\u{0}b"], token: alice)
        #expect(app.status == 400 && app.object["field"] as? String == "description", "\(app.text)")
        let batch = try await server.request(
            "POST", "/batch-jobs/",
            json: [
                "site_id": siteID, "num_nodes": 1, "wall_time_min": 5, "job_mode": "mpi", "project": "p\u{0}",
                "queue": "q",
            ],
            token: alice)
        #expect(batch.status == 400 && batch.object["field"] as? String == "project", "\(batch.text)")
        for path in ["/sites/", "/apps/", "/transfers/", "/jobs/"] {
            let reply = try await server.request("GET", path + "?ordering=password_hash", token: alice)
            #expect(reply.status == 400 && reply.object["field"] as? String == "ordering", "\(path): \(reply.text)")
            #expect(try await server.request("GET", path + "?ordering=-id", token: alice).status == 200, "\(path)")
        }
    }

    @Test(
        "ids only grow: a deleted job's id is never given to the next job (issue 23, 12)", arguments: Backend.available)
    func idsAreNeverReused(_ backend: Backend) async throws {
        let server = try await LiveServer(backend)
        defer { Task { try? await server.stop() } }
        let alice = try await server.user("alice")
        let (_, appID) = try await server.siteAndApp(alice)
        var last = 0
        for n in 0..<3 {
            let made = try await server.request(
                "POST", "/jobs/",
                json: [["app_id": appID, "workdir": "w/\(n)", "serialized_parameters": pickledName("x")]],
                token: alice)
            let id = try #require(made.list.first?["id"] as? Int, "\(made.text)")
            #expect(id > last, "job id \(id) after \(last)")
            last = id
            #expect(try await server.request("DELETE", "/jobs/\(id)", token: alice).status == 204)
        }
    }
}

/// Operating errors (issue 23, 13): a full disk is a 503 that names it, and the server goes on answering.
@Suite struct OperatingErrorTests {
    @Test(
        "a full disk: 503 naming the cause, reads still answered",
        .enabled(if: getuid() == 0, "mounts a small tmpfs in a mount namespace of its own"))
    func fullDisk() async throws {
        let dir = try TempDir()
        try FileManager.default.createDirectory(atPath: dir.path + "/full", withIntermediateDirectories: true)
        // The database on a 2 MiB tmpfs that only the server's mount namespace sees; gone when it exits.
        let mount = #"mount -t tmpfs -o size=2m balsam-test "$0" && cd / && exec "$@""#
        let server = try await LiveServer(
            .sqlite, db: "sqlite:\(dir.path)/full/server.db", dir: dir,
            wrapper: ["/usr/bin/unshare", "-m", "--propagation", "private", "/bin/sh", "-c", mount, dir.path + "/full"])
        defer { Task { try? await server.stop() } }
        let alice = try await server.user("alice")
        let (_, appID) = try await server.siteAndApp(alice)
        let data = String(repeating: "x", count: 400_000)
        var full: HTTPReply?
        for n in 0..<20 {
            let reply = try await server.request(
                "POST", "/jobs/",
                json: [
                    [
                        "app_id": appID, "workdir": "w/\(n)", "serialized_parameters": pickledName("x"),
                        "data": ["pad": data],
                    ]
                ], token: alice)
            if reply.status != 201 {
                full = reply
                break
            }
        }
        let reply = try #require(full, "2 MiB never filled")
        #expect(reply.status == 503, "\(reply.text)")
        #expect(reply.text.contains("disk is full"), "\(reply.text)")
        #expect(try await server.request("GET", "/jobs/?limit=1", token: alice).status == 200)
    }
}

/// Idle, slow and anonymous clients (issue 23, 8 and 9), over raw sockets: what a client that never finishes
/// its request does to the server.
@Suite struct SlowClientTests {
    @Test("no body is read before a signed token; anonymous routes take small bodies only")
    func bodiesAfterTokens() async throws {
        let server = try await LiveServer(.sqlite)
        defer { Task { try? await server.stop() } }
        let port = try #require(Int(server.url.split(separator: ":").last ?? ""))
        // Heads that announce 60 MiB and send none of it: the answer comes at once, not after a body.
        for (head, status) in [
            ("POST /jobs/ HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer x\r\nContent-Length: 62914560\r\n", "401"),
            ("POST /auth/password/login HTTP/1.1\r\nHost: x\r\nContent-Length: 62914560\r\n", "413"),
        ] {
            let socket = try RawClient(port: port)
            try socket.send(head + "Content-Type: application/json\r\n\r\n")
            let reply = try socket.receive(seconds: 10)
            #expect(reply.hasPrefix("HTTP/1.1 \(status)"), "\(head): \(reply.debugDescription)")
        }
    }

    @Test(
        "started under a soft limit of 1,024 open files, the server raises it to the hard one; under a low hard limit it keeps its connection cap below it"
    )
    func openFileLimits() async throws {
        let raised = try await LiveServer(.sqlite, wrapper: ["/usr/bin/prlimit", "--nofile=1024:8192"])
        try await waitFor("the limits in the log") { raised.log.contains("open files and connections") }
        #expect(raised.log.contains("8192"), "\(raised.log)")
        #expect(!raised.log.contains("connection cap is lowered"))
        try await raised.stop()

        let low = try await LiveServer(.sqlite, wrapper: ["/usr/bin/prlimit", "--nofile=300:300"])
        defer { Task { try? await low.stop() } }
        try await waitFor("the lowered cap in the log") { low.log.contains("connection cap is lowered") }
        let port = try #require(Int(low.url.split(separator: ":").last ?? ""))
        // The cap is 44 (300 less the 256 kept for the database and files): 60 idle connections do not fill it,
        // the longest idle make room, and a new client is answered while they are open.
        let idle = try (0..<60).map { _ in try RawClient(port: port) }
        try await waitFor("room made in the log") { low.log.contains("idle connections closed to make room") }
        #expect(try await low.request("GET", "/auth/how").status == 200)
        for client in idle { client.close() }
    }

    @Test("a half-sent request, or a trickled body, is closed after the idle timeout; the connection cap holds")
    func idleAndSlowClients() async throws {
        let server = try await LiveServer(.sqlite, arguments: ["--idle-timeout", "2", "--max-connections", "4"])
        defer { Task { try? await server.stop() } }
        let port = try #require(Int(server.url.split(separator: ":").last ?? ""))
        let half = try RawClient(port: port)
        try half.send("GET /auth/how HTTP/1.1\r\nHost: x\r\n")
        #expect(try half.receive(seconds: 20) == "")
        #expect(half.closedByServer, "the server must close a half-sent request")

        let token = try await server.user("alice")
        let slow = try RawClient(port: port)
        try slow.send(
            "POST /sites/ HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer \(token)\r\nContent-Type: application/json\r\n"
                + "Content-Length: 100\r\n\r\n{\"name\":")
        // The body's deadline (408) or the connection's idle timer (closed), whichever fires first.
        let reply = try slow.receive(seconds: 20)
        #expect(reply.hasPrefix("HTTP/1.1 408") || slow.closedByServer, "\(reply.debugDescription)")

        // Four connections, each busy with a logged-in request whose body has not arrived, fill the cap; the
        // log says so, and a fifth is answered once they are closed.
        let busy = try (0..<4).map { _ in try RawClient(port: port) }
        for client in busy {
            try client.send(
                "POST /sites/ HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer \(token)\r\nContent-Length: 100\r\n\r\n{")
        }
        try await waitFor("the cap in the log") { server.log.contains("connection cap reached") }
        for client in busy { client.close() }
        #expect(try await server.request("GET", "/auth/how").status == 200)
    }

    @Test("a chunked body framed wrong (sizes negative, huge, not hex; cut short) is a 4xx, never a 5xx")
    func chunkFramingIsTheClientsFault() async throws {
        let server = try await LiveServer(.sqlite)
        defer { Task { try? await server.stop() } }
        let port = try #require(Int(server.url.split(separator: ":").last ?? ""))
        let token = try await server.user("cole")
        var rng = SplitMix(seed: 33)
        let alphabet = Array("-+0123456789abcdefABCDEFxX;= \t\"")
        var answered: [String: Int] = [:]
        for n in 0..<120 {
            let size =
                n < 6
                ? ["-1", "-0", "0x10", "ffffffffffffffffff", "1;x", "7fffffffffffffff"][n]
                : String((0..<(1 + rng.next() % 20)).map { _ in alphabet[Int(rng.next() % UInt64(alphabet.count))] })
            let client = try RawClient(port: port)
            try client.send(
                "POST /sites/ HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer \(token)\r\n"
                    + "Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n\(size)\r\n{}\r\n")
            if rng.next() % 2 == 0 { try client.send("0\r\n\r\n") }
            client.finishSending()
            let reply = try client.receive(seconds: 30)
            let status = String(reply.dropFirst(9).prefix(3))
            answered[status, default: 0] += 1
            #expect(!reply.hasPrefix("HTTP/1.1 5"), "chunk size \(size.debugDescription): \(reply)")
        }
        #expect((answered["400"] ?? 0) > 50, "\(answered)")
        #expect(try await server.request("GET", "/sites/", token: token).status == 200)
    }

    @Test(
        "hostile connections from other addresses (idle, trickling a head, a bad token with a slow body, too many from one address) do not keep a logged-in user out, under a soft limit of 1,024 open files"
    )
    func hostileConnectionsLeaveRoom() async throws {
        _ = Posix.raiseOpenFileLimit()  // this test's own sockets
        let server = try await LiveServer(
            .sqlite, arguments: ["--idle-timeout", "120"], wrapper: ["/usr/bin/prlimit", "--nofile=1024:1024"])
        defer { Task { try? await server.stop() } }
        let port = try #require(Int(server.url.split(separator: ":").last ?? ""))
        let token = try await server.user("alice")
        var rng = SplitMix(seed: 31)
        // BALSAM_HOSTILE_SCALE=3 (by hand) gives the issue's 3,000 connections; CI runs 1,000.
        let scale = Int(ProcessInfo.processInfo.environment["BALSAM_HOSTILE_SCALE"] ?? "") ?? 1
        // 1,000 connections from four addresses that hold a connection without a request: the cap is 768.
        var hostile: [RawClient] = []
        for n in 0..<(1000 * scale) {
            let client = try RawClient(port: port, from: "127.0.0.\(10 + n % (4 * scale))")
            if rng.next() % 2 == 0 { try client.send("GET /sites/ HTTP/1.1\r\nHo") }
            hostile.append(client)
        }
        // 200 with a bad token and a body that never comes: answered 401 at once and closed, body undrained.
        let badToken = try (0..<200).map { _ in try RawClient(port: port, from: "127.0.0.6") }
        for client in badToken {
            try client.send(
                "POST /jobs/ HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer \(rng.next())\r\n"
                    + "Content-Length: 1000000\r\n\r\n{")
        }
        // 300 from one address: past 256, closed when accepted.
        let crowd = try (0..<300).map { _ in try RawClient(port: port, from: "127.0.0.7") }

        // A logged-in user, a new connection per request, while all of it goes on: every request answered.
        var seconds: [Double] = []
        for _ in 0..<40 {
            let start = ContinuousClock.now
            let client = try RawClient(port: port)
            try client.send("GET /sites/ HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer \(token)\r\n\r\n")
            let reply = try client.receive(seconds: 10)
            #expect(reply.hasPrefix("HTTP/1.1 200"), "\(reply.debugDescription)")
            seconds.append(Double((ContinuousClock.now - start).components.attoseconds) / 1e18)
            client.close()
        }
        seconds.sort()
        print(
            "logged-in requests among \(hostile.count + badToken.count + crowd.count) hostile connections: "
                + "p50 \(seconds[20]) s, max \(seconds[39]) s")
        try await waitFor("the client cap in the log") { server.log.contains("client over its connection cap") }
        try await waitFor("room made in the log") { server.log.contains("idle connections closed to make room") }

        for client in badToken.prefix(20) {
            let reply = try client.receive(seconds: 10)
            #expect(reply.hasPrefix("HTTP/1.1 401") && reply.lowercased().contains("connection: close"), "\(reply)")
            #expect(try client.receive(seconds: 10) == "" && client.closedByServer, "a 401 closes the connection")
        }
        let refused = crowd.filter { $0.closedNow() }.count
        #expect(refused >= 300 - 256, "\(refused) of 300 from one address closed")
        for client in hostile + badToken + crowd { client.close() }
    }
}

/// Password guessing (issue 31, item 10): a client address past three failures waits for each answer, one
/// attempt at a time; many at once get 429 with no password checked, while the name's owner logs in from
/// elsewhere.
@Suite struct LoginLimitTests {
    @Test func manyGuessesAtOnceAreRefusedTheOwnerStillLogsIn() async throws {
        let server = try await LiveServer(.sqlite)
        defer { Task { try? await server.stop() } }
        let port = try #require(Int(server.url.split(separator: ":").last ?? ""))
        _ = try await server.user("lena")
        func attempt(_ client: RawClient, _ password: String) throws {
            let form = "username=lena&password=\(password)"
            try client.send(
                "POST /auth/password/login HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\n"
                    + "Content-Length: \(form.utf8.count)\r\nConnection: close\r\n\r\n\(form)")
        }
        var rng = SplitMix(seed: 40)
        let guesses = try (0..<40).map { _ in try RawClient(port: port, from: "127.0.0.5") }
        for client in guesses { try attempt(client, "guess-\(rng.next())") }
        var statuses: [String: Int] = [:]
        for client in guesses {
            let reply = try client.receive(seconds: 30)
            let status = String(reply.dropFirst(9).prefix(3))
            statuses[status, default: 0] += 1
            if status == "429" { #expect(reply.lowercased().contains("retry-after:"), "\(reply)") }
        }
        #expect((statuses["401"] ?? 0) <= 8 && (statuses["429"] ?? 0) >= 32, "\(statuses)")
        // The owner, from another address, logs in.
        _ = try await server.login("lena", "lena-password")
        // The guessing address, having waited, is answered again (and the right password works from it too).
        try await waitFor("the guessing address to be let in again", timeout: 30) {
            let client = try RawClient(port: port, from: "127.0.0.5")
            try attempt(client, "lena-password")
            return try client.receive(seconds: 15).hasPrefix("HTTP/1.1 200")
        }
    }
}

extension LoginLimitTests {
    @Test(
        "behind a trusted proxy, failed logins count by the client the proxy names; anyone else's X-Real-IP is ignored")
    func trustedProxyNamesTheClient() async throws {
        let server = try await LiveServer(.sqlite, arguments: ["--trusted-proxy", "127.0.0.6"])
        defer { Task { try? await server.stop() } }
        let port = try #require(Int(server.url.split(separator: ":").last ?? ""))
        _ = try await server.user("mia")
        func statuses(from source: String, realIP: String, password: String, count: Int) throws -> [String: Int] {
            let form = "username=mia&password=\(password)"
            let clients = try (0..<count).map { _ in try RawClient(port: port, from: source) }
            for client in clients {
                try client.send(
                    "POST /auth/password/login HTTP/1.1\r\nHost: x\r\nX-Real-IP: \(realIP)\r\n"
                        + "Content-Type: application/x-www-form-urlencoded\r\nContent-Length: \(form.utf8.count)\r\n"
                        + "Connection: close\r\n\r\n\(form)")
            }
            return try clients.reduce(into: [:]) { out, client in
                out[String(try client.receive(seconds: 30).dropFirst(9).prefix(3)), default: 0] += 1
            }
        }
        // Through the proxy, one client guessing: refused; another client, through the same proxy, logs in.
        #expect((try statuses(from: "127.0.0.6", realIP: "10.0.0.1", password: "x", count: 30)["429"] ?? 0) >= 20)
        #expect(try statuses(from: "127.0.0.6", realIP: "10.0.0.2", password: "mia-password", count: 1) == ["200": 1])
        // Not a trusted proxy: its X-Real-IP changes nothing (each guess names a new "client").
        var rng = SplitMix(seed: 6)
        var refused = 0
        for _ in 0..<3 {
            let name = "10.9.\(rng.next() % 250).\(rng.next() % 250)"
            refused += try statuses(from: "127.0.0.7", realIP: name, password: "x", count: 10)["429"] ?? 0
        }
        #expect(refused >= 20, "\(refused) of 30 refused")
    }
}

/// Memory per request is bounded by its body (issue 31, item 2): balsam-server(8) states the bound.
@Suite struct RequestMemoryTests {
    /// A process's resident set now and at its peak, in bytes (`/proc/PID/status`).
    static func memory(_ pid: Int32) throws -> (rss: Int, peak: Int) {
        let status = try String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8)
        func kB(_ key: String) -> Int {
            let line = status.split(separator: "\n").first { $0.hasPrefix(key + ":") } ?? ""
            return (Int(line.split(separator: " ").dropFirst().first ?? "") ?? 0) * 1024
        }
        return (kB("VmRSS"), kB("VmHWM"))
    }

    @Test("a 20 MiB push of empty items, and one of 20,000 real events, raise the peak by at most 4 times the body")
    func pushMemoryIsBoundedByTheBody() async throws {
        let server = try await LiveServer(.sqlite)
        defer { Task { try? await server.stop() } }
        let token = try await server.user("alice")
        let pid = server.process.processIdentifier
        let site = #"{"site":{"name":"big","path":"/big"},"#
        // Seven million `{}`: refused by their count before one is built.
        var empty = Array((site + #""jobs":["#).utf8)
        let target = 20 << 20
        empty.reserveCapacity(target + 64)
        while empty.count < target { empty += Array("{},".utf8) }
        empty += Array("{}]}".utf8)
        let before = try Self.memory(pid).rss
        let refused = try await server.request("POST", "/sync/push", body: Data(empty), token: token)
        #expect(refused.status == 400, "\(refused.text.prefix(300))")
        #expect(refused.text.contains("at most"), "\(refused.text.prefix(300))")
        let afterEmpty = try Self.memory(pid).peak
        #expect(
            afterEmpty - before <= 4 * empty.count,
            "peak grew by \((afterEmpty - before) >> 20) MiB for a \(empty.count >> 20) MiB body")
        // 20,000 events of 1 KiB (within the item limit): read, each refused as of a job the server lacks.
        let padding = String(repeating: "x", count: 900)
        var events: [String] = []
        for i in 0..<20_000 {
            events.append(
                #"{"site_job_id":"J\#(i)","t":"2026-12-01T00:00:00.000000","from":"READY","to":"RUNNING","#
                    + #""data":{"note":"\#(padding)"}}"#)
        }
        let real = Array((site + #""events":["# + events.joined(separator: ",") + "]}").utf8)
        let baseline = try Self.memory(pid)
        let taken = try await server.request("POST", "/sync/push", body: Data(real), token: token)
        #expect(taken.status == 200, "\(taken.text.prefix(300))")
        let peak = try Self.memory(pid).peak
        // The peak may have been set by the first request; only growth past both counts against this one.
        let grown = peak - max(baseline.peak, baseline.rss)
        #expect(
            grown <= 4 * real.count, "peak grew by \(grown >> 20) MiB for a \(real.count >> 20) MiB body")
    }
}

/// A blocking TCP client on loopback, for requests no HTTP library would send.
final class RawClient {
    private var fd: Int32
    /// Whether the last `receive` ended because the server closed the connection (not a timeout).
    private(set) var closedByServer = false

    /// A connection to `port` on 127.0.0.1, from the loopback address `from` (any of 127.0.0.0/8: a client
    /// address of its own).
    init(port: Int, from source: String = "127.0.0.1") throws {
        fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        var local = sockaddr_in()
        local.sin_family = sa_family_t(AF_INET)
        local.sin_addr.s_addr = inet_addr(source)
        let bound = withUnsafePointer(to: &local) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size))
            }
        }
        guard bound == 0 else { throw ServerTestError(description: "bind \(source): errno \(errno)") }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = in_port_t(UInt16(port).bigEndian)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        let rc = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size))
            }
        }
        guard rc == 0 else { throw ServerTestError(description: "connect: errno \(errno)") }
    }

    func send(_ text: String) throws {
        let bytes = Array(text.utf8)
        guard Glibc.send(fd, bytes, bytes.count, Int32(MSG_NOSIGNAL)) == bytes.count else {
            throw ServerTestError(description: "send: errno \(errno)")
        }
    }

    /// What arrives until the server closes or `seconds` pass with nothing more (then what came so far).
    func receive(seconds: Int) throws -> String {
        var timeout = timeval(tv_sec: seconds, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        var out: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 4096)
        while true {
            let n = recv(fd, &buffer, buffer.count, 0)
            closedByServer = n == 0
            if n <= 0 { break }
            out += buffer[0..<n]
            if String(decoding: out, as: UTF8.self).contains("\r\n\r\n") { break }
        }
        return String(decoding: out, as: UTF8.self)
    }

    /// Sends no more (the server reads the end of the stream).
    func finishSending() { shutdown(fd, Int32(SHUT_WR)) }

    /// Whether the server has closed (or reset) the connection by now, without waiting.
    func closedNow() -> Bool {
        var byte: UInt8 = 0
        let n = recv(fd, &byte, 1, Int32(MSG_DONTWAIT | MSG_PEEK))
        return n == 0 || (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK)
    }

    func close() {
        if fd >= 0 { Glibc.close(fd) }
        fd = -1
    }

    deinit { close() }
}
