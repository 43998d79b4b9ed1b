import TestSupport
import Testing

@testable import Spool

@Suite struct JSONTests {
    @Test func roundTripsWithSortedKeys() throws {
        let text = #"{"b":[1,2.5,"x",true,null],"a":{"z":"\u00e9\n\"q\"","y":-3}}"#
        let value = try JSONValue.parse(text)
        #expect(value.serialized() == #"{"a":{"y":-3,"z":"é\n\"q\""},"b":[1,2.5,"x",true,null]}"#)
        #expect(try JSONValue.parse(value.serialized()) == value)
    }

    @Test(arguments: [
        ("{", "expected a key"), ("{\"a\":1,}", "expected a key"), ("[1 2]", "expected ','"),
        ("{\"a\":1} x", "after the JSON value"), ("\"\u{1}\"", "control character"),
        ("{\"a\":1,\"a\":2}", "duplicate key"),
        ("01", "after the JSON value"), ("tru", "unexpected end"), ("trux", "invalid literal"),
        ("\"\\ud800\"", "surrogate"),
    ])
    func malformedInputSaysWhy(text: String, reason: String) {
        #expect {
            _ = try JSONValue.parse(text)
        } throws: { error in
            "\(error)".contains(reason)
        }
    }

    @Test func invalidUTF8IsRefused() {
        let bytes: [UInt8] = Array(#"{"a":""#.utf8) + [0xFF, 0xFE] + Array(#""}"#.utf8)
        #expect { _ = try JSONValue.parse(bytes) } throws: { "\($0)".contains("UTF-8") }
    }

    @Test func deepNestingIsBounded() {
        let text = String(repeating: "[", count: 10_000) + String(repeating: "]", count: 10_000)
        #expect { _ = try JSONValue.parse(text) } throws: { "\($0)".contains("nesting") }
    }

    @Test func numbersKeepIntegersExact() throws {
        #expect(try JSONValue.parse("9007199254740993") == .int(9_007_199_254_740_993))
        #expect(try JSONValue.parse("1e3") == .double(1000))
        #expect(JSONValue.double(1000).serialized() == "1000.0")
    }
}
