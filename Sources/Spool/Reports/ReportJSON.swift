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

/// One failure as JSON, at the site and on the server.
public func failureJSON(
    job: JSONValue, state: String, time: String, workdir: String?, app: String?, tags: [String: String],
    data: [String: JSONValue], extra: [String: JSONValue] = [:]
) -> JSONValue {
    var o: [String: JSONValue] = [
        "job_id": job, "state": .string(state), "time": .string(time),
        "workdir": workdir.map(JSONValue.string) ?? .null, "app": app.map(JSONValue.string) ?? .null,
        "tags": .object(tags.mapValues(JSONValue.string)), "return_code": data["return_code"] ?? .null,
        "reason": .string(data["reason"]?.stringValue ?? data["error"]?.stringValue ?? ""),
        "tail": .string(data["tail"]?.stringValue ?? ""),
    ]
    o.merge(extra) { _, new in new }
    return .object(o)
}
