import Histogram
import NIOCore
import WireProtocol

/// What a bench connection does once its handshake is done.
enum Role {
    case producer(ProducerPlan)
    case consumer(ConsumerPlan)
}

struct ProducerPlan {
    var exchange: String
    var routingKey: String
    var size: Int
    var persistent: Bool
    /// At most this many unconfirmed publishes; 0 = confirms off.
    var confirmWindow: Int
    /// Messages to send; 0 = until stopped.
    var count: Int
    /// Messages per second; 0 = as fast as the socket takes them.
    var rate: Double
    /// The id stamped into every body (``BenchBody``): unique per producer of a run.
    var producerId: UInt16
}

struct ConsumerPlan {
    var queue: String
    var prefetch: UInt16
    /// Ack (multiple) every N deliveries; 0 = no-ack consumer.
    var ackEvery: Int
}

/// Counters a connection reports to the orchestrator (read on the connection's event loop).
struct Counters: Sendable {
    var sent: UInt64 = 0
    var confirmed: UInt64 = 0
    var nacked: UInt64 = 0
    var consumed: UInt64 = 0
    /// Deliveries flagged redelivered, and deliveries that broke a rule of ``DeliveryCheck``.
    var redelivered: UInt64 = 0
    var violations: UInt64 = 0
    /// Times the broker blocked this producer (`connectionBlocked`), and for how long in all.
    var blockedCount: UInt64 = 0
    var blockedNanos: UInt64 = 0
    var lastConsumedNanos: UInt64 = 0
    var done = false
    var failure: String?
}

/// One load-generating connection, written straight on SwiftNIO and WireProtocol so the load generator costs as
/// little CPU per message as the broker: publishes are encoded in batches into one buffer per write, deliveries
/// are parsed in place, acks are coalesced per read.
final class BenchConnection: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    let role: Role
    let user: String
    let password: String
    private(set) var counters = Counters()
    private var reader = FrameReader(decoder: FrameDecoder(maxFrameSize: 1 << 26, expectsMagic: false))
    private var context: ChannelHandlerContext?
    let ready: EventLoopPromise<Void>
    private var isReady = false
    private var started = false
    private var stopped = false

    // Producer state.
    private var startNanos: UInt64 = 0
    private var sentAt: [UInt64] = []
    private var ringMask = 0
    private var confirmedUpTo: UInt64 = 0
    private var settled: [Bool] = []
    private var pumpScheduled = false
    private var template = ByteBuffer()
    private var fillerCRC: UInt32 = 0
    /// Set between `connectionBlocked` and `connectionUnblocked`: nothing is published meanwhile (protocol §9.3).
    private var blockedSince: UInt64?
    var confirmLatency = Histogram<UInt64>(highestTrackableValue: 60_000_000, numberOfSignificantValueDigits: .three)

    // Consumer state.
    private var unacked = 0
    private var lastDeliveryTag: UInt64 = 0
    private var pendingOut: ByteBuffer?
    var e2eLatency = Histogram<UInt64>(highestTrackableValue: 60_000_000, numberOfSignificantValueDigits: .three)
    private var idleAckTask: RepeatedTask?
    private var idleLastSeen: UInt64 = 0
    /// Every delivery is checked (tag, body, order, duplicates).
    private(set) var check = DeliveryCheck()
    private var closeRequested = false

    init(role: Role, user: String, password: String, ready: EventLoopPromise<Void>) {
        self.role = role
        self.user = user
        self.password = password
        self.ready = ready
    }

    static func nowNanos() -> UInt64 { NIODeadline.now().uptimeNanoseconds }

    // MARK: - Handshake

    func channelActive(context: ChannelHandlerContext) {
        self.context = context
        var buffer = context.channel.allocator.buffer(capacity: 256)
        buffer.writeBytes(protocolMagic)
        ClientMessage.hello(Hello(clientName: "brokerbench")).encode(into: &buffer)
        ClientMessage.authenticate(Authenticate(user: user, password: password)).encode(into: &buffer)
        switch role {
        case .producer(let plan):
            if plan.confirmWindow > 0 { ClientMessage.confirmSelect(requestId: 1).encode(into: &buffer) }
        case .consumer(let plan):
            ClientMessage.consume(Consume(requestId: 1, queue: plan.queue, noAck: plan.ackEvery == 0, prefetch: plan.prefetch))
                .encode(into: &buffer)
        }
        context.writeAndFlush(wrapOutboundOut(buffer), promise: nil)
        context.fireChannelActive()
    }

    func channelInactive(context: ChannelHandlerContext) {
        if !stopped && !closeRequested && counters.failure == nil { counters.failure = "connection closed by the broker" }
        counters.done = true
        idleAckTask?.cancel()
        ready.fail(BrokerError(.connectionClosed, counters.failure ?? "closed"))
        self.context = nil
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        counters.failure = "\(error)"
        context.close(promise: nil)
    }

    private func markReady() {
        guard !isReady else { return }
        isReady = true
        ready.succeed()
    }

    // MARK: - Reading

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        reader.append(unwrapInboundIn(data))
        do {
            while let frame = try reader.next() {
                if frame.type == FrameType.deliver.rawValue {
                    consumeDelivery(frame.payload)
                } else {
                    try handleControl(ServerMessage.decode(frame))
                }
            }
        } catch {
            counters.failure = "\(error)"
            context.close(promise: nil)
        }
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        if let out = pendingOut {
            pendingOut = nil
            context.writeAndFlush(wrapOutboundOut(out), promise: nil)
        }
    }

    private func handleControl(_ message: ServerMessage) throws {
        switch message {
        case .helloOk, .heartbeat:
            break
        case .authOk:
            if case .producer(let plan) = role, plan.confirmWindow > 0 { return }  // wait for confirmSelect's ok
            if case .consumer = role { return }  // wait for consumeOk
            markReady()
        case .consumeOk(let ok):
            check.consumerTag = ok.consumerTag
            markReady()
        case .ok:
            markReady()
        case .connectionBlocked:
            // Stop publishing until unblocked: what is in flight the broker reads later, in order (protocol §9.3).
            if blockedSince == nil {
                blockedSince = Self.nowNanos()
                counters.blockedCount += 1
            }
        case .connectionUnblocked:
            if let since = blockedSince {
                counters.blockedNanos += Self.nowNanos() - since
                blockedSince = nil
            }
            pump()
        case .closeOk:
            context?.close(promise: nil)
        case .confirmAck(let confirm):
            settle(confirm, nack: false)
        case .confirmNack(let confirm):
            settle(confirm, nack: true)
        case .close(let close):
            if !closeRequested { counters.failure = "broker closed the connection: \(close.code) \(close.reason)" }
            context?.close(promise: nil)
        case .error(let error):
            counters.failure = "broker error: \(error.error)"
        case .consumerCancelled(let cancelled):
            counters.failure = "consumer cancelled: \(cancelled.reason)"
        default:
            break
        }
    }

    // MARK: - Consumer

    /// Parses a `deliver` payload in place (consumer tag, delivery tag, flags; skip exchange, key and properties)
    /// and checks the body (``DeliveryCheck``). One pass over the raw bytes, bounds-checked.
    private func consumeDelivery(_ payload: ByteBuffer) {
        guard case .consumer(let plan) = role else { return }
        let parsed: (tag: UInt64, sent: UInt64?)? = payload.withUnsafeReadableBytes { raw in
            guard raw.count >= 14 else { return nil }
            let consumerTag = UInt32(bigEndian: raw.loadUnaligned(fromByteOffset: 0, as: UInt32.self))
            let tag = UInt64(bigEndian: raw.loadUnaligned(fromByteOffset: 4, as: UInt64.self))
            let redelivered = raw[12] & 1 != 0
            var offset = 13
            offset += 1 + Int(raw[offset])  // exchange
            guard offset < raw.count else { return nil }
            offset += 1 + Int(raw[offset])  // routing key
            guard offset + 2 <= raw.count else { return nil }
            offset += 2 + Int(UInt16(bigEndian: raw.loadUnaligned(fromByteOffset: offset, as: UInt16.self)))  // properties
            guard offset <= raw.count else { return nil }
            let sent = self.check.check(consumerTag: consumerTag, deliveryTag: tag, redelivered: redelivered,
                                   body: UnsafeRawBufferPointer(rebasing: raw[offset...]))
            return (tag, sent)
        }
        guard let parsed else {
            self.check.violation("a deliver frame too short to parse (\(payload.readableBytes) bytes)")
            counters.violations = self.check.violations
            return
        }
        counters.redelivered = self.check.redelivered
        counters.violations = self.check.violations
        let now = Self.nowNanos()
        if let sent = parsed.sent, now >= sent { _ = e2eLatency.record((now - sent) / 1000) }
        counters.consumed += 1
        counters.lastConsumedNanos = now
        if plan.ackEvery > 0 {
            lastDeliveryTag = parsed.tag
            unacked += 1
            if unacked >= plan.ackEvery { queueAck() }
        }
    }

    private func queueAck() {
        guard let context, unacked > 0 else { return }
        if pendingOut == nil { pendingOut = context.channel.allocator.buffer(capacity: 64) }
        ClientMessage.ack(Settle(deliveryTag: lastDeliveryTag, multiple: true)).encode(into: &pendingOut!)  // set just above
        unacked = 0
    }

    /// Acks a partial batch when deliveries pause, so the broker keeps sending (like amqp_bench's idle flush).
    func startIdleAcks() {
        guard case .consumer(let plan) = role, plan.ackEvery > 0, let context else { return }
        let bound = NIOLoopBound(self, eventLoop: context.eventLoop)
        idleAckTask = context.eventLoop.scheduleRepeatedTask(initialDelay: .milliseconds(100), delay: .milliseconds(100)) { _ in
            let handler = bound.value
            if handler.counters.consumed == handler.idleLastSeen, handler.unacked > 0, let context = handler.context {
                handler.queueAck()
                if let out = handler.pendingOut {
                    handler.pendingOut = nil
                    context.writeAndFlush(handler.wrapOutboundOut(out), promise: nil)
                }
            }
            handler.idleLastSeen = handler.counters.consumed
        }
    }

    // MARK: - Producer

    func start(atNanos start: UInt64) {
        guard !started else { return }
        started = true
        startNanos = start
        guard case .producer(let plan) = role else {
            startIdleAcks()
            return
        }
        if plan.confirmWindow > 0 {
            var ring = 1
            while ring < plan.confirmWindow + 1 { ring <<= 1 }
            sentAt = Array(repeating: 0, count: ring)
            settled = Array(repeating: false, count: ring)
            ringMask = ring - 1
        }
        // Everything of a publish frame but the timestamp and sequence number, which are patched per message.
        var t = ByteBuffer()
        let frameStart = t.beginFrame(.publish)
        t.writeInteger(UInt8(0))
        t.writeShortString(plan.exchange)
        t.writeShortString(plan.routingKey)
        t.writeRawProperties(plan.persistent ? RawProperties(MessageProperties(persistent: true)) : .empty)
        t.writeRepeatingByte(0, count: BenchBody.headerSize)
        t.writeRepeatingByte(UInt8(ascii: "x"), count: plan.size - BenchBody.headerSize)
        t.endFrame(at: frameStart)
        template = t
        fillerCRC = t.withUnsafeReadableBytes { BenchBody.fillerCRC(UnsafeRawBufferPointer(rebasing: $0[($0.count - plan.size + BenchBody.headerSize)...])) }
        pump()
    }

    func stop() {
        stopped = true
        counters.done = true
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        if context.channel.isWritable { pump() }
    }

    /// Sends as many publishes as the window, the rate, the count and the socket allow, as one write; then yields
    /// to the event loop so confirms and deliveries are read between batches.
    private func pump() {
        guard case .producer(let plan) = role, started, !stopped, blockedSince == nil, let context, context.channel.isWritable else { return }
        let now = Self.nowNanos()
        var allowed = min(4096, max(16, 262_144 / template.readableBytes))
        if plan.count > 0 { allowed = min(allowed, plan.count - Int(counters.sent)) }
        if plan.confirmWindow > 0 { allowed = min(allowed, plan.confirmWindow - Int(counters.sent - confirmedUpTo)) }
        if plan.rate > 0 {
            let due = Int(Double(now - startNanos) / 1e9 * plan.rate) + 1
            allowed = min(allowed, due - Int(counters.sent))
        }
        if plan.count > 0 && Int(counters.sent) >= plan.count {
            counters.done = true
            return
        }
        if allowed <= 0 {
            if plan.rate > 0 && (plan.confirmWindow == 0 || Int(counters.sent - confirmedUpTo) < plan.confirmWindow) {
                schedulePump(in: .microseconds(Int64(1e6 / plan.rate) + 1))
            }
            return  // otherwise a confirm will call pump again
        }
        let frameSize = template.readableBytes
        var buffer = context.channel.allocator.buffer(capacity: frameSize * allowed)
        let bodyOffset = frameSize - plan.size
        let firstSequence = counters.sent
        // Copy the template once per message and stamp its header (time, producer, sequence, check) in place.
        let fillerCRC = self.fillerCRC
        template.withUnsafeReadableBytes { frame in
            _ = buffer.writeWithUnsafeMutableBytes(minimumWritableBytes: frameSize * allowed) { out in
                for k in 0..<allowed {
                    let base = k * frameSize
                    UnsafeMutableRawBufferPointer(rebasing: out[base..<(base + frameSize)]).copyMemory(from: frame)
                    BenchBody.stamp(UnsafeMutableRawBufferPointer(rebasing: out[(base + bodyOffset)..<(base + frameSize)]), sentAt: now,
                                    producer: plan.producerId, sequence: UInt32(truncatingIfNeeded: firstSequence + UInt64(k)),
                                    fillerCRC: fillerCRC)
                }
                return frameSize * allowed
            }
        }
        counters.sent += UInt64(allowed)
        if plan.confirmWindow > 0 {
            for sequence in (firstSequence + 1)...counters.sent {
                let slot = Int(sequence) & ringMask
                sentAt[slot] = now
                settled[slot] = false
            }
        }
        context.writeAndFlush(wrapOutboundOut(buffer), promise: nil)
        schedulePump(in: nil)
    }

    private func schedulePump(in delay: TimeAmount?) {
        guard !pumpScheduled, let context else { return }
        pumpScheduled = true
        let bound = NIOLoopBound(self, eventLoop: context.eventLoop)
        let task: @Sendable () -> Void = {
            let handler = bound.value
            handler.pumpScheduled = false
            handler.pump()
        }
        if let delay {
            _ = context.eventLoop.scheduleTask(in: delay, task)
        } else {
            context.eventLoop.execute(task)
        }
    }

    private func settle(_ confirm: Confirm, nack: Bool) {
        let now = Self.nowNanos()
        func record(_ sequence: UInt64) {
            let slot = Int(sequence) & ringMask
            guard !settled[slot] else { return }
            settled[slot] = true
            _ = confirmLatency.record(now >= sentAt[slot] ? (now - sentAt[slot]) / 1000 : 0)
            counters.confirmed += 1
            if nack { counters.nacked += 1 }
        }
        if confirm.multiple {
            var sequence = confirmedUpTo + 1
            while sequence <= confirm.sequence {
                record(sequence)
                sequence += 1
            }
        } else if confirm.sequence > confirmedUpTo {
            record(confirm.sequence)
        }
        while confirmedUpTo < counters.sent && settled[Int(confirmedUpTo + 1) & ringMask] {
            confirmedUpTo += 1
        }
        pump()
    }

    var outstandingConfirms: UInt64 { counters.sent - confirmedUpTo }

    func close() {
        stopped = true
        if case .consumer = role, unacked > 0 { queueAck() }
        guard let context else { return }
        if let out = pendingOut {
            pendingOut = nil
            context.write(wrapOutboundOut(out), promise: nil)
        }
        if let since = blockedSince {
            counters.blockedNanos += Self.nowNanos() - since
            blockedSince = nil
        }
        // Close politely and wait for closeOk: the broker sends it after confirming everything before the close
        // (protocol §7), so nothing in flight is cut off. A broker that never answers is left after 30 s.
        closeRequested = true
        var buffer = context.channel.allocator.buffer(capacity: 64)
        ClientMessage.close(Close(code: .normal, reason: "brokerbench done")).encode(into: &buffer)
        let channel = context.channel
        context.writeAndFlush(wrapOutboundOut(buffer), promise: nil)
        channel.eventLoop.scheduleTask(in: .seconds(30)) { channel.close(promise: nil) }
    }
}

@available(*, unavailable)
extension BenchConnection: Sendable {}
