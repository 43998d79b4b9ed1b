import Foundation
import Spool
import TestSupport
import Testing

@testable import Batch

/// Every platform preset's job template renders for a batch job of its first queue: no placeholder left, the
/// launcher started with its arguments, the scheduler's own directives kept.
@Suite struct PresetTemplateTests {
    @Test func everyPresetsJobTemplateRenders() throws {
        let dir = try TempDir()
        for platform in try Platform.builtIn() {
            let site = try JobScript.createSite(
                at: dir.path + "/" + platform.name, name: nil, platform: platform, project: "proj")
            let settings = try SiteSettings.load(site)
            let queue = try #require(platform.queues.first)
            var job = BatchJob(project: "proj", queue: queue.name, numNodes: 2, wallTimeMinutes: 30)
            job.optionalParams = settings.scheduler.optionalParams
            let (text, path) = try JobScript.template(site: site, settings: settings)
            #expect(path != nil, "\(platform.name): the site has its own job-template.sh")
            let script = try JobScript.render(
                text, templatePath: path, job: job, name: "balsam-x-1", site: site, binDirectory: "/opt/b")
            #expect(!script.contains("{{"), "\(platform.name): \(script)")
            #expect(
                script.contains(
                    "/opt/b/balsam-launcher --site \(site.root) --wall-time-min 28.5 --batch-job \(job.id)"),
                "\(platform.name): \(script)")
            if platform.name == "polaris" || platform.name == "aurora" {
                #expect(script.contains("#PBS -l filesystems=home:") && script.contains("--ppn 1"), "\(script)")
            }
            if platform.name.hasPrefix("perlmutter") {
                #expect(script.contains("#SBATCH --constraint=" + (platform.name == "perlmutter-gpu" ? "gpu" : "cpu")))
            }
        }
    }
}
