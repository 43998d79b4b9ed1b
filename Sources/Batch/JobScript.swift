import Spool

#if canImport(Glibc)
    import Glibc
#endif

/// The script a batch job runs: the site's `job-template.sh` (or the scheduler's default) with `{{ name }}`
/// placeholders filled in. The scheduler's own options (nodes, time, queue, project, name, output) go on the
/// submit command line, so a template needs only the environment and the launcher's start.
public enum JobScript {
    /// The template's name in a site.
    public static let templateName = "job-template.sh"

    /// Creates a site for `scheduler` (see `Site.create`) with the scheduler's default job template in it,
    /// written before the site is renamed into place: a site never exists without its template.
    public static func createSite(at path: String, name: String?, scheduler: String) throws(SpoolError) -> Site {
        try createSite(at: path, name: name, platform: .generic(scheduler: scheduler), project: nil)
    }

    /// A new site from a platform preset: its settings, and its job template (else the scheduler's default).
    public static func createSite(
        at path: String, name: String?, platform: Platform, project: String?, group: gid_t? = nil
    ) throws(SpoolError) -> Site {
        try Site.create(
            at: path, name: name, platform: platform, project: project,
            files: [templateName: Array((platform.jobTemplate ?? defaultTemplate(for: platform.scheduler)).utf8)],
            group: group)
    }

    /// The default template for `scheduler` (written to `SITE/job-template.sh` by `balsam init`).
    public static func defaultTemplate(for scheduler: String) -> String {
        let header = """
            #!/bin/bash
            # Balsam batch job {{ batch_job_id }} of site {{ site_path }}: {{ num_nodes }} node(s) for
            # {{ wall_time_min }} min in queue '{{ queue }}', project '{{ project }}'.
            # Written by balsam-watch from SITE/job-template.sh. Placeholders: batch_job_id, name, site_path,
            # project, queue, num_nodes, wall_time_min, filter_tags, launcher, launcher_args, balsam_bin, and
            # every optional_batch_job_params key. The scheduler's options are on the submit command line.
            export BALSAM_SITE={{ site_path }}
            export PATH={{ balsam_bin }}:$PATH
            cd {{ site_path }}

            """
        switch scheduler {
        case "local":
            return header + """
                # One rank on this machine.
                exec {{ launcher }} {{ launcher_args }}

                """
        case "cobalt":
            return header + """
                # One launcher rank per node.
                exec aprun -n {{ num_nodes }} -N 1 -d 64 -cc none {{ launcher }} {{ launcher_args }}

                """
        case "slurm":
            return header + """
                # One launcher rank per node, started by Slurm: it works with any MPI when srun's PMI is the one
                # the MPI speaks (the cluster's MpiDefault; else add --mpi=pmi2 for the MPICH family, --mpi=pmix
                # for Open MPI, or set SLURM_MPI_TYPE). Open MPI without PMIx in Slurm: replace the line with
                #   exec mpirun -n {{ num_nodes }} --map-by ppr:1:node --bind-to none {{ launcher }} {{ launcher_args }}
                # and with MPICH's Hydra: exec mpiexec.hydra -genvnone -n {{ num_nodes }} -ppn 1 ...
                exec srun --ntasks-per-node 1 --nodes {{ num_nodes }} --cpu-bind none {{ launcher }} {{ launcher_args }}

                """
        default:
            return header + """
                # One launcher rank per node (Open MPI; with MPICH use: mpiexec -n {{ num_nodes }} --ppn 1).
                exec mpirun -n {{ num_nodes }} --map-by ppr:1:node --bind-to none {{ launcher }} {{ launcher_args }}

                """
        }
    }

    /// The template a site uses: its file if it has one, else the default for its scheduler.
    public static func template(site: Site, settings: SiteSettings) throws(SpoolError) -> (text: String, path: String?)
    {
        let configured = settings.scheduler.jobTemplate
        let path = configured.hasPrefix("/") ? configured : site.root + "/" + configured
        guard Posix.exists(path) else { return (defaultTemplate(for: settings.scheduler.kind), nil) }
        let bytes = try Posix.readFile(path, limit: 1 << 20)
        return (String(decoding: bytes, as: UTF8.self), path)
    }

    /// The launcher's wall time in an allocation of `minutes`: less a margin (5%, at least 1 minute and at most
    /// 10, never more than half) in which it records its jobs' ends and leaves before the scheduler kills the
    /// allocation; balsam-launcher(1), --wall-time-min.
    static func launcherMinutes(_ minutes: Int) -> String {
        let total = Double(minutes)
        let margin = min(max(1, total * 0.05), 10, total / 2)
        let left = total - margin
        return left.rounded() == left ? String(Int(saturating: left)) : String(left)
    }

    /// The values of a batch job's placeholders.
    public static func values(job: BatchJob, name: String, site: Site, binDirectory: String) -> [String: String] {
        let tags = job.filterTags.sorted(by: { $0.key < $1.key }).map { "\($0.key)=\($0.value)" }
        let launcherArgs =
            [
                "--site", site.root, "--wall-time-min", launcherMinutes(job.wallTimeMinutes), "--batch-job",
                String(job.id),
            ]
            + tags.flatMap {
                ["--tag", $0]
            }
        var values = job.optionalParams
        values.merge(
            [
                "batch_job_id": String(job.id), "name": name, "site_path": CommandTemplate.shellQuote(site.root),
                "project": job.project, "queue": job.queue, "num_nodes": String(job.numNodes),
                "wall_time_min": String(job.wallTimeMinutes), "filter_tags": tags.joined(separator: ","),
                "launcher": CommandTemplate.shellQuote(binDirectory + "/balsam-launcher"),
                "launcher_args": launcherArgs.map(CommandTemplate.shellQuote).joined(separator: " "),
                "balsam_bin": CommandTemplate.shellQuote(binDirectory),
            ], uniquingKeysWith: { _, builtIn in builtIn })
        return values
    }

    /// Renders `template` for `job`; an unknown placeholder is an error naming it and the template.
    public static func render(
        _ template: String, templatePath: String?, job: BatchJob, name: String, site: Site, binDirectory: String
    ) throws(SpoolError) -> String {
        let where_ = templatePath ?? "the default job template"
        do {
            let parsed = try CommandTemplate(template)
            return try parsed.renderUnquoted(values(job: job, name: name, site: site, binDirectory: binDirectory))
        } catch {
            let prefix = "field 'command_template' "
            let why = error.message.hasPrefix(prefix) ? String(error.message.dropFirst(prefix.count)) : error.message
            throw SpoolError(.invalidInput, "\(where_): \(why)", path: templatePath)
        }
    }
}
