import Spool
import Testing

/// A workdir prints as itself (issue 31, item 10): every control, separator and invisible format character in
/// Unicode is refused wherever it stands, and the printable ones around them are taken.
@Suite struct WorkdirTests {
    @Test func everyUnprintableScalarIsRefusedAndPrintableOnesAreTaken() {
        var refused = 0
        var taken = 0
        // The planes where scripts and controls live, every scalar of them, plus the tags and private-use edges.
        let ranges: [ClosedRange<UInt32>] = [0...0xD7FF, 0xE000...0x1_FFFF, 0xE_0000...0xE_0FFF]
        for range in ranges {
            for value in range {
                guard let scalar = Unicode.Scalar(value) else { continue }
                let category = scalar.properties.generalCategory
                // Slashes and dots make other, tested rules; unassigned scalars say nothing here.
                if scalar == "/" || scalar == "." || category == .unassigned { continue }
                let workdir = "runs/a" + String(Character(scalar)) + "b"
                let unprintable = [.control, .format, .lineSeparator, .paragraphSeparator].contains(category)
                do {
                    try Job.validateWorkdir(workdir)
                    #expect(!unprintable, "U+\(String(value, radix: 16)) (\(category)) was taken")
                    taken += 1
                } catch {
                    #expect(unprintable, "U+\(String(value, radix: 16)) (\(category)) was refused: \(error.message)")
                    refused += 1
                }
            }
        }
        #expect(refused > 200 && taken > 50_000, "refused \(refused), taken \(taken)")
        #expect(throws: SpoolError.self) { try Job.validateWorkdir("runs/\u{85}/1") }
    }
}
