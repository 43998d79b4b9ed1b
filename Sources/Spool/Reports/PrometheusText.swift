/// Prometheus's text exposition format (version 0.0.4), as the server's `/metrics` and the watcher's
/// `--metrics-file` write it: families with their HELP and TYPE, label values escaped.
public struct PrometheusText: Sendable {
    public private(set) var text = ""

    public init() {}

    /// A family of series: `series` are (labels, value) pairs, written in the order given.
    public mutating func family(_ name: String, _ type: String, _ help: String, _ series: [([String: String], String)])
    {
        text += "# HELP \(name) \(help)\n# TYPE \(name) \(type)\n"
        for (labels, value) in series { text += name + Self.labels(labels) + " " + value + "\n" }
    }

    /// A line of its own (a histogram's buckets, under a family's HELP and TYPE).
    public mutating func line(_ name: String, _ labels: [String: String], _ value: String) {
        text += name + Self.labels(labels) + " " + value + "\n"
    }

    /// `{a="x",b="y"}`, sorted by name, values escaped as the format says (backslash, quote, newline).
    public static func labels(_ pairs: [String: String]) -> String {
        guard !pairs.isEmpty else { return "" }
        let inner = pairs.sorted { $0.key < $1.key }.map { key, value in
            var escaped = ""
            for c in value.unicodeScalars {
                switch c {
                case "\\": escaped += "\\\\"
                case "\"": escaped += "\\\""
                case "\n": escaped += "\\n"
                default: escaped.unicodeScalars.append(c)
                }
            }
            return "\(key)=\"\(escaped)\""
        }
        return "{" + inner.joined(separator: ",") + "}"
    }

    /// A sample value: whole numbers without a fraction.
    public static func number(_ value: Double) -> String {
        value == value.rounded() && abs(value) < 1e15 ? String(Int64(saturating: value)) : String(value)
    }
}
