/// FNV-1a, the one non-cryptographic hash of the project: enough to tell whether something changed or to make a
/// short stable name, never a security check.
public enum FNV1a {
    /// 32 bits (a batch job's scheduler name: `BatchJob.schedulerName`).
    public static func hash32(_ text: String) -> UInt32 {
        var hash: UInt32 = 2_166_136_261
        for byte in text.utf8 { hash = (hash ^ UInt32(byte)) &* 16_777_619 }
        return hash
    }

    /// 64 bits (whether an app defined through the API changed since a site last took it).
    public static func hash64(_ text: String) -> UInt64 {
        var hash: UInt64 = 0xcbf2_9ce4_8422_2325
        for byte in text.utf8 { hash = (hash ^ UInt64(byte)) &* 0x100_0000_01b3 }
        return hash
    }
}
