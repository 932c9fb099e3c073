public import NIOCore
import Synchronization
public import WireProtocol

/// The requesting side of RPC over the broker: each call publishes a request with `replyTo` set to this client's
/// exclusive reply queue and a unique `correlationId`, then waits for the reply carrying the same id, or times out.
///
/// Replies that arrive after their call timed out are dropped. One `RPCClient` serves any number of concurrent calls.
public final class RPCClient: Sendable {
    public let connection: BrokerConnection
    /// The exclusive, server-named queue replies come to, as first declared. After a reconnect the broker names it
    /// anew; each call asks the connection for the current name (``BrokerConnection/currentQueue(of:)``).
    public let replyQueue: String
    private let waiting = Mutex<[String: Pending]>([:])

    private struct Pending {
        var continuation: CheckedContinuation<Message, any Error>
        /// Publishes the request, then fails the call when the timeout passes; cancelled when the reply comes.
        var timer: Task<Void, Never>?
    }
    private let consumer: Consumer

    private init(connection: BrokerConnection, replyQueue: String, consumer: Consumer) {
        self.connection = connection
        self.replyQueue = replyQueue
        self.consumer = consumer
    }

    /// Declares the reply queue and starts listening on it.
    public static func make(connection: BrokerConnection) async throws -> RPCClient {
        let queue = try await connection.declareQueue("", exclusive: true, autoDelete: true)
        let consumer = try await connection.consume(queue: queue.name, noAck: true)
        let client = RPCClient(connection: connection, replyQueue: queue.name, consumer: consumer)
        Task { await client.receiveReplies() }
        return client
    }

    private func receiveReplies() async {
        do {
            for try await reply in consumer {
                guard let id = reply.properties.correlationId else { continue }
                guard let pending = waiting.withLock({ $0.removeValue(forKey: id) }) else { continue }
                pending.timer?.cancel()
                pending.continuation.resume(returning: reply)
            }
            failAll(BrokerError(.connectionClosed, "the RPC reply consumer was cancelled"))
        } catch {
            failAll(error)
        }
    }

    private func failAll(_ error: any Error) {
        let all = waiting.withLock { pending in
            defer { pending.removeAll() }
            return Array(pending.values)
        }
        for pending in all {
            pending.timer?.cancel()
            pending.continuation.resume(throwing: error)
        }
    }

    /// Sends a request and waits for its reply. Throws ``BrokerError`` with code `.timeout` if none comes in time.
    public func call(exchange: String = "", routingKey: String, body: ByteBuffer, properties: MessageProperties = MessageProperties(),
                     timeout: Duration = .seconds(5)) async throws -> Message {
        let id = Self.correlationId()
        var properties = properties
        properties.correlationId = id
        properties.replyTo = await connection.currentQueue(of: consumer) ?? replyQueue
        let request = properties
        return try await withTaskCancellationHandler {
            try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<Message, any Error>) in
                waiting.withLock { $0[id] = Pending(continuation: continuation) }
                let timer = Task {
                    do {
                        try await connection.publish(exchange: exchange, routingKey: routingKey, body: body, properties: request)
                    } catch {
                        self.finish(id, throwing: error)
                        return
                    }
                    do {
                        try await Task.sleep(for: timeout)
                    } catch {
                        return  // the reply came first
                    }
                    self.finish(id, throwing: BrokerError(.timeout, "no reply to RPC \(id) on '\(routingKey)' within \(timeout)"))
                }
                waiting.withLock { $0[id]?.timer = timer }
            }
        } onCancel: {
            finish(id, throwing: CancellationError())
        }
    }

    private func finish(_ id: String, throwing error: any Error) {
        guard let pending = waiting.withLock({ $0.removeValue(forKey: id) }) else { return }
        pending.timer?.cancel()
        pending.continuation.resume(throwing: error)
    }

    /// Stops listening for replies; calls still waiting fail.
    public func close() async throws {
        try await consumer.cancel()
    }

    /// 128 random bits in hex: unique without coordination.
    static func correlationId() -> String {
        var generator = SystemRandomNumberGenerator()
        let high = generator.next() as UInt64
        let low = generator.next() as UInt64
        let hex = String(high, radix: 16) + "-" + String(low, radix: 16)
        return hex
    }
}

/// A responder's answer to one request.
public struct RPCReply: Sendable {
    public var body: ByteBuffer
    public var properties: MessageProperties
    public init(body: ByteBuffer, properties: MessageProperties = MessageProperties()) {
        self.body = body
        self.properties = properties
    }
}

extension BrokerConnection {
    /// Serves RPC requests from `queue`: for each one, runs `handler`, publishes the reply to the request's
    /// `replyTo` queue with its `correlationId`, then acknowledges the request. A request without `replyTo` is
    /// rejected; a handler error rejects the request without requeueing it. Returns when the consumer ends.
    public func respond(queue: String, prefetch: UInt16 = 16,
                        handler: @escaping @Sendable (Message) async throws -> RPCReply) async throws {
        let consumer = try await consume(queue: queue, prefetch: prefetch)
        for try await request in consumer {
            guard let replyTo = request.properties.replyTo else {
                try? await request.reject(requeue: false)
                continue
            }
            let reply: RPCReply
            do {
                reply = try await handler(request)
            } catch {
                try? await request.reject(requeue: false)
                continue
            }
            var properties = reply.properties
            properties.correlationId = request.properties.correlationId
            try await publish(exchange: "", routingKey: replyTo, body: reply.body, properties: properties)
            do {
                try await request.ack()
            } catch let error as BrokerError where error.code == .staleDelivery {
                // The connection dropped after the request arrived: the broker redelivers it, and the caller
                // (matching by correlation id) takes whichever reply comes first.
                continue
            }
        }
    }
}
