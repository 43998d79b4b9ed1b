import Logging
import Spool

#if canImport(Glibc)
    import Glibc
#endif

/// How every Balsam program logs: one line per message on standard error, in one `write(2)` (so lines of several
/// threads never interleave), as `TIME PROGRAM: [LEVEL: ]MESSAGE [key=value ...]`. The time comes first, so a
/// log sorts and cuts (`cut -d' ' -f1`) like the site's event logs; info lines carry no level word.
public struct LineLogHandler: LogHandler {
    /// Bootstraps swift-log once for this process: every `Logger` writes lines as described, at `level` or above.
    public static func bootstrap(program: String, level: Logger.Level = .info) {
        LoggingSystem.bootstrap { _ in
            var handler = LineLogHandler(program: program)
            handler.logLevel = level
            return handler
        }
    }

    /// The program's name, as it starts each line.
    public let program: String
    public var logLevel: Logger.Level = .info
    public var metadata: Logger.Metadata = [:]
    public var metadataProvider: Logger.MetadataProvider?

    /// A handler for `program`'s lines.
    public init(program: String) { self.program = program }

    public subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    public func log(event: LogEvent) {
        var line = Timestamp.now() + " " + program
        var fields = metadata
        if let provided = metadataProvider?.get() { fields.merge(provided) { $1 } }
        if let extra = event.metadata { fields.merge(extra) { $1 } }
        if let rank = fields.removeValue(forKey: "rank") { line += " (rank \(rank))" }
        line += ": "
        switch event.level {
        case .trace, .debug: line += "debug: "
        case .info, .notice: break
        case .warning: line += "warning: "
        case .error, .critical: line += "error: "
        }
        line += event.message.description
        if !fields.isEmpty {
            line +=
                " [" + fields.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }.joined(separator: " ") + "]"
        }
        var bytes = Array((line + "\n").utf8)
        _ = bytes.withUnsafeMutableBytes { write(2, $0.baseAddress, $0.count) }
    }
}
