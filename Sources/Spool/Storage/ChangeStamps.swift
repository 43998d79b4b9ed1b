import CLinux

#if canImport(Glibc)
    import Glibc
#endif

/// Whether a directory may have changed since it was last read in full, told by one `stat` instead of a listing:
/// the periodic housekeeping of an idle daemon (the batch jobs' records, `tmp/`, the transfers' staging) reads a
/// directory again only when this says so.
///
/// The rule: a directory read while its mtime was recent (within `margin` seconds of the clock, so a change in
/// the same timestamp tick after the read could leave the stamp as it was) is not trusted; only a read that
/// finished cleanly, of a directory whose stamp had settled, is remembered. The margin is a few kernel ticks on a
/// node-local filesystem (its timestamps come from this node's clock), two seconds on a shared one (whole-second
/// timestamps, another node's clock). Any change to its entries (create,
/// rename, unlink) changes the mtime or ctime; a change inside one of its files does not, which is why only
/// directories whose entries are replaced whole (written under a temporary name and renamed in) are gated.
package struct ChangeStamp: Equatable, Sendable {
    var inode: UInt
    var mtime: timespec
    var ctime: timespec
    var size: Int

    /// Seconds of clock either side of a stamp within which a change may not have moved it, on a node-local and
    /// on a shared filesystem.
    package static let localMargin = 0.05
    package static let sharedMargin = 2.0

    /// The directory's stamp now; nil when it cannot be read (then it is read in full, which says why).
    package static func of(_ path: String) -> ChangeStamp? {
        guard let st = try? Posix.statIfExists(path) else { return nil }
        return ChangeStamp(inode: UInt(st.st_ino), mtime: st.st_mtim, ctime: st.st_ctim, size: Int(st.st_size))
    }

    package static func == (a: ChangeStamp, b: ChangeStamp) -> Bool {
        a.inode == b.inode && a.size == b.size && a.mtime.tv_sec == b.mtime.tv_sec
            && a.mtime.tv_nsec == b.mtime.tv_nsec && a.ctime.tv_sec == b.ctime.tv_sec
            && a.ctime.tv_nsec == b.ctime.tv_nsec
    }

    /// Whether the stamp is too close to `now` (wall clock) to vouch for what a read at `now` saw.
    func isRecent(now: timespec, margin: Double) -> Bool {
        let newest = max(Self.seconds(mtime), Self.seconds(ctime))
        return abs(Self.seconds(now) - newest) < margin
    }

    static func seconds(_ t: timespec) -> Double { Double(t.tv_sec) + Double(t.tv_nsec) / 1e9 }
}

/// One directory's gate: `ifChanged` runs a read of it unless the directory is as it was after the last clean one.
package struct ChangeGate: Sendable {
    package let path: String
    private var trusted: ChangeStamp?
    private let margin: Double

    package init(_ path: String) {
        self.path = path
        margin = Posix.sharedFilesystem(path) == nil ? ChangeStamp.localMargin : ChangeStamp.sharedMargin
    }

    /// Runs `read` unless the directory is as it was when the last clean read began; returns its result, or nil
    /// when it did not run. A read that throws is not remembered, nor one of a stamp too recent to vouch for.
    package mutating func ifChanged<T, E: Error>(_ read: () throws(E) -> T) throws(E) -> T? {
        let stamp = ChangeStamp.of(path)
        if let stamp, stamp == trusted { return nil }
        trusted = nil
        let result = try read()
        if let stamp, !stamp.isRecent(now: Posix.wallClock(), margin: margin) { trusted = stamp }
        return result
    }

    /// Whether the last read is remembered: false when it ran on a stamp too recent to vouch for it (then the
    /// caller should read again soon, or wait for its next round).
    package var trusts: Bool { trusted != nil }

    /// Forgets the last read (it left something to do again): the next `ifChanged` runs.
    package mutating func forget() { trusted = nil }
}

extension Posix {
    /// The name of the filesystem holding `path` when it is not one that only this node writes (NFS, Lustre,
    /// GPFS, CephFS, a FUSE filesystem, or any kind not known to be node-local), nil when it is node-local
    /// (ext2/3/4, XFS, Btrfs, tmpfs, overlayfs, ZFS, F2FS). inotify reports only the changes made on this node
    /// (inotify(7)), so a daemon trusts it alone only on a node-local filesystem.
    package static func sharedFilesystem(_ path: String) -> String? {
        var magic: UInt64 = 0
        guard clinux_filesystem_type(path, &magic) == 0 else {
            return "unknown (statfs failed: " + String(cString: strerror(errno)) + ")"
        }
        let type = magic & 0xFFFF_FFFF
        if nodeLocalFilesystems[type] != nil { return nil }
        return sharedFilesystems[type] ?? "filesystem type 0x" + String(type, radix: 16)
    }

    /// statfs(2) magic numbers (linux/magic.h) of filesystems only this node's kernel writes.
    static let nodeLocalFilesystems: [UInt64: String] = [
        0xEF53: "ext4", 0x5846_5342: "xfs", 0x9123_683E: "btrfs", 0x0102_1994: "tmpfs", 0x794C_7630: "overlayfs",
        0x2FC1_2FC1: "zfs", 0xF2F5_2010: "f2fs",
    ]

    /// The shared ones a site is likely on, named in messages.
    static let sharedFilesystems: [UInt64: String] = [
        0x6969: "nfs", 0x0BD0_0BD0: "lustre", 0x4750_4653: "gpfs", 0x00C3_6400: "cephfs", 0x6573_5546: "fuse",
        0xFF53_4D42: "cifs", 0xFE53_4D42: "smb2", 0x1983_0326: "beegfs", 0xAAD7_AAEA: "panfs",
    ]
}
