import AMQPWire
import BrokerCore
import BrokerServer
import Foundation
import NIOCore
import Testing
import WireProtocol

#if canImport(Glibc)
import Glibc
#endif

/// A bare AMQP 0-9-1 client over a ``RawSocket``: frames written and read with AMQPWire, for tests of what the
/// broker does with input no well-behaved client sends, and of details (frame splits, flow) clients hide.
final class RawAMQP: @unchecked Sendable {
    // `@unchecked Sendable`: as RawSocket, used by one task (or the pool thread it awaits) at a time.
    let socket: RawSocket
    private var input = ByteBuffer()

    init(port: Int) throws { socket = try RawSocket(port: port) }

    func send(_ bytes: [UInt8]) { socket.send(bytes) }

    func bytes(_ method: AMQPMethod, channel: UInt16 = 0) throws -> [UInt8] {
        var buffer = ByteBuffer()
        try AMQPFrameWriter.writeMethod(method, channel: channel, into: &buffer)
        return Array(buffer.readableBytesView)
    }

    func send(_ method: AMQPMethod, channel: UInt16 = 0) throws { send(try bytes(method, channel: channel)) }

    /// basic.publish, its content header and one body frame, as bytes.
    func publishBytes(exchange: String = "", routingKey: String, body: [UInt8], channel: UInt16 = 1) throws -> [UInt8] {
        var buffer = ByteBuffer()
        try AMQPFrameWriter.writeMethod(AMQPMethod("basic.publish", ["exchange": .shortString(exchange), "routing-key": .shortString(routingKey)]),
                                        channel: channel, into: &buffer)
        var header = ByteBuffer()
        try AMQPContentHeader(bodySize: UInt64(body.count)).write(to: &header)
        AMQPFrame(kind: .header, channel: channel, payload: header).write(to: &buffer)
        AMQPFrame(kind: .body, channel: channel, payload: ByteBuffer(bytes: body)).write(to: &buffer)
        return Array(buffer.readableBytesView)
    }

    /// The next frame, or nil when the broker closed the connection (or 5 s passed).
    func receive() throws -> AMQPFrame? {
        while true {
            if let frame = try AMQPFrame.read(from: &input, maxFrameSize: 1 << 20) { return frame }
            var chunk = [UInt8](repeating: 0, count: 65536)
            let n = chunk.withUnsafeMutableBytes { recv(socket.fd, $0.baseAddress, $0.count, 0) }
            if n <= 0 { return nil }
            input.writeBytes(chunk[0..<n])
        }
    }

    /// The next method frame (content and heartbeat frames skipped), with its channel.
    func receiveMethod() throws -> (channel: UInt16, method: AMQPMethod)? {
        while let frame = try receive() {
            if frame.kind == .method { return (frame.channel, try AMQPMethod.read(from: frame.payload)) }
        }
        return nil
    }

    /// Raw bytes until the broker closes (for answers that are not frames).
    func receiveRaw() -> [UInt8] {
        var all: [UInt8] = Array(input.readableBytesView)
        while true {
            var chunk = [UInt8](repeating: 0, count: 4096)
            let n = chunk.withUnsafeMutableBytes { recv(socket.fd, $0.baseAddress, $0.count, 0) }
            if n <= 0 { return all }
            all += chunk[0..<n]
        }
    }

    /// Header, start-ok (PLAIN, guest), tune-ok, open, and channel 1 open. Returns connection.start's method.
    @discardableResult
    func open(frameMax: UInt32 = 131072, capabilities: AMQPTable = ["connection.blocked": .bool(true)]) throws -> AMQPMethod {
        send(AMQPFrame.protocolHeader)
        guard let (_, start) = try receiveMethod(), start.signature.name == "connection.start" else { throw BrokerError(.unexpectedFrame, "no start") }
        try send(AMQPMethod("connection.start-ok", [
            "client-properties": .table(["product": .string("raw"), "capabilities": .table(capabilities)]),
            "mechanism": .shortString("PLAIN"), "response": .longString(try AMQPCredentials(user: "guest", password: "guest").response(mechanism: "PLAIN")),
            "locale": .shortString("en_US"),
        ]))
        guard let (_, tune) = try receiveMethod(), tune.signature.name == "connection.tune" else { throw BrokerError(.unexpectedFrame, "no tune") }
        try send(AMQPMethod("connection.tune-ok", ["channel-max": .short(16), "frame-max": .long(frameMax), "heartbeat": .short(0)]))
        try send(AMQPMethod("connection.open", ["virtual-host": .shortString("/")]))
        guard let (_, openOk) = try receiveMethod(), openOk.signature.name == "connection.open-ok" else { throw BrokerError(.unexpectedFrame, "no open-ok") }
        try send(AMQPMethod("channel.open"), channel: 1)
        guard let (_, channelOk) = try receiveMethod(), channelOk.signature.name == "channel.open-ok" else { throw BrokerError(.unexpectedFrame, "no channel") }
        return start
    }

    /// Expects a connection.close with `code`, answers close-ok, and expects the socket to close.
    func expectConnectionClose(_ code: AMQPWireError.Code, sourceLocation: SourceLocation = #_sourceLocation) throws {
        let next = try receiveMethod()
        #expect(next?.method.signature.name == "connection.close", "\(String(describing: next))", sourceLocation: sourceLocation)
        #expect(next?.method.integer("reply-code") == UInt64(code.rawValue), "\(next?.method.string("reply-text") ?? "")",
                sourceLocation: sourceLocation)
        try send(AMQPMethod("connection.close-ok"))
        #expect(try receive() == nil, "the socket stays open after close-ok", sourceLocation: sourceLocation)
    }
}

/// The AMQP listener at the frame level (issue 16, parts 1 and 2): negotiation, malformed input answered with
/// the standard codes, frames split anywhere, per-channel prefetch, and RabbitMQ's blocked notifications.
@Suite("AMQP 0-9-1 at the frame level", .timeLimit(.minutes(2)))
struct AMQPProtocolTests {
    static func withAMQPBroker(_ body: (BrokerServer, Int) async throws -> Void) async throws {
        try await withBroker(inMemory: true, adjust: { $0.amqpPort = 0 }) { server, _ in
            try await body(server, try #require(server.amqpPort))
        }
    }

    @Test("connection.start advertises the mechanisms and RabbitMQ's capabilities brokerd has")
    func negotiation() async throws {
        try await Self.withAMQPBroker { _, port in
            try await offThePool {
                let client = try RawAMQP(port: port)
                let start = try client.open()
                #expect(start.integer("version-major") == 0 && start.integer("version-minor") == 9)
                guard case .longString(let mechanisms)? = start["mechanisms"] else { Issue.record("no mechanisms"); return }
                #expect(String(decoding: mechanisms, as: UTF8.self) == "PLAIN AMQPLAIN")
                guard case .table(let capabilities)? = start.table("server-properties")["capabilities"] else { Issue.record("no capabilities"); return }
                for name in ["publisher_confirms", "basic.nack", "consumer_cancel_notify", "connection.blocked", "per_consumer_qos", "direct_reply_to"] {
                    #expect(capabilities[name] == .bool(true), "\(name)")
                }
                try client.send(AMQPMethod("connection.close", ["reply-code": .short(200)]))
                #expect(try client.receiveMethod()?.method.signature.name == "connection.close-ok")
                #expect(try client.receive() == nil)
            }
        }
    }

    @Test("a client speaking another protocol version gets the header brokerd speaks, then the socket closes")
    func wrongHeader() async throws {
        try await Self.withAMQPBroker { _, port in
            try await offThePool {
                for header: [UInt8] in [[0x41, 0x4D, 0x51, 0x50, 1, 1, 0, 9], Array("GET / HTTP/1.1\r\n".utf8)] {
                    let client = try RawAMQP(port: port)
                    client.send(header)
                    #expect(client.receiveRaw() == AMQPFrame.protocolHeader)
                }
            }
        }
    }

    @Test("malformed input is a connection exception with its standard code, and the broker serves others meanwhile")
    func malformedInput() async throws {
        try await Self.withAMQPBroker { server, port in
            try await offThePool {
                // A frame larger than the negotiated frame-max: 501 FRAME_ERROR, before the frame is buffered.
                var client = try RawAMQP(port: port)
                try client.open(frameMax: 4096)
                client.send([1, 0, 1, 0, 0, 0x40, 0x00])  // a method frame claiming 16 KiB
                try client.expectConnectionClose(.frameError)
                // A frame without its frame-end octet: 501.
                client = try RawAMQP(port: port)
                try client.open()
                client.send([8, 0, 0, 0, 0, 0, 0, 0x00])
                try client.expectConnectionClose(.frameError)
                // An unknown method: 503 COMMAND_INVALID.
                client = try RawAMQP(port: port)
                try client.open()
                client.send([1, 0, 1, 0, 0, 0, 4, 0, 99, 0, 1, 0xCE])
                try client.expectConnectionClose(.commandInvalid)
                // A body frame with no publish before it: 505 UNEXPECTED_FRAME.
                client = try RawAMQP(port: port)
                try client.open()
                client.send([3, 0, 1, 0, 0, 0, 1, 0x41, 0xCE])
                try client.expectConnectionClose(.unexpectedFrame)
                // A method on a channel that was never opened: 504 CHANNEL_ERROR.
                client = try RawAMQP(port: port)
                try client.open()
                try client.send(AMQPMethod("queue.declare", ["queue": .shortString("x")]), channel: 7)
                try client.expectConnectionClose(.channelError)
                // A truncated argument: 502 SYNTAX_ERROR.
                client = try RawAMQP(port: port)
                try client.open()
                client.send([1, 0, 1, 0, 0, 0, 6, 0, 50, 0, 10, 0, 0, 0xCE])
                try client.expectConnectionClose(.syntaxError)
            }
            #expect(try await server.withBroker { $0.sessionCount } == 0, "every session of the refused connections is released")
        }
    }

    @Test("a publish split at every byte boundary arrives whole")
    func splitFrames() async throws {
        try await Self.withAMQPBroker { server, port in
            try await offThePool {
                let client = try RawAMQP(port: port)
                try client.open()
                try client.send(AMQPMethod("queue.declare", ["queue": .shortString("split")]), channel: 1)
                #expect(try client.receiveMethod()?.method.signature.name == "queue.declare-ok")
                let bytes = try client.publishBytes(routingKey: "split", body: Array("one byte at a time".utf8))
                for byte in bytes { client.send([byte]) }
                try client.send(AMQPMethod("basic.get", ["queue": .shortString("split"), "no-ack": .bit(true)]), channel: 1)
                let getOk = try client.receiveMethod()
                #expect(getOk?.method.signature.name == "basic.get-ok")
                #expect(getOk?.method.string("routing-key") == "split")
                #expect(try client.receive()?.kind == .header)
                let body = try client.receive()
                #expect(body.map { String(buffer: $0.payload) } == "one byte at a time")
            }
            #expect(try await server.withBroker { $0.queueInfo("split")?.ready } == 0)
        }
    }

    @Test("basic.qos global limits the channel's unacknowledged deliveries across its consumers")
    func channelPrefetch() async throws {
        try await Self.withAMQPBroker { server, port in
            let client = try RawAMQP(port: port)
            try await offThePool {
                try client.open()
                for queue in ["qa", "qb"] {
                    try client.send(AMQPMethod("queue.declare", ["queue": .shortString(queue)]), channel: 1)
                    #expect(try client.receiveMethod()?.method.signature.name == "queue.declare-ok")
                }
                try client.send(AMQPMethod("basic.qos", ["prefetch-count": .short(3), "global": .bit(true)]), channel: 1)
                #expect(try client.receiveMethod()?.method.signature.name == "basic.qos-ok")
                for queue in ["qa", "qb"] {
                    try client.send(AMQPMethod("basic.consume", ["queue": .shortString(queue), "consumer-tag": .shortString("c-" + queue)]), channel: 1)
                    #expect(try client.receiveMethod()?.method.signature.name == "basic.consume-ok")
                }
                var bytes: [UInt8] = []
                for i in 0..<10 { bytes += try client.publishBytes(routingKey: i % 2 == 0 ? "qa" : "qb", body: [UInt8(i)]) }
                client.send(bytes)
            }
            // Delivery is synchronous in the broker: once all ten are in (ready or delivered), the count is final.
            let settled = try await eventually {
                try await server.withBroker { b in
                    let a = b.queueInfo("qa"), c = b.queueInfo("qb")
                    return (a?.ready ?? 0) + (a?.unacked ?? 0) + (c?.ready ?? 0) + (c?.unacked ?? 0) == 10
                }
            }
            #expect(settled)
            #expect(try await server.withBroker { ($0.queueInfo("qa")?.unacked ?? 0) + ($0.queueInfo("qb")?.unacked ?? 0) } == 3)
            try await offThePool {
                var tags: [UInt64] = []
                while tags.count < 3, let (_, method) = try client.receiveMethod() {
                    if method.signature.name == "basic.deliver" { tags.append(method.integer("delivery-tag")) }
                }
                #expect(tags == [1, 2, 3])
                try client.send(AMQPMethod("basic.ack", ["delivery-tag": .longlong(3), "multiple": .bit(true)]), channel: 1)
            }
            // Three acked: three more go out, and no more.
            let next = try await eventually {
                try await server.withBroker { ($0.queueInfo("qa")?.ready ?? 0) + ($0.queueInfo("qb")?.ready ?? 0) } == 4
            }
            #expect(next)
            #expect(try await server.withBroker { ($0.queueInfo("qa")?.unacked ?? 0) + ($0.queueInfo("qb")?.unacked ?? 0) } == 3)
        }
    }

    @Test("an alarm sends connection.blocked once per connection, and connection.unblocked when it clears")
    func blockedNotifications() async throws {
        try await Self.withAMQPBroker { server, port in
            let client = try RawAMQP(port: port)
            try await offThePool {
                try client.open()
                try client.send(AMQPMethod("channel.open"), channel: 2)
                #expect(try client.receiveMethod()?.method.signature.name == "channel.open-ok")
            }
            try await server.withBroker { $0.setAlarm(.memory, "a test alarm") }
            try await offThePool {
                let blocked = try client.receiveMethod()
                #expect(blocked?.channel == 0 && blocked?.method.signature.name == "connection.blocked")
                #expect(blocked?.method.string("reason") == "a test alarm")
            }
            try await server.withBroker { $0.setAlarm(.memory, nil) }
            try await offThePool {
                // One unblocked, not one blocked per channel first.
                let unblocked = try client.receiveMethod()
                #expect(unblocked?.method.signature.name == "connection.unblocked")
            }
        }
    }
}
