import BrokerClient
import BrokerCore
import BrokerServer
import BrokerStorage
import Foundation
import NIOCore
import Testing
import WireProtocol

/// Hostile and careless input (issue 12): values that used to trap the broker, poisoned data directories, and the
/// bounds on what one client can make the broker hold.
@Suite("Hostile input")
struct HostileTests {
    @Test("numeric queue arguments outside their documented range are refused with 502 naming the argument")
    func argumentRanges() async throws {
        try await withBroker { server, config in
            try await withConnection(config) { c in
                // Before: x-expires this large trapped the sweeper 100 ms later; x-message-ttl the first publish.
                for (key, value) in [("x-expires", Int64(18_446_744_073_710)), ("x-message-ttl", 18_446_744_073_710),
                                     ("x-expires", Int64(UInt32.max) + 1), ("x-max-length", 1 << 60),
                                     ("x-delivery-limit", Int64.max), ("x-expires", 0), ("x-message-ttl", -1)] {
                    do {
                        try await c.declareQueue("q-\(key)", arguments: [key: .int(value)])
                        Issue.record("\(key)=\(value) was accepted")
                    } catch let error as BrokerError {
                        #expect(error.code == .invalidArgument, "\(error)")
                        #expect(error.message.contains(key), "\(error)")
                    }
                }
            }
            try await withConnection(config) { c in
                // The largest values are accepted and work: a publish gets its expiry, the sweeper runs.
                try await c.declareQueue("edge", arguments: ["x-expires": .int(Int64(UInt32.max)),
                                                             "x-message-ttl": .int(Int64(UInt32.max))])
                try await c.enableConfirms()
                try await c.publish(routingKey: "edge", body: "kept",
                                    properties: MessageProperties(expiration: UInt32.max))
                _ = try await server.withBroker { $0.sweep() }
                #expect(try await server.withBroker { $0.queueInfo("edge")?.ready } == 1)
                #expect(try await c.get(queue: "edge", noAck: true)?.bodyString == "kept")
            }
        }
    }

    @Test("a data directory holding definitions the ranges refuse starts: the queue and its messages stay, the argument goes")
    func poisonedDefinitions() async throws {
        let dir = temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        try await withBroker(dataDirectory: dir) { _, config in
            try await withConnection(config) { c in
                try await c.declareQueue("poisoned", durable: true, arguments: ["x-expires": .int(60_000)])
                try await c.enableConfirms()
                try await c.publish(routingKey: "poisoned", body: "survivor", properties: MessageProperties(persistent: true))
            }
        }
        // What an older broker would have written: an x-expires that trapped the sweeper on every start, and the
        // last durable queue id in use.
        let path = dir + "/metadata.json"
        var text = try String(contentsOfFile: path, encoding: .utf8)
        #expect(text.contains("\"expires\" : 60000"))
        text = text.replacingOccurrences(of: "\"expires\" : 60000", with: "\"expires\" : 18446744073710")
        text = text.replacingOccurrences(of: #""nextQueueId" : \d+"#, with: "\"nextQueueId\" : 4294967295", options: .regularExpression)
        try text.write(toFile: path, atomically: true, encoding: .utf8)

        try await withBroker(dataDirectory: dir) { server, config in
            // Sweeping ran the x-expires check that used to trap.
            _ = try await server.withBroker { $0.sweep() }
            #expect(try await server.withBroker { $0.queueInfo("poisoned")?.ready } == 1)
            try await withConnection(config) { c in
                let survivor = try await c.get(queue: "poisoned", noAck: true)
                #expect(survivor?.bodyString == "survivor")
                // Every durable queue id is spent: a clear refusal, not a trap.
                await expectBrokerError(.resourceError) { try await c.declareQueue("one-more", durable: true) }
            }
            try await withConnection(config) { c in
                try await c.declareQueue("transient-still-works")
            }
        }
    }
}
