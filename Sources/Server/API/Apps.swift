import Hummingbird
import Spool
import Wire

/// `/apps/`: the apps registered at a user's sites (the original's `ApplicationDefinition` classes).
enum Apps {
    static let columns =
        "id, site_id, name, serialized_class, source_code, description, parameters, transfers, site_refusal"
    /// The same, for the list's join with sites.
    static let joinedColumns =
        "a.id, a.site_id, a.name, a.serialized_class, a.source_code, a.description, a.parameters, a.transfers, "
        + "a.site_refusal"

    static func write(_ r: SQLRow, to out: inout JSONWriter) {
        out.beginObject()
        out.field("id", r.int(0))
        out.field("site_id", r.int(1))
        out.field("name", r.text(2))
        out.field("serialized_class", r.text(3))
        out.field("source_code", r.text(4))
        out.field("description", r.text(5))
        out.raw("parameters", r.text(6))
        out.raw("transfers", r.text(7))
        // Our addition: why the app's site could not install it (null when it could, or has not said).
        out.value("site_refusal", r.optionalText(8).map { .string($0) } ?? .null)
        out.endObject()
    }

    /// An app name is a Python identifier (the original's rule: it names a class).
    static func validateName(_ name: String, input: FieldReader) throws {
        let bytes = Array(name.utf8)
        let ok =
            !bytes.isEmpty && bytes.count <= 128 && !(bytes[0] >= 0x30 && bytes[0] <= 0x39)
            && bytes.allSatisfy { c in
                (c >= 0x30 && c <= 0x39) || (c | 0x20 >= 0x61 && c | 0x20 <= 0x7A) || c == UInt8(ascii: "_")
            }
        if !ok { throw input.bad("name", "'\(name)' is not a valid class name (letters, digits, '_')") }
    }

    /// `parameters`: `{name: {required, default, help}}`; a parameter is required or has a default, not both.
    static func checkParameters(_ value: [String: JSONValue], input: FieldReader) throws {
        for (name, spec) in value {
            var p = try FieldReader(spec, prefix: input.name("parameters.\(name)"))
            let required = try p.bool("required") ?? true
            let fallback = p.value("default")
            _ = try p.string("help", maxBytes: 4096)
            try p.finish()
            let hasDefault = fallback.map { $0 != .string("") } ?? false
            if required && hasDefault { throw p.bad("default", "a required parameter cannot have a default") }
            if !required && !hasDefault { throw p.bad("default", "an optional parameter needs a default") }
        }
    }

    /// `transfers`: `{slot: {required, direction: in|out, local_path (relative), description, recursive}}`.
    static func checkTransfers(_ value: [String: JSONValue], input: FieldReader) throws {
        for (slot, spec) in value {
            var t = try FieldReader(spec, prefix: input.name("transfers.\(slot)"))
            _ = try t.bool("required")
            let direction = try t.requiredString("direction", maxBytes: 8)
            if direction != "in" && direction != "out" { throw t.bad("direction", "must be 'in' or 'out'") }
            let local = try t.requiredString("local_path")
            if local.hasPrefix("/") { throw t.bad("local_path", "must be relative to the job's directory") }
            _ = try t.string("description")
            _ = try t.bool("recursive")
            try t.finish()
        }
    }

    private static func members(_ input: inout FieldReader, creating: Bool, call: Call) throws -> [(String, SQLValue)] {
        var out: [(String, SQLValue)] = []
        let siteID =
            creating ? try input.requiredInt("site_id", in: 1...Int.max) : try input.int("site_id", in: 1...Int.max)
        if let siteID {
            guard
                try call.connection.scalar(
                    "SELECT id FROM sites WHERE id = \(.of(siteID)) AND owner_id = \(.of(call.user.id))") != nil
            else { throw ServerError.notFound("site \(siteID)") }
            out.append(("site_id", .of(siteID)))
        }
        let name = creating ? try input.requiredString("name") : try input.string("name")
        if let name {
            try validateName(name, input: input)
            out.append(("name", .text(name)))
        }
        for key in ["serialized_class", "source_code"] {
            let limit = key == "serialized_class" ? 262_144 : 1 << 20
            if let text = try input.string(key, maxBytes: limit) {
                // What a site walks for the class's command template and methods must be walkable to its end.
                if key == "serialized_class" && !text.isEmpty {
                    do { try Pickle.check(base64: text) } catch {
                        throw input.bad(key, "cannot be read: \(error)")
                    }
                }
                out.append((key, .text(text)))
            } else if creating {
                throw input.bad(key, "is required")
            }
        }
        if let description = try input.string("description", maxBytes: 65_536) {
            out.append(("description", .text(description)))
        } else if creating {
            out.append(("description", .text("")))
        }
        if let parameters = try input.object("parameters") {
            try checkParameters(parameters, input: input)
            out.append(("parameters", .text(jsonText(parameters))))
        } else if creating {
            out.append(("parameters", .text("{}")))
        }
        if let transfers = try input.object("transfers") {
            try checkTransfers(transfers, input: input)
            out.append(("transfers", .text(jsonText(transfers))))
        } else if creating {
            out.append(("transfers", .text("{}")))
        }
        _ = input.value("id")
        try input.finish()
        return out
    }

    static func list(_ call: inout Call) throws -> Reply {
        var conditions = Conditions(owner: call.user.id, column: "a.owner_id")
        if let ids = try call.query.ints("site_id") { conditions.any("a.site_id", ids.map { .of($0) }) }
        if let ids = try call.query.ints("id") { conditions.any("a.id", ids.map { .of($0) }) }
        if let name = try call.query.string("name") { conditions.add("a.name = \(.text(name))") }
        if let path = try call.query.string("site_path") {
            conditions.add(call.dialect.contains("s.path", path))
        }
        if let name = try call.query.string("site_name") { conditions.add("s.name = \(.text(name))") }
        let ordering = try call.query.ordering(["id": "a.id", "name": "a.name"], default: "a.id ASC", id: "a.id")
        return try page(
            call: &call, table: "apps a JOIN sites s ON s.id = a.site_id", columns: joinedColumns,
            conditions: conditions, ordering: ordering, write)
    }

    static func create(_ call: inout Call) throws -> Reply {
        var input = try FieldReader(try call.json())
        let all = try members(&input, creating: true, call: call) + [("owner_id", .of(call.user.id))]
        return try insertOne(
            call, table: "apps", members: all, columns: columns,
            duplicate: "the site already has an app with this name", write)
    }

    static func one(_ call: inout Call) throws -> Reply {
        try detail(call, table: "apps", columns: columns, what: "app", write)
    }

    static func update(_ call: inout Call) throws -> Reply {
        let id = try call.requiredID()
        var input = try FieldReader(try call.json())
        let members = try members(&input, creating: false, call: call)
        guard
            try call.connection.scalar(
                "SELECT id FROM apps WHERE id = \(.of(id)) AND owner_id = \(.of(call.user.id))")
                != nil
        else { throw ServerError.notFound("app \(id)") }
        try refusingDuplicate("the site already has an app with this name") {
            try call.connection.transaction {
                if !members.isEmpty {
                    try call.connection.execute(
                        "UPDATE apps SET \(SQL.assignments(members)) WHERE id = \(.of(id))")
                }
                // Jobs carry their site for fast filtering: they follow an app that moves.
                if let site = members.first(where: { $0.0 == "site_id" }) {
                    try call.connection.execute("UPDATE jobs SET site_id = \(site.1) WHERE app_id = \(.of(id))")
                }
            }
        }
        return try one(&call)
    }

    /// `DELETE /apps/{id}`: the app and its jobs.
    static func delete(_ call: inout Call) throws -> Reply { try deleteOwned(call, table: "apps", what: "app") }
}

extension Apps {
    /// `/apps/`.
    static func routes(_ e: Endpoints) -> RouteCollection<BalsamRequestContext> {
        RouteCollection(
            e,
            [
                (.get, "/", list), (.post, "/", create), (.get, "/{id}", one), (.put, "/{id}", update),
                (.delete, "/{id}", delete),
            ])
    }
}
