import Foundation
import HTTPTypes
import Spool
import TestSupport
import Testing

@testable import Server

/// Every route and every parameter, from the server's own OpenAPI document (and the routes it leaves out: reports
/// and the dashboard), with hostile numbers and strings in each query parameter, path id and body field: no answer
/// is a 5xx and the server lives on (issue 31). In process: a trap ends this test process, which fails the suite.
@Suite struct RouteFuzzTests {
    /// Numbers and strings as a hostile client writes them in a URL.
    static let queryValues =
        hostileNumbers + [
            "a", "%00", "x%00y", "%ff%fe",
            "%C2%85", "2026-13-45T99:99:99", "0001-01-01T00:00:00", "9999-12-31T23:59:59", "1970-01-01", "-2026-01-01",
            "2026-12-06T10:00:00%2B99:99", "k:v", ":", "k:", "true", "JOB_FINISHED", "..", "-", "%2e%2e%2f",
            String(repeating: "a", count: 5000), "-id", "id,-id",
        ]

    /// JSON values for a body's fields.
    static let bodyValues: [String] = [
        "0", "-0", "-1", "1e-300", "4.9e-324", "1e308", "-1e308", "9223372036854775807", "9223372036854775808",
        "-9223372036854775809", "1e400", "0.5", "\"\"", "\"a\\u0000b\"", "\"\\u0085\"", "\"..\"", "\"-\"", "null",
        "true", "[]", "{}", "[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]",
        "{\"a\":{\"b\":{\"c\":{\"d\":{}}}}}", "\"0001-01-01T00:00:00\"", "\"9999-12-31T23:59:59\"",
        "{\"k\":[1,2]}", "[\"x\"]", "\"" + String(repeating: "a", count: 5000) + "\"",
    ]

    /// Routes the OpenAPI document does not list, with their parameters (`ReportRoutes`, `Dashboard`).
    static let unlisted: [(method: String, path: String, query: [String])] = [
        ("get", "/reports/throughput", ["site_id", "since", "until", "bin", "state"]),
        ("get", "/reports/utilization", ["site_id", "since", "until", "bin", "batch_job_id", "steps"]),
        ("get", "/reports/failures", ["site_id", "since", "until", "bin"]),
        ("get", "/dashboard/", ["hours", "site_id"]),
        ("get", "/dashboard", ["hours", "site_id"]),
    ]

    struct Operation {
        var method: HTTPRequest.Method
        var path: String
        var query: [String]
        var body: [String]
        var bodyIsList: Bool
    }

    /// The operations of the OpenAPI document, with their query parameters and body fields.
    static func operations() throws -> [Operation] {
        let document = try JSONValue.parse(OpenAPI.document)
        let schemas = document.objectValue?["components"]?.objectValue?["schemas"]?.objectValue ?? [:]
        func resolve(_ schema: JSONValue?) -> JSONValue? {
            if let ref = schema?.objectValue?["$ref"]?.stringValue, let name = ref.split(separator: "/").last {
                return schemas[String(name)]
            }
            return schema
        }
        var out: [Operation] = []
        for (path, item) in document.objectValue?["paths"]?.objectValue ?? [:] {
            for (method, op) in item.objectValue ?? [:] {
                guard let m = HTTPRequest.Method(method.uppercased()) else { continue }
                let parameters = op.objectValue?["parameters"]?.arrayValue ?? []
                let query = parameters.compactMap { p -> String? in
                    p.objectValue?["in"]?.stringValue == "query" ? p.objectValue?["name"]?.stringValue : nil
                }
                let content = op.objectValue?["requestBody"]?.objectValue?["content"]?.objectValue?.values.first
                var schema = resolve(content?.objectValue?["schema"])
                var isList = false
                if schema?.objectValue?["type"]?.stringValue == "array" {
                    isList = true
                    schema = resolve(schema?.objectValue?["items"])
                }
                let fields = (schema?.objectValue?["properties"]?.objectValue ?? [:]).keys.sorted()
                out.append(Operation(method: m, path: path, query: query, body: fields, bodyIsList: isList))
            }
        }
        for u in unlisted {
            if let m = HTTPRequest.Method(u.method.uppercased()) {
                out.append(Operation(method: m, path: u.path, query: u.query, body: [], bodyIsList: false))
            }
        }
        return out.sorted { ($0.path, $0.method.rawValue) < ($1.path, $1.method.rawValue) }
    }

    @Test func noRouteAnswers5xx() async throws {
        let server = try InProcessServer()
        let token = try await server.user("fuzz")
        // Something to find: a site, an app, a job, a batch job (ids 1).
        _ = try await server.request(
            .post, "/sites/", json: .object(["name": .string("s"), "path": .string("/s")]), token: token)
        var failures: [String] = []
        var requests = 0
        var answered = 0
        func check(_ method: HTTPRequest.Method, _ path: String, body: [UInt8]? = nil) async throws {
            let reply = try await server.request(method, path, body: body, token: token)
            requests += 1
            if reply.status < 300 { answered += 1 }
            if reply.status >= 500 {
                failures.append(
                    "\(method) \(path) \(body.map { String(decoding: $0.prefix(120), as: UTF8.self) } ?? ""): \(reply.status) \(reply.json.serialized().prefix(200))"
                )
            }
        }
        let operations = try Self.operations()
        #expect(operations.count > 25, "the document lists \(operations.count) operations")
        for op in operations {
            let paths =
                op.path.contains("{id}")
                ? ["1", "0", "-1", "9223372036854775808", "1e3", "abc", "%00"].map {
                    op.path.replacingOccurrences(of: "{id}", with: $0)
                } : [op.path]
            for path in paths {
                try await check(op.method, path, body: op.body.isEmpty ? nil : Array("{}".utf8))
                for name in op.query {
                    for value in Self.queryValues { try await check(op.method, path + "?\(name)=\(value)") }
                }
            }
            let path = paths[0]
            for field in op.body {
                for value in Self.bodyValues {
                    let object = "{\"\(field)\":\(value)}"
                    try await check(op.method, path, body: Array((op.bodyIsList ? "[\(object)]" : object).utf8))
                }
            }
        }
        #expect(
            failures.isEmpty,
            "\(failures.count) of \(requests) requests answered 5xx:\n\(failures.prefix(30).joined(separator: "\n"))")
        // A NUL in any query parameter of any route is refused, naming the parameter (never cut, never matched).
        let listed = Set(Self.unlisted.map(\.path))
        for op in operations where !op.path.contains("{id}") && !listed.contains(op.path) {
            for name in op.query {
                let body = op.body.isEmpty ? nil : Array((op.bodyIsList ? "[]" : "{}").utf8)
                let reply = try await server.request(op.method, op.path + "?\(name)=k:v%00x", body: body, token: token)
                requests += 1
                #expect(
                    reply.status == 400 && reply.json.objectValue?["field"]?.stringValue == name,
                    "\(op.method) \(op.path)?\(name)=k:v%00x: \(reply.status) \(reply.json.serialized().prefix(200))")
            }
        }
        // Not vacuous: the token was good and many requests reached their handlers.
        #expect(answered > 500, "only \(answered) of \(requests) requests were answered 2xx")
        #expect(try await server.request(.get, "/auth/how").status == 200)
    }
}
