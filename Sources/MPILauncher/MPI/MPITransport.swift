import Spool

/// MPI as the launcher's transport between ranks.
final class MPITransport: Transport {
    let world: MPIWorld
    init(world: MPIWorld) { self.world = world }
    var rank: Int { world.rank }
    var size: Int { world.size }

    func send(_ message: Message, to rank: Int) throws(SpoolError) {
        do { try world.send(message.encoded(), to: rank) } catch {
            throw SpoolError(.unavailable, "cannot send to rank \(rank): \(error)")
        }
    }

    func receive() throws(SpoolError) -> (source: Int, message: Message)? {
        let received: (source: Int, tag: Int32, bytes: [UInt8])?
        do {
            try world.progress()
            received = try world.receive()
        } catch {
            throw SpoolError(.unavailable, "cannot receive: \(error)")
        }
        guard let received else { return nil }
        return (received.source, try Message(bytes: received.bytes))
    }
}
