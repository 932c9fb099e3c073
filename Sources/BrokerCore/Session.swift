public import NIOCore
public import WireProtocol
import BrokerStorage
import DequeModule

/// Where a session's encoded frames go: the server's connection handler implements it.
public protocol SessionTransport: AnyObject {
    /// Writes and flushes one batch of encoded frames.
    func send(_ buffer: ByteBuffer)
    /// False while the peer is not reading fast enough (the socket's write buffer is above its high watermark).
    var isWritable: Bool { get }
    /// Asks for ``Broker/sessionBecameWritable(_:)`` on a later turn of the event loop, if the socket is writable then.
    func resumeSoon()
    /// Stops or resumes reading from the connection (flow control of publishers).
    func setReading(_ reading: Bool)
    /// Closes the connection from the broker's side with `close` (code and reason), as for a shutdown.
    func closeConnection(code: BrokerError.Code, reason: String)
}

/// One authenticated connection's broker-side state: its consumers, unacknowledged deliveries, publisher confirms,
/// and the frames waiting to be written. Owned by the broker's event loop.
///
/// Frames are encoded into ``outbound`` as they arise and written once per read cycle by ``Broker/flush()``.
public final class Session {
    public let id: UInt64
    /// The connection this session belongs to: its own ``id`` for a native connection; one AMQP connection's
    /// channels are sessions sharing it. Exclusive queues belong to the connection, not the session.
    public let connectionId: UInt64
    /// The protocol front end's encoder; nil for brokerd's native protocol (encoded inline, see ``SessionEncoder``).
    public let encoder: (any SessionEncoder)?
    /// The protocol the connection speaks and, for AMQP, the channel number (listings show them).
    public let protocolName: String
    public let channel: UInt16
    public private(set) var user: User
    public let clientName: String
    public let peer: String
    unowned let broker: Broker
    private(set) var transport: (any SessionTransport)?

    private var outbound = ByteBuffer()
    private var lastBatchSize = 4096
    var isDirty = false
    public private(set) var isClosed = false

    var consumers: [UInt32: QueueConsumer] = [:]
    private var nextConsumerTag: UInt32 = 0
    private var nextDeliveryTag: UInt64 = 0
    private var unacked = UnackedLedger()

    public private(set) var confirmMode = false
    private var confirms = ConfirmLedger()

    private var routeCache: Broker.RouteCache?
    /// The user's permissions, compiled; replaced when an operator changes them (``Broker/setPermissions``).
    var permissions: PermissionChecker

    /// When the connection opened (broker clock).
    public let openedAt: UInt64
    public private(set) var publishedCount: UInt64 = 0
    public private(set) var deliveredCount: UInt64 = 0

    /// The protocol version negotiated (1.1 adds `notice` frames).
    public let protocolVersion: ProtocolVersion
    /// The deprecation notices sent, by exchange, type and major (once each per connection).
    var noticesSent: Set<String> = []

    init(id: UInt64, user: User, clientName: String, peer: String, broker: Broker, transport: any SessionTransport,
         protocolVersion: ProtocolVersion = .v1_0, front: SessionFront = .native) {
        self.id = id
        self.connectionId = front.connectionId ?? id
        self.encoder = front.encoder
        self.protocolName = front.protocolName
        self.channel = front.channel
        self.protocolVersion = protocolVersion
        self.user = user
        self.clientName = clientName
        self.peer = peer
        self.broker = broker
        self.transport = transport
        self.openedAt = broker.now()
        self.permissions = PermissionChecker(user)
    }

    /// An operator changed this connection's user (permissions, limits): they apply from the next operation.
    func userChanged(_ changed: User) {
        user = changed
        permissions = PermissionChecker(changed)
    }

    public var consumerCount: Int { consumers.count }
    public var unackedCount: Int { unacked.count }

    /// Most bytes of deliveries encoded for one flush. Past it the session takes no more deliveries until the batch
    /// is written, so a consumer with a deep backlog cannot make one write, or the broker's memory, grow without bound.
    static let outboundLimit = 1 << 20

    /// Whether deliveries may be encoded now.
    var canDeliver: Bool {
        !isClosed && !isClosing && !deliveriesStopped && outbound.readableBytes < Self.outboundLimit && (transport?.isWritable ?? false)
    }

    /// The client asked for no deliveries for now (AMQP's `channel.flow` with active false); they resume when it
    /// is set back.
    public var deliveriesStopped = false {
        didSet { if oldValue && !deliveriesStopped { dispatchConsumers() } }
    }

    // MARK: - Output

    /// Encodes a frame for this session; it goes out at the next ``Broker/flush()``.
    public func write(_ message: ServerMessage) {
        guard !isClosed else { return }
        if let encoder {
            encoder.write(message, into: &outbound)
        } else {
            message.encode(into: &outbound)
        }
        markDirty()
    }

    /// Appends bytes the front end encodes itself (an AMQP method's answer) to this session's output, in order with
    /// everything the core writes; they go out at the next ``Broker/flush()``.
    public func writeEncoded(_ body: (inout ByteBuffer) -> Void) {
        guard !isClosed else { return }
        body(&outbound)
        markDirty()
    }

    private func markDirty() {
        if !isDirty {
            isDirty = true
            broker.dirtySessions.append(self)
        }
    }

    // MARK: - Output held for durable definitions

    /// The definitions batch whose write this session's output waits for (0: none). While it waits, nothing it
    /// encodes is written, so the answer to a durable declare (and all after it) goes out in order, once durable.
    private(set) var heldUntilBatch: UInt64 = 0
    private var holdsOutput = false

    func holdOutput(until batch: UInt64) {
        if !holdsOutput { broker.sessionsHoldingOutput.append(self) }
        holdsOutput = true
        heldUntilBatch = max(heldUntilBatch, batch)
    }

    /// The batch is durable: what was held goes out at the next flush.
    func releaseOutput() {
        holdsOutput = false
        heldUntilBatch = 0
        markDirty()
    }

    /// Writes what is pending: first the coalesced confirm, then the batch of frames, as one buffer.
    func flush() {
        isDirty = false
        guard !isClosed, !holdsOutput, let transport else { return }
        writePendingConfirm()
        guard outbound.readableBytes > 0 else { return }
        let batch = outbound
        let wasFull = batch.readableBytes >= Self.outboundLimit
        // The next batch's buffer is sized like this one, so a busy session grows it once, not per flush. After a
        // small batch (an answer, a confirm) none is kept: an idle connection holds no output buffer.
        if batch.readableBytes < 1024 {
            outbound = ByteBuffer()
        } else {
            lastBatchSize = max(4096, min(batch.readableBytes, Self.outboundLimit))
            outbound = ByteBufferAllocator().buffer(capacity: lastBatchSize)
        }
        transport.send(batch)
        // Deliveries stopped at the limit: resume them on a later turn of the event loop (so reads are served in
        // between), unless the socket pushes back, in which case its writability change resumes them.
        if wasFull { transport.resumeSoon() }
    }

    // MARK: - Methods

    /// Handles a method frame of an authenticated connection. Request failures are answered with an `Error` frame
    /// and leave the connection open; a thrown error is fatal to the connection (the server closes it).
    public func handle(_ message: ClientMessage) throws(BrokerError) {
        guard !isClosed else { return }
        switch message {
        case .publish(let publish):
            try self.publish(PublishView(publish))
        case .ack(let settle):
            reportingErrors { () throws(BrokerError) in try self.settle(settle.deliveryTag, multiple: settle.multiple, requeue: false, kind: .ack) }
        case .nack(let settle):
            reportingErrors { () throws(BrokerError) in
                try self.settle(settle.deliveryTag, multiple: settle.multiple, requeue: settle.requeue, kind: .nack)
            }
        case .reject(let settle):
            reportingErrors { () throws(BrokerError) in try self.settle(settle.deliveryTag, multiple: false, requeue: settle.requeue, kind: .reject) }
        case .exchangeDeclare(let m):
            reply(m.requestId) { () throws(BrokerError) in
                try broker.declareExchange(m, by: self)
                return .ok(requestId: m.requestId)
            }
        case .exchangeDelete(let m):
            reply(m.requestId) { () throws(BrokerError) in
                try broker.deleteExchange(m, by: self)
                return .ok(requestId: m.requestId)
            }
        case .queueDeclare(let m):
            reply(m.requestId) { () throws(BrokerError) in .queueDeclareOk(try broker.declareQueue(m, by: self)) }
        case .queueDelete(let m):
            reply(m.requestId) { () throws(BrokerError) in
                .countOk(requestId: m.requestId, count: UInt32(clamping: try broker.deleteQueue(m, by: self)))
            }
        case .queuePurge(let m):
            reply(m.requestId) { () throws(BrokerError) in
                .countOk(requestId: m.requestId, count: UInt32(clamping: try broker.purgeQueue(m.name, by: self)))
            }
        case .queueBind(let m):
            reply(m.requestId) { () throws(BrokerError) in
                try broker.bind(m, by: self)
                return .ok(requestId: m.requestId)
            }
        case .queueUnbind(let m):
            reply(m.requestId) { () throws(BrokerError) in
                try broker.unbind(m, by: self)
                return .ok(requestId: m.requestId)
            }
        case .confirmSelect(let requestId):
            enableConfirms()
            write(.ok(requestId: requestId))
        case .consume(let m):
            do throws(BrokerError) {
                let consumer = try addConsumer(queue: m.queue, noAck: m.noAck, exclusive: m.exclusive, prefetch: Int(m.prefetch),
                                               arguments: m.arguments)
                // ConsumeOk goes first, so the client knows the tag before the first delivery (and a notice).
                write(.consumeOk(ConsumeOk(requestId: m.requestId, consumerTag: consumer.tag)))
                startConsuming(consumer)
            } catch {
                write(.error(ErrorFrame(requestId: m.requestId, code: error.code, text: error.message)))
            }
        case .cancel(let m):
            reply(m.requestId) { () throws(BrokerError) in
                try cancel(consumerTag: m.consumerTag)
                return .ok(requestId: m.requestId)
            }
        case .get(let m):
            reply(m.requestId) { () throws(BrokerError) in
                try get(queue: m.queue, noAck: m.noAck, requestId: m.requestId)
                return nil
            }
        case .status(let requestId):
            reply(requestId) { () throws(BrokerError) in
                guard user.isAdmin else {
                    throw BrokerError(.accessRefused, "user '\(user.name)' is not an administrator; status needs admin rights")
                }
                return .statusOk(requestId: requestId, status: broker.status())
            }
        case .manage(let m):
            reply(m.requestId) { () throws(BrokerError) in
                guard user.isAdmin else {
                    throw BrokerError(.accessRefused, "user '\(user.name)' is not an administrator; management needs admin rights")
                }
                return .manageOk(requestId: m.requestId, result: try broker.manage(m, by: self))
            }
        case .heartbeat, .closeOk:
            break
        case .hello, .authenticate:
            throw BrokerError(.unexpectedFrame, "the connection is already authenticated")
        case .close:
            throw BrokerError(.unexpectedFrame, "close is handled by the connection, not the session")
        }
    }

    private func reply(_ requestId: UInt32, _ body: () throws(BrokerError) -> ServerMessage?) {
        do {
            if let answer = try body() { write(answer) }
        } catch {
            write(.error(ErrorFrame(requestId: requestId, code: error.code, text: error.message)))
        }
    }

    /// Runs an operation that answers nothing on success and reports a failure as an `error` frame (request id 0).
    private func reportingErrors(_ body: () throws(BrokerError) -> Void) {
        do {
            try body()
        } catch {
            write(.error(ErrorFrame(requestId: 0, code: error.code, text: error.message)))
        }
    }

    // MARK: - Publishing

    /// Whether reading from this connection is paused by an alarm.
    public private(set) var isPaused = false
    /// Whether an alarm is on (cached here: the publish path checks it per message).
    private var underAlarm = false
    /// Publish bytes still accepted in this alarm episode.
    private var graceLeft = 0

    /// What a connection may still publish after an alarm goes on: the publishes it sent before it read the
    /// `connectionBlocked` notice. A client that honours the notice (BrokerClient holds its publishes) never uses
    /// it up, so the broker keeps reading its acks and other requests: a connection that both consumes and
    /// publishes cannot deadlock itself by holding unacknowledged messages. A client that keeps publishing is no
    /// longer read once past it, so memory stays bounded (the limit plus this grace per connection).
    public static let publishGraceBytes = 1 << 20

    /// An alarm went on or off (or was on when the connection opened).
    func applyAlarm(_ alarm: Bool) {
        underAlarm = alarm
        graceLeft = Self.publishGraceBytes
        if !alarm && isPaused {
            isPaused = false
            transport?.setReading(true)
        }
    }

    /// Stops reading the connection until the alarm clears (its grace is used up).
    func pauseReading() {
        guard underAlarm, !isPaused else { return }
        isPaused = true
        transport?.setReading(false)
    }

    /// Routes one published message (the server calls this directly for `publish` frames: the hot path).
    /// Invalid names are a frame error (fatal to the connection), like any malformed frame.
    public func publish(_ publish: PublishView) throws(BrokerError) {
        guard !isClosed else { return }
        if underAlarm {
            let before = graceLeft
            graceLeft -= publish.envelope.bytes.readableBytes
            if before >= 0 && graceLeft < 0 { broker.pauseAfterCycle(self) }  // once, as the grace runs out
        }
        publishedCount &+= 1
        if confirmMode { confirms.published() }
        switch broker.route(publish, cache: &routeCache, permissions: permissions, publisher: self) {
        case .routed(let logged):
            confirmSucceeded(logged: logged)
        case .unroutable:
            if publish.mandatory {
                if let encoder {
                    encoder.writeReturned(into: &outbound, code: .noRoute, text: "NO_ROUTE", envelope: publish.envelope)
                } else {
                    Returned.writeFrame(into: &outbound, code: .noRoute, text: "NO_ROUTE", envelope: publish.envelope)
                }
                markDirty()
            }
            confirmSucceeded(logged: false)
        case .rejected(let error):
            // Refused by a full queue: a nack in confirm mode; without confirms the message is dropped, as in
            // RabbitMQ (an error per message would flood a fast publisher).
            if confirmMode { confirmFailed(error) }
        case .failed(let error):
            if error.code == .frameError { throw error }
            if confirmMode {
                confirmFailed(error)
            } else {
                write(.error(ErrorFrame(requestId: 0, code: error.code, text: error.message)))
            }
        }
    }

    private func confirmSucceeded(logged: Bool) {
        guard confirmMode else { return }
        if confirms.accepted(waitingFor: logged ? broker.openBatch : nil) { markDirty() }
    }

    private func writePendingConfirm() {
        guard let ack = confirms.takeAck() else { return }
        let message = ServerMessage.confirmAck(Confirm(sequence: ack, multiple: true))
        if let encoder { encoder.write(message, into: &outbound) } else { message.encode(into: &outbound) }
    }

    private func confirmFailed(_ error: BrokerError) {
        // A nack must not be overtaken by a later coalesced ack that would cover its sequence number,
        // so the acks before it are written first.
        writePendingConfirm()
        write(.confirmNack(Confirm(sequence: confirms.lastSequence, multiple: false, code: error.code, text: error.message)))
    }

    /// A log batch is durable (or failed): release the confirms that waited for it.
    func logBatchFinished(_ batch: UInt64, failed: Bool) {
        guard confirmMode else { return }
        switch confirms.batchFinished(batch, failed: failed) {
        case .none:
            return
        case .released:
            markDirty()
        case .nack(let ackFirst, let through):
            if let ackFirst { write(.confirmAck(Confirm(sequence: ackFirst, multiple: true))) }
            write(.confirmNack(Confirm(sequence: through, multiple: true, code: .internalError,
                                       text: "the broker could not write the message log; publish again")))
        }
        if !confirms.awaitsLog, let body = whenConfirmed {
            whenConfirmed = nil
            body()
        }
    }

    // MARK: - Closing after the confirms

    /// Set while the client's `close` waits for the confirms of publishes it sent before it (§7, §9.3).
    private var whenConfirmed: (() -> Void)?
    /// The client asked to close: nothing more is delivered to it.
    public private(set) var isClosing = false

    /// Whether a publish of this session still waits for the log before its confirm can be sent.
    public var awaitsConfirms: Bool { confirmMode && confirms.awaitsLog }

    /// The client asked to close while publishes still wait for their confirms: stop delivering, and call `body` once
    /// the last of them is confirmed (or nacked) and encoded, so the `closeOk` written after it follows every confirm.
    public func closeAfterConfirms(_ body: @escaping () -> Void) {
        isClosing = true
        guard awaitsConfirms else { return body() }
        whenConfirmed = body
    }

    // MARK: - Consuming

    /// Turns on publisher confirms: every later publish is confirmed (or nacked) by sequence number.
    public func enableConfirms() { confirmMode = true }

    /// Most unacknowledged deliveries all consumers of this session hold together (0: no limit). AMQP's
    /// `basic.qos` with `global` set (RabbitMQ's per-channel prefetch); native consumers have their own prefetch.
    public var sharedPrefetch = 0 {
        didSet { if sharedPrefetch == 0 || sharedPrefetch > oldValue { dispatchConsumers() } }
    }
    /// Unacknowledged deliveries to this session's consumers (not gets), for ``sharedPrefetch``.
    private(set) var consumerUnacked = 0

    /// Whether the session-wide prefetch lets one more delivery go to a consumer that acknowledges.
    var withinSharedPrefetch: Bool { sharedPrefetch == 0 || consumerUnacked < sharedPrefetch }

    /// Registers a consumer on `queue` without delivering to it yet: the caller answers the client first (so the
    /// client knows the tag before the first delivery), then calls ``startConsuming(_:)``. `arguments` are the
    /// consume arguments (`x-accept-types`); `name` is the front end's own tag for it (AMQP's consumer tag).
    public func addConsumer(queue name: String, noAck: Bool, exclusive: Bool, prefetch: Int, arguments: FieldTable,
                            name label: String? = nil) throws(BrokerError) -> QueueConsumer {
        var accepted: [AcceptedVersions]?
        for key in arguments.keys.sorted() where key != AcceptedVersions.argument {
            throw BrokerError(.invalidArgument, "unknown consume argument '\(key)'; known: \(AcceptedVersions.argument)")
        }
        if let value = arguments[AcceptedVersions.argument] {
            guard let text = value.stringValue else {
                throw BrokerError(.invalidArgument, "consume argument '\(AcceptedVersions.argument)' must be a string like trip.requested@1-2")
            }
            accepted = try AcceptedVersions.parseList(text)
        }
        let queue = try broker.accessibleQueue(name, by: self)
        try permissions.check(.read, "queue", queue.name)
        if let limit = user.limits?.maxConsumers, broker.consumerCount(of: user.name) >= limit {
            throw BrokerError(.resourceError, "user '\(user.name)' has \(limit) consumers, the most it may have")
        }
        if queue.hasExclusiveConsumer {
            throw BrokerError(.resourceLocked, "queue '\(queue.name)' has an exclusive consumer")
        }
        if exclusive && !queue.consumers.isEmpty {
            throw BrokerError(.resourceLocked, "queue '\(queue.name)' already has consumers; cannot consume exclusively")
        }
        guard consumers.count < Int(UInt16.max) else {
            throw BrokerError(.resourceError, "this connection already has \(consumers.count) consumers")
        }
        nextConsumerTag &+= 1
        while consumers[nextConsumerTag] != nil || nextConsumerTag == 0 { nextConsumerTag &+= 1 }
        let consumer = QueueConsumer(tag: nextConsumerTag, session: self, queue: queue, noAck: noAck, exclusive: exclusive,
                                prefetch: prefetch, accepted: accepted, name: label)
        consumers[consumer.tag] = consumer
        queue.consumers.append(consumer)
        queue.everConsumed = true
        return consumer
    }

    /// Starts deliveries to a consumer ``addConsumer(queue:noAck:exclusive:prefetch:arguments:name:)`` registered.
    public func startConsuming(_ consumer: QueueConsumer) {
        broker.selectiveConsumerAdded(consumer)
        consumer.queue.dispatch()
    }

    /// Cancels one of this session's consumers; its unacknowledged deliveries stay with the session.
    public func cancel(consumerTag: UInt32) throws(BrokerError) {
        guard let consumer = consumers[consumerTag] else {
            throw BrokerError(.notFound, "no consumer with tag \(consumerTag) on this connection")
        }
        consumer.queue.lastUsed = broker.now()  // before: removing the last consumer may delete the queue
        removeConsumer(consumer)
    }

    /// Gives every queue this session consumes from a chance to deliver (session-wide credit was freed).
    private func dispatchConsumers() {
        for consumer in consumers.values where !consumer.queue.isDeleted { consumer.queue.dispatch() }
    }

    /// Removes a consumer (cancel, or its connection closing). Its unacknowledged deliveries stay with the session.
    func removeConsumer(_ consumer: QueueConsumer) {
        consumers[consumer.tag] = nil
        broker.selectiveConsumerRemoved(consumer)
        let queue = consumer.queue
        if let index = queue.consumers.firstIndex(where: { $0 === consumer }) {
            queue.consumers.remove(at: index)
            if queue.nextConsumer > index { queue.nextConsumer -= 1 }
        }
        if queue.shouldAutoDelete && !queue.isDeleted {
            broker.removeQueue(queue, reason: "auto-delete queue lost its last consumer")
        } else if consumer.accepted != nil && !queue.isDeleted && queue.readyCount > 0 {
            // The head may have waited for this consumer: now another takes it, or it is incompatible.
            queue.dispatch()
        }
    }

    /// The broker cancelled a consumer because its queue went away.
    func consumerCancelledByBroker(_ consumer: QueueConsumer, reason: String) {
        consumers[consumer.tag] = nil
        broker.selectiveConsumerRemoved(consumer)
        write(.consumerCancelled(ConsumerCancelled(consumerTag: consumer.tag, code: .notFound, reason: reason)))
    }

    /// Encodes a delivery and, unless no-ack, records it as unacknowledged.
    func deliver(_ message: QueuedMessage, to consumer: QueueConsumer, from queue: Queue) {
        nextDeliveryTag &+= 1
        deliveredCount &+= 1
        if let encoder {
            encoder.writeDeliver(into: &outbound, consumer: consumer, deliveryTag: nextDeliveryTag, redelivered: message.redelivered,
                                 envelope: message.envelope)
        } else {
            Deliver.writeFrame(into: &outbound, consumerTag: consumer.tag, deliveryTag: nextDeliveryTag, redelivered: message.redelivered,
                               envelope: message.envelope)
        }
        if !consumer.noAck {
            consumerUnacked += 1
            broker.memory.add(message.footprint)
            var held = message
            held.deliveries &+= 1
            unacked.append(UnackedDelivery(tag: nextDeliveryTag, queue: queue, consumer: consumer, message: held))
            consumer.unacked += 1
            queue.unackedCount += 1
        }
        if message.logId != 0 { recordDelivery(message, from: queue, settled: consumer.noAck) }
        markDirty()
    }

    /// Takes the message at the head of `queue` for the client (`getOk`, or `getEmpty` when there is none).
    /// `requestId` is the native request's id (front ends with their own encoder ignore it).
    public func get(queue name: String, noAck: Bool, requestId: UInt32 = 0) throws(BrokerError) {
        let queue = try broker.accessibleQueue(name, by: self)
        try permissions.check(.read, "queue", queue.name)
        guard let message = queue.dequeue() else {
            write(.getEmpty(requestId: requestId))
            return
        }
        nextDeliveryTag &+= 1
        deliveredCount &+= 1
        if !noAck {
            broker.memory.add(message.footprint)
            unacked.append(UnackedDelivery(tag: nextDeliveryTag, queue: queue, consumer: nil, message: message))
            queue.unackedCount += 1
        }
        if message.logId != 0 { recordDelivery(message, from: queue, settled: noAck) }
        let count = UInt32(clamping: queue.readyCount)
        if let encoder {
            encoder.writeGetOk(into: &outbound, deliveryTag: nextDeliveryTag, redelivered: message.redelivered, messageCount: count,
                               envelope: message.envelope)
        } else {
            GetOk.writeFrame(into: &outbound, requestId: requestId, deliveryTag: nextDeliveryTag, redelivered: message.redelivered,
                             messageCount: count, envelope: message.envelope)
        }
        markDirty()
    }

    /// Logs that a persistent message left its queue (no-ack delivery) or was delivered (so it comes back marked
    /// redelivered after a crash; only the first delivery needs the record).
    private func recordDelivery(_ message: QueuedMessage, from queue: Queue, settled: Bool) {
        guard let store = broker.store, let id = queue.durableId else { return }
        if settled {
            store.appendSettle(id: message.logId, queue: id)
        } else if !message.redelivered {
            store.appendDelivered(id: message.logId, queue: id)
        }
    }

    // MARK: - Settling

    /// How a client settles a delivery.
    public enum SettleKind: String, Sendable {
        case ack, nack, reject
    }

    /// Settles the delivery `deliveryTag` (or, with `multiple`, every outstanding one up to it; 0 means all): an
    /// ack removes it; a nack or reject returns it to its queue's head (`requeue`) or dead-letters it (reason
    /// `rejected`). An unknown or already settled tag is `preconditionFailed` and settles nothing.
    public func settle(_ deliveryTag: UInt64, multiple: Bool, requeue: Bool, kind: SettleKind) throws(BrokerError) {
        // A nack or reject without requeue dead-letters (reason `rejected`); an ack just settles.
        let sharedCreditWasOut = !withinSharedPrefetch
        guard let settled = unacked.settle(deliveryTag, multiple: multiple) else {
            throw multiple
                ? BrokerError(.preconditionFailed, "\(kind.rawValue) multiple up to delivery tag \(deliveryTag): nothing outstanding")
                : BrokerError(.preconditionFailed, "\(kind.rawValue) of unknown or already settled delivery tag \(deliveryTag)")
        }
        var returned: [(Queue, QueuedMessage)] = []
        var touched: [Queue] = []
        for entry in settled {
            if let consumer = entry.consumer {
                consumer.unacked -= 1
                consumerUnacked -= 1
            }
            entry.queue.unackedCount -= 1
            if let message = entry.message {
                broker.memory.add(-message.footprint)
                if requeue {
                    returned.append((entry.queue, message))
                } else if kind != .ack {
                    broker.deadLetter(message, from: entry.queue, reason: "rejected")
                } else if message.logId != 0, let store = broker.store, let id = entry.queue.durableId {
                    store.appendSettle(id: message.logId, queue: id)
                }
            }
            if !touched.contains(where: { $0 === entry.queue }) { touched.append(entry.queue) }
        }
        if !returned.isEmpty { self.requeue(returned) }
        for queue in touched where !queue.isDeleted { queue.dispatch() }
        // Session-wide credit freed: the consumers of other queues may take messages again.
        if sharedCreditWasOut && withinSharedPrefetch { dispatchConsumers() }
    }

    /// Returns every unacknowledged delivery to its queue, marked redelivered (AMQP's `basic.recover` with
    /// requeue, as RabbitMQ does it: the messages may go to any consumer).
    public func recover() {
        guard unacked.count > 0 else { return }
        _ = try? settle(0, multiple: true, requeue: true, kind: .nack)
    }

    /// Returns messages to the heads of their queues, each queue's in the original order.
    private func requeue(_ returned: [(Queue, QueuedMessage)]) {
        var queues: [Queue] = []
        for (queue, _) in returned where !queues.contains(where: { $0 === queue }) { queues.append(queue) }
        for queue in queues {
            queue.requeueAtHead(returned.filter { $0.0 === queue }.map(\.1), store: broker.store)
        }
    }

    // MARK: - Closing

    /// Releases everything the session holds: consumers are cancelled, unacknowledged messages go back to the heads
    /// of their queues (marked redelivered), exclusive queues are deleted.
    func close() {
        guard !isClosed else { return }
        isClosed = true
        transport = nil
        for consumer in consumers.values.sorted(by: { $0.tag < $1.tag }) { removeConsumer(consumer) }
        var returned: [(Queue, QueuedMessage)] = []
        var touched: [Queue] = []
        for entry in unacked.removeAll() {
            entry.queue.unackedCount -= 1
            if let message = entry.message {
                broker.memory.add(-message.footprint)
                returned.append((entry.queue, message))
            }
            if !touched.contains(where: { $0 === entry.queue }) { touched.append(entry.queue) }
        }
        consumerUnacked = 0
        requeue(returned)
        for queue in touched where !queue.isDeleted { queue.dispatch() }
    }
}

struct UnackedDelivery {
    let tag: UInt64
    let queue: Queue
    let consumer: QueueConsumer?
    var message: QueuedMessage?
    var settled = false

    init(tag: UInt64, queue: Queue, consumer: QueueConsumer?, message: QueuedMessage) {
        self.tag = tag
        self.queue = queue
        self.consumer = consumer
        self.message = message
    }
}
