import Spool
import TestSupport
import Testing
import Wire

@testable import Server

/// The job's fields are declared once (`JobField`): the table, the reply and the OpenAPI document agree with that
/// declaration. In-process, against a temporary SQLite database migrated to the latest schema.
@Suite struct JobFieldTests {
    @Test func theJobsTableHasEveryFieldWithItsKind() throws {
        let dir = try TempDir()
        let database = try Database(.sqlite(path: dir.path + "/server.db"), threads: 1)
        try database.migrate()
        let columns = try database.withConnection { c in
            try c.query("PRAGMA table_info(jobs)").map { ($0.text("name"), $0.text("type"), $0.bool("notnull")) }
        }
        let byName = Dictionary(columns.map { ($0.0, ($0.1, $0.2)) }, uniquingKeysWith: { a, _ in a })
        for field in JobField.columns {
            let column = try #require(byName[field.name], "no column \(field.name)")
            switch field.column {
            case nil: Issue.record("\(field) is listed as a column")
            case .integer(let optional):
                #expect(column.0.contains("INT") && column.1 == !optional || field == .id, "\(field): \(column)")
            case .boolean, .time: #expect(column.0.contains("INT") && column.1, "\(field): \(column)")
            case .number: #expect(column.0 == "DOUBLE PRECISION" && column.1, "\(field): \(column)")
            case .text(let optional): #expect(column.0 == "TEXT" && column.1 == !optional, "\(field): \(column)")
            case .json, .state: #expect(column.1, "\(field): \(column)")
            }
        }
    }

    @Test func aRowIsWrittenWithEveryFieldInOrder() throws {
        var values = JobField.columns.map { field -> SQLValue in
            if case .json? = field.column { return .text("{}") }  // NOT NULL in the table
            return .null
        }
        values[JobField.columns.firstIndex(of: .workdir) ?? 0] = .text("w\"1")
        values[JobField.columns.firstIndex(of: .tags) ?? 0] = .text(#"{"a":"b"}"#)
        values[JobField.columns.firstIndex(of: .parentIDs) ?? 0] = .text("[1,2]")
        values[JobField.columns.firstIndex(of: .pendingFileCleanup) ?? 0] = .int(1)
        var out = JSONWriter()
        JobField.write(SQLRow(values: values, names: JobField.rowNames), to: &out)
        let object = try #require(try JSONValue.parse(out.bytes).objectValue)
        #expect(Set(object.keys) == Set(JobField.columns.map(\.name)))
        #expect(object["workdir"] == .string("w\"1") && object["tags"] == .object(["a": .string("b")]))
        #expect(object["parent_ids"] == .array([.int(1), .int(2)]) && object["pending_file_cleanup"] == .bool(true))
        #expect(object["return_code"] == .null && object["site_job_id"] == .null)
    }

    @Test func theOpenAPIJobSchemaIsTheDeclaration() throws {
        let document = try #require(try JSONValue.parse(OpenAPI.document).objectValue)
        let job = document["components"]?.objectValue?["schemas"]?.objectValue?["Job"]?.objectValue
        let properties = try #require(job?["properties"]?.objectValue)
        #expect(Set(properties.keys) == Set(JobField.columns.map(\.name)))
    }

    @Test func everyFieldTheServerForwardsIsAppliedAtTheSite() throws {
        let original = Job(workdir: "w", app: "a")
        for name in JobField.forwardedNames.sorted() {
            // The server forwards the parameters read out of their pickle, under the original's name.
            let key = name == JobField.serializedParameters.name ? "parameters" : name
            let value: JSONValue =
                switch JobField(rawValue: name)?.column {
                case .integer?: .int(7)
                case .number?: .double(0.5)
                default: .object(["k": .string("v")])
                }
            var job = original
            try job.apply(change: [key: value])
            #expect(job != original, "a change of \(name) forwarded to a site changes nothing there")
        }
    }
}
