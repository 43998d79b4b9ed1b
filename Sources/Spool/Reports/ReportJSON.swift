/// The reports as JSON: one shape for `balsam report --json` and the server's `/reports/` routes.
extension ReportSeries.Throughput {
    public func json(state: String) -> JSONValue {
        .object([
            "state": .string(state), "total": .int(total), "rate": .double(rate), "bin_seconds": .double(bin),
            "bins": .array(
                bins.map { .object(["start": .string(Timestamp.format(seconds: $0.start)), "count": .int($0.count)]) }),
        ])
    }
}

extension ReportSeries.Utilization {
    public func json() -> JSONValue {
        var o: [String: JSONValue] = [
            "bin_seconds": .double(bin), "busy_node_seconds": .double(busyNodeSeconds),
            "bins": .array(
                bins.map {
                    .object([
                        "start": .string(Timestamp.format(seconds: $0.start)), "busy": .double($0.busy),
                        "available": .double($0.available),
                    ])
                }),
            "batch_jobs": .array(
                batchJobs.map {
                    .object([
                        "id": .int($0.id), "num_nodes": .int($0.nodes),
                        "start_time": .string(Timestamp.format(seconds: $0.start)),
                        "end_time": $0.end.map { .string(Timestamp.format(seconds: $0)) } ?? .null,
                        "busy_node_seconds": .double($0.busyNodeSeconds), "mean_utilization": .double($0.mean),
                    ])
                }),
        ]
        if let steps {
            o["steps"] = .array(
                steps.map { .object(["time": .string(Timestamp.format(seconds: $0.time)), "busy": .double($0.busy)]) })
        }
        return .object(o)
    }
}

/// Folds an older failure event of a job (`state`, `older` its data) into the row of the job's latest one, as
/// `report failures` shows one row per job, at the site and on the server: a failed run counts in `attempts`;
/// when the latest says nothing of the run (a FAILED after "no retries left"), the run's reason comes first
/// ("exit status 3; ... no retries left") and its exit status and output are kept.
public func foldOlderFailure(
    into data: inout [String: JSONValue], attempts: inout Int, state: String, from: String,
    older: [String: JSONValue]
) {
    if endsARun(state: state, from: from) { attempts += 1 }
    let latest = EventFacts(data: data)
    var earlier = EventFacts(data: older)
    guard latest.tail == nil, earlier.tail != nil else { return }
    let reasons = [earlier.reason ?? older["error"]?.stringValue, latest.reason].compactMap { $0 }
    // Said once: a reason that holds the other (a run()'s exception, carried into the FAILED that followed) is
    // not repeated.
    if reasons.count == 2, reasons[1].contains(reasons[0]) || reasons[0].contains(reasons[1]) {
        earlier.reason = reasons.max { $0.count < $1.count }
    } else {
        earlier.reason = reasons.joined(separator: "; ")
    }
    data.merge(earlier.data) { _, older in older }
}

/// Whether a failure event (to `state`, from `from`) ended a run: a `RUN_ERROR` or `RUN_TIMEOUT`, or a `FAILED`
/// straight from `RUNNING` (a run killed). One rule for `report failures`' runs at the site and on the server.
public func endsARun(state: String, from: String) -> Bool { state != "FAILED" || from == "RUNNING" }

/// One failure as JSON, at the site and on the server.
public func failureJSON(
    job: JSONValue, state: String, time: String, workdir: String?, app: String?, tags: [String: String],
    data: [String: JSONValue], extra: [String: JSONValue] = [:]
) -> JSONValue {
    let facts = EventFacts(data: data)
    var o: [String: JSONValue] = [
        "job_id": job, "state": .string(state), "time": .string(time),
        "workdir": workdir.map(JSONValue.string) ?? .null, "app": app.map(JSONValue.string) ?? .null,
        "tags": .object(tags.mapValues(JSONValue.string)), "return_code": facts.returnCode.map(JSONValue.int) ?? .null,
        "reason": .string(facts.reason ?? data["error"]?.stringValue ?? ""), "tail": .string(facts.tail ?? ""),
    ]
    o.merge(extra) { _, new in new }
    return .object(o)
}
