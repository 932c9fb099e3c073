@_exported public import NIOCore
public import NIOPosix
public import ServiceLifecycle
@_exported public import WireProtocol
import ServiceContextModule

/// A connection to brokerd: declare, bind, publish (with awaitable confirms), consume as an `AsyncSequence`, get.
///
/// It survives a broker restart or a dropped socket on its own (``ClientConfiguration/recovery``): it reconnects
/// with backoff, redeclares the exchanges, queues and bindings it declared, resumes its consumers and re-sends
/// publishes still awaiting a confirm. ``events`` tells what happens. As a swift-service-lifecycle `Service`, it
/// runs in a service's `ServiceGroup` and shuts down gracefully (docs/client.md).
///
/// Thread-safe: every call hops to the connection's event loop, where ``ConnectionDriver`` and its
/// ``ClientStateMachine`` keep the state.
public final class BrokerConnection: Sendable, Service {
    public let configuration: ClientConfiguration
    /// The version, limits and server name agreed in the first handshake (a reconnect offers the same).
    public let serverName: String
    /// The protocol this connection speaks (``ClientConfiguration/wireProtocol``).
    public var wireProtocol: BrokerProtocol { configuration.wireProtocol }
    public let protocolVersion: ProtocolVersion
    /// The broker's id for the first connection; after a reconnect the broker knows this client by a new id.
    public let connectionId: UInt64
    public let maxFrameSize: UInt32
    public let heartbeatSeconds: UInt16
    /// Mandatory messages the broker could not route.
    public let returns: AsyncStream<ReturnedMessage>
    /// Errors the broker reported about frames that have no answer of their own: a publish outside confirm mode
    /// (for example to a missing exchange) or an ack, nack or reject of an unknown delivery tag.
    public let errors: AsyncStream<BrokerError>
    /// Flow control: the broker stopped reading this connection's publishes (an alarm, such as free disk below its
    /// limit) or resumed. Publishes made while blocked wait (up to ``ClientConfiguration/publishTimeout``, then fail
    /// with `TIMEOUT`), so the connection stays readable for acks and requests.
    public let flow: AsyncStream<FlowEvent>
    /// Disconnected, reconnecting, recovered, failed, closed: the connection's life, for a service to log or act on.
    public let events: AsyncStream<ConnectionEvent>
    /// The broker's advice, each also logged as a warning: a message version this connection publishes is
    /// deprecated by its exchange's contract (once per exchange, type and version; docs/contracts.md). Brokers
    /// that speak protocol 1.0 only send none.
    public let notices: AsyncStream<Notice>

    private let loop: any EventLoop
    private let driver: NIOLoopBound<ConnectionDriver>

    private init(configuration: ClientConfiguration, loop: any EventLoop, driver: NIOLoopBound<ConnectionDriver>, helloOk: HelloOk,
                 authOk: AuthOk, returns: AsyncStream<ReturnedMessage>, errors: AsyncStream<BrokerError>, flow: AsyncStream<FlowEvent>,
                 events: AsyncStream<ConnectionEvent>, notices: AsyncStream<Notice>) {
        self.configuration = configuration
        self.loop = loop
        self.driver = driver
        self.serverName = helloOk.serverName
        self.protocolVersion = helloOk.version
        self.connectionId = authOk.connectionId
        self.maxFrameSize = authOk.maxFrameSize
        self.heartbeatSeconds = authOk.heartbeatSeconds
        self.returns = returns
        self.errors = errors
        self.notices = notices
        self.flow = flow
        self.events = events
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

    /// Connects (trying each configured endpoint once, in turn), negotiates the protocol version and authenticates.
    /// Recovery applies once this first connect has succeeded.
    public static func connect(_ configuration: ClientConfiguration = ClientConfiguration(),
                               group: any EventLoopGroup = MultiThreadedEventLoopGroup.singleton) async throws -> BrokerConnection {
        let loop = group.next()
        let (returns, returnsContinuation) = AsyncStream<ReturnedMessage>.makeStream(bufferingPolicy: .bufferingNewest(1024))
        let (errors, errorsContinuation) = AsyncStream<BrokerError>.makeStream(bufferingPolicy: .bufferingNewest(256))
        let (flow, flowContinuation) = AsyncStream<FlowEvent>.makeStream(bufferingPolicy: .bufferingNewest(64))
        let (events, eventsContinuation) = AsyncStream<ConnectionEvent>.makeStream(bufferingPolicy: .bufferingNewest(256))
        let (notices, noticesContinuation) = AsyncStream<Notice>.makeStream(bufferingPolicy: .bufferingNewest(256))
        let driver = try await loop.submit {
            let driver = ConnectionDriver(loop: loop, configuration: configuration, returns: returnsContinuation,
                                          errors: errorsContinuation, flow: flowContinuation, events: eventsContinuation,
                                          notices: noticesContinuation)
            driver.start()
            return NIOLoopBound(driver, eventLoop: loop)
        }.get()
        let (helloOk, authOk) = try await loop.flatSubmit { driver.value.opened.futureResult }.get()
        let connection = BrokerConnection(configuration: configuration, loop: loop, driver: driver, helloOk: helloOk, authOk: authOk,
                                          returns: returns, errors: errors, flow: flow, events: events, notices: notices)
        try await loop.submit { driver.value.connection = connection }.get()
        return connection
    }

    /// Closes the connection politely (close / closeOk). Consumers finish; pending confirms and requests fail.
    public func close() async {
        _ = try? await perform { (driver, promise: EventLoopPromise<Void>) in driver.close(promise: promise) }
    }

    /// Completes when the connection has ended for good (closed, or failed past recovery).
    public func closed() async {
        let driver = self.driver
        try? await loop.flatSubmit { driver.value.terminated.futureResult }.get()
    }

    /// Why the connection ended: nil while it is alive or when the caller closed it; the terminal error otherwise.
    public func terminalError() async -> BrokerError? {
        let driver = self.driver
        return try? await loop.submit { () -> BrokerError? in
            let machine = driver.value.machine
            guard machine.isTerminal, !machine.closedByClient else { return nil }
            return machine.closedError
        }.get()
    }

    /// What a connection is holding and has seen, for a producer watching back-pressure build up before its
    /// publish calls start timing out, and for tests that wait on a condition instead of a clock.
    public struct Statistics: Sendable, Equatable {
        /// Publishes waiting in the client: the broker blocks publishers, or the connection is recovering.
        public var heldPublishes: Int
        /// Publishes written in confirm mode and waiting for their confirm.
        public var unconfirmedPublishes: Int
        /// Heartbeat frames received from the broker since the connection opened (all reconnections).
        public var heartbeatsReceived: Int
    }

    /// The connection's ``Statistics`` now (zeros once the connection's event loop is gone).
    public func statistics() async -> Statistics {
        let driver = self.driver
        return (try? await loop.submit { () -> Statistics in
            let machine = driver.value.machine
            return Statistics(heldPublishes: machine.held.count, unconfirmedPublishes: machine.unconfirmed.count,
                              heartbeatsReceived: machine.heartbeatsReceived)
        }.get()) ?? Statistics(heldPublishes: 0, unconfirmedPublishes: 0, heartbeatsReceived: 0)
    }

    // MARK: - Service

    /// Runs the connection as a swift-service-lifecycle `Service`: returns when it is closed, throws its terminal
    /// error if it fails past recovery (so the `ServiceGroup` shuts the service down), and on graceful shutdown
    /// stops consuming, waits for in-flight deliveries to be settled and publishes to be confirmed (up to
    /// ``ClientConfiguration/shutdownTimeout``), then closes.
    public func run() async throws {
        try await withTaskCancellationHandler {
            await withGracefulShutdownHandler {
                await self.closed()
            } onGracefulShutdown: {
                Task { await self.shutdownGracefully() }
            }
        } onCancel: {
            Task { await self.close() }
        }
        if let error = await terminalError() { throw error }
    }

    /// Stops every consumer, waits (bounded by ``ClientConfiguration/shutdownTimeout``) until the deliveries already
    /// handed out are settled and every publish is confirmed, then closes.
    public func shutdownGracefully() async {
        let timeout = TimeAmount(configuration.shutdownTimeout)
        let driver = self.driver
        let loop = self.loop
        _ = try? await loop.flatSubmit { () -> EventLoopFuture<Void> in
            let promise = loop.makePromise(of: Void.self)
            driver.value.drain(promise: promise)
            let timer = loop.scheduleTask(in: timeout) { promise.succeed() }
            promise.futureResult.whenComplete { _ in timer.cancel() }
            return promise.futureResult
        }.get()
        await close()
    }

    // MARK: - Requests

    /// Runs `body` on the loop with a fresh promise, and awaits the promise.
    private func perform<T: Sendable>(_ body: @escaping @Sendable (ConnectionDriver, EventLoopPromise<T>) -> Void) async throws -> T {
        let promise = loop.makePromise(of: T.self)
        let driver = self.driver
        loop.execute { body(driver.value, promise) }
        return try await promise.futureResult.get()
    }

    private func request(_ message: ClientMessage, recording change: ClientStateMachine.TopologyChange? = nil) async throws -> ServerMessage {
        try await perform { driver, promise in driver.request(message, recording: change, promise: promise) }
    }

    private static func unexpected(_ message: ServerMessage) -> BrokerError {
        BrokerError(.unexpectedFrame, "unexpected answer \(message.frameType) from the broker")
    }

    private func expectOk(_ message: ClientMessage, recording change: ClientStateMachine.TopologyChange? = nil) async throws {
        let answer = try await request(message, recording: change)
        guard case .ok = answer else { throw Self.unexpected(answer) }
    }

    private func expectCount(_ message: ClientMessage, recording change: ClientStateMachine.TopologyChange? = nil) async throws -> Int {
        let answer = try await request(message, recording: change)
        guard case .countOk(_, let count) = answer else { throw Self.unexpected(answer) }
        return Int(count)
    }

    // MARK: - Exchanges, queues, bindings

    public func declareExchange(_ name: String, type: ExchangeKind, durable: Bool = false, autoDelete: Bool = false,
                                passive: Bool = false, arguments: FieldTable = [:]) async throws {
        try NameRules.validateName(name, kind: "exchange")
        let declare = ExchangeDeclare(requestId: 0, name: name, kind: type, durable: durable, autoDelete: autoDelete, passive: passive,
                                      arguments: arguments)
        try await expectOk(.exchangeDeclare(declare), recording: passive ? nil : .declareExchange(declare))
    }

    public func deleteExchange(_ name: String, ifUnused: Bool = false) async throws {
        // "" is the default exchange: the broker answers that it cannot be deleted (403), as for every built-in.
        if !name.isEmpty { try NameRules.validateName(name, kind: "exchange") }
        try await expectOk(.exchangeDelete(ExchangeDelete(requestId: 0, name: name, ifUnused: ifUnused)), recording: .deleteExchange(name))
    }

    /// Declares a queue; an empty name asks the broker to generate one (returned in ``QueueInfo/name``).
    @discardableResult
    public func declareQueue(_ name: String = "", durable: Bool = false, exclusive: Bool = false, autoDelete: Bool = false,
                             passive: Bool = false, arguments: FieldTable = [:]) async throws -> QueueInfo {
        if !name.isEmpty { try NameRules.validateName(name, kind: "queue") }
        let declare = QueueDeclare(requestId: 0, name: name, durable: durable, exclusive: exclusive, autoDelete: autoDelete,
                                   passive: passive, arguments: arguments)
        let answer = try await request(.queueDeclare(declare), recording: passive ? nil : .declareQueue(declare, serverNamed: name.isEmpty))
        guard case .queueDeclareOk(let ok) = answer else { throw Self.unexpected(answer) }
        return QueueInfo(name: ok.name, messageCount: ok.messageCount, consumerCount: ok.consumerCount)
    }

    /// Deletes a queue; returns how many ready messages it held.
    @discardableResult
    public func deleteQueue(_ name: String, ifUnused: Bool = false, ifEmpty: Bool = false) async throws -> Int {
        try NameRules.validateName(name, kind: "queue")
        return try await expectCount(.queueDelete(QueueDelete(requestId: 0, name: name, ifUnused: ifUnused, ifEmpty: ifEmpty)),
                                     recording: .deleteQueue(name))
    }

    /// Drops a queue's ready messages; returns how many.
    @discardableResult
    public func purgeQueue(_ name: String) async throws -> Int {
        try NameRules.validateName(name, kind: "queue")
        return try await expectCount(.queuePurge(QueuePurge(requestId: 0, name: name)))
    }

    public func bind(queue: String, exchange: String, key: String = "", arguments: FieldTable = [:]) async throws {
        try NameRules.validateKey(key, kind: "binding key")
        let binding = QueueBinding(requestId: 0, queue: queue, exchange: exchange, bindingKey: key, arguments: arguments)
        try await expectOk(.queueBind(binding), recording: .bind(binding))
    }

    public func unbind(queue: String, exchange: String, key: String = "") async throws {
        try NameRules.validateKey(key, kind: "binding key")
        let binding = QueueBinding(requestId: 0, queue: queue, exchange: exchange, bindingKey: key)
        try await expectOk(.queueUnbind(binding), recording: .unbind(binding))
    }

    /// Broker status (needs an administrator).
    public func status() async throws -> FieldTable {
        let answer = try await request(.status(requestId: 0))
        guard case .statusOk(_, let status) = answer else { throw Self.unexpected(answer) }
        return status
    }

    /// Runs a management method (admin only; docs/protocol.md §11) and returns its result table.
    public func manage(_ method: String, _ arguments: FieldTable = [:]) async throws -> FieldTable {
        let answer = try await request(.manage(Manage(requestId: 0, method: method, arguments: arguments)))
        guard case .manageOk(_, let result) = answer else { throw Self.unexpected(answer) }
        return result
    }

    /// Runs a management method that answers rows (`list.queues`, `queue.peek`, `user.list`) and returns them.
    public func rows(_ method: String, _ arguments: FieldTable = [:]) async throws -> [FieldTable] {
        guard case .array(let rows)? = try await manage(method, arguments)["rows"] else { return [] }
        return rows.compactMap { if case .table(let row) = $0 { row } else { nil } }
    }

    /// Runs a listing method (`list.queues`, ...) and returns all its rows, asking for them page by page
    /// (docs/protocol.md §11), so a broker with 100,000 queues lists as well as one with ten.
    public func list(_ what: String) async throws -> [FieldTable] {
        try await allRows("list." + what)
    }

    /// Rows per page when a listing is fetched whole.
    public static let listingPageSize = 1_000

    /// All rows of a paged listing method. A broker that answers without `total` (before paging) answered every row
    /// at once.
    public func allRows(_ method: String) async throws -> [FieldTable] {
        var all: [FieldTable] = []
        while true {
            let answer = try await manage(method, ["offset": .int(Int64(all.count)), "limit": .int(Int64(Self.listingPageSize))])
            guard case .array(let page)? = answer["rows"] else { return all }
            all += page.compactMap { if case .table(let row) = $0 { row } else { nil } }
            guard let total = answer["total"]?.intValue, !page.isEmpty, all.count < total else { return all }
        }
    }

    // MARK: - Publishing

    /// Turns on publisher confirms: from now on ``publish(exchange:routingKey:body:properties:mandatory:)`` returns when
    /// the broker has taken responsibility for the message, and throws if it refused it. Stays on across reconnects.
    public func enableConfirms() async throws {
        _ = try await perform { driver, promise in driver.enableConfirms(promise: promise) }
    }

    /// Publishes a message. Without confirms it returns once the message is handed to the socket (waiting while the
    /// socket pushes back); with confirms, once the broker confirms it. While the connection recovers or the broker
    /// blocks publishers, it waits (up to ``ClientConfiguration/publishTimeout``) instead of failing.
    ///
    /// When a tracing instrument is bootstrapped (swift-distributed-tracing) and a `ServiceContext` is current, its
    /// trace context travels in the message's headers (W3C `traceparent`), for the consumer to continue the trace.
    public func publish(exchange: String = "", routingKey: String, body: ByteBuffer, properties: MessageProperties = MessageProperties(),
                        mandatory: Bool = false) async throws {
        try NameRules.validateKey(routingKey)
        if exchange.utf8.count > NameRules.maxShortStringBytes { try NameRules.validateName(exchange, kind: "exchange") }
        var properties = properties
        if let context = ServiceContext.current { TraceContextCarrier.inject(context, into: &properties) }
        let raw = try RawProperties(validating: properties)
        let frameSize = Frame.headerSize + 3 + exchange.utf8.count + routingKey.utf8.count + 2 + raw.bytes.readableBytes
            + body.readableBytes
        if frameSize > Int(maxFrameSize) {
            throw BrokerError(.frameTooLarge, "message of \(body.readableBytes) bytes exceeds the broker's frame limit of \(maxFrameSize)")
        }
        let publish = Publish(exchange: exchange, routingKey: routingKey, mandatory: mandatory, properties: raw, body: body)
        try await perform { (driver, promise: EventLoopPromise<Void>) in driver.publish(publish, promise: promise) }
    }

    /// Publishes a UTF-8 string.
    public func publish(exchange: String = "", routingKey: String, body: String, properties: MessageProperties = MessageProperties(),
                        mandatory: Bool = false) async throws {
        try await publish(exchange: exchange, routingKey: routingKey, body: ByteBuffer(string: body), properties: properties, mandatory: mandatory)
    }

    // MARK: - Consuming

    /// Starts a consumer. Deliveries arrive through the returned sequence; it ends when the consumer is cancelled
    /// and throws if the broker cancels it (queue deleted) or the connection fails for good. Across a reconnect it
    /// goes on: the consumer is registered again with the same prefetch, and deliveries resume.
    ///
    /// `accepting` names the major versions it understands of the message types it lists (docs/contracts.md,
    /// "Consumers"): the broker never hands it a message of a listed type outside its range (protocol 1.1; such a
    /// message goes to another consumer, or is dead-lettered or held by the queue), and counts it in the census.
    public func consume(queue: String, prefetch: UInt16 = 100, noAck: Bool = false, exclusive: Bool = false,
                        accepting: [AcceptedVersions] = []) async throws -> Consumer {
        try NameRules.validateName(queue, kind: "queue")
        var arguments: FieldTable = [:]
        if !accepting.isEmpty {
            let text = AcceptedVersions.listDescription(accepting)
            _ = try AcceptedVersions.parseList(text)  // a bad entry fails here, naming it, not at the broker
            arguments[AcceptedVersions.argument] = .string(text)
        }
        let (stream, continuation) = AsyncThrowingStream<Message, any Error>.makeStream()
        let consume = Consume(requestId: 0, queue: queue, noAck: noAck, exclusive: exclusive, prefetch: prefetch, arguments: arguments)
        let (answer, id) = try await perform { (driver, promise: EventLoopPromise<(ServerMessage, UInt64)>) in
            let inner = driver.loop.makePromise(of: ServerMessage.self)
            let id = driver.consume(consume, continuation: continuation, promise: inner)
            inner.futureResult.map { ($0, id) }.cascade(to: promise)
        }
        guard case .consumeOk = answer else { throw Self.unexpected(answer) }
        return Consumer(id: id, queue: queue, connection: self, stream: stream)
    }

    /// Cancels a consumer; its sequence finishes. Unacknowledged deliveries stay unacknowledged until settled.
    public func cancel(_ consumer: Consumer) async throws {
        let id = consumer.id
        _ = try await perform { driver, promise in driver.cancel(consumer: id, promise: promise) }
    }

    /// The queue a consumer reads now: a server-named queue gets a new name when it is redeclared after a reconnect.
    public func currentQueue(of consumer: Consumer) async -> String? {
        let driver = self.driver
        let id = consumer.id
        return try? await loop.submit { driver.value.queue(of: id) }.get()
    }

    /// Takes one message from a queue, or nil if it is empty.
    public func get(queue: String, noAck: Bool = false) async throws -> Message? {
        try NameRules.validateName(queue, kind: "queue")
        let get = Get(requestId: 0, queue: queue, noAck: noAck)
        let (answer, epoch) = try await perform { (driver, promise: EventLoopPromise<(ServerMessage, UInt64)>) in
            let inner = driver.loop.makePromise(of: ServerMessage.self)
            driver.get(get, promise: inner)
            inner.futureResult.map { ($0, driver.machine.epoch) }.cascade(to: promise)
        }
        switch answer {
        case .getEmpty: return nil
        case .getOk(let ok):
            return Message(deliveryTag: ok.deliveryTag, redelivered: ok.redelivered, exchange: ok.exchange, routingKey: ok.routingKey,
                           properties: try ok.properties.decode(), body: ok.body, messageCount: ok.messageCount, connection: self,
                           epoch: epoch)
        default: throw Self.unexpected(answer)
        }
    }

    /// Settles a delivery by tag on the current connection. Prefer ``Message/ack(multiple:)``, which also knows
    /// which connection delivered the message (a tag from before a reconnect is refused with `staleDelivery`).
    public func ack(_ deliveryTag: UInt64, multiple: Bool = false) async throws {
        try await settle(epoch: nil, deliveryTag: deliveryTag, multiple: multiple, .ack)
    }

    public func nack(_ deliveryTag: UInt64, multiple: Bool = false, requeue: Bool = true) async throws {
        try await settle(epoch: nil, deliveryTag: deliveryTag, multiple: multiple, .nack(requeue: requeue))
    }

    public func reject(_ deliveryTag: UInt64, requeue: Bool = false) async throws {
        try await settle(epoch: nil, deliveryTag: deliveryTag, multiple: false, .reject(requeue: requeue))
    }

    func settle(epoch: UInt64?, deliveryTag: UInt64, multiple: Bool, _ kind: ClientStateMachine.SettleKind) async throws {
        try await perform { (driver, promise: EventLoopPromise<Void>) in
            promise.completeWith(driver.settle(epoch: epoch ?? driver.machine.epoch, deliveryTag: deliveryTag, multiple: multiple, kind)
                .mapError { $0 as any Error })
        }
    }
}

/// A consumer's deliveries, in order.
public struct Consumer: AsyncSequence, Sendable {
    public typealias Element = Message
    /// The client's id for this consumer, stable across reconnects (the broker's tag changes with each connection).
    public let id: UInt64
    /// The queue named when the consumer started (see ``BrokerConnection/currentQueue(of:)`` after a reconnect).
    public let queue: String
    public let connection: BrokerConnection
    let stream: AsyncThrowingStream<Message, any Error>

    public func makeAsyncIterator() -> AsyncThrowingStream<Message, any Error>.AsyncIterator { stream.makeAsyncIterator() }

    /// Cancels this consumer.
    public func cancel() async throws { try await connection.cancel(self) }
}
