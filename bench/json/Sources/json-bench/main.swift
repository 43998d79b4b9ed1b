// Times parsing and writing of the documents the spool reads and writes on its hot paths: a job's job.json (read
// once per claim by a launcher, per step by the watcher), a state line (read per step), and a bulk-submission
// line. Each case runs `rounds` times over `count` documents, alternating the parsers, and reports the best
// round's nanoseconds per document. Usage: json-bench [count] [rounds]
import Foundation
import Spool
import Wire

let arguments = CommandLine.arguments
let count = arguments.count > 1 ? Int(arguments[1]) ?? 20000 : 20000
let rounds = arguments.count > 2 ? Int(arguments[2]) ?? 5 : 5

let jobJSON = #"""
    {"app":"hello","created":"2026-11-29T08:03:13.766Z","data":{},"gpus_per_rank":0,"id":"01M8K58R76AMWEJSGCVH7NTZZA","launch_params":{},"node_packing_count":1,"num_nodes":1,"parameters":{"name":"world","n":42,"x":[1.5,2.5]},"parent_ids":[],"ranks_per_node":1,"tags":{"exp":"a","batch":"7"},"threads_per_core":1,"threads_per_rank":1,"transfers":{},"wall_time_min":0,"workdir":"runs/7/world"}
    """#
let stateLine = #"{"state":"RUN_DONE","time":"2026-11-29T08:03:14.001Z","actor":"balsam-launcher 01M8K58R","return_code":0}"#
let submitLine = #"{"app":"hello","workdir":"w/123456","parameters":{"name":"n123456"},"tags":{"exp":"demo"}}"#

/// job.json as a Codable type, for JSONDecoder and JSONEncoder (what replacing our parser would mean).
struct JobFile: Codable {
    var app: String
    var created: String
    var data: [String: String]
    var gpus_per_rank: Double
    var id: String
    var launch_params: [String: String]
    var node_packing_count: Int
    var num_nodes: Int
    var parameters: [String: Parameter]
    var parent_ids: [String]
    var ranks_per_node: Int
    var tags: [String: String]
    var threads_per_core: Int
    var threads_per_rank: Int
    var transfers: [String: String]
    var wall_time_min: Int
    var workdir: String
}

enum Parameter: Codable {
    case string(String), int(Int), double(Double), array([Double])
    init(from decoder: any Decoder) throws {
        let c = try decoder.singleValueContainer()
        if let i = try? c.decode(Int.self) {
            self = .int(i)
        } else if let d = try? c.decode(Double.self) {
            self = .double(d)
        } else if let s = try? c.decode(String.self) {
            self = .string(s)
        } else {
            self = .array(try c.decode([Double].self))
        }
    }
    func encode(to encoder: any Encoder) throws {
        var c = encoder.singleValueContainer()
        switch self {
        case .string(let s): try c.encode(s)
        case .int(let i): try c.encode(i)
        case .double(let d): try c.encode(d)
        case .array(let a): try c.encode(a)
        }
    }
}

func nanosPerDocument(_ times: Int, _ body: () throws -> Void) rethrows -> Double {
    let start = DispatchTime.now().uptimeNanoseconds
    for _ in 0..<times { try body() }
    return Double(DispatchTime.now().uptimeNanoseconds - start) / Double(times)
}

var sink = 0
func run(_ name: String, times: Int = count, _ cases: [(String, () throws -> Void)]) throws {
    var best = Array(repeating: Double.infinity, count: cases.count)
    for _ in 0..<rounds {
        for (i, (_, body)) in cases.enumerated() { best[i] = min(best[i], try nanosPerDocument(times, body)) }
    }
    let base = best[0]
    for (i, (label, _)) in cases.enumerated() {
        let ratio = best[i] / base
        print("\(name)\t\(label)\t\(String(format: "%.0f", best[i])) ns\t\(String(format: "%.2f", ratio))x ours")
    }
}

let documents: [(String, String)] = [("job.json", jobJSON), ("state line", stateLine), ("submit line", submitLine)]
print("document\tparser\tns/document (best of \(rounds) rounds of \(count))\tratio")
for (name, text) in documents {
    let bytes = Array(text.utf8)
    let data = Data(bytes)
    var cases: [(String, () throws -> Void)] = [
        ("JSONValue.parse", { if case .object(let o) = try JSONValue.parse(bytes) { sink &+= o.count } }),
        (
            "JSONSerialization",
            { if let o = try JSONSerialization.jsonObject(with: data) as? [String: Any] { sink &+= o.count } }
        ),
    ]
    if name == "job.json" {
        let decoder = JSONDecoder()
        cases.append(("JSONDecoder", { sink &+= try decoder.decode(JobFile.self, from: data).num_nodes }))
    }
    try run("parse \(name)", cases)
}
let value = try JSONValue.parse(jobJSON)
let object = try JSONSerialization.jsonObject(with: Data(jobJSON.utf8))
let decoded = try JSONDecoder().decode(JobFile.self, from: Data(jobJSON.utf8))
let encoder = JSONEncoder()
encoder.outputFormatting = .sortedKeys
try run(
    "write job.json",
    [
        ("JSONValue.write", { var out: [UInt8] = []; value.write(to: &out); sink &+= out.count }),
        ("JSONSerialization", { sink &+= try JSONSerialization.data(withJSONObject: object, options: .sortedKeys).count }),
        ("JSONEncoder", { sink &+= try encoder.encode(decoded).count }),
    ])
// A site's push as the server reads it (issue 31): 2,000 jobs and 6,000 events, about 1.4 MB. Item by item (each
// list counted before an item is built: what the server does) against the tree of the whole body read into items
// (what it did before).
var push = PushRequest(site: PushedSite(name: "bench", path: "/bench"))
for i in 0..<2000 {
    var job = Job(workdir: "runs/\(i)", app: "hello")
    job.parameters = ["name": .string("world \(i)"), "n": .int(i), "x": .array([.double(1.5), .double(2.5)])]
    job.tags = ["exp": "a", "batch": "\(i % 7)"]
    push.jobs.append(.read(PushedJob(id: "01M8K58R76AMWEJSGCV\(100_000 + i)", job, state: .stagedIn)))
    for (from, to) in [(JobState.stagedIn, JobState.preprocessed), (.preprocessed, .running), (.running, .runDone)] {
        push.events.append(
            .read(PushedEvent(siteJobID: "01M8K58R76AMWEJSGCV\(100_000 + i)", time: "2026-12-06T10:00:00.000000", from: from, to: to)))
    }
}
let pushBody = Array(push.json.serialized().utf8)
print("push body: \(pushBody.count) bytes")
try run(
    "read a push", times: max(1, count / 2000),
    [
        ("item by item", { sink &+= try PushRequest(body: pushBody, maxItems: 20_000).jobs.count }),
        ("whole tree", { sink &+= try PushRequest(JSONValue.parse(pushBody)).jobs.count }),
    ])
if sink == 42 { print("") }
