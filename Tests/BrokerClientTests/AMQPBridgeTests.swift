import AMQPWire
@testable import BrokerClient
import NIOCore
import Testing
import WireProtocol

/// The client's AMQP translator as sequences of events, with a scripted broker: no sockets.
@Suite("AMQP bridge, without a socket")
struct AMQPBridgeTests {
    /// The AMQP frames in `bytes` (after an optional protocol header).
    static func frames(_ bytes: ByteBuffer) throws -> [(channel: UInt16, method: String)] {
        var buffer = bytes
        if buffer.getBytes(at: buffer.readerIndex, length: 4) == Array("AMQP".utf8) { buffer.moveReaderIndex(forwardBy: 8) }
        var out: [(UInt16, String)] = []
        while let frame = try AMQPFrame.read(from: &buffer, maxFrameSize: 1 << 20) {
            out.append((frame.channel, frame.kind == .method ? try AMQPMethod.read(from: frame.payload).signature.name : "\(frame.kind)"))
        }
        return out
    }

    static func frame(_ method: AMQPMethod, channel: UInt16 = 0) throws -> AMQPFrame {
        var payload = ByteBuffer()
        try method.write(to: &payload)
        return AMQPFrame(kind: .method, channel: channel, payload: payload)
    }

    /// A bridge through the handshake, both channels open.
    static func openBridge() throws -> AMQPBridge {
        var bridge = AMQPBridge(clientName: "test")
        _ = try bridge.outbound(.hello(Hello(versions: [.v1_0], clientName: "test")))
        let started = try bridge.inbound(try frame(AMQPMethod("connection.start", ["server-properties": .table(["product": .string("RabbitMQ")])])))
        guard case .helloOk(let ok)? = started.toClient.first else { throw BrokerError(.unexpectedFrame, "no helloOk") }
        #expect(ok.serverName == "RabbitMQ")
        let auth = try bridge.outbound(.authenticate(Authenticate(user: "guest", password: "guest")))
        #expect(try frames(auth.toBroker).map(\.method) == ["connection.start-ok"])
        let tuned = try bridge.inbound(try frame(AMQPMethod("connection.tune", ["frame-max": .long(131072), "heartbeat": .short(60)])))
        #expect(try frames(tuned.toBroker).map(\.method) == ["connection.tune-ok", "connection.open"])
        let opened = try bridge.inbound(try frame(AMQPMethod("connection.open-ok")))
        #expect(try frames(opened.toBroker).map { "\($0.channel) \($0.method)" } == ["1 channel.open", "2 channel.open"])
        _ = try bridge.inbound(try frame(AMQPMethod("channel.open-ok"), channel: 1))
        let ready = try bridge.inbound(try frame(AMQPMethod("channel.open-ok"), channel: 2))
        guard case .authOk? = ready.toClient.first else { throw BrokerError(.unexpectedFrame, "no authOk") }
        return bridge
    }

    @Test("handshake: header, start-ok with PLAIN, tune-ok and open, two channels, then authOk for the client")
    func handshake() throws {
        _ = try Self.openBridge()
    }

    @Test("requests become AMQP methods on their channel; answers come back by request id, in order")
    func requests() throws {
        var bridge = try Self.openBridge()
        let declare = try bridge.outbound(.queueDeclare(QueueDeclare(requestId: 7, name: "")))
        #expect(try Self.frames(declare.toBroker).map { "\($0.channel) \($0.method)" } == ["2 queue.declare"])
        let consume = try bridge.outbound(.consume(Consume(requestId: 8, queue: "q", prefetch: 10)))
        #expect(try Self.frames(consume.toBroker).map { "\($0.channel) \($0.method)" } == ["1 basic.qos", "1 basic.consume"])
        let declared = try bridge.inbound(try Self.frame(AMQPMethod("queue.declare-ok", ["queue": .shortString("amq.gen-1")]), channel: 2))
        #expect(declared.toClient == [.queueDeclareOk(QueueDeclareOk(requestId: 7, name: "amq.gen-1", messageCount: 0, consumerCount: 0))])
        #expect(try bridge.inbound(try Self.frame(AMQPMethod("basic.qos-ok"), channel: 1)).toClient.isEmpty)
        let consumed = try bridge.inbound(try Self.frame(AMQPMethod("basic.consume-ok", ["consumer-tag": .shortString("ctag-1")]), channel: 1))
        #expect(consumed.toClient == [.consumeOk(ConsumeOk(requestId: 8, consumerTag: 1))])
        let status = try bridge.outbound(.status(requestId: 9))
        guard case .error(let error)? = status.toClient.first else { Issue.record("status answered \(status.toClient)"); return }
        #expect(error.requestId == 9 && error.text.contains("not available over AMQP"))
    }

    @Test("a channel exception answers the failed request, reopens the channel, restores confirms and consumers, nacks dropped publishes, and shifts tags")
    func channelException() throws {
        var bridge = try Self.openBridge()
        _ = try bridge.outbound(.confirmSelect(requestId: 1))
        #expect(try bridge.inbound(try Self.frame(AMQPMethod("confirm.select-ok"), channel: 1)).toClient == [.ok(requestId: 1)])
        _ = try bridge.outbound(.consume(Consume(requestId: 2, queue: "q", prefetch: 5)))
        _ = try bridge.inbound(try Self.frame(AMQPMethod("basic.qos-ok"), channel: 1))
        _ = try bridge.inbound(try Self.frame(AMQPMethod("basic.consume-ok", ["consumer-tag": .shortString("ctag-1")]), channel: 1))
        // Two publishes (sequence 1 and 2) and a delivery with tag 1.
        for _ in 0..<2 { _ = try bridge.outbound(.publish(Publish(exchange: "", routingKey: "q", body: ByteBuffer(string: "x")))) }
        _ = try bridge.inbound(try Self.frame(AMQPMethod("basic.ack", ["delivery-tag": .longlong(1)]), channel: 1))
        // A get of a missing queue: the broker closes channel 1 with 404 for basic.get.
        _ = try bridge.outbound(.get(Get(requestId: 3, queue: "missing")))
        let closed = try bridge.inbound(try Self.frame(AMQPMethod("channel.close", [
            "reply-code": .short(404), "reply-text": .shortString("NOT_FOUND - no queue 'missing'"), "class-id": .short(60), "method-id": .short(70),
        ]), channel: 1))
        #expect(closed.toClient.contains(.error(ErrorFrame(requestId: 3, code: .notFound, text: "NOT_FOUND - no queue 'missing'"))))
        #expect(closed.toClient.contains { if case .confirmNack(let c) = $0 { c.sequence == 2 && c.multiple } else { false } },
                "publish 2 was dropped with the channel: nacked")
        #expect(try Self.frames(closed.toBroker).map { "\($0.channel) \($0.method)" } ==
                ["1 channel.close-ok", "1 channel.open", "1 confirm.select", "1 basic.qos", "1 basic.consume"])
        // The restored consumer's answers are the bridge's own; the next publish is the client's 3, the channel's 1.
        _ = try bridge.inbound(try Self.frame(AMQPMethod("channel.open-ok"), channel: 1))
        #expect(try bridge.inbound(try Self.frame(AMQPMethod("confirm.select-ok"), channel: 1)).toClient.isEmpty)
        #expect(try bridge.inbound(try Self.frame(AMQPMethod("basic.qos-ok"), channel: 1)).toClient.isEmpty)
        #expect(try bridge.inbound(try Self.frame(AMQPMethod("basic.consume-ok", ["consumer-tag": .shortString("ctag-1")]), channel: 1)).toClient.isEmpty)
        _ = try bridge.outbound(.publish(Publish(exchange: "", routingKey: "q", body: ByteBuffer(string: "y"))))
        let acked = try bridge.inbound(try Self.frame(AMQPMethod("basic.ack", ["delivery-tag": .longlong(1)]), channel: 1))
        #expect(acked.toClient == [.confirmAck(Confirm(sequence: 3, multiple: false))])
    }
}
