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
@Suite("Hostile input", .serialized)
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

// MARK: - Bounded memory per connection

/// A raw client that writes without reading, as a careless or hostile one does.
extension RawSocket {
    /// Writes `chunk` again and again without reading anything, until `limit` bytes are accepted, the kernel
    /// stops accepting (no progress for `stall`: the broker no longer reads), or the connection fails. Returns the
    /// bytes the kernel accepted.
    func flood(_ chunk: [UInt8], limit: Int, stall: Int32 = 2000) -> Int {
        let flags = fcntl(fd, F_GETFL)
        _ = fcntl(fd, F_SETFL, flags | O_NONBLOCK)
        defer { _ = fcntl(fd, F_SETFL, flags) }
        var accepted = 0
        var offset = 0
        while accepted < limit {
            let n = chunk.withUnsafeBytes { raw in
                Glibc.send(fd, raw.baseAddress! + offset, raw.count - offset, Int32(MSG_NOSIGNAL))
            }
            if n > 0 {
                accepted += n
                offset = (offset + n) % chunk.count
                continue
            }
            guard n < 0, errno == EAGAIN || errno == EWOULDBLOCK else { break }  // closed by the broker
            var poller = pollfd(fd: fd, events: Int16(POLLOUT), revents: 0)
            if poll(&poller, 1, stall) <= 0 || poller.revents & Int16(POLLERR | POLLHUP) != 0 { break }
        }
        return accepted
    }
}

extension HostileTests {
    @Test("a publish pipelined before authOk is decoded and checked exactly as on an open connection")
    func pipelinedBeforeAuthOk() async throws {
        try await withBroker { server, config in
            try await withConnection(config) { c in try await c.declareQueue("pipelined") }
            // A publish whose properties block claims a 200-byte message id it does not hold.
            var publish = wireBytes(.publish(Publish(exchange: "", routingKey: "pipelined",
                                                       properties: RawProperties(MessageProperties(messageId: "abc")),
                                                       body: ByteBuffer(string: "body"))))
            let at = try #require((0..<publish.count - 3).first { publish[$0] == 3 && Array(publish[($0 + 1)...($0 + 3)]) == Array("abc".utf8) })
            publish[at] = 200
            let raw = try RawSocket(port: server.port)
            raw.send(protocolMagic)
            // Everything in one write, before the broker has answered anything.
            raw.send(wireBytes(.hello(Hello(clientName: "pipeliner")),
                                 .authenticate(Authenticate(user: "guest", password: "guest"))) + publish)
            let answers = try await offThePool { try raw.receiveUntilClosed() }
            guard case .close(let close)? = answers.last else {
                Issue.record("no close for a malformed publish pipelined before authOk: \(answers)")
                return
            }
            #expect(close.code == .frameError, "\(close)")
            #expect(try await server.withBroker { $0.queueInfo("pipelined")?.ready } == 0)
        }
    }

    @Test("frames pipelined behind a wrong password are not read into memory while it is checked")
    func pipelinedBehindWrongPassword() async throws {
        try await withBroker { server, _ in
            let raw = try RawSocket(port: server.port)
            raw.send(protocolMagic)
            raw.send(wireBytes(.hello(Hello(clientName: "guesser")), .authenticate(Authenticate(user: "guest", password: "wrong"))))
            let publish = wireBytes(.publish(Publish(exchange: "", routingKey: "q", body: ByteBuffer(repeating: 1, count: 60_000))))
            // Before: the broker read and held up to 1,024 of these (61 MB per connection) before refusing.
            let accepted = try await offThePool { raw.flood(publish, limit: 200 << 20) }
            #expect(accepted < 40 << 20, "the broker read \(accepted) bytes pipelined behind an unchecked password")
            let answers = try await offThePool { try raw.receiveUntilClosed() }
            let refused = answers.contains { if case .close(let close) = $0 { close.code == .accessRefused } else { false } }
            #expect(refused || answers.isEmpty, "\(answers.suffix(2))")
        }
    }

    @Test("a client that does not read its answers is no longer read, and every request is answered once it reads")
    func unreadAnswers() async throws {
        try await withBroker { server, _ in
            let raw = try RawSocket(port: server.port)
            _ = try raw.handshake()
            let request = wireBytes(.queueDeclare(QueueDeclare(requestId: 9, name: "missing", passive: true)))
            // Before: the broker read every request and kept every answer (1.3 GB for 3 M requests).
            let accepted = try await offThePool { raw.flood(request, limit: 400 << 20) }
            #expect(accepted < 100 << 20, "the broker kept reading (\(accepted) bytes) while its answers were not read")
            let requests = accepted / request.count
            let (answered, unexpected) = try await offThePool { () throws -> (Int, String?) in
                var answered = 0
                while answered < requests, let answer = try raw.receive() {
                    guard case .error(let error) = answer, error.code == .notFound else { return (answered, "\(answer)") }
                    answered += 1
                }
                return (answered, nil)
            }
            #expect(unexpected == nil, "unexpected answer \(unexpected ?? "")")
            #expect(answered == requests)
        }
    }

    @Test("connections past --max-connections, and past the per-user limit, are refused with 506")
    func connectionLimits() async throws {
        var users = UserStore()
        users.add(User(name: "other", password: PasswordHash(password: "secret"), isAdmin: false, loopbackOnly: false))
        try await withBroker(users: users, inMemory: true, adjust: { $0.maxConnections = 3; $0.maxConnectionsPerUser = 2 }) { server, config in
            var client = config
            client.clientName = "limits"
            let first = try await BrokerConnection.connect(client)
            let second = try await BrokerConnection.connect(client)
            await expectBrokerError(.resourceError) { _ = try await BrokerConnection.connect(client) }
            var other = client
            other.user = "other"
            other.password = "secret"
            let third = try await BrokerConnection.connect(other)
            await expectBrokerError(.resourceError) { _ = try await BrokerConnection.connect(other) }
            // A closed connection frees its place.
            await first.close()
            #expect(try await eventually { try await server.withBroker { $0.sessionCount } == 2 })
            let again = try await BrokerConnection.connect(client)
            for connection in [second, third, again] { await connection.close() }
        }
    }
}

extension HostileTests {
    @Test("listings page with offset and limit; one too large for an answer is refused with 506 instead of an oversized frame")
    func pagedListings() async throws {
        try await withBroker { _, config in
            try await withConnection(config) { c in
                let count = Broker.unpagedListingLimit + 20
                try await withThrowingTaskGroup(of: Void.self) { group in
                    for worker in 0..<8 {
                        group.addTask {
                            for i in stride(from: worker, to: count, by: 8) { try await c.declareQueue(String(format: "q%05d", i)) }
                        }
                    }
                    try await group.waitForAll()
                }
                // Before: the whole listing went out as one frame, over the frame limit for 100,000 queues.
                await expectBrokerError(.resourceError) { _ = try await c.rows("list.queues") }
                let page = try await c.manage("list.queues", ["offset": .int(10), "limit": .int(3)])
                guard case .array(let rows)? = page["rows"] else {
                    Issue.record("no rows in \(page)")
                    return
                }
                #expect(rows.compactMap { if case .table(let row) = $0 { row["name"]?.stringValue } else { nil } } == ["q00010", "q00011", "q00012"])
                #expect(page["total"]?.intValue == Int64(count))
                await expectBrokerError(.invalidArgument) { _ = try await c.manage("list.queues", ["limit": .int(0)]) }
                await expectBrokerError(.invalidArgument) { _ = try await c.manage("list.queues", ["limit": .int(Int64(Broker.listingPageLimit) + 1)]) }
                // The typed API pages by itself and sees every queue once, in order.
                let all = try await c.listQueues().map(\.name)
                #expect(all == (0..<count).map { String(format: "q%05d", $0) })
            }
        }
    }
}

extension HostileTests {
    @Test("a storm of wrong logins does not delay a legitimate one: it goes ahead of the queued guesses")
    func loginStorm() async throws {
        var users = UserStore()
        users.add(User(name: "svc", password: PasswordHash(password: "right"), isAdmin: false, loopbackOnly: false))
        try await withBroker(users: users) { server, config in
            var legit = config
            legit.user = "svc"
            legit.password = "right"
            // Before: each check waited for every earlier one, so a legitimate login queued behind the storm.
            let storm = 150
            let guessers = try (0..<storm).map { _ in try RawSocket(port: server.port) }
            for socket in guessers {
                socket.send(protocolMagic)
                socket.send(wireBytes(.hello(Hello(clientName: "guesser")), .authenticate(Authenticate(user: "guest", password: "wrong"))))
            }
            var seen: (waiting: Int, running: Int) = (0, 0)
            let queued = try await eventually(timeout: .seconds(30)) {
                seen = try await server.loginQueue()
                return seen.waiting >= storm / 2
            }
            #expect(queued, "the storm never queued: last seen \(seen)")
            let connection = try await BrokerConnection.connect(legit)
            let left = try await server.loginQueue().waiting
            #expect(left > 0, "the legitimate login was answered only after every guess")
            await connection.close()
            // Every guess is refused (or, if the loaded machine did not check it within the handshake time, closed
            // for that); none is let in.
            for socket in guessers {
                let answers = try await offThePool { try socket.receiveUntilClosed() }
                let refused = answers.contains {
                    if case .close(let close) = $0 { close.code == .accessRefused || close.code == .unexpectedFrame } else { false }
                }
                let admitted = answers.contains { if case .authOk = $0 { true } else { false } }
                #expect(refused && !admitted, "\(answers)")
            }
        }
    }
}

// MARK: - Against the brokerd executable, with a canary

extension HostileTests {
    @Test("the brokerd executable under several hostile clients at once: the canary keeps its round trips, memory stays bounded, shutdown is clean")
    func hostileClientsAgainstTheExecutable() async throws {
        let directory = DaemonTests.temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: directory) }
        let (process, port, log) = try DaemonTests.startDaemon(dataDirectory: directory, extraArguments: ["--memory-limit", "64000000"])
        defer { DaemonTests.stop(process) }
        var canaryConfig = ClientConfiguration(port: port, clientName: "canary", connectTimeout: .seconds(20), requestTimeout: .seconds(60),
                                               publishTimeout: .seconds(60), recovery: nil)
        canaryConfig.logger = quietLogger
        let canary = try await BrokerConnection.connect(canaryConfig)
        try await canary.declareQueue("canary")
        try await canary.enableConfirms()

        // The attackers, each on a thread of its own: a client that never reads its answers, ten wrong passwords
        // each pipelining 60 KB publishes, and fifty connections that log in and stay idle. (Small numbers: the
        // suite runs the debug build, whose password hashing is slow; the benchmarks run the large ones.)
        let attacks = Task {
            try await withThrowingTaskGroup(of: Void.self) { group in
                group.addTask {
                    let raw = try RawSocket(port: port)
                    _ = try await offThePool { try raw.handshake() }
                    let request = wireBytes(.queueDeclare(QueueDeclare(requestId: 9, name: "missing", passive: true)))
                    _ = try await offThePool { raw.flood(request, limit: 200 << 20, stall: 1000) }
                }
                for _ in 0..<10 {
                    group.addTask {
                        let raw = try RawSocket(port: port)
                        raw.send(protocolMagic)
                        raw.send(wireBytes(.hello(Hello(clientName: "guesser")), .authenticate(Authenticate(user: "guest", password: "wrong"))))
                        let publish = wireBytes(.publish(Publish(exchange: "", routingKey: "canary", body: ByteBuffer(repeating: 1, count: 60_000))))
                        _ = try await offThePool { raw.flood(publish, limit: 60 << 20, stall: 1000) }
                    }
                }
                group.addTask {
                    let idle = try await offThePool { () throws -> [RawSocket] in
                        try (0..<50).map { _ in
                            let raw = try RawSocket(port: port)
                            _ = try raw.handshake()
                            return raw
                        }
                    }
                    #expect(idle.count == 50)
                }
                try await group.waitForAll()
            }
        }
        // The canary's round trips while the attacks run: a confirmed publish, then a get of it.
        var roundTrips = 0
        for n in 0..<100 {
            try await canary.publish(routingKey: "canary", body: "\(n)")
            let got = try await canary.get(queue: "canary", noAck: true)
            #expect(got?.bodyString == "\(n)", "round trip \(n) got \(String(describing: got?.bodyString))")
            roundTrips += 1
        }
        try await attacks.value
        #expect(roundTrips == 100)
        // Nothing the guessers pipelined reached the queue.
        #expect(try await canary.get(queue: "canary", noAck: true) == nil)
        await canary.close()
        // Before: the unread answers alone grew the process past a gigabyte, the guessers' held frames by 60 MB each.
        let peak = try #require(DaemonTests.peakResidentKiB(process.processIdentifier))
        #expect(peak < 300_000, "peak RSS \(peak) KiB under the hostile clients")
        kill(process.processIdentifier, SIGTERM)
        process.waitUntilExit()
        #expect(process.terminationStatus == 0, "brokerd exited \(process.terminationStatus); log:\n\(log.text.suffix(2000))")
    }
}

extension HostileTests {
    @Test("a queue with many bindings is deleted at once for routing, its bindings leave a chunk per loop turn, and a queue of the same name starts clean")
    func deleteQueueWithManyBindings() async throws {
        try await withBroker { server, config in
            try await withConnection(config) { c in
                try await c.declareExchange("wide", type: .topic)
                try await c.declareQueue("many")
                try await c.declareQueue("other")
                try await c.bind(queue: "other", exchange: "wide", key: "k.#")
            }
            // More bindings than one turn detaches, made on the broker's loop directly (a client would take a while).
            let count = Broker.bindingsDetachedPerTurn * 2 + 10
            let made = try await server.withBroker { broker in broker.bindForTest(queue: "many", exchange: "wide", keys: (0..<count).map { "k.\($0).#" }) }
            #expect(made == count)
            try await withConnection(config) { c in
                _ = try await c.deleteQueue("many")
                try await c.declareQueue("many")
                try await c.enableConfirms()
                try await c.publish(exchange: "wide", routingKey: "k.7.x", body: "to other only")
                #expect(try await c.get(queue: "many", noAck: true) == nil, "the new queue got the old one's bindings")
                #expect(try await c.get(queue: "other", noAck: true)?.bodyString == "to other only")
                #expect(try await eventually { try await c.listBindings().filter { $0.source == "wide" }.count == 1 })
            }
            #expect(try await eventually { try await server.withBroker { $0.bindingCount(of: "wide") } == 1 })
        }
    }
}
