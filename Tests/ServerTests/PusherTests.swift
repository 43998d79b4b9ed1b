import HTTPTypes
import Spool
import Sync
import TestSupport
import Testing
import Wire

/// The site's `Pusher` against the server in this process: its rounds mirror the site, and what a user asks
/// through the API comes back in the reply and is carried out at the site.
@Suite struct PusherTests {
    @Test func roundsMirrorTheSiteAndCarryOutAUsersKill() async throws {
        let server = try InProcessServer()
        let token = try await server.user("pia")
        let dir = try TempDir()
        let site = try makeSite(dir)
        var submission = Submission(site: site)
        let (a, _) = try submission.submit(helloJob("w/a"))
        let (b, _) = try submission.submit(helloJob("w/b", name: "two"))
        try dir.file("token", token)
        let tokenFile = dir.path + "/token"
        try await server.serving { url in
            var sync = SiteSettings.Sync(url: url)
            sync.tokenFile = tokenFile
            let pusher = try Pusher(site: site, settings: sync)
            let first = try pusher.round()
            #expect(first.jobs == 2 && first.events == 2 && first.newRefusals.isEmpty)
            #expect(try pusher.round().events == 0, "nothing new, nothing sent twice")
        }
        let listed = try await server.request(.get, "/jobs/?ordering=id", token: token)
        let jobs = listed.json.objectValue?["results"]?.arrayValue ?? []
        let bySite = Dictionary(
            uniqueKeysWithValues: jobs.compactMap { j -> (String, Int)? in
                guard let o = j.objectValue, let id = o["site_job_id"]?.stringValue, let n = o["id"]?.intValue
                else { return nil }
                return (id, n)
            })
        #expect(Set(bySite.keys) == [a.id, b.id])

        // A kill through the API is held as a request; the next rounds carry it out and report the move.
        let serverID = try #require(bySite[a.id])
        let kill = try await server.request(
            .patch, "/jobs/", json: .array([.object(["id": .int(serverID), "state": .string("FAILED")])]), token: token)
        #expect(kill.status == 200)
        try await server.serving { url in
            var sync = SiteSettings.Sync(url: url)
            sync.tokenFile = tokenFile
            let pusher = try Pusher(site: site, settings: sync)
            _ = try pusher.round()  // the request comes down and is carried out
            _ = try pusher.round()  // the move goes up
        }
        #expect(try Query(site: site).readRecord(workdir: "w/a").state == .failed)
        let job = try await server.request(.get, "/jobs/\(serverID)", token: token)
        #expect(job.json.objectValue?["state"] == .string("FAILED"))
    }
}
