import Spool

/// One item of a site's push that the server did not take, as the server's reply carries it and the site reads
/// it: the server and the sync share this one reading and one writing (`json`, `init?(json:)`).
///
/// A refusal never stops a push: the server records the rest, and the site keeps the refusal (its
/// `sync/state.json`), shows it and moves on. The site switches on `code`, never on `message`.
public struct SyncRefusal: Sendable, Equatable {
    /// What the site does about a refusal.
    public enum Code: String, Sendable, CaseIterable {
        /// A field is wrong (`field` says which): left out.
        case invalid
        /// The job's app is not on the server (a site registered again): the site sends its apps again.
        case unknownApp = "unknown_app"
        /// An event of a job the server does not have: the site sends the job's spec again.
        case unknownJob = "unknown_job"
        /// A job made through the API was deleted there before the site's adoption of it arrived: left out.
        case deleted
    }

    /// `job` or `event`.
    public var kind: String
    /// The site's id of the job.
    public var siteJobID: String
    /// What the site does about it.
    public var code: Code
    /// Why, for people.
    public var message: String
    /// The request field involved, if one.
    public var field: String?

    /// Makes a refusal.
    public init(kind: String, siteJobID: String, code: Code, message: String, field: String? = nil) {
        self.kind = kind
        self.siteJobID = siteJobID
        self.code = code
        self.message = message
        self.field = field
    }

    /// Reads one from a push's reply; nil when it is not one (an unknown code is not guessed at).
    public init?(json: JSONValue) {
        guard let o = json.objectValue, let kind = o["kind"]?.stringValue,
            let code = o["code"]?.stringValue.flatMap(Code.init(rawValue:))
        else { return nil }
        self.init(
            kind: kind, siteJobID: o["site_job_id"]?.stringValue ?? "", code: code,
            message: o["message"]?.stringValue ?? "", field: o["field"]?.stringValue)
    }

    /// As the server's reply carries it.
    public var json: JSONValue {
        var o: [String: JSONValue] = [
            "kind": .string(kind), "site_job_id": .string(siteJobID), "code": .string(code.rawValue),
            "message": .string(message),
        ]
        if let field { o["field"] = .string(field) }
        return .object(o)
    }

    /// The key the site keeps it under (`job ID`, `event ID`), and the text it shows.
    public var key: String { kind + " " + siteJobID }
    public var text: String { "\(code.rawValue): \(message)" + (field.map { " (\($0))" } ?? "") }
}
