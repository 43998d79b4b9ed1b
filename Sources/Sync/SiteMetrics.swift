import Spool

/// A site in Prometheus's text format, for node_exporter's textfile collector (`balsam-watch --metrics-file`):
/// its jobs and batch jobs by state, and its sync's health (what `balsam sync status --json` says), each series
/// labelled with the site's name, so that the sites of a login node show up in the facility's dashboards.
public enum SiteMetrics {
    /// The exposition for `site` now; `sync` is its settings' sync section (nil: no server).
    public static func text(_ site: Site, sync: SiteSettings.Sync?, now: Double) throws(SpoolError) -> String {

        let name = ["site": sync?.siteName ?? site.name]
        var out = PrometheusText()
        let counts = try Query(site: site).countByState()
        out.family(
            "balsam_site_jobs", "gauge", "Jobs of the site by state.",
            JobState.allCases.map { (name.merging(["state": $0.rawValue]) { $1 }, String(counts[$0] ?? 0)) })
        let batch = try BatchJobStore(site: site).all().jobs
        out.family(
            "balsam_site_batch_jobs", "gauge", "Batch jobs of the site by state.",
            BatchJob.State.allCases.map { state in
                (name.merging(["state": state.rawValue]) { $1 }, String(batch.filter { $0.state == state }.count))
            })
        out.family(
            "balsam_site_metrics_time_seconds", "gauge", "When this file was written (Unix time).",
            [(name, PrometheusText.number(now.rounded()))])
        guard sync != nil else { return out.text }
        let state = try SyncState.load(site)
        let (unpushed, oldest) = try SyncState.unpushed(site, state)
        out.family(
            "balsam_site_sync_unpushed_log_bytes", "gauge", "Bytes of the site's event logs not yet on its server.",
            [(name, String(unpushed))])
        out.family(
            "balsam_site_sync_unpushed_lag_seconds", "gauge",
            "Age of the oldest event of the site's logs not yet on its server (0: none).",
            [(name, PrometheusText.number(max(0, oldest.map { now - $0 } ?? 0)))])
        let success = state.lastSuccess.flatMap { Timestamp.seconds($0) }
        let failure = state.lastErrorTime.flatMap { Timestamp.seconds($0) }
        out.family(
            "balsam_site_sync_last_success_time_seconds", "gauge", "The last push the server answered (Unix time).",
            success.map { [(name, PrometheusText.number($0.rounded()))] } ?? [])
        out.family(
            "balsam_site_sync_failing", "gauge", "1 when the last push failed, else 0.",
            [(name, (failure ?? -1) > (success ?? -1) ? "1" : "0")])
        out.family(
            "balsam_site_sync_refused", "gauge", "Objects one end refused of the other (balsam sync status).",
            [(name, String(state.refused.count))])
        return out.text
    }
}
