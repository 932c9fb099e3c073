import NIOCore
import WireProtocol

/// One sample of every frame, with fields that exercise each encoding (non-ASCII text, tables, large integers).
enum Samples {
    static let properties = MessageProperties(
        messageId: "m-1", correlationId: "c-é", replyTo: "reply", contentType: "application/json", type: "trip.requested",
        typeVersion: 3, timestamp: 1_764_000_000_000, expiration: 60_000, persistent: true, priority: 9,
        headers: [
            "s": .string("ünïcode"), "i": .int(-42), "b": .bool(true), "d": .double(2.5), "x": .bytes([0, 255]),
            "t": .table(["nested": .array([.int(1), .string("two"), .table([:])])]),
        ])
    static let raw = RawProperties(properties)
    static let body = ByteBuffer(string: "hello, broker")

    static let client: [ClientMessage] = [
        .hello(Hello(versions: [.v1_0, ProtocolVersion(major: 1, minor: 7)], clientName: "tests")),
        .authenticate(Authenticate(user: "guest", password: "pässword", maxFrameSize: 65536, heartbeatSeconds: 5)),
        .heartbeat,
        .close(Close(code: .normal, reason: "bye")),
        .closeOk,
        .exchangeDeclare(ExchangeDeclare(requestId: 1, name: "trips", kind: .topic, durable: true, autoDelete: true, passive: false,
                                         arguments: ["a": .int(1)])),
        .exchangeDelete(ExchangeDelete(requestId: 2, name: "trips", ifUnused: true)),
        .queueDeclare(QueueDeclare(requestId: 3, name: "q", durable: true, exclusive: true, autoDelete: false, passive: true)),
        .queueDelete(QueueDelete(requestId: 4, name: "q", ifUnused: true, ifEmpty: true)),
        .queuePurge(QueuePurge(requestId: 5, name: "q")),
        .queueBind(QueueBinding(requestId: 6, queue: "q", exchange: "trips", bindingKey: "trip.*.created")),
        .queueUnbind(QueueBinding(requestId: 7, queue: "q", exchange: "trips", bindingKey: "#")),
        .publish(Publish(exchange: "trips", routingKey: "trip.eu.created", mandatory: true, properties: raw, body: body)),
        .confirmSelect(requestId: 8),
        .consume(Consume(requestId: 9, queue: "q", noAck: true, exclusive: true, prefetch: 500)),
        .cancel(Cancel(requestId: 10, consumerTag: 77)),
        .ack(Settle(deliveryTag: UInt64.max, multiple: true)),
        .nack(Settle(deliveryTag: 3, multiple: true, requeue: true)),
        .reject(Settle(deliveryTag: 4, requeue: true)),
        .get(Get(requestId: 11, queue: "q", noAck: true)),
        .status(requestId: 12),
        .manage(Manage(requestId: 13, method: "list.queues", arguments: ["columns": .array([.string("name")])])),
    ]

    static let server: [ServerMessage] = [
        .helloOk(HelloOk(version: .v1_0, maxFrameSize: 1 << 20, heartbeatSeconds: 30, serverName: "brokerd", mechanisms: ["PLAIN"])),
        .authOk(AuthOk(connectionId: 99, maxFrameSize: 65536, heartbeatSeconds: 10)),
        .heartbeat,
        .close(Close(code: .connectionForced, reason: "shutting down")),
        .closeOk,
        .ok(requestId: 1),
        .queueDeclareOk(QueueDeclareOk(requestId: 2, name: "amq.gen-x", messageCount: 5, consumerCount: 1)),
        .countOk(requestId: 3, count: 1234),
        .consumeOk(ConsumeOk(requestId: 4, consumerTag: 5)),
        .deliver(Deliver(consumerTag: 5, deliveryTag: 6, redelivered: true, exchange: "", routingKey: "q", properties: raw, body: body)),
        .getOk(GetOk(requestId: 7, deliveryTag: 8, redelivered: false, messageCount: 9, exchange: "x", routingKey: "k", properties: .empty,
                     body: body)),
        .getEmpty(requestId: 10),
        .returned(Returned(code: .noRoute, text: "NO_ROUTE", exchange: "x", routingKey: "k", properties: raw, body: body)),
        .confirmAck(Confirm(sequence: 11, multiple: true)),
        .confirmNack(Confirm(sequence: 12, multiple: false, code: .notFound, text: "no exchange 'x'")),
        .consumerCancelled(ConsumerCancelled(consumerTag: 13, code: .notFound, reason: "queue deleted")),
        .connectionBlocked(reason: "free disk below the limit"),
        .connectionUnblocked,
        .notice(Notice(kind: "deprecated", exchange: "ride.trips", messageType: "trip.requested", version: "1.0",
                       sunset: "2027-06-30", replacement: "trip.requested 2.0", text: "trip.requested 1.0 is deprecated")),
        .statusOk(requestId: 14, status: ["version": .string("0.1.0"), "queues": .int(3)]),
        .manageOk(requestId: 15, result: ["rows": .array([.table(["name": .string("q"), "messages_ready": .int(1)])])]),
        .error(ErrorFrame(requestId: 15, code: .preconditionFailed, text: "inequivalent arg")),
    ]

    /// The single frame a message encodes to, as the decoder splits it off.
    static func frame(of message: ClientMessage) throws -> Frame {
        var buffer = ByteBuffer()
        message.encode(into: &buffer)
        return try split(&buffer)
    }

    static func frame(of message: ServerMessage) throws -> Frame {
        var buffer = ByteBuffer()
        message.encode(into: &buffer)
        return try split(&buffer)
    }

    private static func split(_ buffer: inout ByteBuffer) throws -> Frame {
        var decoder = FrameDecoder(maxFrameSize: 1 << 20, expectsMagic: false)
        guard let frame = try decoder.decode(buffer: &buffer), buffer.readableBytes == 0 else {
            throw BrokerError(.frameError, "the encoding is not exactly one frame")
        }
        return frame
    }

    static func encode(_ messages: [ClientMessage]) -> ByteBuffer {
        var buffer = ByteBuffer()
        for m in messages { m.encode(into: &buffer) }
        return buffer
    }

    static func encode(_ messages: [ServerMessage]) -> ByteBuffer {
        var buffer = ByteBuffer()
        for m in messages { m.encode(into: &buffer) }
        return buffer
    }
}
