import TestSupport
import Testing

@testable import Spool

/// A site's local transfer location is shown to the original client as a URL it reads, whatever bytes its path
/// holds, and reads back at the site as the same directory.
@Suite struct ClientURLTests {
    @Test func anyLocalPathIsShownAsAURLTheClientReadsAndReadsBack() throws {
        var rng = SplitMix(seed: 9)
        let alphabet = Array("ab/ /?#%é✓:@+~._-[]\"\\".unicodeScalars)
        for _ in 0..<500 {
            let tail = String(
                String.UnicodeScalarView(
                    (0..<(1 + rng.next() % 12)).map { _ in
                        alphabet[Int(rng.next() % UInt64(alphabet.count))]
                    }))
            let path = "/lus/" + tail.replacingAll("//", with: "/")
            for written in [path, "file://" + path] {
                let location = try TransferLocation(alias: "here", url: written)
                #expect(
                    ClientURL.problem(location.clientURL) == nil, "\(written.debugDescription) → \(location.clientURL)")
                let back = try TransferLocation(alias: "here", url: location.clientURL)
                #expect(back.basePath == location.basePath && back.kind == .local, "\(written.debugDescription)")
            }
        }
    }
}
