public import NIOCore
public import NIOPosix
public import WireProtocol

/// A connection to brokerd: declare, bind, publish (with awaitable confirms), consume as an `AsyncSequence`, get.
///
/// Thread-safe: every call hops to the connection's event loop, where ``ClientHandler`` keeps the state.
public final class BrokerConnection: Sendable {
    public let configuration: ClientConfiguration
    /// The version, limits and server name agreed in the handshake.
    public let serverName: String
    public let protocolVersion: ProtocolVersion
    public let connectionId: UInt64
    public let maxFrameSize: UInt32
    public let heartbeatSeconds: UInt16
    /// Mandatory messages the broker could not route.
    public let returns: AsyncStream<ReturnedMessage>
    /// Errors the broker reported about frames that have no answer of their own: a publish outside confirm mode
    /// (for example to a missing exchange) or an ack, nack or reject of an unknown delivery tag.
    public let errors: AsyncStream<BrokerError>
    /// Flow control: the broker stopped reading this connection's publishes (an alarm, such as free disk below its
    /// limit) or resumed. Publishes made while blocked wait; they do not fail.
    public let flow: AsyncStream<FlowEvent>

    private let channel: any Channel
    private let handler: NIOLoopBound<ClientHandler>

    private init(configuration: ClientConfiguration, channel: any Channel, handler: NIOLoopBound<ClientHandler>, helloOk: HelloOk,
                 authOk: AuthOk, returns: AsyncStream<ReturnedMessage>, errors: AsyncStream<BrokerError>, flow: AsyncStream<FlowEvent>) {
        self.configuration = configuration
        self.channel = channel
        self.handler = handler
        self.serverName = helloOk.serverName
        self.protocolVersion = helloOk.version
        self.connectionId = authOk.connectionId
        self.maxFrameSize = authOk.maxFrameSize
        self.heartbeatSeconds = authOk.heartbeatSeconds
        self.returns = returns
        self.errors = errors
        self.flow = flow
    }

    /// Connects, runs `body` with the connection, and closes it whether `body` returns or throws.
    public static func withConnection<T>(_ configuration: ClientConfiguration,
                                         _ body: (BrokerConnection) async throws -> T) async throws -> T {
        let connection = try await connect(configuration)
        do {
            let result = try await body(connection)
            await connection.close()
            return result
        } catch {
            await connection.close()
            throw error
        }
    }

    /// Connects, negotiates the protocol version and authenticates.
    public static func connect(_ configuration: ClientConfiguration = ClientConfiguration(),
                               group: any EventLoopGroup = MultiThreadedEventLoopGroup.singleton) async throws -> BrokerConnection {
        let loop = group.next()
        let handshake = loop.makePromise(of: (HelloOk, AuthOk).self)
        let (returns, returnsContinuation) = AsyncStream<ReturnedMessage>.makeStream(bufferingPolicy: .bufferingNewest(1024))
        let (errors, errorsContinuation) = AsyncStream<BrokerError>.makeStream(bufferingPolicy: .bufferingNewest(256))
        let (flow, flowContinuation) = AsyncStream<FlowEvent>.makeStream(bufferingPolicy: .bufferingNewest(64))
        let timeout = TimeAmount.nanoseconds(Int64(configuration.connectTimeout.components.seconds) * 1_000_000_000
                                             + configuration.connectTimeout.components.attoseconds / 1_000_000_000)
        let channel: any Channel
        do {
            channel = try await ClientBootstrap(group: loop)
                .connectTimeout(timeout)
                .channelOption(.socketOption(.tcp_nodelay), value: 1)
                .channelInitializer { channel in
                    channel.eventLoop.makeCompletedFuture {
                        let handler = ClientHandler(configuration: configuration, handshake: handshake)
                        handler.returns = returnsContinuation
                        handler.errors = errorsContinuation
                        handler.flow = flowContinuation
                        try channel.pipeline.syncOperations.addHandler(handler)
                    }
                }
                .connect(host: configuration.host, port: configuration.port).get()
        } catch {
            handshake.fail(error)
            throw BrokerError(.connectionClosed, "cannot connect to \(configuration.host):\(configuration.port): \(error)")
        }
        let scheduledTimeout = loop.scheduleTask(in: timeout) {
            handshake.fail(BrokerError(.timeout, "handshake with \(configuration.host):\(configuration.port) timed out"))
            channel.close(promise: nil)
        }
        do {
            let (helloOk, authOk) = try await handshake.futureResult.get()
            scheduledTimeout.cancel()
            let handler = try await loop.submit {
                NIOLoopBound(try channel.pipeline.syncOperations.handler(type: ClientHandler.self), eventLoop: loop)
            }.get()
            let connection = BrokerConnection(configuration: configuration, channel: channel, handler: handler, helloOk: helloOk,
                                              authOk: authOk, returns: returns, errors: errors, flow: flow)
            try await loop.submit { handler.value.connection = connection }.get()
            return connection
        } catch {
            scheduledTimeout.cancel()
            channel.close(promise: nil)
            throw error
        }
    }

    /// Closes the connection politely (close / closeOk). Consumers finish; pending confirms fail.
    public func close() async {
        let promise = channel.eventLoop.makePromise(of: Void.self)
        let handler = self.handler
        channel.eventLoop.execute {
            handler.value.close(promise: promise)
            handler.value.connection = nil
        }
        try? await promise.futureResult.get()
    }

    /// Completes when the connection has closed, for whatever reason.
    public func closed() async {
        try? await channel.closeFuture.get()
    }

    // MARK: - Requests

    private func request(consumer: AsyncThrowingStream<Message, any Error>.Continuation? = nil,
                         _ build: @escaping @Sendable (UInt32) -> ClientMessage) async throws -> ServerMessage {
        let loop = channel.eventLoop
        let promise = loop.makePromise(of: ServerMessage.self)
        let handler = self.handler
        loop.execute { handler.value.request(build, promise: promise, consumer: consumer) }
        let timeout = configuration.requestTimeout
        let scheduled = loop.scheduleTask(in: .nanoseconds(Int64(timeout.components.seconds) * 1_000_000_000
                                                          + timeout.components.attoseconds / 1_000_000_000)) {
            promise.fail(BrokerError(.timeout, "no answer from the broker within \(timeout)"))
        }
        defer { scheduled.cancel() }
        return try await promise.futureResult.get()
    }

    private static func unexpected(_ message: ServerMessage) -> BrokerError {
        BrokerError(.unexpectedFrame, "unexpected answer \(message.frameType) from the broker")
    }

    private func expectOk(_ build: @escaping @Sendable (UInt32) -> ClientMessage) async throws {
        let answer = try await request(build)
        guard case .ok = answer else { throw Self.unexpected(answer) }
    }

    private func expectCount(_ build: @escaping @Sendable (UInt32) -> ClientMessage) async throws -> Int {
        let answer = try await request(build)
        guard case .countOk(_, let count) = answer else { throw Self.unexpected(answer) }
        return Int(count)
    }

    // MARK: - Exchanges, queues, bindings

    public func declareExchange(_ name: String, type: ExchangeKind, durable: Bool = false, autoDelete: Bool = false,
                                passive: Bool = false, arguments: FieldTable = [:]) async throws {
        try NameRules.validateName(name, kind: "exchange")
        try await expectOk {
            .exchangeDeclare(ExchangeDeclare(requestId: $0, name: name, kind: type, durable: durable, autoDelete: autoDelete,
                                             passive: passive, arguments: arguments))
        }
    }

    public func deleteExchange(_ name: String, ifUnused: Bool = false) async throws {
        try NameRules.validateName(name, kind: "exchange")
        try await expectOk { .exchangeDelete(ExchangeDelete(requestId: $0, name: name, ifUnused: ifUnused)) }
    }

    /// Declares a queue; an empty name asks the broker to generate one (returned in ``QueueInfo/name``).
    @discardableResult
    public func declareQueue(_ name: String = "", durable: Bool = false, exclusive: Bool = false, autoDelete: Bool = false,
                             passive: Bool = false, arguments: FieldTable = [:]) async throws -> QueueInfo {
        if !name.isEmpty { try NameRules.validateName(name, kind: "queue") }
        let answer = try await request {
            .queueDeclare(QueueDeclare(requestId: $0, name: name, durable: durable, exclusive: exclusive, autoDelete: autoDelete,
                                       passive: passive, arguments: arguments))
        }
        guard case .queueDeclareOk(let ok) = answer else { throw Self.unexpected(answer) }
        return QueueInfo(name: ok.name, messageCount: ok.messageCount, consumerCount: ok.consumerCount)
    }

    /// Deletes a queue; returns how many ready messages it held.
    @discardableResult
    public func deleteQueue(_ name: String, ifUnused: Bool = false, ifEmpty: Bool = false) async throws -> Int {
        try NameRules.validateName(name, kind: "queue")
        return try await expectCount { .queueDelete(QueueDelete(requestId: $0, name: name, ifUnused: ifUnused, ifEmpty: ifEmpty)) }
    }

    /// Drops a queue's ready messages; returns how many.
    @discardableResult
    public func purgeQueue(_ name: String) async throws -> Int {
        try NameRules.validateName(name, kind: "queue")
        return try await expectCount { .queuePurge(QueuePurge(requestId: $0, name: name)) }
    }

    public func bind(queue: String, exchange: String, key: String = "", arguments: FieldTable = [:]) async throws {
        try NameRules.validateKey(key, kind: "binding key")
        try await expectOk { .queueBind(QueueBinding(requestId: $0, queue: queue, exchange: exchange, bindingKey: key, arguments: arguments)) }
    }

    public func unbind(queue: String, exchange: String, key: String = "") async throws {
        try NameRules.validateKey(key, kind: "binding key")
        try await expectOk { .queueUnbind(QueueBinding(requestId: $0, queue: queue, exchange: exchange, bindingKey: key)) }
    }

    /// Broker status (needs an administrator).
    public func status() async throws -> FieldTable {
        let answer = try await request { .status(requestId: $0) }
        guard case .statusOk(_, let status) = answer else { throw Self.unexpected(answer) }
        return status
    }

    /// Runs a management method (admin only; docs/protocol.md §11) and returns its result table.
    public func manage(_ method: String, _ arguments: FieldTable = [:]) async throws -> FieldTable {
        let answer = try await request { .manage(Manage(requestId: $0, method: method, arguments: arguments)) }
        guard case .manageOk(_, let result) = answer else { throw Self.unexpected(answer) }
        return result
    }

    /// Runs a management method that answers rows (`list.queues`, `queue.peek`, `user.list`) and returns them.
    public func rows(_ method: String, _ arguments: FieldTable = [:]) async throws -> [FieldTable] {
        guard case .array(let rows)? = try await manage(method, arguments)["rows"] else { return [] }
        return rows.compactMap { if case .table(let row) = $0 { row } else { nil } }
    }

    /// Runs a listing method (`list.queues`, ...) and returns its rows.
    public func list(_ what: String) async throws -> [FieldTable] {
        try await rows("list." + what)
    }

    // MARK: - Publishing

    /// Turns on publisher confirms: from now on ``publish(exchange:routingKey:body:properties:mandatory:)`` returns when
    /// the broker has taken responsibility for the message, and throws if it refused it.
    public func enableConfirms() async throws {
        let loop = channel.eventLoop
        let promise = loop.makePromise(of: ServerMessage.self)
        let handler = self.handler
        loop.execute { handler.value.enableConfirms(promise: promise) }
        _ = try await promise.futureResult.get()
    }

    /// Publishes a message. Without confirms it returns once the message is handed to the socket (waiting while the
    /// socket pushes back); with confirms, once the broker confirms it.
    public func publish(exchange: String = "", routingKey: String, body: ByteBuffer, properties: MessageProperties = MessageProperties(),
                        mandatory: Bool = false) async throws {
        try NameRules.validateKey(routingKey)
        if exchange.utf8.count > NameRules.maxShortStringBytes { try NameRules.validateName(exchange, kind: "exchange") }
        let raw = try RawProperties(validating: properties)
        let frameSize = Frame.headerSize + 3 + exchange.utf8.count + routingKey.utf8.count + 2 + raw.bytes.readableBytes
            + body.readableBytes
        if frameSize > Int(maxFrameSize) {
            throw BrokerError(.frameTooLarge, "message of \(body.readableBytes) bytes exceeds the broker's frame limit of \(maxFrameSize)")
        }
        let publish = Publish(exchange: exchange, routingKey: routingKey, mandatory: mandatory, properties: raw, body: body)
        let loop = channel.eventLoop
        let promise = loop.makePromise(of: Void.self)
        let handler = self.handler
        loop.execute { handler.value.publish(publish, promise: promise) }
        try await promise.futureResult.get()
    }

    /// Publishes a UTF-8 string.
    public func publish(exchange: String = "", routingKey: String, body: String, properties: MessageProperties = MessageProperties(),
                        mandatory: Bool = false) async throws {
        try await publish(exchange: exchange, routingKey: routingKey, body: ByteBuffer(string: body), properties: properties, mandatory: mandatory)
    }

    // MARK: - Consuming

    /// Starts a consumer. Deliveries arrive through the returned sequence; it ends when the consumer is cancelled
    /// and throws if the broker cancels it (queue deleted) or the connection drops.
    public func consume(queue: String, prefetch: UInt16 = 100, noAck: Bool = false, exclusive: Bool = false) async throws -> Consumer {
        try NameRules.validateName(queue, kind: "queue")
        let (stream, continuation) = AsyncThrowingStream<Message, any Error>.makeStream()
        let answer = try await request(consumer: continuation) {
            .consume(Consume(requestId: $0, queue: queue, noAck: noAck, exclusive: exclusive, prefetch: prefetch))
        }
        guard case .consumeOk(let ok) = answer else { throw Self.unexpected(answer) }
        return Consumer(tag: ok.consumerTag, queue: queue, connection: self, stream: stream)
    }

    /// Cancels a consumer; its sequence finishes. Unacknowledged deliveries stay unacknowledged until settled.
    public func cancel(_ consumer: Consumer) async throws {
        try await expectOk { .cancel(Cancel(requestId: $0, consumerTag: consumer.tag)) }
        let handler = self.handler
        try await channel.eventLoop.submit { handler.value.cancelConsumer(tag: consumer.tag) }.get()
    }

    /// Takes one message from a queue, or nil if it is empty.
    public func get(queue: String, noAck: Bool = false) async throws -> Message? {
        try NameRules.validateName(queue, kind: "queue")
        let answer = try await request { .get(Get(requestId: $0, queue: queue, noAck: noAck)) }
        switch answer {
        case .getEmpty: return nil
        case .getOk(let ok):
            return Message(deliveryTag: ok.deliveryTag, redelivered: ok.redelivered, exchange: ok.exchange, routingKey: ok.routingKey,
                           properties: try ok.properties.decode(), body: ok.body, messageCount: ok.messageCount, connection: self)
        default: throw Self.unexpected(answer)
        }
    }

    public func ack(_ deliveryTag: UInt64, multiple: Bool = false) async throws {
        try await settle(.ack(Settle(deliveryTag: deliveryTag, multiple: multiple)))
    }

    public func nack(_ deliveryTag: UInt64, multiple: Bool = false, requeue: Bool = true) async throws {
        try await settle(.nack(Settle(deliveryTag: deliveryTag, multiple: multiple, requeue: requeue)))
    }

    public func reject(_ deliveryTag: UInt64, requeue: Bool = false) async throws {
        try await settle(.reject(Settle(deliveryTag: deliveryTag, requeue: requeue)))
    }

    private func settle(_ message: ClientMessage) async throws {
        let loop = channel.eventLoop
        let promise = loop.makePromise(of: Void.self)
        let handler = self.handler
        loop.execute { handler.value.settle(message, promise: promise) }
        try await promise.futureResult.get()
    }
}

/// A consumer's deliveries, in order.
public struct Consumer: AsyncSequence, Sendable {
    public typealias Element = Message
    public let tag: UInt32
    public let queue: String
    public let connection: BrokerConnection
    let stream: AsyncThrowingStream<Message, any Error>

    public func makeAsyncIterator() -> AsyncThrowingStream<Message, any Error>.AsyncIterator { stream.makeAsyncIterator() }

    /// Cancels this consumer.
    public func cancel() async throws { try await connection.cancel(self) }
}
