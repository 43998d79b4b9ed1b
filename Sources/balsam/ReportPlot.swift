import Batch
import Processes
import Spool

#if canImport(Glibc)
    import Glibc
#endif

/// `--plot FILE.png|FILE.svg`: a report's series drawn by gnuplot (Debian's `gnuplot-nox`). The data and the
/// script go to a scratch directory beside FILE; the picture is renamed into place whole, so FILE is either the
/// old file or the new picture.
struct ReportPlot {
    /// One drawn series: a title, a gnuplot style and (seconds since the epoch, value) points.
    struct Series {
        var title: String
        var style: String
        var points: [(Double, Double)]

        /// Bins drawn as steps: each bin's value from its start to the next; the last one to its end.
        static func bins(_ title: String, style: String, _ bins: [(Double, Double)], width: Double) -> Series {
            Series(title: title, style: style, points: bins + (bins.last.map { [($0.0 + width, $0.1)] } ?? []))
        }
    }

    var title: String
    var yLabel: String
    var series: [Series]
    /// Whether the values are counts (ticks on whole numbers).
    var counts = false

    /// The terminal for FILE's extension; anything else is a usage error.
    static func terminal(for path: String) throws(SpoolError) -> String {
        let lower = path.lowercased()
        if lower.hasSuffix(".png") { return "pngcairo size 1000,500 font 'sans,10'" }
        if lower.hasSuffix(".svg") { return "svg size 1000,500 dynamic font 'sans,10'" }
        throw SpoolError(.usage, "--plot \(path): the file must end in .png or .svg")
    }

    func write(to path: String) throws(SpoolError) {
        let terminal = try ReportPlot.terminal(for: path)
        let target = Posix.absolute(path)
        let parent = Posix.parentPath(target)
        guard Posix.isDirectory(parent) else {
            throw SpoolError(.notFound, "--plot \(path): no directory \(parent)")
        }
        var template = Array((parent + "/.balsam-plot.XXXXXX").utf8CString)
        guard let made = mkdtemp(&template) else { throw .system("mkdtemp", path: parent, errno: errno) }
        let scratch = String(cString: made)
        defer { Posix.removeTree(scratch) }
        var plots: [String] = []
        for (k, s) in series.enumerated() {
            let data = scratch + "/series\(k).dat"
            // An empty series still draws (gnuplot refuses a file with no points): one point at zero.
            let points = s.points.isEmpty ? [(0.0, 0.0)] : s.points
            let text = points.map { "\(fixed($0.0)) \(fixed($0.1))" }.joined(separator: "\n") + "\n"
            try Posix.createFile(data, Array(text.utf8), sync: false)
            plots.append("'\(data)' using 1:2 with \(s.style) title \(quoted(s.title))")
        }
        // The dashboard's rule: round steps, the top above the largest value (a line at the nodes held would
        // otherwise run along the frame).
        let top = series.flatMap { $0.points.map(\.1) }.max() ?? 0
        let ticks = AxisTicks.upTo(top, whole: counts)
        let picture = scratch + "/picture"
        let script = """
            set terminal \(terminal)
            set output \(quoted(picture))
            set title \(quoted(title)) noenhanced
            set xdata time
            set timefmt '%s'
            set format x "%m-%d\\n%H:%M:%S"
            set xlabel 'time (UTC)'
            set ylabel \(quoted(yLabel))
            set yrange [0:\(fixed(ticks.last ?? 1))]
            set ytics 0, \(fixed(ticks.count > 1 ? ticks[1] : 1))
            set grid
            set key outside right top noenhanced
            plot \(plots.joined(separator: ", \\\n    "))
            """
        try Posix.createFile(scratch + "/plot.gp", Array((script + "\n").utf8), sync: false)
        let command = SchedulerCommand(timeoutSeconds: 120, directory: scratch)
        guard command.find("gnuplot") != nil else {
            throw SpoolError(
                .unavailable,
                "--plot needs gnuplot, which is not in PATH: install Debian's gnuplot-nox (apt-get install "
                    + "gnuplot-nox), or draw the series from --json")
        }
        let result = try command.runAllowingFailure(["gnuplot", scratch + "/plot.gp"])
        guard result.status == 0, Posix.exists(picture) else {
            throw SpoolError(
                .unavailable, "gnuplot could not draw \(path) (status \(result.status)): \(result.errors)")
        }
        try Posix.rename(picture, target)
    }

    private func quoted(_ text: String) -> String {
        "'" + text.replacingAll("'", with: "''") + "'"
    }

    private func fixed(_ v: Double) -> String {
        v.rounded() == v && abs(v) < 1e15 ? String(Int(saturating: v)) : String(v)
    }
}
