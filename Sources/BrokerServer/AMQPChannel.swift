import AMQPWire
import BrokerCore
import NIOCore
import WireProtocol

/// One open AMQP channel: a broker ``Session`` of its own (delivery tags, confirms, consumers and prefetch are
/// per channel in AMQP), the channel's content assembler, and the translation of its methods onto the core.
///
/// It is its session's ``SessionEncoder`` (deliveries, confirms and the rest become AMQP frames on this
/// channel's number) and its ``SessionTransport`` (writes, flow control and closing go to the connection).
final class AMQPChannel: SessionEncoder, SessionTransport {
    let number: UInt16
    unowned let connection: AMQPConnectionHandler
    var session: Session?
    private var assembler: AMQPContentAssembler
    /// After a channel exception we sent `channel.close`: everything but `close-ok` is discarded (2.3.5).
    private var closing = false
    /// The consumers by the client's tag.
    private var consumerTags: [String: QueueConsumer] = [:]
    /// `basic.qos` with `global` false: the prefetch of consumers started later on this channel (0: unlimited).
    private var consumerPrefetch = 0
    private var nextGeneratedTag = 0
    /// The queue behind this channel's direct reply-to consumer (``Broker/declareDirectReplyQueue(by:)``).
    private var directReplyQueue: String?
    /// The pseudo-queue of RabbitMQ's direct reply-to.
    static let directReplyTo = "amq.rabbitmq.reply-to"

    init(number: UInt16, connection: AMQPConnectionHandler) {
        self.number = number
        self.connection = connection
        // A body larger than the broker's frame limit would not fit a native publish either.
        self.assembler = AMQPContentAssembler(maximumBodySize: UInt64(connection.maxMessageSize))
    }

    // MARK: - Incoming frames

    func handle(_ frame: AMQPFrame) {
        if closing {
            guard frame.kind == .method, let method = try? AMQPMethod.read(from: frame.payload) else { return }
            switch method.signature.name {
            case "channel.close-ok":
                connection.channelClosed(self)
            case "channel.close":
                // Both sides closed at once: answer, and the channel is done.
                send(AMQPMethod("channel.close-ok"))
                connection.channelClosed(self)
            default:
                break
            }
            return
        }
        do {
            switch try assembler.feed(frame, translate: { properties throws(AMQPWireError) in try translate(properties) }) {
            case .method(let method)?:
                try perform(method)
            case .publish(let publish)?:
                try self.publish(publish)
            case nil:
                break
            }
        } catch let error as AMQPFailure {
            fail(error.error, error.method)
        } catch let error as AMQPWireError {
            fail(error, nil)
        } catch {
            fail(AMQPWireError(.internalError, "\(error)"), nil)
        }
    }

    /// A channel exception closes this channel; a connection exception the whole connection.
    private func fail(_ error: AMQPWireError, _ method: AMQPMethod?) {
        if error.code.closesConnection {
            connection.fail(error.code, error.text, method)
        } else {
            closeWithException(error, classId: method?.signature.classId ?? 0, methodId: method?.signature.methodId ?? 0)
        }
    }

    /// Sends `channel.close` after what the session already encoded, and releases the session after this frame.
    private func closeWithException(_ error: AMQPWireError, classId: UInt16, methodId: UInt16) {
        guard !closing else { return }
        closing = true
        send(.close(channel: true, code: error.code.rawValue, text: error.text, classId: classId, methodId: methodId))
        connection.releaseLater(self)
    }

    /// Encodes a method into the session's output (in order with its deliveries).
    func send(_ method: AMQPMethod) {
        let number = self.number
        guard let session else { return }
        session.writeEncoded { buffer in
            // The methods the broker sends have arguments it built and checked: encoding cannot fail.
            try? AMQPFrameWriter.writeMethod(method, channel: number, into: &buffer)
        }
    }

    // MARK: - Methods

    private func perform(_ method: AMQPMethod) throws {
        guard let session else { return }
        let broker = connection.broker
        let noWait = method.bool("no-wait") || method.bool("nowait")
        func reply(_ name: String, _ arguments: [String: AMQPArgument] = [:]) {
            if !noWait { send(AMQPMethod(name, arguments)) }
        }
        switch method.signature.name {
        case "channel.close":
            send(AMQPMethod("channel.close-ok"))
            connection.channelClosed(self)
        case "channel.close-ok":
            break  // nothing of ours to confirm
        case "channel.flow":
            let active = method.bool("active")
            session.deliveriesStopped = !active
            send(AMQPMethod("channel.flow-ok", ["active": .bit(active)]))
        case "channel.flow-ok":
            break
        case "channel.open":
            throw AMQPFailure(.channelError, "channel \(number) is already open", method)
        case "exchange.declare":
            guard let kind = ExchangeKind.allCases.first(where: { $0.description == method.string("type") }) else {
                throw AMQPFailure(.commandInvalid, "invalid exchange type '\(method.string("type"))': brokerd has direct, fanout and topic", method)
            }
            if method.bool("internal") {
                throw AMQPFailure(.notImplemented, "internal exchanges are not supported", method)
            }
            try core(method) { () throws(BrokerError) in
                try broker.declareExchange(ExchangeDeclare(
                    requestId: 0, name: method.string("exchange"), kind: kind, durable: method.bool("durable"),
                    autoDelete: method.bool("auto-delete"), passive: method.bool("passive"), arguments: method.table("arguments").native), by: session)
            }
            reply("exchange.declare-ok")
        case "exchange.delete":
            try core(method) { () throws(BrokerError) in
                try broker.deleteExchange(ExchangeDelete(requestId: 0, name: method.string("exchange"), ifUnused: method.bool("if-unused")), by: session)
            }
            reply("exchange.delete-ok")
        case "exchange.bind", "exchange.unbind":
            throw AMQPFailure(.notImplemented, "exchange-to-exchange bindings are not supported: bind queues to exchanges", method)
        case "queue.declare":
            var arguments = method.table("arguments").native
            switch arguments.removeValue(forKey: "x-queue-type") {
            case nil, .string("classic")?:
                break  // what every brokerd queue is
            case let other?:
                throw AMQPFailure(.preconditionFailed, "x-queue-type \(other.stringValue.map { "'\($0)'" } ?? "\(other)") is not available: brokerd is a single node with classic queues; quorum and stream queues need a RabbitMQ cluster (docs/operations.md, \"Scaling out\")", method)
            }
            let ok = try core(method) { () throws(BrokerError) in
                try broker.declareQueue(QueueDeclare(
                    requestId: 0, name: method.string("queue"), durable: method.bool("durable"), exclusive: method.bool("exclusive"),
                    autoDelete: method.bool("auto-delete"), passive: method.bool("passive"), arguments: arguments), by: session)
            }
            reply("queue.declare-ok", [
                "queue": .shortString(ok.name), "message-count": .long(ok.messageCount), "consumer-count": .long(ok.consumerCount),
            ])
        case "queue.bind", "queue.unbind":
            let binding = QueueBinding(requestId: 0, queue: method.string("queue"), exchange: method.string("exchange"),
                                       bindingKey: method.string("routing-key"), arguments: method.table("arguments").native)
            let bind = method.signature.name == "queue.bind"
            try core(method) { () throws(BrokerError) in
                if bind { try broker.bind(binding, by: session) } else { try broker.unbind(binding, by: session) }
            }
            if bind { reply("queue.bind-ok") } else { send(AMQPMethod("queue.unbind-ok")) }
        case "queue.purge":
            let count = try core(method) { () throws(BrokerError) in try broker.purgeQueue(method.string("queue"), by: session) }
            reply("queue.purge-ok", ["message-count": .long(UInt32(clamping: count))])
        case "queue.delete":
            let count = try core(method) { () throws(BrokerError) in
                try broker.deleteQueue(QueueDelete(requestId: 0, name: method.string("queue"), ifUnused: method.bool("if-unused"),
                                                   ifEmpty: method.bool("if-empty")), by: session)
            }
            reply("queue.delete-ok", ["message-count": .long(UInt32(clamping: count))])
        case "basic.qos":
            guard method.integer("prefetch-size") == 0 else {
                throw AMQPFailure(.notImplemented, "prefetch_size!=0 (\(method.integer("prefetch-size"))): prefetch is counted in messages", method)
            }
            let count = Int(method.integer("prefetch-count"))
            if method.bool("global") {
                session.sharedPrefetch = count
            } else {
                consumerPrefetch = count
            }
            send(AMQPMethod("basic.qos-ok"))
        case "basic.consume":
            try consume(method, session)
        case "basic.cancel":
            let tag = method.string("consumer-tag")
            if let consumer = consumerTags.removeValue(forKey: tag) {
                if consumer.queueName == directReplyQueue { directReplyQueue = nil }  // its queue goes with it
                try? session.cancel(consumerTag: consumer.tag)
            }
            // An unknown tag is answered all the same, as RabbitMQ does (the cancel may have crossed the broker's).
            reply("basic.cancel-ok", ["consumer-tag": .shortString(tag)])
        case "basic.get":
            try core(method) { () throws(BrokerError) in try session.get(queue: method.string("queue"), noAck: method.bool("no-ack")) }
        case "basic.ack":
            try settle(method, session, requeue: false, kind: .ack)
        case "basic.nack":
            try settle(method, session, requeue: method.bool("requeue"), kind: .nack)
        case "basic.reject":
            try settle(method, session, requeue: method.bool("requeue"), kind: .reject)
        case "basic.recover", "basic.recover-async":
            guard method.bool("requeue") else {
                throw AMQPFailure(.notImplemented, "requeue=false: brokerd redelivers by requeueing", method)
            }
            session.recover()
            if method.signature.name == "basic.recover" { send(AMQPMethod("basic.recover-ok")) }
        case "confirm.select":
            session.enableConfirms()
            reply("confirm.select-ok")
        case "tx.select", "tx.commit", "tx.rollback":
            throw AMQPFailure(.notImplemented, "transactions (tx.*) are not supported: use publisher confirms (confirm.select)", method)
        default:
            throw AMQPFailure(.commandInvalid, "\(method.signature.name) is not a method a client sends on a channel", method)
        }
    }

    /// Runs a core operation; its error becomes the AMQP exception it corresponds to.
    @discardableResult
    private func core<T>(_ method: AMQPMethod, _ body: () throws(BrokerError) -> T) throws(AMQPFailure) -> T {
        do {
            return try body()
        } catch {
            throw AMQPFailure(AMQPChannel.code(for: error.code), error.message, method)
        }
    }

    /// The AMQP reply code for a broker error.
    static func code(for code: BrokerError.Code) -> AMQPWireError.Code {
        switch code {
        case .notFound: .notFound
        case .accessRefused: .accessRefused
        case .resourceLocked: .resourceLocked
        case .preconditionFailed, .invalidArgument, .contractViolation: .preconditionFailed
        case .noRoute: .noRoute
        case .frameError, .frameTooLarge: .frameError
        case .unexpectedFrame: .unexpectedFrame
        case .resourceError: .resourceError
        case .connectionForced: .connectionForced
        case .unknownFrame: .notImplemented
        default: .internalError
        }
    }

    private func consume(_ method: AMQPMethod, _ session: Session) throws {
        var tag = method.string("consumer-tag")
        if tag.isEmpty {
            repeat {
                nextGeneratedTag += 1
                tag = "amq.ctag-\(connection.connectionId)-\(number)-\(nextGeneratedTag)"
            } while consumerTags[tag] != nil
        } else if consumerTags[tag] != nil {
            throw AMQPFailure(.notAllowed, "attempt to reuse consumer tag '\(tag)'", method)
        }
        var arguments = method.table("arguments").native
        // RabbitMQ's consumer arguments brokerd has no use for: accepted and ignored (docs/amqp.md).
        for ignored in ["x-priority", "x-cancel-on-ha-failover"] { arguments[ignored] = nil }
        var queue = method.string("queue")
        if queue == Self.directReplyTo {
            guard method.bool("no-ack") else {
                throw AMQPFailure(.preconditionFailed, "reply consumer cannot acknowledge: consume \(Self.directReplyTo) with no-ack", method)
            }
            guard directReplyQueue == nil else {
                throw AMQPFailure(.preconditionFailed, "this channel already has a \(Self.directReplyTo) consumer", method)
            }
            queue = connection.broker.declareDirectReplyQueue(by: session)
            directReplyQueue = queue
        }
        let consumer = try core(method) { () throws(BrokerError) in
            try session.addConsumer(queue: queue, noAck: method.bool("no-ack"), exclusive: method.bool("exclusive"),
                                    prefetch: consumerPrefetch, arguments: arguments, name: tag)
        }
        consumerTags[tag] = consumer
        if !method.bool("no-wait") { send(AMQPMethod("basic.consume-ok", ["consumer-tag": .shortString(tag)])) }
        session.startConsuming(consumer)
    }

    private func settle(_ method: AMQPMethod, _ session: Session, requeue: Bool, kind: Session.SettleKind) throws {
        let tag = method.integer("delivery-tag")
        let multiple = method.bool("multiple")
        do {
            try session.settle(tag, multiple: multiple, requeue: requeue, kind: kind)
        } catch {
            // As RabbitMQ words it; a channel exception, so a client bug cannot settle someone else's messages.
            throw AMQPFailure(.preconditionFailed, "PRECONDITION_FAILED - unknown delivery tag \(tag)", method)
        }
    }

    /// The method a publish's exceptions name (its class and method ids go into the close).
    private static let publishMethod = AMQPMethod("basic.publish")

    /// The native properties of a publish that has more than delivery-mode (the assembler's slow path).
    private func translate(_ amqp: AMQPBasicProperties) throws(AMQPWireError) -> RawProperties {
        guard let session else { return .empty }
        if let userId = amqp.userId, userId != session.user.name {
            throw AMQPWireError(.preconditionFailed, "PRECONDITION_FAILED - user_id property set to '\(userId)' but authenticated user was '\(session.user.name)'")
        }
        var properties = try AMQPNativeMapping.nativeProperties(amqp)
        if properties.replyTo == Self.directReplyTo {
            // Direct reply-to: the reply goes to this channel's reply queue, by its name.
            guard let directReplyQueue else {
                throw AMQPWireError(.preconditionFailed, "fast reply consumer does not exist: consume \(Self.directReplyTo) on this channel first")
            }
            properties.replyTo = directReplyQueue
        }
        return RawProperties(properties)
    }

    private func publish(_ publish: AMQPPublish) throws {
        guard let session else { return }
        if publish.immediate {
            throw AMQPFailure(.notImplemented, "immediate=true", Self.publishMethod)
        }
        // RabbitMQ closes the channel for an unknown exchange, confirms or not; the native protocol nacks.
        guard connection.broker.exchangeExists(publish.exchange) else {
            throw AMQPFailure(.notFound, "NOT_FOUND - no exchange '\(publish.exchange)' in vhost '/'", Self.publishMethod)
        }
        do {
            try session.publish(PublishView(mandatory: publish.mandatory, envelope: publish.envelope))
        } catch {
            throw AMQPFailure(AMQPChannel.code(for: error.code), error.message, Self.publishMethod)
        }
    }

    // MARK: - SessionEncoder

    func writeDeliver(into buffer: inout ByteBuffer, consumer: QueueConsumer, deliveryTag: UInt64, redelivered: Bool, envelope: MessageEnvelope) {
        AMQPFrameWriter.writeDeliver(into: &buffer, channel: number, consumerTag: consumer.name ?? String(consumer.tag), deliveryTag: deliveryTag,
                                     redelivered: redelivered, envelope: envelope, frameMax: connection.frameMax)
    }

    func writeGetOk(into buffer: inout ByteBuffer, deliveryTag: UInt64, redelivered: Bool, messageCount: UInt32, envelope: MessageEnvelope) {
        AMQPFrameWriter.writeGetOk(into: &buffer, channel: number, deliveryTag: deliveryTag, redelivered: redelivered,
                                   messageCount: messageCount, envelope: envelope, frameMax: connection.frameMax)
    }

    func writeReturned(into buffer: inout ByteBuffer, code: BrokerError.Code, text: String, envelope: MessageEnvelope) {
        AMQPFrameWriter.writeReturn(into: &buffer, channel: number, replyCode: code.rawValue, replyText: text, envelope: envelope,
                                    frameMax: connection.frameMax)
    }

    func write(_ message: ServerMessage, into buffer: inout ByteBuffer) {
        let method: AMQPMethod
        switch message {
        case .getEmpty:
            method = AMQPMethod("basic.get-empty")
        case .confirmAck(let confirm):
            method = AMQPMethod("basic.ack", ["delivery-tag": .longlong(confirm.sequence), "multiple": .bit(confirm.multiple)])
        case .confirmNack(let confirm):
            method = AMQPMethod("basic.nack", ["delivery-tag": .longlong(confirm.sequence), "multiple": .bit(confirm.multiple)])
        case .consumerCancelled(let cancelled):
            guard let tag = consumerTags.first(where: { $0.value.tag == cancelled.consumerTag })?.key else { return }
            consumerTags[tag] = nil
            method = AMQPMethod("basic.cancel", ["consumer-tag": .shortString(tag), "nowait": .bit(true)])
        case .error(let error):
            // A failure not answering a method: a publish the core refused without confirms. Close the channel,
            // in order after what is already encoded (this buffer is the session's output).
            guard !closing else { return }
            closing = true
            let code = AMQPChannel.code(for: error.code)
            if code.closesConnection {
                connection.fail(code, error.text)
                return
            }
            method = .close(channel: true, code: code.rawValue, text: error.text, classId: 60, methodId: 40)
            connection.releaseLater(self)
        case .connectionBlocked(let reason):
            connection.sendBlocked(reason)
            return
        case .connectionUnblocked:
            connection.sendBlocked(nil)
            return
        default:
            return  // notices and native-only messages have no AMQP counterpart
        }
        try? AMQPFrameWriter.writeMethod(method, channel: number, into: &buffer)
    }

    // MARK: - SessionTransport

    func send(_ buffer: ByteBuffer) { connection.send(buffer) }
    var isWritable: Bool { connection.isWritable }
    func resumeSoon() { connection.resumeSoon(self) }
    func setReading(_ reading: Bool) { connection.setReading(reading, for: self) }
    func closeConnection(code: BrokerError.Code, reason: String) { connection.closeConnection(code: code, reason: reason) }
}

@available(*, unavailable)
extension AMQPChannel: Sendable {}

/// An AMQP exception raised by a method, with the method (its ids go into the close).
struct AMQPFailure: Error {
    var error: AMQPWireError
    var method: AMQPMethod?

    init(_ code: AMQPWireError.Code, _ text: String, _ method: AMQPMethod?) {
        self.error = AMQPWireError(code, text)
        self.method = method
    }
}
