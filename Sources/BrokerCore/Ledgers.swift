import DequeModule

/// A session's publisher confirms: sequence numbers, the coalesced `multiple` ack waiting for the next flush, and
/// the publishes still waiting for their log batch to be durable. A value type with no broker in it, so its rules
/// are tested as sequences of events (BrokerCoreTests/LedgerTests): nothing is acked before it is durable, acks
/// coalesce, a nack is never overtaken by an ack that would cover it, a failed log write nacks its batch.
struct ConfirmLedger {
    /// The sequence number of the last publish (the first is 1).
    private(set) var lastSequence: UInt64 = 0
    /// Highest sequence number to confirm with a coalesced `multiple` ack at the next flush (0: none).
    private(set) var pendingAck: UInt64 = 0
    /// Highest sequence number confirmed (acked or nacked) so far.
    private(set) var confirmedThrough: UInt64 = 0
    /// Persistent publishes whose log batch is not yet durable: per batch, the first sequence number in it. Nothing
    /// from the first of them on may be confirmed yet.
    private var awaitingLog = Deque<(batch: UInt64, firstSequence: UInt64)>()

    /// Whether a publish still waits for the log before its confirm can be sent.
    var awaitsLog: Bool { !awaitingLog.isEmpty }

    /// A publish arrived: it takes the next sequence number.
    mutating func published() { lastSequence &+= 1 }

    /// The last publish was taken; `batch` is the log batch it waits for (nil: it needs none). Returns whether a
    /// new ack became pending (the session then has output to flush).
    mutating func accepted(waitingFor batch: UInt64?) -> Bool {
        if let batch, awaitingLog.last?.batch != batch { awaitingLog.append((batch, lastSequence)) }
        return updatePendingAck()
    }

    /// Everything before the first publish still waiting for the log may be confirmed.
    private mutating func updatePendingAck() -> Bool {
        let confirmable = awaitingLog.first.map { $0.firstSequence - 1 } ?? lastSequence
        guard confirmable > confirmedThrough && confirmable > pendingAck else { return false }
        pendingAck = confirmable
        return true
    }

    /// The ack to write now (`multiple` up to it), if one is pending; everything up to it is then confirmed.
    mutating func takeAck() -> UInt64? {
        guard pendingAck != 0 else { return nil }
        let ack = pendingAck
        confirmedThrough = ack
        pendingAck = 0
        return ack
    }

    /// What a finished log batch releases.
    enum BatchOutcome: Equatable {
        /// Nothing of this session's waited for it.
        case none
        /// Acks became pending (or nothing new, but the batch was this session's): flush.
        case released
        /// The write failed: write `ackFirst` (if any), then a `multiple` nack through `through`.
        case nack(ackFirst: UInt64?, through: UInt64)
    }

    /// A log batch is durable (or failed): releases the confirms that waited for it. A failed write nacks every
    /// publish from the first one in the failed batch up to the next batch still pending.
    mutating func batchFinished(_ batch: UInt64, failed: Bool) -> BatchOutcome {
        guard let first = awaitingLog.first, first.batch <= batch else { return .none }
        while let entry = awaitingLog.first, entry.batch <= batch { awaitingLog.removeFirst() }
        guard failed else {
            _ = updatePendingAck()
            return .released
        }
        let ack = takeAck()
        let through = awaitingLog.first.map { $0.firstSequence - 1 } ?? lastSequence
        confirmedThrough = through
        return .nack(ackFirst: ack, through: through)
    }
}

/// A session's deliveries not yet settled, in delivery-tag order (tags only grow), so a single tag is found by
/// binary search and `multiple` settles a prefix. Settled entries stay as tombstones until the head is settled,
/// which keeps settling out of order O(log n). A value type (BrokerCoreTests/LedgerTests).
struct UnackedLedger {
    private var entries = Deque<UnackedDelivery>()
    /// Deliveries not yet settled.
    private(set) var count = 0

    mutating func append(_ delivery: UnackedDelivery) {
        entries.append(delivery)
        count += 1
    }

    /// Settles `tag` (or, with `multiple`, every outstanding delivery up to it; 0 means all) and returns what was
    /// settled, in tag order. nil when nothing matched: an unknown or already settled tag, or a `multiple` up to a
    /// tag (other than 0) with nothing outstanding before it.
    mutating func settle(_ tag: UInt64, multiple: Bool) -> [UnackedDelivery]? {
        var settled: [UnackedDelivery] = []
        if multiple {
            let upTo = tag == 0 ? UInt64.max : tag
            var index = 0
            while index < entries.count && entries[index].tag <= upTo {
                if !entries[index].settled { settled.append(release(index)) }
                index += 1
            }
            if settled.isEmpty && tag != 0 { return nil }
        } else {
            guard let index = index(of: tag) else { return nil }
            settled.append(release(index))
        }
        while let first = entries.first, first.settled { entries.removeFirst() }
        return settled
    }

    /// Every outstanding delivery, removed (the session is closing).
    mutating func removeAll() -> [UnackedDelivery] {
        let outstanding = Array(entries.filter { !$0.settled })
        entries.removeAll()
        count = 0
        return outstanding
    }

    private mutating func release(_ index: Int) -> UnackedDelivery {
        let entry = entries[index]
        entries[index].settled = true
        entries[index].message = nil
        count -= 1
        return entry
    }

    private func index(of tag: UInt64) -> Int? {
        var low = 0
        var high = entries.count - 1
        while low <= high {
            let mid = (low + high) / 2
            let midTag = entries[mid].tag
            if midTag == tag { return entries[mid].settled ? nil : mid }
            if midTag < tag { low = mid + 1 } else { high = mid - 1 }
        }
        return nil
    }
}
