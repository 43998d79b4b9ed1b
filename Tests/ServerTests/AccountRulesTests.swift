import Foundation
import HTTPTypes
import Spool
import TestSupport
import Testing

@testable import Server

/// Names and pages a hostile user meets (issue 31, item 10).
@Suite struct AccountRulesTests {
    /// Generated names are taken exactly when they follow the rule and no name taken before is the same but for
    /// case: `ALICE` beside `alice`, `-` and `..` are refused, naming the field.
    @Test func userNamesFollowOneRuleAndAreUniqueInAnyCase() async throws {
        let server = try InProcessServer()
        var random = SplitMix(seed: 12)
        let alphabet = Array("aAbB0_-.@é/ \u{0}")
        var names = ["alice", "ALICE", "Alice", "-", "..", ".hidden", "_x", "@x", "bob", "b.o-b@x_1"]
        for _ in 0..<150 {
            names.append(String((0..<(1 + Int(random.next() % 6))).map { _ in alphabet[Int(random.next() % 13)] }))
        }
        var taken = Set<String>()
        for name in names {
            let first = name.utf8.first ?? 0
            let alphanumeric = (first >= 0x30 && first <= 0x39) || (first | 0x20 >= 0x61 && first | 0x20 <= 0x7A)
            let follows =
                alphanumeric
                && name.utf8.allSatisfy {
                    ($0 >= 0x30 && $0 <= 0x39) || ($0 | 0x20 >= 0x61 && $0 | 0x20 <= 0x7A) || "_-.@".utf8.contains($0)
                }
            let expected = follows && !taken.contains(name.lowercased())
            let body = JSONValue.object(["username": .string(name), "password": .string("a-long-password")])
            let reply = try await server.request(.post, "/auth/password/register", json: body)
            if expected {
                #expect(reply.status == 201, "\(name.debugDescription): \(reply.json.serialized())")
                taken.insert(name.lowercased())
            } else {
                #expect(
                    reply.status == 400 && reply.json.objectValue?["field"]?.stringValue == "username",
                    "\(name.debugDescription): \(reply.status) \(reply.json.serialized())")
            }
        }
        #expect(taken.contains("alice") && taken.count > 5)
    }

    @Test("every HTML page forbids scripts and frames around it")
    func pagesSayWhatTheyAllow() async throws {
        let server = try await LiveServer(.sqlite)
        defer { Task { try? await server.stop() } }
        let page = try await server.request("GET", "/dashboard/login")
        #expect(page.status == 200)
        let policy = page.headers["content-security-policy"] ?? ""
        #expect(policy.contains("default-src 'none'") && policy.contains("frame-ancestors 'none'"), "\(page.headers)")
        #expect(page.headers["x-frame-options"] == "DENY" && page.headers["x-content-type-options"] == "nosniff")
    }
}
