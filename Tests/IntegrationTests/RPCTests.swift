import BrokerClient
import BrokerCore
import BrokerServer
import NIOCore
import Testing
import WireProtocol

@Suite("RPC over the broker", .timeLimit(.minutes(2)))
struct RPCTests {
    @Test("concurrent calls each get their own reply")
    func concurrentCalls() async throws {
        try await withBroker { _, config in
            let responderConnection = try await BrokerConnection.connect(config)
            try await responderConnection.declareQueue("passenger.profile")
            let responder = Task {
                try await responderConnection.respond(queue: "passenger.profile") { request in
                    RPCReply(body: ByteBuffer(string: "profile of \(request.bodyString)"),
                             properties: MessageProperties(contentType: "text/plain"))
                }
            }
            try await withConnection(config) { c in
                let rpc = try await RPCClient.make(connection: c)
                let replies = try await withThrowingTaskGroup(of: (Int, String).self) { group in
                    for i in 0..<20 {
                        group.addTask {
                            // The test is about correlation, not speed: a generous timeout, since on a loaded CI
                            // machine the default 5 s once ran out (the full suite shares 2 cores).
                            let reply = try await rpc.call(routingKey: "passenger.profile", body: ByteBuffer(string: "p\(i)"),
                                                           timeout: .seconds(60))
                            #expect(reply.properties.contentType == "text/plain")
                            return (i, reply.bodyString)
                        }
                    }
                    var out: [Int: String] = [:]
                    for try await (i, body) in group { out[i] = body }
                    return out
                }
                #expect(replies.count == 20)
                for i in 0..<20 { #expect(replies[i] == "profile of p\(i)") }
            }
            await responderConnection.close()
            _ = await responder.result
        }
    }

    @Test("a call with no responder times out")
    func timeout() async throws {
        try await withBroker { _, config in
            // The connection's own request timeout is far longer than the call's, so the timeout can only be the
            // call's (a wall-clock bound would fail on a loaded machine).
            var patient = config
            patient.requestTimeout = .seconds(600)
            try await withConnection(patient) { c in
                try await c.declareQueue("nobody.home")
                let rpc = try await RPCClient.make(connection: c)
                let start = ContinuousClock.now
                await expectBrokerError(.timeout) {
                    _ = try await rpc.call(routingKey: "nobody.home", body: ByteBuffer(string: "hello?"), timeout: .milliseconds(300))
                }
                #expect(ContinuousClock.now - start >= .milliseconds(300))
            }
        }
    }
}
