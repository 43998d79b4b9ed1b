import Spool
import Testing
import Wire

/// The reader every message goes through: each refusal names the field, with its place in the message.
@Suite struct FieldReaderTests {
    @Test func errorsNameTheFieldWithItsPlace() throws {
        var r = try FieldReader(
            try JSONValue.parse(Array(#"{"n": "x", "s": "a\u0000b", "extra": 1}"#.utf8)), prefix: "jobs[3]")
        #expect(throws: WireError("must be an integer, not a string", field: "jobs[3].n")) {
            try r.int("n", in: 1...10)
        }
        #expect(throws: WireError("contains a NUL character", field: "jobs[3].s")) { try r.string("s") }
        #expect(throws: WireError("is not a field of this resource", field: "jobs[3].extra")) { try r.finish() }
    }

    @Test func aNonObjectIsRefusedWhereItIs() {
        #expect(throws: WireError("must be a JSON object, not an array", field: "events[0]")) {
            try FieldReader(.array([]), prefix: "events[0]")
        }
    }
}
