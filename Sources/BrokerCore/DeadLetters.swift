public import Logging
public import WireProtocol
import BrokerStorage
import Foundation
import NIOCore

// Messages leaving their queues for good (dead-lettering) and the periodic expiry sweep.
extension Broker {
    // MARK: - Dead letters, expiry

    /// A message leaves `queue` for good (expired, dropped for length, rejected, past its delivery limit): the log
    /// records that, and when the queue has a dead-letter exchange the message is republished there with an
    /// `x-death` header saying where it died and why.
    func deadLetter(_ message: QueuedMessage, from queue: Queue, reason: String) {
        if message.logId != 0, let store, let id = queue.durableId { store.appendSettle(id: message.logId, queue: id) }
        guard let exchangeName = queue.arguments.deadLetterExchange, !queue.isDeleted || reason == "rejected" else { return }
        guard let (originalExchange, originalKey) = try? message.envelope.names(),
              let decoded = try? message.envelope.properties.decode(),
              let properties = DeadLettering.properties(of: decoded, dyingIn: queue.name, reason: reason, exchange: originalExchange,
                                                        routingKey: originalKey, at: Int64(wallClock() / 1000)) else { return }
        guard let raw = try? RawProperties(validating: properties) else { return }
        let envelope = MessageEnvelope(exchange: exchangeName, routingKey: queue.arguments.deadLetterRoutingKey ?? originalKey,
                                       properties: raw, body: message.envelope.body)
        var cache: RouteCache?
        if case .failed(let error) = route(PublishView(mandatory: false, envelope: envelope), cache: &cache) {
            logger.debug("dead letter dropped", metadata: ["queue": "\(queue.name)", "error": "\(error)"])
        }
    }

    /// Periodic work (the server runs it every 100 ms): expired messages leave their queues without waiting for a
    /// consumer, and queues unused for their `x-expires` are deleted.
    public func sweep() {
        checkMemory()
        sampleRates()
        let time = now()
        for queue in Array(queues.values) where !queue.isDeleted {
            if queue.arguments.messageTTL != nil || queue.messagesWithOwnExpiry > 0 { queue.expireAll(now: time) }
            if let expires = queue.arguments.expires, queue.consumers.isEmpty, time &- queue.lastUsed > UInt64(0).saturatingAdd(milliseconds: expires) {
                removeQueue(queue, reason: "queue unused for its x-expires of \(expires) ms")
            }
        }
        flush()
    }
}

/// What a dead-lettered message carries when it is republished: a pure function of its properties and its death,
/// so every rule (the `x-death` entries, the first-death headers, cycle detection, TTL removal) is tested without
/// a broker (BrokerCoreTests/DeadLetteringTests).
enum DeadLettering {
    /// The republished message's properties, or nil when it must be dropped instead: a second automatic death in
    /// the same queue is a cycle with no consumer in it. As in RabbitMQ, a cycle that a rejection is part of goes
    /// on (a consumer chose to send the message round: the retry-later pattern of a work queue dead-lettering into
    /// a TTL queue that dead-letters back). `time` is seconds since the Unix epoch.
    static func properties(of original: MessageProperties, dyingIn queue: String, reason: String, exchange: String,
                           routingKey: String, at time: Int64) -> MessageProperties? {
        var properties = original
        var headers = properties.headers ?? [:]
        var deaths: [FieldValue] = []
        if case .array(let existing)? = headers["x-death"] { deaths = existing }
        if let index = deaths.firstIndex(where: {
            guard case .table(let t) = $0 else { return false }
            return t["queue"] == .string(queue) && t["reason"] == .string(reason)
        }) {
            let consumerInCycle = deaths.contains { if case .table(let t) = $0 { t["reason"] == .string("rejected") } else { false } }
            if reason != "rejected" && !consumerInCycle { return nil }
            if case .table(var entry) = deaths[index] {
                entry["count"] = .int((entry["count"]?.intValue ?? 1) + 1)
                entry["time"] = .int(time)
                deaths.remove(at: index)
                deaths.insert(.table(entry), at: 0)
            }
        } else {
            deaths.insert(.table([
                "queue": .string(queue), "reason": .string(reason), "count": .int(1), "time": .int(time),
                "exchange": .string(exchange), "routing-keys": .array([.string(routingKey)]),
            ]), at: 0)
        }
        headers["x-death"] = .array(deaths)
        if headers["x-first-death-reason"] == nil {
            headers["x-first-death-reason"] = .string(reason)
            headers["x-first-death-queue"] = .string(queue)
            headers["x-first-death-exchange"] = .string(exchange)
        }
        properties.headers = headers
        properties.expiration = nil  // it would expire again in the dead-letter queue
        return properties
    }
}
