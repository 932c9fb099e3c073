import AMQPWire
@testable import BrokerServer
import Testing

/// The AMQP connection's negotiation on channel 0 as sequences of events, without a socket.
@Suite("AMQP connection state machine, without a channel")
struct AMQPStateMachineTests {
    static func machine() -> AMQPConnectionStateMachine {
        AMQPConnectionStateMachine(maxFrameSize: 1 << 20, heartbeatSeconds: 30, serverProperties: ["product": .string("brokerd")])
    }

    static func startOk(mechanism: String = "PLAIN", password: String = "guest", capabilities: AMQPTable = [:]) throws -> AMQPMethod {
        AMQPMethod("connection.start-ok", [
            "client-properties": .table(["connection_name": .string("trip-service"), "capabilities": .table(capabilities)]),
            "mechanism": .shortString(mechanism),
            "response": .longString(try AMQPCredentials(user: "guest", password: password).response(mechanism: mechanism)),
        ])
    }

    static func tuneOk(frameMax: UInt32 = 131072, channelMax: UInt16 = 0, heartbeat: UInt16 = 10) -> AMQPMethod {
        AMQPMethod("connection.tune-ok", ["channel-max": .short(channelMax), "frame-max": .long(frameMax), "heartbeat": .short(heartbeat)])
    }

    @Test("header → start → start-ok → verify → tune → tune-ok → open → open-ok, with the client's limits")
    func happyPath() throws {
        var m = Self.machine()
        guard case .send(let start) = m.header(AMQPFrame.protocolHeader) else { Issue.record("no start"); return }
        #expect(start.map(\.signature.name) == ["connection.start"])
        #expect(m.received(try Self.startOk(mechanism: "AMQPLAIN", capabilities: ["connection.blocked": .bool(true)]))
                == .verify(AMQPCredentials(user: "guest", password: "guest")))
        #expect(m.clientName == "trip-service" && m.clientUnderstandsBlocked)
        guard case .send(let tune) = m.authenticated() else { Issue.record("no tune"); return }
        #expect(tune.first?.integer("frame-max") == 1 << 20 && tune.first?.integer("heartbeat") == 30)
        #expect(m.received(Self.tuneOk()) == .none)
        let tuning = AMQPTuning(channelMax: AMQPConnectionStateMachine.channelMax, frameMax: 131072, heartbeatSeconds: 10)
        #expect(m.received(AMQPMethod("connection.open", ["virtual-host": .shortString("/")])) == .open(tuning, AMQPMethod("connection.open-ok")))
        #expect(m.isOpen)
        #expect(m.received(AMQPMethod("connection.close", ["reply-code": .short(200)])) == .closeOk)
    }

    @Test("another protocol's header is answered with ours; the socket then closes")
    func wrongHeader() {
        var m = Self.machine()
        #expect(m.header(Array("HTTP/1.1".utf8)) == .rejectHeader)
        #expect(m.state == .closed)
    }

    @Test("refusals: a failed login is 403, an unknown vhost 530, a frame-max out of range 502, methods out of order 503")
    func refusals() throws {
        var m = Self.machine()
        _ = m.header(AMQPFrame.protocolHeader)
        _ = m.received(try Self.startOk())
        guard case .close(let error, 10, 11) = m.refused("wrong password") else { Issue.record("not refused"); return }
        #expect(error.code == .accessRefused)
        // After our close, everything but close-ok is discarded; close-ok closes the socket.
        #expect(m.received(Self.tuneOk()) == .none)
        #expect(m.received(AMQPMethod("connection.close-ok")) == .closeSocket)

        for (tuneOk, code) in [(Self.tuneOk(frameMax: 100), AMQPWireError.Code.syntaxError), (Self.tuneOk(frameMax: 2 << 20), .syntaxError)] {
            m = Self.machine()
            _ = m.header(AMQPFrame.protocolHeader)
            _ = m.received(try Self.startOk())
            _ = m.authenticated()
            guard case .close(let refused, _, _) = m.received(tuneOk) else { Issue.record("accepted \(tuneOk)"); continue }
            #expect(refused.code == code)
        }

        m = Self.machine()
        _ = m.header(AMQPFrame.protocolHeader)
        _ = m.received(try Self.startOk())
        _ = m.authenticated()
        _ = m.received(Self.tuneOk())
        guard case .close(let vhost, _, _) = m.received(AMQPMethod("connection.open", ["virtual-host": .shortString("billing")])) else {
            Issue.record("an unknown vhost was opened"); return
        }
        #expect(vhost.code == .notAllowed)

        m = Self.machine()
        _ = m.header(AMQPFrame.protocolHeader)
        guard case .close(let early, _, _) = m.received(AMQPMethod("connection.open")) else { Issue.record("open before start-ok"); return }
        #expect(early.code == .commandInvalid)

        m = Self.machine()
        _ = m.header(AMQPFrame.protocolHeader)
        guard case .close(let mechanism, _, _) = m.received(AMQPMethod("connection.start-ok", ["mechanism": .shortString("EXTERNAL")])) else {
            Issue.record("an unknown mechanism was accepted"); return
        }
        #expect(mechanism.code == .accessRefused)
    }

    @Test("channel-max 0 means the server's; a smaller one is kept; frame-max 0 means the server's")
    func limits() throws {
        for (channelMax, frameMax, expected) in [(UInt16(0), UInt32(0), AMQPTuning(channelMax: 2047, frameMax: 1 << 20, heartbeatSeconds: 0)),
                                                  (16, 4096, AMQPTuning(channelMax: 16, frameMax: 4096, heartbeatSeconds: 0))] {
            var m = Self.machine()
            _ = m.header(AMQPFrame.protocolHeader)
            _ = m.received(try Self.startOk())
            _ = m.authenticated()
            _ = m.received(Self.tuneOk(frameMax: frameMax, channelMax: channelMax, heartbeat: 0))
            guard case .open(let tuning, _) = m.received(AMQPMethod("connection.open")) else { Issue.record("not opened"); continue }
            #expect(tuning == expected)
        }
    }
}
