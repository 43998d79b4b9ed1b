import Logging
import Spool

#if canImport(Glibc)
    import Glibc
#endif

/// How every Balsam program logs: one line per message on standard error, in one `write(2)` (so lines of several
/// threads never interleave).
///
/// - `text` (the default): `TIME PROGRAM: [LEVEL: ]MESSAGE [key=value ...]`. The time comes first, so a log sorts
///   and cuts (`cut -d' ' -f1`) like the site's event logs; info lines carry no level word.
/// - `json` (`--log-format json`): one JSON object per line, `{"time", "program", "level", "message", ...}` with
///   each metadata key (`job.id`, `batch_job.id`, `request_id`, `route` …) as a field of its own, for a log
///   shipper.
///
/// Either way a line is one line: a newline or other control character in a message or a value (a hook's error
/// text, a path) is escaped, never written raw, so no message can forge or split a line.
public struct LineLogHandler: LogHandler {
    public enum Format: String, Sendable, CaseIterable {
        case text, json
    }

    /// Bootstraps swift-log once for this process: every `Logger` writes lines as described, at `level` or above.
    public static func bootstrap(program: String, level: Logger.Level = .info, format: Format = .text) {
        LoggingSystem.bootstrap { _ in
            var handler = LineLogHandler(program: program, format: format)
            handler.logLevel = level
            return handler
        }
    }

    /// The program's name, as it starts each line.
    public let program: String
    public let format: Format
    public var logLevel: Logger.Level = .info
    public var metadata: Logger.Metadata = [:]
    public var metadataProvider: Logger.MetadataProvider?

    /// A handler for `program`'s lines.
    public init(program: String, format: Format = .text) {
        self.program = program
        self.format = format
    }

    public subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    public func log(event: LogEvent) {
        var fields = metadata
        if let provided = metadataProvider?.get() { fields.merge(provided) { $1 } }
        if let extra = event.metadata { fields.merge(extra) { $1 } }
        let values = fields.mapValues { "\($0)" }
        var bytes = Array(
            (Self.line(
                time: Timestamp.now(), program: program, level: event.level, message: event.message.description,
                fields: values, format: format) + "\n").utf8)
        _ = bytes.withUnsafeMutableBytes { write(2, $0.baseAddress, $0.count) }
    }

    /// One log line (without its newline).
    public static func line(
        time: String, program: String, level: Logger.Level, message: String, fields: [String: String], format: Format
    ) -> String {
        switch format {
        case .json:
            var object: [String: JSONValue] = [:]
            for (key, value) in fields { object[key] = .string(value) }
            object["time"] = .string(time)
            object["program"] = .string(program)
            object["level"] = .string(level.rawValue)
            object["message"] = .string(message)
            return JSONValue.object(object).serialized()
        case .text:
            var fields = fields
            var line = time + " " + program
            if let rank = fields.removeValue(forKey: "rank") { line += " (rank \(oneLine(rank)))" }
            line += ": "
            switch level {
            case .trace, .debug: line += "debug: "
            case .info, .notice: break
            case .warning: line += "warning: "
            case .error, .critical: line += "error: "
            }
            line += oneLine(message)
            if !fields.isEmpty {
                line +=
                    " ["
                    + fields.sorted { $0.key < $1.key }.map { "\(oneLine($0.key))=\(oneLine($0.value))" }
                    .joined(separator: " ") + "]"
            }
            return line
        }
    }

    /// `text` with its control characters escaped (`\n`, `\t`, `\u{1b}` …) and its backslashes doubled, so
    /// that it stays on one line and reads back unambiguously.
    static func oneLine(_ text: String) -> String {
        guard text.unicodeScalars.contains(where: { $0.value < 0x20 || $0.value == 0x7F || $0 == "\\" }) else {
            return text
        }
        var out = ""
        for scalar in text.unicodeScalars {
            switch scalar {
            case "\\": out += "\\\\"
            case "\n": out += "\\n"
            case "\r": out += "\\r"
            case "\t": out += "\\t"
            case _ where scalar.value < 0x20 || scalar.value == 0x7F:
                out += "\\u{" + String(scalar.value, radix: 16) + "}"
            default: out.unicodeScalars.append(scalar)
            }
        }
        return out
    }
}
