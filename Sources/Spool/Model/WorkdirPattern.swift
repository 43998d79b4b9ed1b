#if canImport(Glibc)
    import Glibc
#endif

/// What `-w` selects in every command: exactly one workdir, or, when the text holds a glob character (`*`, `?`,
/// `[`), every workdir the glob matches (fnmatch(3) without FNM_PATHNAME: `*` matches `/` too, so `runs/*` is
/// everything under `runs`; a backslash quotes the next character). A trailing `/` is ignored. The original
/// Balsam's `-w TEXT` (workdirs containing TEXT) is `containing(TEXT)`.
public struct WorkdirPattern: Sendable, Equatable, CustomStringConvertible {
    /// The text as given, less a trailing `/`.
    public let text: String
    /// Whether `text` is a glob.
    public let isGlob: Bool

    /// The pattern `text` means.
    public init(_ text: String) {
        var text = text
        while text.count > 1 && text.hasSuffix("/") { text.removeLast() }
        self.text = text
        isGlob = text.contains { $0 == "*" || $0 == "?" || $0 == "[" }
    }

    /// Workdirs that contain `fragment` anywhere: the glob `*fragment*`, its glob characters quoted.
    public static func containing(_ fragment: String) -> WorkdirPattern {
        var quoted = ""
        for c in fragment {
            if c == "*" || c == "?" || c == "[" || c == "\\" { quoted.append("\\") }
            quoted.append(c)
        }
        return WorkdirPattern("*" + quoted + "*")
    }

    /// Whether `workdir` is selected.
    public func matches(_ workdir: String) -> Bool {
        isGlob ? fnmatch(text, workdir, 0) == 0 : workdir == text
    }

    public var description: String { text }
}
