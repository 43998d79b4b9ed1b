import Foundation
import Spool
import TestSupport
import Testing

/// Inputs staged into a job's directory before the job is made (issue 35, item 1): a directory that holds no job
/// is adopted with every file in it kept; one that holds a job (at its top, or beneath it), a file or a symbolic
/// link is refused and left as it was. Random trees, submitted one at a time, in bulk, or staged between a bulk
/// acceptance and its ingest; the verdict is the model's, computed here from the tree alone.
@Suite struct StagedWorkdirTests {
    /// What may sit at a workdir before its job is made.
    enum Staged: CaseIterable {
        case emptyDirectory, inputs, jobAtTop, stateAtTop, jobBeneath, file, symlink
    }

    /// How the job arrives.
    enum Path: CaseIterable { case one, bulk, stagedAfterAcceptance }

    /// A random tree of inputs under `root` (files and directories, some named like the site's own files deeper
    /// down, where they are only data), with `staged`'s feature; returns whether the model adopts it.
    func stage(_ staged: Staged, at root: String, _ random: inout SplitMix) throws -> Bool {
        try FileManager.default.createDirectory(
            atPath: (root as NSString).deletingLastPathComponent, withIntermediateDirectories: true)
        switch staged {
        case .file:
            try "data".write(toFile: root, atomically: false, encoding: .utf8)
            return false
        case .symlink:
            let target = root + ".target"
            try FileManager.default.createDirectory(atPath: target, withIntermediateDirectories: true)
            try FileManager.default.createSymbolicLink(atPath: root, withDestinationPath: target)
            return false
        default: break
        }
        try FileManager.default.createDirectory(atPath: root, withIntermediateDirectories: true)
        var directories = [root]
        if staged != .emptyDirectory {
            for n in 0..<Int.random(in: 1...12, using: &random) {
                let parent = directories[Int.random(in: 0..<directories.count, using: &random)]
                if Bool.random(using: &random) {
                    let made = parent + "/d\(n)"
                    try FileManager.default.createDirectory(atPath: made, withIntermediateDirectories: false)
                    directories.append(made)
                } else {
                    // A file named `state` is only data below the top.
                    let name = parent != root && n % 5 == 0 ? "state" : "in\(n).dat"
                    try String(repeating: "x", count: Int.random(in: 0...64, using: &random))
                        .write(toFile: parent + "/" + name, atomically: false, encoding: .utf8)
                }
            }
        }
        switch staged {
        case .jobAtTop:
            try #"{"app":"hello"}"#.write(toFile: root + "/job.json", atomically: false, encoding: .utf8)
        case .stateAtTop:
            try "READY\n".write(toFile: root + "/state", atomically: false, encoding: .utf8)
        case .jobBeneath:
            let inner = directories.dropFirst().randomElement(using: &random) ?? root + "/j"
            try FileManager.default.createDirectory(atPath: inner, withIntermediateDirectories: true)
            try #"{"app":"hello"}"#.write(toFile: inner + "/job.json", atomically: false, encoding: .utf8)
        default: break
        }
        return staged == .emptyDirectory || staged == .inputs
    }

    /// Every file and directory under `root` (not following links) with its contents.
    func snapshot(_ root: String) -> [String: String] {
        var found: [String: String] = [:]
        guard let walk = FileManager.default.enumerator(atPath: root) else { return found }
        for case let name as String in walk {
            found[name] = (try? read(root + "/" + name)) ?? "<dir>"
        }
        return found
    }

    @Test func stagedDirectoriesAreAdoptedWithTheirFilesAndJobsAreNeverNested() throws {
        let seed = UInt64(saturating: Date().timeIntervalSince1970 * 1000)
        var random = SplitMix(seed: seed)
        let dir = try TempDir()
        let site = try makeSite(dir)
        // A job made without anything staged: what each path's job looks like, to compare the adopted ones with.
        var control = Submission(site: site)
        let plain = try control.submit(helloJob("control")).1
        for n in 0..<150 {
            let staged = Staged.allCases[Int.random(in: 0..<Staged.allCases.count, using: &random)]
            let path = Path.allCases[Int.random(in: 0..<Path.allCases.count, using: &random)]
            let workdir = "w/\(n)"
            let root = site.jobDirectory(workdir)
            let context = "seed \(seed), case \(n): \(staged) by \(path)"
            var submission = Submission(site: site)
            let spec = #"{"app":"hello","workdir":"\#(workdir)","parameters":{"name":"n\#(n)"}}"#
            var adoptable = true
            var before: [String: String] = [:]
            if path != .stagedAfterAcceptance {
                adoptable = try stage(staged, at: root, &random)
                before = snapshot(root)
            }
            var madeID: String?
            switch path {
            case .one:
                do {
                    madeID = try submission.submit(helloJob(workdir, name: "n\(n)")).0.id
                    #expect(adoptable, "\(context): taken")
                } catch {
                    #expect(!adoptable, "\(context): refused: \(error)")
                    #expect(error.code == .cannotCreate && "\(error)".contains(workdir), "\(context): \(error)")
                }
            case .bulk, .stagedAfterAcceptance:
                let result = try submission.accept(Array(spec.utf8))
                if path == .stagedAfterAcceptance {
                    adoptable = try stage(staged, at: root, &random)
                    before = snapshot(root)
                    #expect(result.accepted.count == 1, "\(context): \(result.failures)")
                } else {
                    #expect(result.accepted.count == (adoptable ? 1 : 0), "\(context): \(result.failures)")
                }
                _ = try Ingest(site: site).materializePending()
                if let job = result.accepted.first?.job {
                    let state = try Query(site: site).find(job.id).state
                    if adoptable {
                        madeID = job.id
                    } else {
                        // Staged after its acceptance, where no job may be: the job ends FAILED, saying why.
                        #expect(state == .failed, "\(context): \(state as Any)")
                    }
                }
            }
            if let madeID {
                // Adopted: every staged file as it was, beside the job's own two.
                let after = snapshot(root)
                #expect(after.filter { before[$0.key] == nil }.keys.sorted() == ["job.json", "state"], "\(context)")
                #expect(before.allSatisfy { after[$0.key] == $0.value }, "\(context): staged files changed")
                let job = try Job(bytes: Array(read(root + "/job.json").utf8))
                #expect(job.id == madeID && job.workdir == workdir, "\(context)")
                #expect(try Query(site: site).find(madeID).state == plain, "\(context): as a job made without inputs")
            } else {
                #expect(snapshot(root) == before, "\(context): a refused workdir is left as it was")
            }
        }
        // Each adopted job's creation is in the log once.
        let log = try read(site.eventsPath + "/" + Posix.hostName() + ".jsonl")
        let created = log.split(separator: "\n").filter { $0.contains(#""from":"CREATED""#) }
        #expect(Set(created).count == created.count)
    }
}
