import ArgumentParser
import BrokerClient
import Foundation
import Histogram
import NIOCore
import NIOPosix
import WireProtocol

/// brokerbench: a load generator for brokerd in the spirit of RabbitMQ PerfTest. Its options are named like
/// `amqp_bench`'s (../shared/bench-rabbitmq), so one scenario means the same on both brokers, and it prints the same
/// `RESULT key=value` line, so `summarize.py` reads both.
@main
struct Brokerbench: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "brokerbench",
        abstract: "Measure brokerd: publish and consume rates, confirm and end-to-end latency.",
        discussion: """
            Every message carries its send time, so consumers measure end-to-end latency, and its producer, sequence
            number and a checksum, so consumers verify every delivery: its consumer tag, an intact body, per-producer
            order, no duplicate unless flagged redelivered. Violations are printed and fail the run (exit 1).
            Producers honour the broker's flow control: nothing is published between connectionBlocked and
            connectionUnblocked (reported as blocked_n and blocked_secs). Every run stops by itself:
            after --duration (or --count), then at most --drain seconds for consumers to catch up.
            Example (S1, 16 B transient, auto-ack): brokerbench --size 16 --duration 10
            """)

    @Option(help: "Broker host.") var host = "127.0.0.1"
    @Option(help: "Broker port.") var port = 5680
    @Option(help: "Message body size in bytes (at least 16: the body carries a timestamp and a sequence number).")
    var size = 16
    @Option(help: "Producer connections.") var producers = 1
    @Option(help: "Consumer connections.") var consumers = 1
    @Option(help: "Number of queues; more than 1 implies --fanout.") var queues = 1
    @Flag(help: "Publish to one fanout exchange bound to the queues.") var fanout = false
    @Flag(help: "Declare durable queues (and exchange).") var durable = false
    @Flag(help: "Mark messages persistent.") var persistent = false
    @Option(help: "Publisher confirms with at most W unconfirmed messages per producer (0 = off).") var confirm = 0
    @Option(help: "Consumer prefetch (0 = unlimited).") var prefetch = 0
    @Option(name: .customLong("ack-every"), help: "Ack (multiple) every N messages; 0 = auto-ack (no-ack consumers).")
    var ackEvery = 0
    @Option(help: "Messages per producer (with --producers 0: messages to drain in total); 0 = no limit.") var count = 0
    @Option(help: "Maximum producing time in seconds (at most 600).") var duration = 10.0
    @Option(help: "Messages per second per producer (0 = unlimited).") var rate = 0.0
    @Option(help: "Seconds consumers may keep draining after producers stop.") var drain = 0.0
    @Option(name: .customLong("idle-ms"), help: "With --producers 0: stop after this long without a delivery.") var idleMs = 2000
    @Flag(help: "Keep queues and messages at the end.") var keep = false
    @Flag(name: .customLong("no-purge"), help: "Do not purge the queues at the start.") var noPurge = false
    @Option(help: "Queue and exchange name prefix.") var prefix = "bench"
    @Option(help: "Label printed in the results.") var label = "run"
    @Option(help: "Event-loop threads for the load generator.") var threads = 1
    @Option(help: "User name.") var user = "guest"
    @Option(help: "Password.") var password = "guest"
    @Flag(help: "Print one JSON object as the last line.") var json = false
    @Flag(help: "Print per-second rates to stderr.") var verbose = false

    func validate() throws {
        guard size >= 16 else { throw ValidationError("--size must be at least 16 bytes") }
        guard producers >= 0, consumers >= 0, producers + consumers > 0 else {
            throw ValidationError("need at least one producer or consumer")
        }
        guard queues >= 1 else { throw ValidationError("--queues must be at least 1") }
        guard duration > 0, duration <= 600 else { throw ValidationError("--duration must be in (0, 600]") }
        guard drain >= 0, drain <= 600 else { throw ValidationError("--drain must be in [0, 600]") }
        guard (0...65535).contains(prefetch) else { throw ValidationError("--prefetch must be in 0...65535") }
        guard confirm >= 0, confirm <= 1_000_000 else { throw ValidationError("--confirm must be in 0...1000000") }
        guard ackEvery >= 0 else { throw ValidationError("--ack-every must not be negative") }
        if ackEvery > 0 && prefetch > 0 && ackEvery > prefetch {
            throw ValidationError("--ack-every must be <= --prefetch (or the consumer stalls)")
        }
        guard threads >= 1, threads <= 64 else { throw ValidationError("--threads must be in 1...64") }
    }

    var isFanout: Bool { fanout || queues > 1 }
    func queueName(_ i: Int) -> String { "\(prefix).q\(i)" }
    var exchangeName: String { "\(prefix).x" }

    func run() async throws {
        let client = ClientConfiguration(host: host, port: port, user: user, password: password, clientName: "brokerbench")
        try await setUpTopology(client)

        let group = MultiThreadedEventLoopGroup(numberOfThreads: threads)
        let report: Report
        do {
            report = try await measure(client, group: group)
        } catch {
            try? await group.shutdownGracefully()
            throw error
        }
        try? await group.shutdownGracefully()
        print(report.text)
        print(report.resultLine)
        if json { print(report.json) }
        if report.failed { throw ExitCode(1) }
    }

    private func measure(_ client: ClientConfiguration, group: MultiThreadedEventLoopGroup) async throws -> Report {
        var consumerConnections: [(any Channel, NIOLoopBound<BenchConnection>)] = []
        var producerConnections: [(any Channel, NIOLoopBound<BenchConnection>)] = []
        for i in 0..<consumers {
            let plan = ConsumerPlan(queue: queueName(i % queues), prefetch: UInt16(prefetch), ackEvery: ackEvery)
            consumerConnections.append(try await open(.consumer(plan), group: group))
        }
        // Producer ids start at a random base, so consumers of a later run tell this run's producers from earlier ones.
        let idBase = UInt16.random(in: 0...UInt16.max)
        for i in 0..<producers {
            let plan = ProducerPlan(exchange: isFanout ? exchangeName : "", routingKey: isFanout ? "" : queueName(0), size: size,
                                    persistent: persistent, confirmWindow: confirm, count: count, rate: rate,
                                    producerId: idBase &+ UInt16(truncatingIfNeeded: i))
            producerConnections.append(try await open(.producer(plan), group: group))
        }
        let all = consumerConnections + producerConnections

        let start = BenchConnection.nowNanos()
        for (channel, handler) in all {
            try await channel.eventLoop.submit { handler.value.start(atNanos: start) }.get()
        }

        // Watch: stop producers at the deadline or when they are done, then let consumers drain.
        let hardEnd = start + UInt64((duration + drain + (producers == 0 ? duration : 0) + 15) * 1e9)
        var producing = producers > 0
        var publishEnd: UInt64 = producing ? 0 : start
        var consumedInWindow: UInt64 = 0
        var drainEnd: UInt64 = 0
        var lastProgress = start
        var lastConsumed: UInt64 = 0
        var lastTick = start
        var lastTickPublished: UInt64 = 0
        var lastTickConsumed: UInt64 = 0
        while true {
            try await Task.sleep(for: .milliseconds(20))
            let now = BenchConnection.nowNanos()
            let p = try await Self.sum(producerConnections)
            let c = try await Self.sum(consumerConnections)
            if let failure = (p.failure ?? c.failure) {
                FileHandle.standardError.write(Data("brokerbench: \(failure)\n".utf8))
                break
            }
            if verbose && now - lastTick >= 1_000_000_000 {
                let dt = Double(now - lastTick) / 1e9
                let line = String(format: "t=%5.1fs pub/s=%8.0f cons/s=%8.0f published=%llu consumed=%llu\n", Double(now - start) / 1e9,
                                  Double(p.sent - lastTickPublished) / dt, Double(c.consumed - lastTickConsumed) / dt, p.sent, c.consumed)
                FileHandle.standardError.write(Data(line.utf8))
                lastTick = now
                lastTickPublished = p.sent
                lastTickConsumed = c.consumed
            }
            if c.consumed != lastConsumed {
                lastConsumed = c.consumed
                lastProgress = now
            }
            if now >= hardEnd {
                FileHandle.standardError.write(Data("brokerbench: hard time limit reached\n".utf8))
                break
            }
            if producing {
                if now >= start + UInt64(duration * 1e9) || p.done {
                    for (channel, handler) in producerConnections {
                        try await channel.eventLoop.submit { handler.value.stop() }.get()
                    }
                    producing = false
                    publishEnd = now
                    consumedInWindow = c.consumed
                    drainEnd = now + UInt64(drain * 1e9)
                    if consumers == 0 { break }
                }
            } else if producers > 0 {
                let expected = p.sent * UInt64(isFanout ? queues : 1)
                if now >= drainEnd || c.consumed >= expected { break }
            } else {
                if count > 0 && c.consumed >= UInt64(count) { break }
                if now - lastProgress >= UInt64(idleMs) * 1_000_000 { break }
                if now >= start + UInt64(duration * 1e9) { break }
            }
        }
        // Producers with confirms: wait (bounded) for the outstanding ones so the confirm count is final.
        if confirm > 0 {
            let until = BenchConnection.nowNanos() + 10_000_000_000
            while BenchConnection.nowNanos() < until {
                var outstanding: UInt64 = 0
                for (channel, handler) in producerConnections {
                    outstanding += try await channel.eventLoop.submit { handler.value.outstandingConfirms }.get()
                }
                if outstanding == 0 { break }
                try await Task.sleep(for: .milliseconds(10))
            }
        }
        let end = BenchConnection.nowNanos()
        let p = try await Self.sum(producerConnections)
        let c = try await Self.sum(consumerConnections)
        var e2e = Histogram<UInt64>(highestTrackableValue: 60_000_000, numberOfSignificantValueDigits: .three)
        var confirms = Histogram<UInt64>(highestTrackableValue: 60_000_000, numberOfSignificantValueDigits: .three)
        for (channel, handler) in all {
            let (e, f) = try await channel.eventLoop.submit { (handler.value.e2eLatency, handler.value.confirmLatency) }.get()
            e2e.add(e)
            confirms.add(f)
        }
        // Every delivery was checked by its consumer; duplicates between consumers of one queue show when their
        // sets of (producer, sequence) are merged.
        var violations = c.violations
        var samples: [String] = []
        var seenPerQueue: [String: [UInt16: SequenceSet]] = [:]
        for (index, (channel, handler)) in consumerConnections.enumerated() {
            let check = try await channel.eventLoop.submit { handler.value.check }.get()
            samples += check.samples.map { "consumer \(index): \($0)" }
            let queue = queueName(index % queues)
            for (producer, set) in check.seen {
                let common = seenPerQueue[queue, default: [:]][producer, default: SequenceSet()].merge(set)
                if common > 0 {
                    violations += UInt64(common)
                    samples.append("queue \(queue): \(common) message(s) of producer \(producer) delivered to two consumers without the redelivered flag")
                }
            }
        }
        for sample in samples.prefix(20) { FileHandle.standardError.write(Data("brokerbench: violation: \(sample)\n".utf8)) }
        for (channel, handler) in all {
            try? await channel.eventLoop.submit { handler.value.close() }.get()
        }
        for (channel, _) in all { _ = try? await channel.closeFuture.get() }
        if !keep { try? await tearDownTopology(client) }

        let publishSeconds = producers > 0 ? Double(publishEnd - start) / 1e9 : 0
        let consumeSeconds: Double
        let consumedCounted: UInt64
        if producers > 0 {
            consumeSeconds = publishSeconds
            consumedCounted = consumedInWindow
        } else {
            consumeSeconds = c.lastConsumedNanos > start ? Double(c.lastConsumedNanos - start) / 1e9 : 0
            consumedCounted = c.consumed
        }
        let drainSeconds = producers > 0 && consumers > 0 && c.lastConsumedNanos > publishEnd ? Double(c.lastConsumedNanos - publishEnd) / 1e9 : 0
        let failed = p.failure != nil || c.failure != nil || violations > 0
        return Report(
            label: label, size: size, producers: producers, consumers: consumers, queues: queues, fanout: isFanout, durable: durable,
            persistent: persistent, confirm: confirm, prefetch: prefetch, ackEvery: ackEvery, rateTarget: rate,
            publishSeconds: publishSeconds, published: p.sent, confirmed: p.confirmed, nacked: p.nacked, consumeSeconds: consumeSeconds,
            consumedInWindow: consumedCounted, consumedTotal: c.consumed, drainSeconds: drainSeconds, e2e: e2e, confirms: confirms,
            wallSeconds: Double(end - start) / 1e9, redelivered: c.redelivered, violations: violations,
            blockedCount: p.blockedCount, blockedSeconds: Double(p.blockedNanos) / 1e9, failed: failed)
    }

    private func open(_ role: Role, group: MultiThreadedEventLoopGroup) async throws -> (any Channel, NIOLoopBound<BenchConnection>) {
        let loop = group.next()
        let ready = loop.makePromise(of: Void.self)
        let user = self.user
        let password = self.password
        let channel = try await ClientBootstrap(group: loop)
            .channelOption(.socketOption(.tcp_nodelay), value: 1)
            .channelOption(.recvAllocator, value: AdaptiveRecvByteBufferAllocator(minimum: 4096, initial: 65536, maximum: 262_144))
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(BenchConnection(role: role, user: user, password: password, ready: ready))
                }
            }
            .connect(host: host, port: port).get()
        try await ready.futureResult.get()
        let handler = try await loop.submit {
            NIOLoopBound(try channel.pipeline.syncOperations.handler(type: BenchConnection.self), eventLoop: loop)
        }.get()
        return (channel, handler)
    }

    private static func sum(_ connections: [(any Channel, NIOLoopBound<BenchConnection>)]) async throws -> Counters {
        var total = Counters()
        total.done = !connections.isEmpty
        for (channel, handler) in connections {
            let c = try await channel.eventLoop.submit { handler.value.counters }.get()
            total.sent += c.sent
            total.confirmed += c.confirmed
            total.nacked += c.nacked
            total.consumed += c.consumed
            total.redelivered += c.redelivered
            total.violations += c.violations
            total.blockedCount += c.blockedCount
            total.blockedNanos += c.blockedNanos
            total.lastConsumedNanos = max(total.lastConsumedNanos, c.lastConsumedNanos)
            total.done = total.done && c.done
            total.failure = total.failure ?? c.failure
        }
        return total
    }

    private func setUpTopology(_ configuration: ClientConfiguration) async throws {
        let connection = try await BrokerConnection.connect(configuration)
        do {
            if isFanout { try await connection.declareExchange(exchangeName, type: .fanout, durable: durable) }
            for i in 0..<queues {
                try await connection.declareQueue(queueName(i), durable: durable)
                if isFanout { try await connection.bind(queue: queueName(i), exchange: exchangeName) }
                if producers > 0 && !noPurge { try await connection.purgeQueue(queueName(i)) }
            }
        } catch {
            await connection.close()
            throw error
        }
        await connection.close()
    }

    private func tearDownTopology(_ configuration: ClientConfiguration) async throws {
        let connection = try await BrokerConnection.connect(configuration)
        for i in 0..<queues { _ = try? await connection.deleteQueue(queueName(i)) }
        if isFanout { try? await connection.deleteExchange(exchangeName) }
        await connection.close()
    }
}
