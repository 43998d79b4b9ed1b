import Foundation
import TestSupport
import Testing

@testable import Spool

@Suite struct JobTests {
    func parse(_ text: String) throws -> Job { try Job(bytes: Array(text.utf8)) }

    @Test func defaultsFollowTheOriginal() throws {
        let job = try parse(#"{"app":"a","workdir":"w"}"#)
        #expect(job.numNodes == 1 && job.ranksPerNode == 1 && job.threadsPerRank == 1 && job.threadsPerCore == 1)
        #expect(job.nodePackingCount == 1 && job.gpusPerRank == 0 && job.wallTimeMin == 0)
    }

    @Test func everyFieldRoundTrips() throws {
        let text = #"""
            {"app":"a","workdir":"x/y","tags":{"k":"v","n":3},"parameters":{"p":[1,{"q":null}]},"data":{"d":1.5},
             "parent_ids":["01M891VR1Q54AF41C3ME0190FN"],"num_nodes":2,"ranks_per_node":4,"threads_per_rank":2,
             "threads_per_core":2,"launch_params":{"cpu-bind":"core"},"gpus_per_rank":0.5,"node_packing_count":8,
             "wall_time_min":30,"transfers":{"in":"globus:/abs/file"},"return_code":null}
            """#
        let job = try parse(text)
        #expect(job.tags == ["k": "v", "n": "3"])
        #expect(job.gpusPerRank == 0.5 && job.nodePackingCount == 8 && job.wallTimeMin == 30)
        let again = try Job(bytes: job.fileBytes())
        #expect(again == job)
        #expect(job.fileBytes().last == 0x0A && !job.fileBytes().dropLast().contains(0x0A))
    }

    @Test(arguments: [
        (#"{"app":"a","workdir":"/abs"}"#, "relative"),
        (#"{"app":"a","workdir":"a/../b"}"#, "'..'"),
        (#"{"app":"a","workdir":"a//b"}"#, "empty component"),
        (#"{"app":"a","workdir":"a/"}"#, "empty component"),
        (#"{"app":"a","workdir":""}"#, "must not be empty"),
        (#"{"app":"a","workdir":"a\tb"}"#, "control character"),
        (#"{"app":"a","workdir":".balsam-x"}"#, "reserved"),
        (#"{"app":"a"}"#, "'workdir' is required"),
        (#"{"workdir":"w"}"#, "'app' is required"),
        (#"{"app":"a","workdir":"w","num_node":2}"#, "unknown field 'num_node'"),
        (#"{"app":"a","workdir":"w","num_nodes":0}"#, "'num_nodes' must be between 1"),
        (#"{"app":"a","workdir":"w","ranks_per_node":-1}"#, "'ranks_per_node'"),
        (#"{"app":"a","workdir":"w","node_packing_count":0}"#, "'node_packing_count'"),
        (#"{"app":"a","workdir":"w","wall_time_min":1.5}"#, "'wall_time_min' must be an integer"),
        (#"{"app":"a","workdir":"w","gpus_per_rank":-1}"#, "'gpus_per_rank'"),
        (#"{"app":"a","workdir":"w","parent_ids":["nope"]}"#, "'nope' is not a job ID"),
        (#"{"app":"a","workdir":"w","tags":{"k":[1]}}"#, "'tags.k'"),
        (#"{"app":"a","workdir":"w","transfers":{"in":"relative/path"}}"#, "'transfers.in'"),
        (#"[1]"#, "JSON object"),
        (#"{"app":"a","workdir":"w""#, "malformed JSON"),
    ])
    func badJobsAreRefusedNamingTheField(text: String, message: String) {
        #expect {
            _ = try parse(text)
        } throws: { error in
            guard let error = error as? SpoolError else { return false }
            return error.code == .invalidInput && error.message.contains(message)
        }
    }

    @Test func sizesAreBounded() throws {
        let big = String(repeating: "x", count: Job.Limits.parametersBytes)
        #expect { _ = try parse(#"{"app":"a","workdir":"w","parameters":{"p":"\#(big)"}}"#) } throws: {
            "\($0)".contains("'parameters' is")
        }
        let long = String(repeating: "d", count: 257)
        #expect { _ = try parse(#"{"app":"a","workdir":"\#(long)"}"#) } throws: { "\($0)".contains("256") }
    }

    @Test func idsAreValidUniqueAndOrdered() {
        let ids = (0..<10_000).map { _ in JobID.make() }
        #expect(ids.allSatisfy(JobID.isValid))
        #expect(Set(ids).count == ids.count)
        #expect(ids == ids.sorted())
    }
}

@Suite struct TemplateTests {
    let app: App

    init() throws {
        app = try App(
            name: "sim", commandTemplate: "run --n {{ n }} --label {{label}} {{ n }}",
            parameters: ["n": .init(required: true), "label": .init(required: false, defaultValue: .string("a b"))])
    }

    @Test func rendersWithDefaultsAndQuotesEveryValue() throws {
        #expect(try app.render(["n": .int(3)]) == "run --n 3 --label 'a b' 3")
        #expect(
            try app.render(["n": .string("$(rm -rf ~); echo 'x'")])
                == #"run --n '$(rm -rf ~); echo '"'"'x'"'"'' --label 'a b' '$(rm -rf ~); echo '"'"'x'"'"''"#)
        #expect(try app.render(["n": .string(""), "label": .array([.int(1)])]) == "run --n '' --label '[1]' ''")
    }

    @Test func missingAndExtraParametersAreErrorsNamingThem() {
        #expect { _ = try app.render([:]) } throws: { "\($0)".contains("missing required parameter 'n'") }
        #expect { _ = try app.render(["n": .int(1), "bogus": .int(2)]) } throws: { "\($0)".contains("'bogus'") }
    }

    @Test func appsRefuseUnknownPlaceholdersAndUnusedParameters() {
        #expect { _ = try App(name: "a", commandTemplate: "echo {{ x }}") } throws: { "\($0)".contains("'{{ x }}'") }
        #expect {
            _ = try App(name: "a", commandTemplate: "echo", parameters: ["y": .init(required: true)])
        } throws: { "\($0)".contains("'y' is not used") }
        #expect { _ = try CommandTemplate("echo {{ x ") } throws: { "\($0)".contains("closing") }
        #expect { _ = try CommandTemplate("echo {{ x | upper }}") } throws: { "\($0)".contains("not a plain name") }
        #expect { _ = try App(name: "../x", commandTemplate: "echo") } throws: { "\($0)".contains("app name") }
    }

    @Test func appYAMLRoundTrips() throws {
        var app = self.app
        app.description = "A simulation: \"quoted\""
        app.environmentVariables = ["OMP_PLACES": "cores"]
        app.cleanupFiles = ["*.tmp"]
        app.onError = .init(retries: 2)
        let parsed = try App.parse(yaml: app.yamlText(), name: "sim")
        #expect(parsed == app)
    }

    @Test func appYAMLErrorsNameTheKey() {
        #expect { _ = try App.parse(yaml: "command_template: echo\nbogus: 1\n", name: "a") } throws: {
            "\($0)".contains("unknown key 'bogus'")
        }
        #expect { _ = try App.parse(yaml: "description: x\n", name: "a") } throws: {
            "\($0)".contains("command_template")
        }
        #expect { _ = try App.parse(yaml: "command_template: [\n", name: "a") } throws: { "\($0)".contains("YAML") }
        #expect { _ = try App.parse(yaml: "command_template: echo\non_error: {retries: -1}\n", name: "a") } throws: {
            "\($0)".contains("on_error.retries")
        }
    }
}

@Suite struct HookTests {
    @Test func executableHooksBesideAppYAMLAreRecognised() throws {
        let dir = try TempDir()
        let site = try makeSite(dir)
        let appDir = site.appsPath + "/hello"
        for (name, mode) in [("preprocess", 0o755), ("on-error", 0o755), ("postprocess", 0o644), ("README", 0o755)] {
            try dir.file("site/apps/hello/" + name, "#!/bin/sh\nexit 0\n")
            _ = chmod(appDir + "/" + name, UInt32(mode))
        }
        #expect(try site.app("hello").hooks == [.preprocess, .onError])
        #expect(
            try site.app("hello").json.objectValue?["hooks"] == .array([.string("on-error"), .string("preprocess")]))
    }
}
