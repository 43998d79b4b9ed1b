import Spool
import Wire

/// The OpenAPI 3.0 document of what this server implements, served at `/openapi.json`: built from the same
/// names the routes use, so schemathesis can check every reply against it.
enum OpenAPI {
    static let document: [UInt8] = {
        var bytes: [UInt8] = []
        build().write(to: &bytes)
        return bytes
    }()

    private static func ref(_ name: String) -> JSONValue { .object(["$ref": .string("#/components/schemas/\(name)")]) }
    private static func type(_ t: String, nullable: Bool = false) -> JSONValue {
        var o: [String: JSONValue] = ["type": .string(t)]
        if nullable { o["nullable"] = .bool(true) }
        return .object(o)
    }
    private static let string = type("string")
    private static let integer = type("integer")
    private static let anyObject: JSONValue = .object(["type": .string("object"), "additionalProperties": .bool(true)])
    private static let stringMap: JSONValue = .object(["type": .string("object"), "additionalProperties": string])
    /// A time with its zone (`last_update`, which the client compares with an aware time).
    private static let dateTime: JSONValue = .object(["type": .string("string"), "format": .string("date-time")])
    /// A naive UTC time, as the original client expects most times (no zone, so not RFC 3339's `date-time`).
    private static let naiveTime: JSONValue = .object([
        "type": .string("string"), "description": .string("UTC, ISO 8601 without a zone"),
    ])

    private static func object(_ properties: [String: JSONValue], required: [String]? = nil) -> JSONValue {
        .object([
            "type": .string("object"), "properties": .object(properties),
            "required": .array((required ?? properties.keys.sorted()).map { .string($0) }),
        ])
    }

    private static func list(_ item: JSONValue) -> JSONValue { .object(["type": .string("array"), "items": item]) }
    private static func page(_ item: String) -> JSONValue {
        object(["count": integer, "results": list(ref(item))])
    }

    private static let jobStates = JSONValue.object([
        "type": .string("string"), "enum": .array(JobState.stored.map { .string($0.rawValue) }),
    ])

    private static var schemas: [String: JSONValue] {
        [
            "Error": object(["detail": string, "field": string], required: ["detail"]),
            "Site": object([
                "id": integer, "name": string, "path": string, "globus_endpoint_id": type("string", nullable: true),
                "backfill_windows": anyObject, "queued_jobs": anyObject, "optional_batch_job_params": anyObject,
                "allowed_projects": list(.object([:])), "allowed_queues": anyObject, "transfer_locations": anyObject,
                "last_refresh": naiveTime, "creation_date": naiveTime,
            ]),
            "App": object([
                "id": integer, "site_id": integer, "name": string, "serialized_class": string, "source_code": string,
                "description": string, "parameters": anyObject, "transfers": anyObject,
                "site_refusal": type("string", nullable: true),
            ]),
            "Job": object(Dictionary(uniqueKeysWithValues: JobField.columns.map { ($0.name, $0.schema) })),
            "BatchJob": object([
                "id": integer, "site_id": integer, "scheduler_id": type("integer", nullable: true), "project": string,
                "queue": string, "num_nodes": integer, "wall_time_min": integer, "job_mode": string,
                "optional_params": anyObject, "filter_tags": anyObject,
                "partitions": .object(["type": .string("array"), "nullable": .bool(true), "items": anyObject]),
                "state": string, "status_info": anyObject,
                "start_time": .object(["type": .string("string"), "nullable": .bool(true)]),
                "end_time": .object(["type": .string("string"), "nullable": .bool(true)]),
            ]),
            "Event": object([
                "id": integer, "job_id": integer, "timestamp": naiveTime, "from_state": string, "to_state": string,
                "data": anyObject,
            ]),
            "TransferItem": object([
                "id": integer, "job_id": integer, "direction": string, "local_path": string, "remote_path": string,
                "location_alias": string, "recursive": type("boolean"), "state": string, "task_id": string,
                "transfer_info": anyObject,
            ]),
            "User": object(["id": integer, "username": string]),
            "Token": object([
                "access_token": string, "token_type": string, "expiration": type("string", nullable: true),
            ]),
        ]
    }

    private static func parameter(_ name: String, _ schema: JSONValue, path: Bool = false) -> JSONValue {
        .object([
            "name": .string(name), "in": .string(path ? "path" : "query"), "required": .bool(path),
            "schema": schema, "style": .string("form"), "explode": .bool(true),
        ])
    }

    private static func json(_ schema: JSONValue) -> JSONValue {
        .object(["content": .object(["application/json": .object(["schema": schema])])])
    }

    private static func response(_ description: String, _ schema: JSONValue?) -> JSONValue {
        var o: [String: JSONValue] = ["description": .string(description)]
        if let schema { o["content"] = .object(["application/json": .object(["schema": schema])]) }
        return .object(o)
    }

    private static func operation(
        _ summary: String, query: [(String, JSONValue)] = [], id: Bool = false, body: JSONValue? = nil,
        status: Int = 200, reply: JSONValue?, authenticated: Bool = true, form: Bool = false
    ) -> JSONValue {
        var responses: [String: JSONValue] = [
            String(status): response(summary, reply),
            "400": response("The request is wrong; detail says why and field where.", ref("Error")),
            "413": response("The body is too large.", ref("Error")),
            "503": response("The database cannot be reached.", ref("Error")),
            "403": response("Not allowed to this token (a site token pushing as another site).", ref("Error")),
        ]
        if authenticated {
            responses["401"] = response("No valid bearer token.", ref("Error"))
            responses["404"] = response("No such object of yours.", ref("Error"))
        } else {
            responses["401"] = response("Wrong user name or password.", ref("Error"))
            responses["403"] = response("Registration is closed.", ref("Error"))
            responses["429"] = response(
                "Too many failed logins from this address: try again after Retry-After seconds.", ref("Error"))
        }
        var o: [String: JSONValue] = ["summary": .string(summary), "responses": .object(responses)]
        var parameters = query.map { parameter($0.0, $0.1) }
        if id { parameters.append(parameter("id", integer, path: true)) }
        if !parameters.isEmpty { o["parameters"] = .array(parameters) }
        if let body {
            if form {
                o["requestBody"] = .object([
                    "required": .bool(true),
                    "content": .object(["application/x-www-form-urlencoded": .object(["schema": body])]),
                ])
            } else {
                var b = json(body).objectValue ?? [:]
                b["required"] = .bool(true)
                o["requestBody"] = .object(b)
            }
        }
        if !authenticated { o["security"] = .array([]) }
        return .object(o)
    }

    private static let paging: [(String, JSONValue)] = [
        ("limit", integer), ("offset", integer), ("ordering", string),
    ]
    private static let jobFilters: [(String, JSONValue)] = [
        ("id", list(integer)), ("parent_id", list(integer)), ("app_id", integer), ("site_id", list(integer)),
        ("batch_job_id", integer), ("last_update_before", dateTime), ("last_update_after", dateTime),
        ("workdir__contains", string), ("state", list(jobStates)), ("state__ne", jobStates), ("tags", list(string)),
        ("pending_file_cleanup", type("boolean")),
    ]

    // Over 100 lines: the document's paths, declared in one place to be read as one.
    private static func build() -> JSONValue {
        let count = integer
        // From the job's one declaration: what a create takes (its app, workdir, parameters, parents and spec)
        // and what an update takes (the spec a user may change, and the run's fields).
        func fieldSchemas(_ fields: [JobField]) -> [String: JSONValue] {
            Dictionary(uniqueKeysWithValues: fields.map { ($0.name, $0.schema) })
        }
        let jobCreate = object(
            fieldSchemas([.appID, .workdir, .serializedParameters, .parentIDs] + JobField.spec),
            required: [JobField.appID.name, JobField.workdir.name])
        let jobUpdate = object(
            fieldSchemas(
                [
                    .workdir, .serializedParameters, .returnCode, .batchJobID, .pendingFileCleanup,
                    .serializedReturnValue,
                    .serializedException, .state,
                ] + JobField.spec.filter(\.forwarded)
            ).merging(["state_timestamp": naiveTime, "state_data": anyObject]) { a, _ in a }, required: [])
        var jobBulk = jobUpdate.objectValue ?? [:]
        jobBulk["required"] = .array([.string("id")])
        if case .object(var props)? = jobBulk["properties"] {
            props["id"] = integer
            jobBulk["properties"] = .object(props)
        }
        let siteCreate = object(
            ["name": string, "path": string, "transfer_locations": stringMap, "allowed_projects": list(string)],
            required: ["name", "path"])
        let appCreate = object(
            [
                "site_id": integer, "name": string, "serialized_class": string, "source_code": string,
                "description": string, "parameters": anyObject, "transfers": anyObject,
            ], required: ["site_id", "name", "serialized_class", "source_code"])
        let batchCreate = object(
            [
                "site_id": integer, "num_nodes": integer, "wall_time_min": integer, "job_mode": string,
                "project": string, "queue": string, "optional_params": stringMap, "filter_tags": stringMap,
            ], required: ["site_id", "num_nodes", "wall_time_min", "job_mode", "project", "queue"])
        let batchUpdate = object(
            ["scheduler_id": integer, "state": string, "status_info": anyObject, "start_time": naiveTime],
            required: [])
        let transferUpdate = object(["state": string, "task_id": string, "transfer_info": anyObject], required: [])
        let paths: [String: JSONValue] = [
            "/auth/how": .object(["get": operation("Login methods", reply: list(string), authenticated: false)]),
            "/auth/password/register": .object([
                "post": operation(
                    "Register a user", body: object(["username": string, "password": string]), status: 201,
                    reply: ref("User"), authenticated: false)
            ]),
            "/auth/password/login": .object([
                "post": operation(
                    "Log in with a password", body: object(["username": string, "password": string]),
                    reply: ref("Token"), authenticated: false, form: true)
            ]),
            "/auth/password/me": .object(["get": operation("The current user", reply: ref("User"))]),
            "/sites/": .object([
                "get": operation(
                    "List sites",
                    query: paging + [
                        ("name", string), ("path", string), ("id", list(integer)), ("last_refresh_after", dateTime),
                    ], reply: page("Site")),
                "post": operation("Create a site", body: siteCreate, status: 201, reply: ref("Site")),
            ]),
            "/sites/{id}": .object([
                "get": operation("One site", id: true, reply: ref("Site")),
                "put": operation("Update a site", id: true, body: anyObject, reply: ref("Site")),
                "delete": operation("Delete a site and all under it", id: true, status: 204, reply: nil),
            ]),
            "/apps/": .object([
                "get": operation(
                    "List apps",
                    query: paging + [
                        ("site_id", list(integer)), ("id", list(integer)), ("name", string), ("site_path", string),
                        ("site_name", string),
                    ], reply: page("App")),
                "post": operation("Create an app", body: appCreate, status: 201, reply: ref("App")),
            ]),
            "/apps/{id}": .object([
                "get": operation("One app", id: true, reply: ref("App")),
                "put": operation("Update an app", id: true, body: anyObject, reply: ref("App")),
                "delete": operation("Delete an app and its jobs", id: true, status: 204, reply: nil),
            ]),
            "/jobs/": .object([
                "get": operation("List jobs", query: paging + jobFilters, reply: page("Job")),
                "post": operation("Create jobs", body: list(jobCreate), status: 201, reply: list(ref("Job"))),
                "patch": operation("Update jobs, each its own way", body: list(.object(jobBulk)), reply: count),
                "put": operation("Update the matching jobs alike", query: jobFilters, body: jobUpdate, reply: count),
                "delete": operation("Delete the matching jobs", query: jobFilters, status: 204, reply: nil),
            ]),
            "/jobs/{id}": .object([
                "get": operation("One job", id: true, reply: ref("Job")),
                "put": operation("Update a job", id: true, body: jobUpdate, reply: ref("Job")),
                "delete": operation("Delete a job", id: true, status: 204, reply: nil),
            ]),
            "/batch-jobs/": .object([
                "get": operation(
                    "List batch jobs",
                    query: paging + [
                        ("id", list(integer)), ("site_id", list(integer)), ("state", list(string)),
                        ("scheduler_id", integer), ("queue", string), ("start_time_before", dateTime),
                        ("start_time_after", dateTime), ("end_time_before", dateTime), ("end_time_after", dateTime),
                        ("filter_tags", list(string)),
                    ], reply: page("BatchJob")),
                "post": operation("Request a batch job", body: batchCreate, status: 201, reply: ref("BatchJob")),
                "patch": operation(
                    "Update batch jobs", body: list(batchUpdate), reply: list(ref("BatchJob"))),
            ]),
            "/batch-jobs/{id}": .object([
                "get": operation("One batch job", id: true, reply: ref("BatchJob")),
                "put": operation("Update a batch job", id: true, body: batchUpdate, reply: ref("BatchJob")),
                "delete": operation("Delete a batch job", id: true, status: 204, reply: nil),
            ]),
            "/events/": .object([
                "get": operation(
                    "List state changes",
                    query: paging + [
                        ("id", list(integer)), ("job_id", list(integer)), ("batch_job_id", integer),
                        ("scheduler_id", integer), ("tags", list(string)), ("data", list(string)),
                        ("timestamp_before", dateTime), ("timestamp_after", dateTime), ("from_state", jobStates),
                        ("to_state", jobStates),
                    ], reply: page("Event"))
            ]),
            "/transfers/": .object([
                "get": operation(
                    "List transfer items",
                    query: paging + [
                        ("id", list(integer)), ("site_id", integer), ("job_id", list(integer)),
                        ("state", list(string)), ("direction", string), ("job_state", jobStates),
                        ("tags", list(string)),
                    ], reply: page("TransferItem")),
                "patch": operation("Update transfer items", body: list(transferUpdate), reply: count),
            ]),
            "/sync/push": .object([
                "post": operation(
                    "A site mirrors itself: registration, apps, jobs and events, idempotent",
                    body: object(
                        [
                            "site": object(["name": string, "path": string]), "apps": list(anyObject),
                            "jobs": list(anyObject), "events": list(anyObject), "refused_apps": anyObject,
                        ], required: ["site"]),
                    reply: object([
                        "site_id": integer, "apps": anyObject, "jobs": anyObject, "events": integer,
                        "refused": list(anyObject),
                    ]))
            ]),
            "/transfers/{id}": .object([
                "get": operation("One transfer item", id: true, reply: ref("TransferItem")),
                "put": operation("Update a transfer item", id: true, body: transferUpdate, reply: ref("TransferItem")),
            ]),
        ]
        return .object([
            "openapi": .string("3.0.3"),
            "info": .object([
                "title": .string("Balsam for Swift"), "version": .string("1"),
                "description": .string("The original Balsam REST API, as balsam-server implements it."),
            ]),
            "paths": .object(paths),
            "components": .object([
                "schemas": .object(schemas),
                "securitySchemes": .object([
                    "bearer": .object(["type": .string("http"), "scheme": .string("bearer")])
                ]),
            ]),
            "security": .array([.object(["bearer": .array([])])]),
        ])
    }
}
