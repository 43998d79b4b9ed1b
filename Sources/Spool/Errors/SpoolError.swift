#if canImport(Glibc)
    import Glibc
#endif

/// The one error type of the `Spool` library: what went wrong, where, and the system error behind it.
///
/// Every message names the file, job, line or field involved, so a user can act on it without a debugger.
public struct SpoolError: Error, Sendable, CustomStringConvertible {
    /// What kind of failure this is; executables map it to a sysexits status.
    public struct Code: Hashable, Sendable, CustomStringConvertible {
        let rawValue: String
        /// The request itself is malformed (a bad option value); sysexits `EX_USAGE` (64).
        public static let usage = Code(rawValue: "usage")
        /// Input data is invalid: bad JSON, unknown app, bad parameter, bad workdir; `EX_DATAERR` (65).
        public static let invalidInput = Code(rawValue: "invalid input")
        /// A named input does not exist: no such file, job, app or site; `EX_NOINPUT` (66).
        public static let notFound = Code(rawValue: "not found")
        /// A needed service or format is unavailable (site format too new); `EX_UNAVAILABLE` (69).
        public static let unavailable = Code(rawValue: "unavailable")
        /// Something that must be created already exists or cannot be made; `EX_CANTCREAT` (73).
        public static let cannotCreate = Code(rawValue: "cannot create")
        /// Reading or writing failed: full disk, read-only filesystem, I/O error; `EX_IOERR` (74).
        public static let io = Code(rawValue: "I/O error")
        /// Someone else changed the job first; look again and retry; `EX_TEMPFAIL` (75).
        public static let conflict = Code(rawValue: "conflict")

        public var description: String { rawValue }
    }

    /// The kind of failure.
    public var code: Code
    /// A sentence saying what is wrong.
    public var message: String
    /// The file or directory involved, if any.
    public var path: String?
    /// The underlying `errno`, if a system call failed.
    public var cause: Int32?

    /// Makes an error from its parts.
    public init(_ code: Code, _ message: String, path: String? = nil, cause: Int32? = nil) {
        self.code = code
        self.message = message
        self.path = path
        self.cause = cause
    }

    /// Makes an error for a failed system call, classifying `errno` into a code.
    package static func system(_ operation: String, path: String, errno err: Int32) -> SpoolError {
        let code: Code
        switch err {
        case EEXIST, ENOTEMPTY: code = .cannotCreate
        case ENOENT, ENOTDIR: code = .notFound
        case EACCES, EPERM: code = .cannotCreate
        default: code = .io
        }
        return SpoolError(code, "cannot \(operation)", path: path, cause: err)
    }

    /// Whether writes fail for want of room (a full disk or an exhausted quota), which frees up by itself; a
    /// read-only or failing filesystem does not.
    public var isOutOfRoom: Bool { cause == ENOSPC || cause == EDQUOT }

    /// What stops writes, said for a log line that waits for it to pass: "the filesystem is read-only", "the
    /// disk has no room"; nil for an error that is not the filesystem's.
    public var writeTrouble: String? {
        switch cause {
        case EROFS: "the filesystem is read-only"
        case ENOSPC: "the disk has no room"
        case EDQUOT: "the disk quota is used up"
        case EIO: "the disk fails (I/O error)"
        default: code == .io ? "writes fail" : nil
        }
    }

    public var description: String {
        var text = ""
        if let path { text += "\(path): " }
        text += message
        if let cause { text += ": " + String(cString: strerror(cause)) }
        return text
    }
}
