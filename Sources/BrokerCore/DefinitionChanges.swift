public import BrokerStorage
import Foundation
import Logging
import NIOCore
public import WireProtocol

/// One change to the durable definitions, as the journal records it (``DefinitionsJournal``). Applying the
/// records after the snapshot they follow, in order, gives the definitions as they stood.
public struct DefinitionChange: Codable, Sendable, Equatable {
    public enum Kind: Codable, Sendable, Equatable {
        case putExchange(Definitions.ExchangeDefinition)
        /// The exchange and its bindings.
        case removeExchange(String)
        case putQueue(Definitions.QueueDefinition)
        /// The queue and its bindings.
        case removeQueue(String)
        case putBinding(Definitions.BindingDefinition)
        case removeBinding(Definitions.BindingDefinition)
        /// The whole user list (changes are rare and the list is small).
        case users([User], complete: Bool)
        /// An exchange's message contract, replaced whole.
        case putContract(ExchangeContract)
        case removeContract(String)
    }

    /// Numbers every change; a snapshot records the last one it includes.
    public var sequence: UInt64
    public var kind: Kind

    public init(sequence: UInt64, kind: Kind) {
        self.sequence = sequence
        self.kind = kind
    }
}

extension Definitions {
    /// Applies the journal's records that come after this snapshot.
    public mutating func apply(_ change: DefinitionChange) {
        guard change.sequence > (journalSequence ?? 0) else { return }
        journalSequence = change.sequence
        switch change.kind {
        case .putExchange(let e):
            exchanges.removeAll { $0.name == e.name }
            exchanges.append(e)
        case .removeExchange(let name):
            exchanges.removeAll { $0.name == name }
            bindings.removeAll { $0.exchange == name }
            contracts?.removeAll { $0.exchange == name }
        case .putQueue(let q):
            queues.removeAll { $0.name == q.name }
            queues.append(q)
            nextQueueId = max(nextQueueId, q.id == .max ? .max : q.id + 1)
        case .removeQueue(let name):
            queues.removeAll { $0.name == name }
            bindings.removeAll { $0.queue == name }
        case .putBinding(let b):
            if !bindings.contains(where: { $0.exchange == b.exchange && $0.queue == b.queue && $0.key == b.key }) { bindings.append(b) }
        case .removeBinding(let b):
            bindings.removeAll { $0.exchange == b.exchange && $0.queue == b.queue && $0.key == b.key }
        case .users(let list, let complete):
            users = list
            usersComplete = complete ? true : nil
        case .putContract(let contract):
            contracts = (contracts ?? []).filter { $0.exchange != contract.exchange } + [contract]
        case .removeContract(let name):
            contracts?.removeAll { $0.exchange == name }
        }
    }

    /// Reads the snapshot and replays the journal beside it: what a broker starts from.
    public static func recover(snapshotPath: String, journalPath: String) throws -> (Definitions, DefinitionsJournal, repair: String?) {
        var definitions = try load(from: snapshotPath) ?? Definitions()
        let (journal, records, repair) = try DefinitionsJournal.open(path: journalPath)
        let decoder = JSONDecoder()
        for (index, record) in records.enumerated() {
            do {
                definitions.apply(try decoder.decode(DefinitionChange.self, from: Data(record)))
            } catch {
                throw StorageError("\(journalPath): record \(index + 1) is not a brokerd definition change (\(error)); restore the data directory from a backup")
            }
        }
        return (definitions, journal, repair)
    }
}

// MARK: - Recording changes

extension Broker {
    /// Records a change to the durable definitions: it goes to the journal with this cycle's others at the next
    /// ``flush()``. The session that asked for it (if any) holds its output until the write is durable, so its
    /// answer (and anything after it on that connection) is sent only once the change survives a crash, and
    /// answers keep their order.
    func recordChange(_ kind: DefinitionChange.Kind, by session: Session?) {
        guard definitionsJournal != nil else { return }
        journalSequence += 1
        pendingChanges.append(DefinitionChange(sequence: journalSequence, kind: kind))
        session?.holdOutput(until: openDefinitionsBatch)
    }

    /// Writes this cycle's definition changes (one write, one `fdatasync`), off the loop; compacts the journal
    /// into a new snapshot once it holds more than twice the definitions of the last one (at least 1,024 records).
    func commitDefinitions() {
        writePendingChanges()
        if recordsSinceSnapshot > max(1024, 2 * definitionsAtSnapshot) { compactDefinitions() }
    }

    private func writePendingChanges() {
        guard let journal = definitionsJournal, let eventLoop, !pendingChanges.isEmpty else { return }
        let encoder = JSONEncoder()
        let records = pendingChanges.compactMap { try? [UInt8](encoder.encode($0)) }  // plain Codable structs: encoding cannot fail
        recordsSinceSnapshot += pendingChanges.count
        pendingChanges.removeAll()
        let batch = openDefinitionsBatch
        openDefinitionsBatch &+= 1
        let bound = NIOLoopBound(self, eventLoop: eventLoop)
        journal.append(records) { result in
            eventLoop.execute { bound.value.definitionsBatchFinished(batch, result) }
        }
    }

    /// Writes every definition as a new snapshot and empties the journal (when it has grown, and at shutdown).
    /// The snapshot's value is taken here; its encoding and writing happen off the loop.
    public func compactDefinitions() {
        guard let journal = definitionsJournal, let metadataPath, let eventLoop else { return }
        writePendingChanges()
        var snapshot = currentDefinitions()
        snapshot.journalSequence = journalSequence
        recordsSinceSnapshot = 0
        definitionsAtSnapshot = snapshot.count
        let value = snapshot
        let bound = NIOLoopBound(self, eventLoop: eventLoop)
        journal.compact(snapshotPath: metadataPath, encode: { try value.encoded() }, completion: { result in
            guard case .failure(let error) = result else { return }
            eventLoop.execute { bound.value.logger.error("cannot compact the definitions journal", metadata: ["error": "\(error)"]) }
        })
    }

    /// Journal writes so far (each one `fdatasync` covering every change of one cycle), for tests and status.
    public var definitionsBatchesWritten: UInt64 { openDefinitionsBatch }

    func definitionsBatchFinished(_ batch: UInt64, _ result: Result<Void, StorageError>) {
        if case .failure(let error) = result {
            logger.critical("cannot save definition changes; connections that made them are closed", metadata: ["error": "\(error)"])
        }
        let waiting = sessionsHoldingOutput
        sessionsHoldingOutput.removeAll()
        for session in waiting {
            guard session.heldUntilBatch <= batch else {
                sessionsHoldingOutput.append(session)
                continue
            }
            if case .failure(let error) = result {
                session.transport?.closeConnection(code: .internalError, reason: "the broker could not save its definitions: \(error.description)")
            } else {
                session.releaseOutput()
            }
        }
        flush()
    }
}
