#if canImport(Glibc)
    import Glibc
#endif

/// A site a project's group shares (`balsam init --group G`): its directories belong to the group and are
/// set-group-ID, so what anyone makes inside belongs to the group too, and every member's commands give the group
/// what they give their owner. The site's marker (`.balsam-site`) names the group; a site made inside a
/// set-group-ID project directory without `--group` stays private to its owner's umask. The watcher's claim and
/// the launchers' leases stay exclusive: they name a process, not a user, and a member's watcher sees another
/// member's as alive (EPERM from kill(2) is an answer).
public enum SharedSite {
    /// The group `name` names (a group name or a number).
    public static func group(named name: String) throws(SpoolError) -> gid_t {
        if let number = UInt32(name) { return number }
        guard let entry = getgrnam(name) else {
            throw SpoolError(.usage, "--group \(name): no such group (getent group \(name) shows nothing)")
        }
        return entry.pointee.gr_gid
    }

    /// Gives the tree at `root` (a new site, before it is renamed into place) to `group`: each directory
    /// group-writable and set-group-ID, each file group-writable.
    static func share(_ root: String, group: gid_t) throws(SpoolError) {
        var st = stat()
        try Posix.call("stat", path: root) { lstat(root, &st) }
        let directory = (st.st_mode & S_IFMT) == S_IFDIR
        do {
            try Posix.call("give to the group", path: root) { lchown(root, uid_t.max, group) }
        } catch  where error.cause == EPERM {
            throw SpoolError(
                .cannotCreate, "cannot give the site to group \(group): you are not a member of it", path: root)
        }
        let mode = (st.st_mode & 0o7777) | (directory ? S_ISGID | 0o070 : (st.st_mode & 0o600) >> 3)
        try Posix.call("chmod", path: root) { chmod(root, mode) }
        if directory {
            for name in try Posix.listDirectory(root) { try share(root + "/" + name, group: group) }
        }
    }

    /// This process's umask, for a shared site, gives the group what it gives the owner (022 becomes 002), so
    /// what it makes there the other members may change.
    static func adoptUmask() {
        let mask = umask(0o077)
        umask((mask & ~0o070) | ((mask & 0o700) >> 3))
    }
}
