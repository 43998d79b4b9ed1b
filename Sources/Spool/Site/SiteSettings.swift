/// The parts of `settings.yml` the programs act on. Unknown keys are kept for later versions and ignored.
public struct SiteSettings: Sendable, Equatable {
    /// Seconds a hook may run before it is killed (`processing.hook_timeout_sec`).
    public var hookTimeoutSeconds: Double = 600
    /// Seconds after its last heartbeat that a launcher's lease expires (`launcher.lease_timeout_sec`).
    public var leaseTimeoutSeconds: Double = 120
    /// Lines of output kept in a failure reason (`launcher.error_tail_num_lines`).
    public var errorTailLines = 10
    /// Only jobs whose tags contain all of these are processed here (`filter_tags`).
    public var filterTags: [String: String] = [:]

    /// The defaults of a new site.
    public init() {}

    /// Reads `SITE/settings.yml`; a missing file means defaults, a malformed one is an error naming it.
    public static func load(_ site: Site) throws(SpoolError) -> SiteSettings {
        let path = site.settingsPath
        guard Posix.exists(path) else { return SiteSettings() }
        let bytes = try Posix.readFile(path, limit: 1 << 20)
        guard let text = String(validating: bytes, as: UTF8.self) else {
            throw SpoolError(.invalidInput, "settings.yml is not valid UTF-8", path: path)
        }
        let root: JSONValue
        do { root = try YAML.parse(text) } catch {
            throw SpoolError(.invalidInput, "malformed YAML: \(error)", path: path)
        }
        var settings = SiteSettings()
        guard case .object(let o) = root else { return settings }
        func number(_ section: String, _ key: String) throws(SpoolError) -> Double? {
            guard let v = o[section]?.objectValue?[key], v != .null else { return nil }
            guard let d = v.doubleValue, d > 0 else {
                throw SpoolError(.invalidInput, "\(section).\(key) must be a positive number", path: path)
            }
            return d
        }
        settings.hookTimeoutSeconds = try number("processing", "hook_timeout_sec") ?? settings.hookTimeoutSeconds
        settings.leaseTimeoutSeconds = try number("launcher", "lease_timeout_sec") ?? settings.leaseTimeoutSeconds
        settings.errorTailLines =
            try number("launcher", "error_tail_num_lines").map { Int($0) } ?? settings.errorTailLines
        if case .object(let tags)? = o["filter_tags"] {
            settings.filterTags = tags.compactMapValues { $0.stringValue ?? ($0 == .null ? nil : $0.serialized()) }
        }
        return settings
    }
}
