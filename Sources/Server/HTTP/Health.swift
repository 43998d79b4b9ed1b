import Foundation
import Hummingbird
import Logging
import NIOCore
import Spool

/// `GET /healthz`, for load balancers and proxies (no token): 200 when the database answers a query within
/// `ServerLimits.healthSeconds`, else 503 naming the cause. One `SELECT 1` on a database thread: cheap enough for
/// a check every second from each proxy; a pool whose threads are all busy for longer than the bound is a
/// server that cannot answer either, and says so.
enum Health {
    static func check(_ database: Database, within seconds: Double, logger: Logger) async -> Response {
        let start = ContinuousClock.now
        let outcome = await Deadline.run(seconds: seconds) {
            try await database.run { c in _ = try c.query("SELECT 1") }
        }
        let elapsed = ContinuousClock.now - start
        let ms = Double(elapsed.components.seconds) * 1000 + Double(elapsed.components.attoseconds) / 1e15
        let (status, body): (HTTPResponse.Status, JSONValue)
        switch outcome {
        case .some(.success):
            (status, body) = (
                .ok, .object(["status": .string("ok"), "database_ms": .double((ms * 10).rounded() / 10)])
            )
        case .some(.failure(let error)):
            logger.error("healthz: the database failed", metadata: ["error": "\(error)"])
            // The database's own message may name hosts and users: it goes to the log, not to whoever asks.
            (status, body) = (
                .serviceUnavailable,
                .object([
                    "status": .string("unavailable"),
                    "cause": .string("the database failed to answer (see the server's log)"),
                ])
            )
        case .none:
            (status, body) = (
                .serviceUnavailable,
                .object([
                    "status": .string("unavailable"),
                    "cause": .string("the database did not answer within \(PrometheusText.number(seconds)) s"),
                ])
            )
        }
        return Response(
            status: status, headers: [.contentType: "application/json", .cacheControl: "no-store"],
            body: ResponseBody(byteBuffer: ByteBuffer(string: body.serialized())))
    }
}

/// Awaiting work for at most a bound: the work goes on (a database thread cannot be cancelled) but the caller
/// stops waiting for it.
enum Deadline {
    /// The work's result, or nil when `seconds` passed first.
    static func run<T: Sendable>(seconds: Double, _ work: @escaping @Sendable () async throws -> T) async -> Result<
        T, any Error
    >? {
        let once = Once<Result<T, any Error>?>()
        return await withCheckedContinuation { continuation in
            once.set(continuation)
            let timer = Task {
                try? await Task.sleep(for: .seconds(seconds))
                once.finish(nil)
            }
            Task {
                do { once.finish(.success(try await work())) } catch { once.finish(.failure(error)) }
                // Answered: the timer has nothing left to end (a check every second must not leave one asleep).
                timer.cancel()
            }
        }
    }

    /// A continuation resumed by whichever finishes first.
    private final class Once<Value: Sendable>: @unchecked Sendable {
        private let lock = NSLock()
        private var continuation: CheckedContinuation<Value, Never>?

        func set(_ continuation: CheckedContinuation<Value, Never>) {
            lock.withLock { self.continuation = continuation }
        }

        func finish(_ value: Value) {
            let c = lock.withLock { () -> CheckedContinuation<Value, Never>? in
                defer { continuation = nil }
                return continuation
            }
            c?.resume(returning: value)
        }
    }
}
