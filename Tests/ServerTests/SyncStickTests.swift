import Foundation
import Spool
import TestSupport
import Testing

/// One object the server refuses never blocks the others, and nothing done through the API stops a site's sync
/// for good (issue 23, 4 and 5): real sites, `balsam sync push`, a real server stopped and started again.
@Suite struct SyncStickTests {
    /// A server, a user's token and a site that syncs to it with that token.
    func syncedSite(_ backend: Backend, user: String) async throws -> (LiveServer, String, Site) {
        let server = try await LiveServer(backend)
        let site = try makeSite(server.dir)
        return (server, try await syncing(site, to: server, user: user), site)
    }

    func submit(_ site: Site, _ range: Range<Int>) throws {
        let lines = range.map { #"{"app":"hello","workdir":"w/\#($0)","parameters":{"name":"n\#($0)"}}"# }
        let submitted = try balsamSubmit(
            ["--from", "-"], site: site.root, stdin: Data(lines.joined(separator: "\n").utf8))
        #expect(submitted.status == 0, "\(submitted.stderr)")
    }

    func push(_ site: Site, once: Bool = false) async throws -> (status: Int32, stdout: String, stderr: String) {
        try await runOffPool(
            binDirectory + "/balsam", ["sync", "push", "--site", site.root] + (once ? ["--once"] : []))
    }

    @Test("a site deleted on the server registers again and pushes itself whole", arguments: Backend.available)
    func siteDeletedOnTheServer(_ backend: Backend) async throws {
        let (server, token, site) = try await syncedSite(backend, user: "vera")
        defer { Task { try? await server.stop() } }
        try submit(site, 0..<10)
        #expect(try await push(site).status == 0)
        let sites = try await server.request("GET", "/sites/", token: token).object["results"] as? [[String: Any]]
        let siteID = try #require(sites?.first?["id"] as? Int)
        #expect(try await server.request("DELETE", "/sites/\(siteID)", token: token).status == 204)

        try submit(site, 10..<15)
        let again = try await push(site)
        #expect(again.status == 0, "\(again.stderr)")
        #expect(Set(try await serverStates(server, token).keys) == (Set(try siteStates(site).keys)))
        let status = try JSONValue.parse(try balsam(["sync", "status", "--json"], site: site.root).stdout)
        #expect(status.objectValue?["last_error"] == .null, "\(status.serialized())")
        #expect(status.objectValue?["site_id"]?.intValue != siteID)
    }

    @Test(
        "a job taken by the site and deleted on the server before the site said so: refused once, the sync goes on",
        arguments: Backend.available)
    func adoptedJobDeletedOnTheServer(_ backend: Backend) async throws {
        let (server, token, site) = try await syncedSite(backend, user: "walt")
        try submit(site, 0..<3)
        #expect(try await push(site).status == 0)
        let apps = try await server.request("GET", "/apps/", token: token).object["results"] as? [[String: Any]]
        let appID = try #require(apps?.first?["id"] as? Int)
        let made = try await server.request(
            "POST", "/jobs/",
            json: [["app_id": appID, "workdir": "remote/1", "serialized_parameters": pickledName("r")]], token: token)
        let remoteID = try #require(made.list.first?["id"] as? Int, "\(made.text)")
        // One round: the site takes the job (and would say so in the next round's push).
        #expect(try await push(site, once: true).status == 0)
        #expect(Set(try siteStates(site).keys).count == 4)

        // That push fails (the server away); meanwhile the user deletes the job.
        try await server.stop()
        #expect(try await push(site, once: true).status == 69)
        let back = try await LiveServer(backend, db: server.db, dir: server.dir)
        defer { Task { try? await back.stop() } }
        try setSync(site, url: back.url, tokenFile: server.dir.path + "/token")
        #expect(try await back.request("DELETE", "/jobs/\(remoteID)", token: token).status == 204)

        // The sync goes on: new jobs arrive, and the refusal is shown once, not retried for ever.
        try submit(site, 3..<6)
        let pushed = try await push(site)
        #expect(pushed.status == 0, "\(pushed.stderr)")
        let onServer = try await serverStates(back, token)
        // The site's six jobs; the deleted one stays deleted, and is deleted at the site too.
        let listing = try await back.request("GET", "/jobs/", token: token).text
        #expect(onServer.count == 6 && !listing.contains("remote/1"), "\(listing)")
        #expect(try siteStates(site).count == 6)
        let status = try balsam(["sync", "status"], site: site.root)
        #expect(status.stdout.contains("last_error: -"), "\(status.stdout)")
        #expect(status.stdout.contains("deleted"), "\(status.stdout)")
        let later = try await push(site)
        #expect(later.status == 0, "\(later.stderr)")
    }

    /// A class pickled as dill does by value, holding only a command template (as a dict of its attributes).
    func pickledClass(template: String) -> String {
        var bytes: [UInt8] = [0x80, 4, UInt8(ascii: "}"), UInt8(ascii: "(")]
        for text in ["command_template", template] { bytes += [0x8C, UInt8(text.utf8.count)] + Array(text.utf8) }
        bytes += [UInt8(ascii: "u"), UInt8(ascii: ".")]
        return Data(bytes).base64EncodedString()
    }

    @Test(
        "an app from the server the site cannot install is refused where the user looks, at the site and on the server",
        arguments: Backend.available)
    func appTheSiteCannotInstall(_ backend: Backend) async throws {
        let (server, token, site) = try await syncedSite(backend, user: "xena")
        defer { Task { try? await server.stop() } }
        #expect(try await push(site).status == 0)
        let sites = try await server.request("GET", "/sites/", token: token).object["results"] as? [[String: Any]]
        let siteID = try #require(sites?.first?["id"] as? Int)
        // A command template naming a placeholder that is not a parameter.
        let made = try await server.request(
            "POST", "/apps/",
            json: [
                "site_id": siteID, "name": "Broken", "serialized_class": pickledClass(template: "echo {{ nope }}"),
                "source_code": "",
            ], token: token)
        let appID = try #require(made.object["id"] as? Int, "\(made.text)")
        // Two pushes: the first takes the app (and refuses it), the next tells the server why.
        #expect(try await push(site).status == 0)
        #expect(try await push(site).status == 0)
        let status = try JSONValue.parse(try balsam(["sync", "status", "--json"], site: site.root).stdout)
        let refused = status.objectValue?["refused"]?.objectValue ?? [:]
        #expect(refused["app Broken"]?.stringValue?.contains("nope") == true, "\(status.serialized())")
        #expect(status.objectValue?["last_error"] == .null)
        let shown = try await server.request("GET", "/apps/\(appID)", token: token)
        #expect((shown.object["site_refusal"] as? String)?.contains("nope") == true, "\(shown.text)")

        // A definition the site can install replaces it, and the reason goes on both ends.
        let fixed = try await server.request(
            "PUT", "/apps/\(appID)", json: ["serialized_class": pickledClass(template: "echo fixed")], token: token)
        #expect(fixed.status == 200, "\(fixed.text)")
        #expect(try await push(site).status == 0)
        #expect(try await push(site).status == 0)
        let after = try JSONValue.parse(try balsam(["sync", "status", "--json"], site: site.root).stdout)
        #expect(after.objectValue?["refused"]?.objectValue?["app Broken"] == nil, "\(after.serialized())")
        let cleared = try await server.request("GET", "/apps/\(appID)", token: token)
        #expect(cleared.object["site_refusal"] is NSNull, "\(cleared.text)")
    }
}
