public import Logging
public import WireProtocol
import BrokerStorage
import Foundation
import NIOCore

// Routing a publish to its queues, with the per-session route cache.
extension Broker {
    // MARK: - Routing

    enum RouteOutcome {
        /// Routed; `logged` when the message went into the log and its confirm must wait for the write.
        case routed(logged: Bool)
        /// A queue at its length limit with `reject-publish` refused it (others may have taken it).
        case rejected(BrokerError)
        case unroutable
        case failed(BrokerError)
    }

    /// A session's last route: valid while the topology version is unchanged. On a hit a publish costs no string,
    /// no UTF-8 check, no dictionary lookup and no topic match: its names are compared byte for byte.
    struct RouteCache {
        var names: [UInt8]
        var version: UInt64
        var queues: [Queue]
        /// The exchange's contract: nil (the common case) costs one check per publish.
        var contract: ContractState?
    }

    /// Routes a publish. Permission to write to the exchange is checked when the route is computed: a cache hit
    /// means the same exchange under the same topology (a permission change bumps the topology version).
    func route(_ publish: PublishView, cache: inout RouteCache?, permissions: PermissionChecker? = nil,
               publisher: Session? = nil) -> RouteOutcome {
        let destinations: [Queue]
        let contract: ContractState?
        if let cached = cache, cached.version == topologyVersion, publish.envelope.namesEqual(cached.names) {
            destinations = cached.queues
            contract = cached.contract
        } else {
            let exchangeName: String
            let routingKey: String
            do {
                (exchangeName, routingKey) = try publish.envelope.names()
            } catch {
                return .failed(error)
            }
            guard let exchange = exchanges[exchangeName] else {
                return .failed(BrokerError(.notFound, "no exchange '\(exchangeName)'"))
            }
            if let refusal = permissions?.refusal(.write, "exchange", exchangeName) { return .failed(refusal) }
            var found: [Queue] = []
            if exchangeName.isEmpty {
                if let queue = queues[routingKey] { found.append(queue) }
            } else {
                exchange.route(routingKey) { if !$0.isDeleted { found.append($0) } }  // a deleted queue's bindings may still be leaving
            }
            destinations = found
            contract = exchange.contract
            cache = RouteCache(names: publish.envelope.nameBytes, version: topologyVersion, queues: found, contract: contract)
        }
        // A contract is checked before routing: a refused message reaches no queue (docs/contracts.md). Messages
        // republished by the broker itself (dead letters) pass no publisher and were checked when first published.
        if let contract, publisher != nil, let refusal = checkContract(contract, publish, by: publisher) { return .failed(refusal) }
        guard !destinations.isEmpty else { return .unroutable }
        var message = QueuedMessage(envelope: publish.envelope)
        var refusedBy: Queue?
        guard let store, publish.envelope.isPersistent else {
            for queue in destinations where !queue.enqueue(message) { refusedBy = queue }
            return refusedBy.map { .rejected(Self.full($0)) } ?? .routed(logged: false)
        }
        // A persistent message is written once, whatever the number of durable queues it reaches.
        var durableIds: [UInt32] = []
        for queue in destinations { if let id = queue.durableId { durableIds.append(id) } }
        guard !durableIds.isEmpty else {
            for queue in destinations where !queue.enqueue(message) { refusedBy = queue }
            return refusedBy.map { .rejected(Self.full($0)) } ?? .routed(logged: false)
        }
        let record = store.appendPublish(envelope: publish.envelope.bytes, queues: durableIds)
        for queue in destinations {
            let durable = queue.durableId != nil
            message.logId = durable ? record.id : 0
            message.stored = durable ? record : .none  // only durable queues keep the record alive
            if !queue.enqueue(message) {
                refusedBy = queue
                if let id = queue.durableId { store.appendSettle(id: record.id, queue: id) }
            }
        }
        return refusedBy.map { .rejected(Self.full($0)) } ?? .routed(logged: true)
    }

    static func full(_ queue: Queue) -> BrokerError {
        BrokerError(.resourceError, "queue '\(queue.name)' is full (x-max-length / x-max-length-bytes, x-overflow \(queue.arguments.overflow.rawValue))")
    }
}
