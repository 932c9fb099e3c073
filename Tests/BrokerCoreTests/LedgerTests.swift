@testable import BrokerCore
import NIOCore
import Testing
import WireProtocol

/// The value types a session keeps its confirms and unacknowledged deliveries in, and dead-lettering's rules, as
/// sequences of events without a broker loop (issue 16, part 1).
@Suite("Confirm and unacked ledgers, dead-lettering")
struct LedgerTests {
    @Test("confirms: transient publishes ack at once, coalesced; persistent ones wait for their batch, in order")
    func confirms() {
        var ledger = ConfirmLedger()
        ledger.published()
        ledger.published()
        let r1 = ledger.accepted(waitingFor: nil)
        #expect(r1)  // 1 and 2 may be acked
        let r2 = ledger.takeAck()
        #expect(r2 == 2)
        let r3 = ledger.takeAck()
        #expect(r3 == nil)
        ledger.published()  // 3, persistent, batch 7
        let r4 = ledger.accepted(waitingFor: 7)
        #expect(!r4)
        ledger.published()  // 4, transient: still behind 3
        let r5 = ledger.accepted(waitingFor: nil)
        #expect(!r5)
        ledger.published()  // 5, persistent, batch 8
        let r6 = ledger.accepted(waitingFor: 8)
        #expect(!r6)
        let r7 = ledger.takeAck()
        #expect(ledger.awaitsLog && r7 == nil)
        let r8 = ledger.batchFinished(6, failed: false)
        #expect(r8 == .none)  // not ours
        let r9 = ledger.batchFinished(7, failed: false)
        #expect(r9 == .released)
        let r10 = ledger.takeAck()
        #expect(r10 == 4)  // 3 and 4; 5 still waits for batch 8
        let r11 = ledger.batchFinished(8, failed: false)
        #expect(r11 == .released)
        let r12 = ledger.takeAck()
        #expect(r12 == 5 && !ledger.awaitsLog)
    }

    @Test("confirms: a failed log write acks what was durable first, then nacks its batch up to the next one pending")
    func failedWrite() {
        var ledger = ConfirmLedger()
        ledger.published()
        _ = ledger.accepted(waitingFor: nil)  // 1: pending ack, not yet written
        ledger.published()
        _ = ledger.accepted(waitingFor: 3)  // 2 in batch 3
        ledger.published()
        _ = ledger.accepted(waitingFor: 3)  // 3 in batch 3
        ledger.published()
        _ = ledger.accepted(waitingFor: 4)  // 4 in batch 4
        let r13 = ledger.batchFinished(3, failed: true)
        #expect(r13 == .nack(ackFirst: 1, through: 3))
        let r14 = ledger.takeAck()
        #expect(ledger.confirmedThrough == 3 && r14 == nil)
        let r15 = ledger.batchFinished(4, failed: false)
        #expect(r15 == .released)
        let r16 = ledger.takeAck()
        #expect(r16 == 4)
    }

    static func delivery(_ tag: UInt64, _ queue: Queue) -> UnackedDelivery {
        UnackedDelivery(tag: tag, queue: queue, consumer: nil,
                        message: QueuedMessage(envelope: MessageEnvelope(exchange: "", routingKey: "q", body: ByteBuffer(string: "\(tag)"))))
    }

    @Test("unacked: single tags found out of order, multiple settles a prefix, unknown and repeated tags refused")
    func unacked() {
        let broker = Broker(users: UserStore())
        let queue = Queue(name: "q", durable: false, autoDelete: false, exclusiveOwner: nil, broker: broker)
        var ledger = UnackedLedger()
        for tag in 1...6 { ledger.append(Self.delivery(UInt64(tag), queue)) }
        #expect(ledger.count == 6)
        let r17 = ledger.settle(4, multiple: false)
        #expect(r17?.map(\.tag) == [4])
        let r18 = ledger.settle(4, multiple: false)
        #expect(r18 == nil, "settled twice")
        let r19 = ledger.settle(99, multiple: false)
        #expect(r19 == nil, "never delivered")
        let r20 = ledger.settle(5, multiple: true)
        #expect(r20?.map(\.tag) == [1, 2, 3, 5], "the prefix, skipping the settled 4")
        let r21 = ledger.settle(5, multiple: true)
        #expect(r21 == nil, "nothing outstanding up to 5")
        #expect(ledger.count == 1)
        let r22 = ledger.settle(0, multiple: true)
        #expect(r22?.map(\.tag) == [6], "0 with multiple: everything")
        let r23 = ledger.settle(0, multiple: true)
        #expect(r23?.isEmpty == true, "0 with multiple and nothing left is not an error")
        ledger.append(Self.delivery(7, queue))
        let r24 = ledger.settle(7, multiple: false)
        #expect(r24?.first?.message != nil, "what was settled carries its message")
        ledger.append(Self.delivery(8, queue))
        ledger.append(Self.delivery(9, queue))
        let r25 = ledger.removeAll()
        #expect(r25.map(\.tag) == [8, 9] && ledger.count == 0)
    }

    @Test("dead-lettering: x-death entries, first-death headers, TTL removed, automatic cycles dropped, rejection cycles kept")
    func deadLettering() throws {
        let original = MessageProperties(messageId: "m", expiration: 5000, headers: ["app": .string("x")])
        let first = try #require(DeadLettering.properties(of: original, dyingIn: "work", reason: "expired", exchange: "ride", routingKey: "k", at: 100))
        #expect(first.expiration == nil && first.messageId == "m" && first.headers?["app"] == .string("x"))
        #expect(first.headers?["x-first-death-reason"] == .string("expired") && first.headers?["x-first-death-queue"] == .string("work"))
        #expect(first.headers?["x-death"] == .array([.table([
            "queue": .string("work"), "reason": .string("expired"), "count": .int(1), "time": .int(100),
            "exchange": .string("ride"), "routing-keys": .array([.string("k")]),
        ])]))
        let second = try #require(DeadLettering.properties(of: first, dyingIn: "retry", reason: "expired", exchange: "dlx", routingKey: "k", at: 200))
        guard case .array(let deaths)? = second.headers?["x-death"] else { Issue.record("no x-death"); return }
        #expect(deaths.count == 2)
        #expect(second.headers?["x-first-death-queue"] == .string("work"), "the first death is kept")
        // Expired again in `work` with no consumer in the cycle: dropped.
        #expect(DeadLettering.properties(of: second, dyingIn: "work", reason: "expired", exchange: "ride", routingKey: "k", at: 300) == nil)
        // A rejection in the cycle keeps it going, and counts.
        let rejected = try #require(DeadLettering.properties(of: original, dyingIn: "work", reason: "rejected", exchange: "", routingKey: "k", at: 1))
        let again = try #require(DeadLettering.properties(of: rejected, dyingIn: "work", reason: "rejected", exchange: "", routingKey: "k", at: 2))
        guard case .array(let entries)? = again.headers?["x-death"], case .table(let entry) = entries[0] else { Issue.record("no x-death"); return }
        #expect(entries.count == 1 && entry["count"] == .int(2) && entry["time"] == .int(2))
    }
}
