import HTTPTypes
import Logging
import NIOCore
import NIOHTTPTypes
import Synchronization

/// The rules every connection lives by, whoever opened it, so that no client can hold the connections every
/// other user needs (balsam-server(8), SECURITY):
///
/// - **A cap per client address** beside the global one: a connection past its address's cap is closed as soon
///   as it is accepted.
/// - **An answer before the body ends the connection**: a response written while its request's body is still
///   arriving (401 for a bad token, 413, 403 before the body is read) says `Connection: close`, and the
///   connection is closed after it: the server never drains a body it did not want. The close lingers (the
///   sending side shut at once, what still arrives thrown away for at most `lingerSeconds`) so that a client
///   still sending reads the answer instead of a reset.
/// - **Near the cap, the idle make room**: past `evictAbove` open connections, each new one closes the
///   connection that has waited longest without sending a request head (a client that opened and sends
///   nothing, or trickles a head, or an idle keep-alive). A logged-in client's request in progress is never
///   closed for room.
///
/// A request head must arrive within the idle timeout of the connection opening or of its last answer
/// (Hummingbird's idle handler), and a body within `ServerLimits.bodySecondsPerIdleTimeout` idle timeouts.
final class ConnectionTable: Sendable {
    struct Entry {
        let channel: any Channel
        let address: String
        /// When it began waiting for a request head; nil while a request is read or answered.
        var waitingSince: ContinuousClock.Instant?
    }

    struct State {
        var entries: [ObjectIdentifier: Entry] = [:]
        var perAddress: [String: Int] = [:]
        var refused = 0
        var evicted = 0
    }

    enum Verdict { case accepted, overClientCap }

    let perClient: Int
    let evictAbove: Int
    let logger: Logger
    private let state = Mutex(State())

    /// A table for a server whose global cap is `cap`, `perClient` connections for each address.
    init(cap: Int, perClient: Int, logger: Logger) {
        self.perClient = max(1, min(perClient, cap))
        self.evictAbove = max(1, cap - max(1, cap / 8))
        self.logger = logger
    }

    /// Counts a new connection; past its address's cap it is refused, and near the global cap the connection
    /// idle longest is closed to make room.
    func opened(_ channel: any Channel) -> Verdict {
        let address = channel.remoteAddress?.ipAddress ?? "-"
        let id = ObjectIdentifier(channel)
        let (verdict, victim, message) = state.withLock { s -> (Verdict, (any Channel)?, String?) in
            let count = s.perAddress[address, default: 0]
            if count >= perClient {
                s.refused &+= 1
                // Logged the first time and every 1,000th: an attacker must not fill the log either.
                let say = s.refused % 1000 == 1 ? "client over its connection cap: new connections closed" : nil
                return (.overClientCap, nil, say)
            }
            s.perAddress[address] = count + 1
            s.entries[id] = Entry(channel: channel, address: address, waitingSince: .now)
            guard s.entries.count > evictAbove else { return (.accepted, nil, nil) }
            var oldest: (ObjectIdentifier, ContinuousClock.Instant)?
            for (key, entry) in s.entries where key != id {
                if let since = entry.waitingSince, since < oldest?.1 ?? .now { oldest = (key, since) }
            }
            guard let (key, _) = oldest, let entry = s.entries[key] else { return (.accepted, nil, nil) }
            // Taken out of the waiting at once, so that the next arrival picks another.
            s.entries[key]?.waitingSince = nil
            s.evicted &+= 1
            let say = s.evicted % 1000 == 1 ? "near the connection cap: idle connections closed to make room" : nil
            return (.accepted, entry.channel, say)
        }
        if let message {
            logger.warning(
                "\(message)",
                metadata: [
                    "client": "\(address)", "max_connections_per_client": "\(perClient)",
                    "evict_above": "\(evictAbove)",
                ])
        }
        victim?.close(promise: nil)
        return verdict
    }

    /// The connection's request head arrived: it is busy until answered.
    func requestStarted(_ channel: any Channel) {
        state.withLock { $0.entries[ObjectIdentifier(channel)]?.waitingSince = nil }
    }

    /// The connection answered and waits for its next request.
    func requestAnswered(_ channel: any Channel) {
        state.withLock { $0.entries[ObjectIdentifier(channel)]?.waitingSince = .now }
    }

    /// The connection closed.
    func closed(_ channel: any Channel) {
        state.withLock { s in
            guard let entry = s.entries.removeValue(forKey: ObjectIdentifier(channel)) else { return }
            let left = s.perAddress[entry.address, default: 1] - 1
            s.perAddress[entry.address] = left > 0 ? left : nil
        }
    }

    /// Connections counted now (for tests and the log).
    var open: Int { state.withLock { $0.entries.count } }

    /// Open now, refused and evicted so far (`/metrics`).
    var counts: (open: Int, refused: Int, evicted: Int) {
        state.withLock { ($0.entries.count, $0.refused, $0.evicted) }
    }
}

/// One connection's side of `ConnectionTable`, in its channel pipeline after the HTTP decoder.
final class ConnectionGuard: ChannelDuplexHandler, RemovableChannelHandler {
    typealias InboundIn = HTTPRequestPart
    typealias InboundOut = HTTPRequestPart
    typealias OutboundIn = HTTPResponsePart
    typealias OutboundOut = HTTPResponsePart

    /// Longest a closing connection keeps reading (and throwing away) what its client still sends.
    static let lingerSeconds: Int64 = 2

    let table: ConnectionTable
    private var counted = false
    /// Requests whose end arrived, and answers finished (HTTP/1.1 answers in order: answer n is early when
    /// fewer than n requests have ended).
    private var ended = 0
    private var answered = 0
    /// The answer went out before the request's end: the connection closes after it.
    private var closing = false

    init(table: ConnectionTable) { self.table = table }

    func handlerAdded(context: ChannelHandlerContext) {
        if context.channel.isActive { count(context) }
    }

    func channelActive(context: ChannelHandlerContext) {
        count(context)
        context.fireChannelActive()
    }

    private func count(_ context: ChannelHandlerContext) {
        guard !counted else { return }
        counted = true
        if table.opened(context.channel) == .overClientCap {
            counted = false
            context.close(promise: nil)
        }
    }

    func channelInactive(context: ChannelHandlerContext) {
        if counted { table.closed(context.channel) }
        counted = false
        context.fireChannelInactive()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        if closing { return }
        switch unwrapInboundIn(data) {
        case .head: table.requestStarted(context.channel)
        case .end: ended &+= 1
        case .body: break
        }
        context.fireChannelRead(data)
    }

    func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        switch unwrapOutboundIn(data) {
        case .head(var response) where ended <= answered && response.status.kind != .informational:
            closing = true
            response.headerFields[.connection] = "close"
            context.write(wrapOutboundOut(.head(response)), promise: promise)
        case .end where closing:
            context.writeAndFlush(data, promise: promise)
            linger(context)
        case .end:
            answered &+= 1
            context.write(data, promise: promise)
            table.requestAnswered(context.channel)
        default:
            context.write(data, promise: promise)
        }
    }

    /// Shuts the sending side (the client reads the answer, then end of stream), throws away what still arrives,
    /// and closes for good when the client closes or after `lingerSeconds`.
    private func linger(_ context: ChannelHandlerContext) {
        let loop = context.eventLoop.assumeIsolated()
        let bound = NIOLoopBound(context, eventLoop: context.eventLoop)
        context.close(mode: .output).whenFailure { _ in bound.value.close(promise: nil) }
        loop.scheduleTask(in: .seconds(Self.lingerSeconds)) { bound.value.close(promise: nil) }
    }
}
