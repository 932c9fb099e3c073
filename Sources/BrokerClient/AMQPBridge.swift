import AMQPWire
import DequeModule
import NIOCore
import WireProtocol

/// BrokerClient over AMQP 0-9-1 (``ClientConfiguration/wireProtocol`` `.amqp`): the client's own state machine
/// and driver stay as they are, speaking native frames, and this translator turns them into AMQP and back, so
/// recovery, confirms, consumers and RPC behave the same against brokerd's AMQP listener or a RabbitMQ node
/// (docs/client.md, "AMQP 0-9-1").
///
/// A pure state machine: ``outbound(_:)`` takes what the client sends, ``inbound(_:)`` what the broker sends, and
/// both return ``Effects``: AMQP bytes for the broker and native messages for the client.
///
/// Two AMQP channels carry the traffic. Channel 1 carries publishes, confirms, consumers, gets and acks (delivery
/// tags and confirm sequence numbers are per channel in AMQP, as they are per connection natively); channel 2 carries
/// declarations, bindings, purges and deletes. AMQP closes a channel on any error where the native protocol
/// answers one request: the translator then answers that request with the error, reopens the channel and sends
/// again what the broker discarded meanwhile; on channel 1 it also restores confirm mode and every consumer (with the
/// same tags), nacks the publishes the broker dropped, and shifts delivery tags and sequence numbers so the client
/// keeps seeing one growing series (an ack for a delivery of the closed channel is dropped: the broker has already
/// requeued it).
struct AMQPBridge {
    struct Effects {
        var toBroker = ByteBuffer()
        var toClient: [ServerMessage] = []
    }

    static let dataChannel: UInt16 = 1
    static let topologyChannel: UInt16 = 2

    private enum Phase: Equatable {
        case awaitingStart, awaitingAuthenticate, awaitingTune, awaitingOpenOk, awaitingChannels, open, closed
    }

    /// A request waiting for its synchronous answer on a channel, with what to send again if the channel reopens.
    private struct Pending {
        var requestId: UInt32?
        var message: ClientMessage?
        var ids: (UInt16, UInt16)
        /// For a consume: the consumer's tag (kept when the consume is sent again on a reopened channel).
        var consumerTag: UInt32? = nil
        /// The translator's own step (qos before a consume, a restored consumer): its answer is not forwarded.
        var internalStep: Bool { requestId == nil }
    }

    private struct ConsumerRecord {
        var queue: String
        var noAck: Bool
        var exclusive: Bool
        var prefetch: UInt16
        var arguments: FieldTable
    }

    private enum Inbound {
        case none
        case header(AMQPMethod)
        case body(AMQPMethod, AMQPContentHeader, ByteBuffer)
    }

    private var phase = Phase.awaitingStart
    private var authenticate: Authenticate?
    private var serverName = "amqp broker"
    private var frameMax: UInt32 = AMQPFrame.minimumFrameMax
    private var heartbeat: UInt16 = 0
    private var channelsOpen: Set<UInt16> = []
    private var pending: [UInt16: Deque<Pending>] = [:]
    private var consumers: [UInt32: ConsumerRecord] = [:]
    private var nextConsumerTag: UInt32 = 0
    private var confirmMode = false
    /// Publishes sent on channel 1 since confirm mode began, in the client's numbering, and the last confirmed.
    private var publishedSequence: UInt64 = 0
    private var confirmedSequence: UInt64 = 0
    /// The client's sequence number of the publish before the current channel's first (the channel's numbering
    /// starts at 1 on every reopen).
    private var sequenceOffset: UInt64 = 0
    /// Delivery tags of the current channel 1 are the client's minus this; tags up to it belong to a closed one.
    private var deliveryOffset: UInt64 = 0
    private var highestDeliveryTag: UInt64 = 0
    private var inbound = Inbound.none
    private let clientName: String

    init(clientName: String) { self.clientName = clientName }

    static func amqpTag(_ tag: UInt32) -> String { "ctag-\(tag)" }

    // MARK: - Client to broker

    mutating func outbound(_ message: ClientMessage) throws(BrokerError) -> Effects {
        var effects = Effects()
        switch message {
        case .hello:
            effects.toBroker.writeBytes(AMQPFrame.protocolHeader)
        case .authenticate(let auth):
            authenticate = auth
            guard phase == .awaitingAuthenticate else { break }
            try sendStartOk(auth, &effects)
        case .heartbeat:
            AMQPFrameWriter.writeHeartbeat(into: &effects.toBroker)
        case .close(let close):
            try write(.close(channel: false, code: close.code == .normal ? 200 : 320, text: close.reason), channel: 0, &effects)
        case .closeOk:
            try write(AMQPMethod("connection.close-ok"), channel: 0, &effects)
        case .exchangeDeclare(let m):
            try request(m.requestId, message, AMQPMethod("exchange.declare", [
                "exchange": .shortString(m.name), "type": .shortString(m.kind.description), "passive": .bit(m.passive),
                "durable": .bit(m.durable), "auto-delete": .bit(m.autoDelete), "arguments": .table(AMQPTable(native: m.arguments)),
            ]), on: Self.topologyChannel, &effects)
        case .exchangeDelete(let m):
            try request(m.requestId, message, AMQPMethod("exchange.delete", ["exchange": .shortString(m.name), "if-unused": .bit(m.ifUnused)]),
                        on: Self.topologyChannel, &effects)
        case .queueDeclare(let m):
            try request(m.requestId, message, AMQPMethod("queue.declare", [
                "queue": .shortString(m.name), "passive": .bit(m.passive), "durable": .bit(m.durable), "exclusive": .bit(m.exclusive),
                "auto-delete": .bit(m.autoDelete), "arguments": .table(AMQPTable(native: m.arguments)),
            ]), on: Self.topologyChannel, &effects)
        case .queueDelete(let m):
            try request(m.requestId, message, AMQPMethod("queue.delete", [
                "queue": .shortString(m.name), "if-unused": .bit(m.ifUnused), "if-empty": .bit(m.ifEmpty),
            ]), on: Self.topologyChannel, &effects)
        case .queuePurge(let m):
            try request(m.requestId, message, AMQPMethod("queue.purge", ["queue": .shortString(m.name)]), on: Self.topologyChannel, &effects)
        case .queueBind(let m), .queueUnbind(let m):
            let name = if case .queueBind = message { "queue.bind" } else { "queue.unbind" }
            try request(m.requestId, message, AMQPMethod(name, [
                "queue": .shortString(m.queue), "exchange": .shortString(m.exchange), "routing-key": .shortString(m.bindingKey),
                "arguments": .table(AMQPTable(native: m.arguments)),
            ]), on: Self.topologyChannel, &effects)
        case .confirmSelect(let requestId):
            confirmMode = true
            try request(requestId, message, AMQPMethod("confirm.select"), on: Self.dataChannel, &effects)
        case .consume(let m):
            // The client numbers its consumers itself: the AMQP tag is derived from the number, so a consumer
            // restored on a reopened channel keeps it.
            nextConsumerTag &+= 1
            let tag = nextConsumerTag
            try consume(tag: tag, ConsumerRecord(queue: m.queue, noAck: m.noAck, exclusive: m.exclusive, prefetch: m.prefetch,
                                                 arguments: m.arguments), requestId: m.requestId, message: message, &effects)
        case .cancel(let m):
            try request(m.requestId, message, AMQPMethod("basic.cancel", ["consumer-tag": .shortString(Self.amqpTag(m.consumerTag))]),
                        on: Self.dataChannel, &effects)
        case .get(let m):
            try request(m.requestId, message, AMQPMethod("basic.get", ["queue": .shortString(m.queue), "no-ack": .bit(m.noAck)]),
                        on: Self.dataChannel, &effects)
        case .publish(let p):
            try publish(p, &effects)
        case .ack(let s):
            try settle("basic.ack", s, extra: [:], &effects)
        case .nack(let s):
            try settle("basic.nack", s, extra: ["requeue": .bit(s.requeue)], &effects)
        case .reject(let s):
            try settle("basic.reject", Settle(deliveryTag: s.deliveryTag, multiple: false, requeue: s.requeue), extra: ["requeue": .bit(s.requeue)], &effects)
        case .status(let requestId):
            effects.toClient.append(Self.notAvailable(requestId))
        case .manage(let m):
            effects.toClient.append(Self.notAvailable(m.requestId))
        }
        return effects
    }

    private static func notAvailable(_ requestId: UInt32) -> ServerMessage {
        .error(ErrorFrame(requestId: requestId, code: .unknownFrame,
                          text: "status and management are not available over AMQP 0-9-1; use brokerctl against brokerd's native port"))
    }

    private mutating func sendStartOk(_ auth: Authenticate, _ effects: inout Effects) throws(BrokerError) {
        let response = try Self.wire { () throws(AMQPWireError) in
            try AMQPCredentials(user: auth.user, password: auth.password).response(mechanism: "PLAIN")
        }
        try write(AMQPMethod("connection.start-ok", [
            "client-properties": .table([
                "product": .string("brokerd BrokerClient"), "connection_name": .string(clientName), "platform": .string("Swift"),
                "capabilities": .table([
                    "publisher_confirms": .bool(true), "basic.nack": .bool(true), "consumer_cancel_notify": .bool(true),
                    "connection.blocked": .bool(true), "authentication_failure_close": .bool(true), "per_consumer_qos": .bool(true),
                ]),
            ]),
            "mechanism": .shortString("PLAIN"), "response": .longString(response), "locale": .shortString("en_US"),
        ]), channel: 0, &effects)
        phase = .awaitingTune
    }

    private mutating func request(_ requestId: UInt32, _ message: ClientMessage, _ method: AMQPMethod, on channel: UInt16,
                                  _ effects: inout Effects) throws(BrokerError) {
        pending[channel, default: []].append(Pending(requestId: requestId, message: message, ids: (method.signature.classId, method.signature.methodId)))
        try write(method, channel: channel, &effects)
    }

    private mutating func consume(tag: UInt32, _ record: ConsumerRecord, requestId: UInt32?, message: ClientMessage?,
                                  _ effects: inout Effects) throws(BrokerError) {
        consumers[tag] = record
        // basic.qos applies to the consumers started after it on the channel (RabbitMQ's per-consumer prefetch).
        pending[Self.dataChannel, default: []].append(Pending(requestId: nil, message: nil, ids: (60, 10)))
        try write(AMQPMethod("basic.qos", ["prefetch-count": .short(record.prefetch)]), channel: Self.dataChannel, &effects)
        let method = AMQPMethod("basic.consume", [
            "queue": .shortString(record.queue), "consumer-tag": .shortString(Self.amqpTag(tag)), "no-ack": .bit(record.noAck),
            "exclusive": .bit(record.exclusive), "arguments": .table(AMQPTable(native: record.arguments)),
        ])
        pending[Self.dataChannel, default: []].append(Pending(requestId: requestId, message: message, ids: (60, 20), consumerTag: tag))
        try write(method, channel: Self.dataChannel, &effects)
    }

    private mutating func publish(_ p: Publish, _ effects: inout Effects) throws(BrokerError) {
        let properties = (try? p.properties.decode()) ?? MessageProperties()
        if confirmMode { publishedSequence += 1 }
        try write(AMQPMethod("basic.publish", [
            "exchange": .shortString(p.exchange), "routing-key": .shortString(p.routingKey), "mandatory": .bit(p.mandatory),
        ]), channel: Self.dataChannel, &effects)
        var header = ByteBuffer()
        try Self.wire { () throws(AMQPWireError) in
            try AMQPContentHeader(bodySize: UInt64(p.body.readableBytes), properties: AMQPNativeMapping.amqpProperties(properties)).write(to: &header)
        }
        AMQPFrame(kind: .header, channel: Self.dataChannel, payload: header).write(to: &effects.toBroker)
        var rest = p.body
        let chunk = Int(frameMax) - AMQPFrame.overhead
        while rest.readableBytes > 0, let part = rest.readSlice(length: min(chunk, rest.readableBytes)) {
            AMQPFrame(kind: .body, channel: Self.dataChannel, payload: part).write(to: &effects.toBroker)
        }
    }

    private mutating func settle(_ name: String, _ s: Settle, extra: [String: AMQPArgument], _ effects: inout Effects) throws(BrokerError) {
        // A delivery of a channel that closed meanwhile was requeued by the broker: there is nothing to settle.
        let tag: UInt64
        if s.deliveryTag == 0 && s.multiple {
            tag = 0
        } else {
            guard s.deliveryTag > deliveryOffset else { return }
            tag = s.deliveryTag - deliveryOffset
        }
        var arguments = extra
        arguments["delivery-tag"] = .longlong(tag)
        if name != "basic.reject" { arguments["multiple"] = .bit(s.multiple) }
        try write(AMQPMethod(name, arguments), channel: Self.dataChannel, &effects)
    }

    private func write(_ method: AMQPMethod, channel: UInt16, _ effects: inout Effects) throws(BrokerError) {
        try Self.wire { () throws(AMQPWireError) in try AMQPFrameWriter.writeMethod(method, channel: channel, into: &effects.toBroker) }
    }

    /// An AMQP encoding failure as the client's error (a name or table the client let through that AMQP cannot carry).
    private static func wire<T>(_ body: () throws(AMQPWireError) -> T) throws(BrokerError) -> T {
        do {
            return try body()
        } catch {
            throw BrokerError(.invalidArgument, error.text)
        }
    }


    // MARK: - Broker to client

    mutating func inbound(_ frame: AMQPFrame) throws(BrokerError) -> Effects {
        var effects = Effects()
        switch frame.kind {
        case .heartbeat:
            effects.toClient.append(.heartbeat)
        case .method:
            let method = try Self.read(frame.payload)
            if frame.channel == 0 {
                try connectionMethod(method, &effects)
            } else if method.signature.content {
                guard case .none = inbound else { throw BrokerError(.unexpectedFrame, "AMQP: \(method.signature.name) inside another message's content") }
                inbound = .header(method)
            } else {
                try channelMethod(method, channel: frame.channel, &effects)
            }
        case .header:
            guard case .header(let method) = inbound else { throw BrokerError(.unexpectedFrame, "AMQP: a content header with no method before it") }
            let header = try Self.wire { () throws(AMQPWireError) in try AMQPContentHeader.read(from: frame.payload) }
            inbound = .body(method, header, ByteBuffer())
            if header.bodySize == 0 { try content(method, header, ByteBuffer(), &effects) }
        case .body:
            guard case .body(let method, let header, var body) = inbound else {
                throw BrokerError(.unexpectedFrame, "AMQP: a body frame with no content header before it")
            }
            inbound = .none
            body.writeImmutableBuffer(frame.payload)
            guard UInt64(body.readableBytes) >= header.bodySize else {
                inbound = .body(method, header, body)
                break
            }
            try content(method, header, body, &effects)
        }
        return effects
    }

    private static func read(_ payload: ByteBuffer) throws(BrokerError) -> AMQPMethod {
        do {
            return try AMQPMethod.read(from: payload)
        } catch {
            throw BrokerError(.frameError, "AMQP: \(error.text)")
        }
    }

    private mutating func connectionMethod(_ method: AMQPMethod, _ effects: inout Effects) throws(BrokerError) {
        switch method.signature.name {
        case "connection.start":
            let properties = method.table("server-properties")
            serverName = [properties["product"]?.stringValue, properties["version"]?.stringValue].compactMap { $0 }.joined(separator: " ")
            phase = .awaitingAuthenticate
            // The client's hello is answered as a native server would: protocol 1.0 (no notices over AMQP).
            effects.toClient.append(.helloOk(HelloOk(version: .v1_0, maxFrameSize: 0, heartbeatSeconds: 0, serverName: serverName,
                                                     mechanisms: ["PLAIN"])))
            if let authenticate { try sendStartOk(authenticate, &effects) }
        case "connection.tune":
            let serverFrameMax = UInt32(truncatingIfNeeded: method.integer("frame-max"))
            let wanted = authenticate?.maxFrameSize ?? 0
            frameMax = max(AMQPFrame.minimumFrameMax, serverFrameMax == 0 ? (wanted == 0 ? 131072 : wanted) : (wanted == 0 ? serverFrameMax : min(wanted, serverFrameMax)))
            let serverHeartbeat = UInt16(truncatingIfNeeded: method.integer("heartbeat"))
            let asked = authenticate?.heartbeatSeconds ?? 0
            heartbeat = asked == 0 ? serverHeartbeat : (serverHeartbeat == 0 ? asked : min(asked, serverHeartbeat))
            try write(AMQPMethod("connection.tune-ok", ["channel-max": .short(2), "frame-max": .long(frameMax), "heartbeat": .short(heartbeat)]),
                      channel: 0, &effects)
            try write(AMQPMethod("connection.open", ["virtual-host": .shortString("/")]), channel: 0, &effects)
            phase = .awaitingOpenOk
        case "connection.open-ok":
            phase = .awaitingChannels
            for channel in [Self.dataChannel, Self.topologyChannel] {
                try write(AMQPMethod("channel.open"), channel: channel, &effects)
            }
        case "connection.close":
            phase = .closed
            let code = UInt16(truncatingIfNeeded: method.integer("reply-code"))
            effects.toClient.append(.close(Close(code: Self.nativeCode(code), reason: "AMQP \(code): \(method.string("reply-text"))")))
        case "connection.close-ok":
            phase = .closed
            effects.toClient.append(.closeOk)
        case "connection.blocked":
            effects.toClient.append(.connectionBlocked(reason: method.string("reason")))
        case "connection.unblocked":
            effects.toClient.append(.connectionUnblocked)
        default:
            throw BrokerError(.unexpectedFrame, "AMQP: unexpected \(method.signature.name) on channel 0")
        }
    }

    private mutating func channelMethod(_ method: AMQPMethod, channel: UInt16, _ effects: inout Effects) throws(BrokerError) {
        switch method.signature.name {
        case "channel.open-ok":
            channelsOpen.insert(channel)
            if phase == .awaitingChannels && channelsOpen.count == 2 {
                phase = .open
                effects.toClient.append(.authOk(AuthOk(connectionId: 0, maxFrameSize: frameMax, heartbeatSeconds: heartbeat)))
            }
        case "channel.close":
            try channelClosed(channel, method, &effects)
        case "channel.close-ok", "basic.qos-ok", "channel.flow-ok":
            if method.signature.name == "basic.qos-ok" { _ = pending[channel]?.popFirst() }
        case "basic.ack", "basic.nack":
            // Publisher confirms, in the channel's numbering.
            let sequence = method.integer("delivery-tag") + sequenceOffset
            let confirm = Confirm(sequence: sequence, multiple: method.bool("multiple"),
                                  code: method.signature.name == "basic.ack" ? .normal : .resourceError,
                                  text: method.signature.name == "basic.ack" ? "" : "the broker refused the message (basic.nack)")
            confirmedSequence = max(confirmedSequence, sequence)
            effects.toClient.append(method.signature.name == "basic.ack" ? .confirmAck(confirm) : .confirmNack(confirm))
        case "basic.cancel":
            // The broker cancelled a consumer (its queue went away).
            guard let tag = Self.nativeTag(method.string("consumer-tag")) else { break }
            consumers[tag] = nil
            effects.toClient.append(.consumerCancelled(ConsumerCancelled(consumerTag: tag, code: .notFound, reason: "the broker cancelled the consumer")))
        case "basic.get-empty":
            guard let head = pending[channel]?.popFirst(), let requestId = head.requestId else { break }
            effects.toClient.append(.getEmpty(requestId: requestId))
        default:
            try answer(method, channel: channel, &effects)
        }
    }

    /// A synchronous answer: it belongs to the oldest request waiting on its channel.
    private mutating func answer(_ method: AMQPMethod, channel: UInt16, _ effects: inout Effects) throws(BrokerError) {
        guard let head = pending[channel]?.popFirst() else {
            throw BrokerError(.unexpectedFrame, "AMQP: \(method.signature.name) answers no request")
        }
        guard let requestId = head.requestId else { return }  // the translator's own step
        switch method.signature.name {
        case "exchange.declare-ok", "exchange.delete-ok", "queue.bind-ok", "queue.unbind-ok", "confirm.select-ok":
            effects.toClient.append(.ok(requestId: requestId))
        case "queue.declare-ok":
            effects.toClient.append(.queueDeclareOk(QueueDeclareOk(
                requestId: requestId, name: method.string("queue"), messageCount: UInt32(truncatingIfNeeded: method.integer("message-count")),
                consumerCount: UInt32(truncatingIfNeeded: method.integer("consumer-count")))))
        case "queue.purge-ok", "queue.delete-ok":
            effects.toClient.append(.countOk(requestId: requestId, count: UInt32(truncatingIfNeeded: method.integer("message-count"))))
        case "basic.consume-ok":
            guard let tag = Self.nativeTag(method.string("consumer-tag")) else { throw BrokerError(.unexpectedFrame, "AMQP: a consumer tag not ours") }
            effects.toClient.append(.consumeOk(ConsumeOk(requestId: requestId, consumerTag: tag)))
        case "basic.cancel-ok":
            if let tag = Self.nativeTag(method.string("consumer-tag")) { consumers[tag] = nil }
            effects.toClient.append(.ok(requestId: requestId))
        default:
            throw BrokerError(.unexpectedFrame, "AMQP: unexpected \(method.signature.name)")
        }
    }

    /// A message's content is complete.
    private mutating func content(_ method: AMQPMethod, _ header: AMQPContentHeader, _ body: ByteBuffer, _ effects: inout Effects) throws(BrokerError) {
        inbound = .none
        // What another client published may carry properties the native side has no room for; keep what fits.
        let properties = RawProperties((try? AMQPNativeMapping.nativeProperties(header.properties)) ?? MessageProperties())
        switch method.signature.name {
        case "basic.deliver":
            guard let tag = Self.nativeTag(method.string("consumer-tag")) else { break }
            let deliveryTag = method.integer("delivery-tag") + deliveryOffset
            highestDeliveryTag = max(highestDeliveryTag, deliveryTag)
            effects.toClient.append(.deliver(Deliver(consumerTag: tag, deliveryTag: deliveryTag, redelivered: method.bool("redelivered"),
                                                     exchange: method.string("exchange"), routingKey: method.string("routing-key"),
                                                     properties: properties, body: body)))
        case "basic.get-ok":
            guard let head = pending[Self.dataChannel]?.popFirst(), let requestId = head.requestId else { break }
            let deliveryTag = method.integer("delivery-tag") + deliveryOffset
            highestDeliveryTag = max(highestDeliveryTag, deliveryTag)
            effects.toClient.append(.getOk(GetOk(requestId: requestId, deliveryTag: deliveryTag, redelivered: method.bool("redelivered"),
                                                 messageCount: UInt32(truncatingIfNeeded: method.integer("message-count")),
                                                 exchange: method.string("exchange"), routingKey: method.string("routing-key"),
                                                 properties: properties, body: body)))
        case "basic.return":
            let code = UInt16(truncatingIfNeeded: method.integer("reply-code"))
            effects.toClient.append(.returned(Returned(code: Self.nativeCode(code), text: method.string("reply-text"),
                                                       exchange: method.string("exchange"), routingKey: method.string("routing-key"),
                                                       properties: properties, body: body)))
        default:
            throw BrokerError(.unexpectedFrame, "AMQP: unexpected content after \(method.signature.name)")
        }
    }

    /// The broker closed a channel (an AMQP channel exception): answer the request that failed, reopen the channel
    /// and send again what the broker discarded.
    private mutating func channelClosed(_ channel: UInt16, _ close: AMQPMethod, _ effects: inout Effects) throws(BrokerError) {
        let code = Self.nativeCode(UInt16(truncatingIfNeeded: close.integer("reply-code")))
        let text = close.string("reply-text")
        let failedIds = (UInt16(truncatingIfNeeded: close.integer("class-id")), UInt16(truncatingIfNeeded: close.integer("method-id")))
        var waiting = pending[channel] ?? []
        pending[channel] = []
        // The request the close names failed; the translator's own steps before it are dropped with it.
        while let first = waiting.first, first.internalStep, first.ids != failedIds { waiting.removeFirst() }
        if let first = waiting.first, first.ids == failedIds {
            waiting.removeFirst()
            if let tag = first.consumerTag { consumers[tag] = nil }
            if let requestId = first.requestId {
                effects.toClient.append(.error(ErrorFrame(requestId: requestId, code: code, text: text)))
            }
        } else if failedIds != (60, 40) || !confirmMode {
            // An error no request waits for (an ack of an unknown tag; a publish without confirms): as the native
            // broker reports it.
            effects.toClient.append(.error(ErrorFrame(requestId: 0, code: code, text: text)))
        }
        try write(AMQPMethod("channel.close-ok"), channel: channel, &effects)
        try write(AMQPMethod("channel.open"), channel: channel, &effects)
        if channel == Self.dataChannel {
            // Publishes not yet confirmed were dropped by the broker (all of them after the failed one).
            if confirmMode && publishedSequence > confirmedSequence {
                effects.toClient.append(.confirmNack(Confirm(sequence: publishedSequence, multiple: true, code: code,
                                                             text: "the broker closed the channel (\(text)); publish again")))
                confirmedSequence = publishedSequence
            }
            sequenceOffset = publishedSequence
            deliveryOffset = highestDeliveryTag
            if confirmMode {
                pending[channel, default: []].append(Pending(requestId: nil, message: nil, ids: (85, 10)))
                try write(AMQPMethod("confirm.select"), channel: channel, &effects)
            }
            // Every consumer again, with its tag: those whose consume was still waiting answer their caller.
            let waitingConsumes = Dictionary(waiting.compactMap { entry in entry.consumerTag.map { ($0, entry) } }, uniquingKeysWith: { a, _ in a })
            for tag in consumers.keys.sorted() {
                guard let record = consumers[tag] else { continue }
                let entry = waitingConsumes[tag]
                try consume(tag: tag, record, requestId: entry?.requestId, message: entry?.message, &effects)
            }
        }
        for entry in waiting where !entry.internalStep && entry.consumerTag == nil {
            guard let message = entry.message else { continue }
            let again = try outbound(message)
            effects.toBroker.writeImmutableBuffer(again.toBroker)
            effects.toClient += again.toClient
        }
    }

    static func nativeTag(_ amqp: String) -> UInt32? {
        guard amqp.hasPrefix("ctag-") else { return nil }
        return UInt32(amqp.dropFirst(5))
    }

    /// The native code for an AMQP reply code (the same numbers where both have them).
    static func nativeCode(_ code: UInt16) -> BrokerError.Code {
        switch code {
        case 200: .normal
        case 311: .frameTooLarge
        case 312, 313: .noRoute
        case 320: .connectionForced
        case 402, 406: .preconditionFailed
        case 403: .accessRefused
        case 404: .notFound
        case 405: .resourceLocked
        case 501, 502: .frameError
        case 503, 504, 505: .unexpectedFrame
        case 506: .resourceError
        case 530: .accessRefused
        case 540: .unknownFrame
        default: .internalError
        }
    }
}

extension AMQPBridge {
    /// The largest AMQP frame accepted from the broker: the negotiated frame-max once tuned (a broker may not
    /// exceed it), 128 KiB before (connection.start and tune are small).
    var inboundFrameLimit: UInt32 { max(frameMax, 131_072) }
}

/// The pipeline stage that puts ``AMQPBridge`` between the socket and ``ClientChannelHandler``: native frames
/// from the driver become AMQP for the broker, and the broker's AMQP becomes native frames for the client's own
/// decoder (which then works exactly as with a native broker).
final class AMQPClientHandler: ChannelDuplexHandler {
    typealias InboundIn = ByteBuffer
    typealias InboundOut = ByteBuffer
    typealias OutboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    private var bridge: AMQPBridge
    /// The driver's native frames (its first write starts with the protocol magic).
    private var outboundReader = FrameReader(decoder: FrameDecoder(maxFrameSize: 1 << 30, expectsMagic: true))
    private var input = ByteBuffer()
    private var failed = false

    init(clientName: String) { bridge = AMQPBridge(clientName: clientName) }

    func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        guard !failed else {
            promise?.fail(BrokerError(.connectionClosed, "the AMQP connection failed"))
            return
        }
        outboundReader.append(unwrapOutboundIn(data))
        var toBroker = context.channel.allocator.buffer(capacity: 256)
        var toClient: [ServerMessage] = []
        do {
            while let frame = try outboundReader.next() {
                let effects = try bridge.outbound(try ClientMessage.decode(frame))
                toBroker.writeImmutableBuffer(effects.toBroker)
                toClient += effects.toClient
            }
        } catch {
            fail(context, error)
            promise?.fail(error)
            return
        }
        outboundReader.discard()
        context.write(wrapOutboundOut(toBroker), promise: promise)
        guard !toClient.isEmpty else { return }
        // Answers the bridge gives itself (a request AMQP cannot carry) arrive on a later turn, as a broker's
        // would: the driver is in the middle of sending.
        let bound = NIOLoopBound((self, context), eventLoop: context.eventLoop)
        context.eventLoop.execute {
            let (handler, context) = bound.value
            handler.deliver(toClient, context)
        }
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard !failed else { return }
        var bytes = unwrapInboundIn(data)
        input.writeBuffer(&bytes)
        var toBroker = context.channel.allocator.buffer(capacity: 0)
        var toClient: [ServerMessage] = []
        do {
            while let frame = try Self.readFrame(&input, limit: bridge.inboundFrameLimit) {
                let effects = try bridge.inbound(frame)
                toBroker.writeImmutableBuffer(effects.toBroker)
                toClient += effects.toClient
            }
        } catch {
            fail(context, error)
            return
        }
        input.discardReadBytes()
        if toBroker.readableBytes > 0 { context.writeAndFlush(wrapOutboundOut(toBroker), promise: nil) }
        deliver(toClient, context)
    }

    private static func readFrame(_ input: inout ByteBuffer, limit: UInt32) throws(BrokerError) -> AMQPFrame? {
        do {
            return try AMQPFrame.read(from: &input, maxFrameSize: limit)
        } catch {
            throw BrokerError(.frameError, "AMQP: \(error.text)")
        }
    }

    private func deliver(_ messages: [ServerMessage], _ context: ChannelHandlerContext) {
        guard !messages.isEmpty, !failed else { return }
        var native = context.channel.allocator.buffer(capacity: 256)
        for message in messages { message.encode(into: &native) }
        context.fireChannelRead(wrapInboundOut(native))
        context.fireChannelReadComplete()
    }

    private func fail(_ context: ChannelHandlerContext, _ error: any Error) {
        failed = true
        context.fireErrorCaught(error)
    }
}

@available(*, unavailable)
extension AMQPClientHandler: Sendable {}
