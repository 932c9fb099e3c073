import BrokerClient
import BrokerCore
import BrokerServer
import NIOCore
import Testing
import WireProtocol

@Suite("Handshake, authentication and bad input over raw sockets", .timeLimit(.minutes(2)))
struct ProtocolTests {
    @Test("an unsupported version is refused with the versions the server speaks")
    func versionRefused() async throws {
        try await withBroker { server, _ in
            let socket = try RawSocket(port: server.port)
            let frames = try socket.handshake(versions: [ProtocolVersion(major: 9, minor: 0)])
            guard case .close(let close)? = frames.first else {
                Issue.record("expected close, got \(frames)")
                return
            }
            #expect(close.code == .unsupportedVersion)
            #expect(close.reason.contains("1.0") && close.reason.contains("9.0"))
            #expect(try socket.receive() == nil)
        }
    }

    @Test("the client library reports a version refusal clearly")
    func clientVersionRefused() async throws {
        try await withBroker { _, config in
            var config = config
            config.versions = [ProtocolVersion(major: 2, minor: 0)]
            await expectBrokerError(.unsupportedVersion) { _ = try await BrokerConnection.connect(config) }
        }
    }

    @Test("wrong credentials are refused with a clear error")
    func wrongPassword() async throws {
        try await withBroker { _, config in
            var config = config
            config.password = "wrong"
            do {
                _ = try await BrokerConnection.connect(config)
                Issue.record("connected with a wrong password")
            } catch let error as BrokerError {
                #expect(error.code == .accessRefused)
                #expect(error.message.contains("login refused"))
            }
            config.user = "nobody"
            await expectBrokerError(.accessRefused) { _ = try await BrokerConnection.connect(config) }
        }
    }

    @Test("added users log in; management needs an administrator")
    func usersAndAdmin() async throws {
        var users = UserStore()
        users.add(User(name: "trip-service", password: PasswordHash(password: "s3cret"), isAdmin: false))
        try await withBroker(users: users) { _, config in
            var config = config
            config.user = "trip-service"
            config.password = "s3cret"
            try await withConnection(config) { c in
                try await c.declareQueue("trips")
                await expectBrokerError(.accessRefused) { _ = try await c.status() }
            }
            config.user = "guest"
            config.password = "guest"
            try await withConnection(config) { c in
                let status = try await c.status()
                #expect(status["queues"] == .int(1))
                #expect(status["connections"] == .int(1))
            }
        }
    }

    @Test("a garbage frame closes only the sender, with a code; other clients carry on")
    func garbageIsolated() async throws {
        try await withBroker { server, config in
            try await withConnection(config) { good in
                try await good.declareQueue("q")
                let consumer = try await good.consume(queue: "q", noAck: true)
                let bad = try RawSocket(port: server.port)
                _ = try bad.handshake()
                bad.send([0, 0, 0, 3, 0x12, 0xFF, 0xFF])  // queueDeclare with a truncated payload
                let frames = try bad.receiveUntilClosed()
                guard case .close(let close)? = frames.last else {
                    Issue.record("expected close, got \(frames)")
                    return
                }
                #expect(close.code == .frameError)
                #expect(close.reason.contains("truncated"))
                try await good.enableConfirms()
                try await good.publish(routingKey: "q", body: "still here")
                #expect(try await next(consumer).bodyString == "still here")
            }
        }
    }

    @Test("an unknown frame type and a frame before the handshake are refused with codes")
    func unknownAndEarly() async throws {
        try await withBroker { server, _ in
            let unknown = try RawSocket(port: server.port)
            _ = try unknown.handshake()
            unknown.send([0, 0, 0, 1, 0x6E])
            guard case .close(let close)? = try unknown.receiveUntilClosed().last else {
                Issue.record("no close for an unknown frame")
                return
            }
            #expect(close.code == .unknownFrame)

            let early = try RawSocket(port: server.port)
            early.send(protocolMagic)
            early.send(.queuePurge(QueuePurge(requestId: 1, name: "q")))
            guard case .close(let close2)? = try early.receiveUntilClosed().last else {
                Issue.record("no close for a frame before hello")
                return
            }
            #expect(close2.code == .unexpectedFrame)

            let http = try RawSocket(port: server.port)
            http.send(Array("GET / HTTP/1.1\r\nHost: x\r\n\r\n".utf8))
            guard case .close(let close3)? = try http.receiveUntilClosed().last else {
                Issue.record("no close for HTTP")
                return
            }
            #expect(close3.code == .frameError)
        }
    }

    @Test("an oversized frame is refused before it is buffered")
    func oversized() async throws {
        try await withBroker(maxFrameSize: 65536) { server, config in
            let socket = try RawSocket(port: server.port)
            _ = try socket.handshake()
            socket.send([0x00, 0x10, 0x00, 0x00, 0x20])  // claims 1 MiB
            guard case .close(let close)? = try socket.receiveUntilClosed().last else {
                Issue.record("no close for an oversized frame")
                return
            }
            #expect(close.code == .frameTooLarge)
            // The client library refuses to send one in the first place.
            try await withConnection(config) { c in
                await expectBrokerError(.frameTooLarge) {
                    try await c.publish(routingKey: "q", body: ByteBuffer(repeating: 1, count: 70000))
                }
            }
        }
    }

    @Test("a client frame limit below the broker's message limit is refused at the handshake; at the limit, a delivery of the largest message fits")
    func frameLimitBothWays() async throws {
        try await withBroker(maxFrameSize: 65536) { server, config in
            var small = config
            small.maxFrameSize = 4096
            small.recovery = nil
            do {
                try await withConnection(small) { _ in Issue.record("a 4096-byte limit was accepted by a broker taking 65536-byte messages") }
            } catch let error as BrokerError {
                #expect(error.code == .invalidArgument, "\(error)")
                #expect(error.message.contains("65536"), "\(error)")
            }
            // A publisher with the full limit sends the largest message; a consumer that asked for exactly the
            // broker's limit receives it whole.
            var exact = config
            exact.maxFrameSize = 65536
            let body = ByteBuffer(repeating: 7, count: 60_000)
            try await withConnection(config) { c in
                try await c.declareQueue("large")
                try await c.enableConfirms()
                try await c.publish(routingKey: "large", body: body)
            }
            try await withConnection(exact) { c in
                #expect(c.maxFrameSize == 65536)
                let got = try await c.get(queue: "large", noAck: true)
                #expect(got?.body == body)
            }
        }
    }

    @Test("heartbeats: a silent peer is dropped and its unacknowledged message requeued")
    func deadPeer() async throws {
        try await withBroker(heartbeat: 1) { server, config in
            try await withConnection(config) { c in
                try await c.declareQueue("q")
                try await c.enableConfirms()
                try await c.publish(routingKey: "q", body: "held by a dead peer")
            }
            let silent = try RawSocket(port: server.port)
            let handshake = try silent.handshake(heartbeat: 1)
            guard case .authOk(let ok)? = handshake.last else {
                Issue.record("handshake failed: \(handshake)")
                return
            }
            #expect(ok.heartbeatSeconds == 1)
            silent.send(.consume(Consume(requestId: 1, queue: "q", prefetch: 1)))
            // Now say nothing. The broker must give up within about two intervals.
            let start = ContinuousClock.now
            let frames = try silent.receiveUntilClosed()
            let elapsed = ContinuousClock.now - start
            #expect(frames.contains { if case .deliver = $0 { true } else { false } })
            #expect(frames.contains { if case .heartbeat = $0 { true } else { false } })
            #expect(elapsed < .seconds(5))
            #expect(try await eventually { try await server.withBroker { $0.queueInfo("q")! } == (1, 0, 0) })
            try await withConnection(config) { c in
                let m = try #require(try await c.get(queue: "q", noAck: true))
                #expect(m.redelivered && m.bodyString == "held by a dead peer")
            }
        }
    }

    @Test("a client with heartbeats stays connected while idle")
    func heartbeatsKeepAlive() async throws {
        try await withBroker(heartbeat: 1) { _, config in
            var config = config
            config.heartbeatSeconds = 1
            try await withConnection(config) { c in
                #expect(c.heartbeatSeconds == 1)
                // The broker sends a heartbeat at most every half interval, so six of them span at least 2.5 s of
                // the broker's own time: past the two intervals of silence after which it would have closed us.
                let survived = try await eventually(timeout: .seconds(60)) { await c.statistics().heartbeatsReceived >= 6 }
                #expect(survived)
                let declared = try await c.declareQueue("alive")
                #expect(declared.name == "alive")
            }
        }
    }

    @Test("pipelined requests sent before authentication completes are answered in order")
    func pipelinedDuringAuth() async throws {
        try await withBroker { server, _ in
            let socket = try RawSocket(port: server.port)
            socket.send(protocolMagic)
            socket.send(.hello(Hello(clientName: "raw")))
            socket.send(.authenticate(Authenticate(user: "guest", password: "guest")))
            socket.send(.queueDeclare(QueueDeclare(requestId: 1, name: "p")))
            socket.send(.publish(Publish(exchange: "", routingKey: "p", body: ByteBuffer(string: "x"))))
            socket.send(.get(Get(requestId: 2, queue: "p", noAck: true)))
            var frames: [ServerMessage] = []
            for _ in 0..<4 { if let f = try socket.receive() { frames.append(f) } }
            #expect(frames.map(\.frameType) == [.helloOk, .authOk, .queueDeclareOk, .getOk])
        }
    }
}
