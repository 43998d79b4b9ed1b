/// Why jobs that have not run yet are not running, as far as the site can tell: what settings.yml's node shape
/// rules out for good (`Need.whyNeverFits`, the rule `balsam submit` warns with), and, for a job waiting to run
/// (`PREPROCESSED`, `RESTART_READY`), what each live launcher said when it left the job for others (its tags,
/// its wall time, its resources on that allocation: `Lease.asideReasons`). Read once per command.
public struct WaitReasons: Sendable {
    let launcher: SiteSettings.Launcher?
    let aside: [String: [String]]

    /// The site's settings and its live launchers' words, read now.
    public init(site: Site) {
        launcher = (try? SiteSettings.load(site))?.launcher
        aside = Lease.asideReasons(site)
    }

    /// Why `job`, in `state`, is not running (empty when nothing is known to keep it).
    public func of(_ job: Job, state: JobState) -> [String] {
        guard [.awaitingParents, .ready, .stagedIn, .preprocessed, .restartReady].contains(state) else { return [] }
        var reasons: [String] = []
        if let launcher, let why = Need(job, packing: launcher.nodePacking).whyNeverFits(job, launcher) {
            reasons.append("cannot run on this site's nodes as configured: " + why)
        }
        if state == .preprocessed || state == .restartReady { reasons += aside[job.id] ?? [] }
        return reasons
    }
}
