internal import CMPI
import Spool

#if canImport(Glibc)
    import Glibc
#endif

/// An MPI call that failed: which call, and MPI's own words for its error code.
struct MPIError: Error, CustomStringConvertible {
    /// The MPI function.
    public var call: String
    /// Its return code.
    public var code: Int32
    /// `MPI_Error_string` of the code.
    public var message: String

    public var description: String { code < 0 ? message : "\(call) failed: \(message) (MPI error \(code))" }
}

/// This process's MPI world (`MPI_COMM_WORLD`), made with `MPI_Init_thread` and ended with `finalize()`.
///
/// MPI handles are not `Sendable`, so neither is this: make it and call it on one thread only
/// (`MPI_THREAD_FUNNELED`). Every call's return code is checked (errors return rather than abort) and turned into
/// an `MPIError`. Waits never block in MPI: Open MPI's blocking calls busy-poll a whole core, which on a node
/// packed with jobs steals their CPU. Sends are `MPI_Isend` (completed by `progress()`), receives are
/// `MPI_Iprobe` first.
final class MPIWorld {
    /// This process's rank.
    public let rank: Int
    /// Number of ranks.
    public let size: Int
    /// Sends in flight: each request's storage (`cmpi_request_size()` bytes) and its message's buffer.
    private var sends: [(request: UnsafeMutableRawPointer, buffer: UnsafeMutableRawPointer)] = []
    private var finalized = false

    /// The MPI library opened (its name and ABI), as `cmpi_load` said.
    public let library: String

    /// Opens the machine's MPI library (`cmpi_load`: `BALSAM_MPI_LIBRARY`, else the one in the process, else the
    /// first of the MPICH ABI's and Open MPI's that opens) and initializes MPI (as a singleton when the process
    /// was not started by an MPI launcher).
    public init() throws(MPIError) {
        var said = [CChar](repeating: 0, count: 2048)
        let loaded = cmpi_load(&said, Int32(said.count))
        let text = String(decoding: said.prefix(while: { $0 != 0 }).map { UInt8(bitPattern: $0) }, as: UTF8.self)
        guard loaded == 0 else { throw MPIError(call: "dlopen", code: -1, message: text) }
        library = text
        var provided: Int32 = 0
        try MPIWorld.check(cmpi_init(&provided), "MPI_Init_thread")
        var r: Int32 = 0
        var s: Int32 = 0
        try MPIWorld.check(cmpi_rank(&r), "MPI_Comm_rank")
        try MPIWorld.check(cmpi_size(&s), "MPI_Comm_size")
        rank = Int(r)
        size = Int(s)
    }

    deinit {
        for send in sends {
            free(send.buffer)
            free(send.request)
        }
    }

    /// Every rank's `value` (at most `width` bytes; longer values are cut), in rank order, on every rank.
    public func allGather(_ value: [UInt8], width: Int = 256) throws(MPIError) -> [[UInt8]] {
        var mine = [UInt8](repeating: 0, count: width)
        let n = min(value.count, width - 1)
        mine.replaceSubrange(0..<n, with: value.prefix(n))
        var all = [UInt8](repeating: 0, count: width * size)
        try MPIWorld.check(cmpi_allgather(&mine, Int32(width), &all), "MPI_Allgather")
        return (0..<size).map { r in Array(all[(r * width)..<((r + 1) * width)].prefix(while: { $0 != 0 })) }
    }

    /// Sends `bytes` to `destination` without waiting; the buffer is kept until MPI is done with it.
    public func send(_ bytes: [UInt8], to destination: Int, tag: Int32 = 0) throws(MPIError) {
        guard let buffer = malloc(max(1, bytes.count)), let request = malloc(Int(cmpi_request_size())) else {
            throw MPIError(call: "malloc", code: -1, message: "out of memory for a message of \(bytes.count) bytes")
        }
        bytes.withUnsafeBytes { if let base = $0.baseAddress { buffer.copyMemory(from: base, byteCount: $0.count) } }
        let rc = cmpi_isend(buffer, Int32(bytes.count), Int32(destination), tag, request)
        if rc != 0 {
            free(buffer)
            free(request)
            try MPIWorld.check(rc, "MPI_Isend")
        }
        sends.append((request, buffer))
        try progress()
    }

    /// Completes the sends MPI has finished with, freeing their buffers.
    public func progress() throws(MPIError) {
        var i = 0
        while i < sends.count {
            var done: Int32 = 0
            try MPIWorld.check(cmpi_test(sends[i].request, &done), "MPI_Test")
            if done != 0 {
                free(sends[i].buffer)
                free(sends[i].request)
                sends.remove(at: i)
            } else {
                i += 1
            }
        }
    }

    /// Whether sends are still in flight.
    public var sending: Bool { !sends.isEmpty }

    /// A message that has arrived, if any (never waits): its source, tag and bytes.
    public func receive() throws(MPIError) -> (source: Int, tag: Int32, bytes: [UInt8])? {
        var flag: Int32 = 0
        var source: Int32 = 0
        var tag: Int32 = 0
        var count: Int32 = 0
        try MPIWorld.check(cmpi_iprobe(&flag, &source, &tag, &count), "MPI_Iprobe")
        guard flag != 0 else { return nil }
        var bytes = [UInt8](repeating: 0, count: Int(count))
        try MPIWorld.check(cmpi_recv(&bytes, count, source, tag), "MPI_Recv")
        return (Int(source), tag, bytes)
    }

    /// Ends MPI. Pending sends are completed first.
    public func finalize() throws(MPIError) {
        guard !finalized else { return }
        while sending {
            try progress()
            if sending { usleep(1000) }
        }
        finalized = true
        try MPIWorld.check(cmpi_finalize(), "MPI_Finalize")
    }

    /// Ends every rank of the job at once (a rank that cannot go on).
    public func abort(_ code: Int32) -> Never {
        _ = cmpi_abort(code)
        exit(code)
    }

    private static func check(_ rc: Int32, _ call: String) throws(MPIError) {
        guard rc != 0 else { return }
        var text = [CChar](repeating: 0, count: 512)
        cmpi_error_string(rc, &text, Int32(text.count))
        let message = String(decoding: text.prefix(while: { $0 != 0 }).map { UInt8(bitPattern: $0) }, as: UTF8.self)
        throw MPIError(call: call, code: rc, message: message)
    }
}
