/// This build's version: the repository's `VERSION` file (a semantic version; a release is tagged `vVERSION`),
/// what every command's `--version` prints. A test keeps the two equal, and balsam-task-guard's too.
public enum BalsamVersion {
    public static let string = "0.9.0"
}
