import Foundation
public import WireProtocol

/// The contract methods of `manage` (docs/protocol.md §11, docs/contracts.md): apply, show, delete, census.
extension Broker {
    /// `contract.apply`: `contract` F (the contract as a table: `exchange`, `types`), `force` B. Replaces the exchange's contract. Retiring
    /// (or dropping) a major version that a connected client still publishes is refused with 406 naming the
    /// clients, unless `force`; the answer lists them as `broken` when forced.
    func applyContract(_ args: ManagementArguments, by session: Session) throws(BrokerError) -> FieldTable {
        guard case .table(let table)? = args.table["contract"] else {
            throw BrokerError(.invalidArgument, "contract.apply needs 'contract', a table with 'exchange' and 'types'")
        }
        let contract: ExchangeContract
        do {
            contract = try FieldTableDecoder().decode(ExchangeContract.self, from: table)
        } catch {
            throw BrokerError(.invalidArgument, "contract.apply: not a contract (\(Self.describe(error))); docs/contracts.md shows the format")
        }
        try contract.validate()
        let state = try ContractState(contract)  // schemas compiled before anything changes
        let force = try args.bool("force", default: false)
        guard let exchange = exchanges[contract.exchange] else {
            throw BrokerError(.notFound, "no exchange '\(contract.exchange)'; declare it before giving it a contract")
        }
        guard !exchange.builtIn else {
            throw BrokerError(.accessRefused, "the built-in exchange '\(exchange.name)' cannot carry a contract; declare an exchange of your own")
        }
        // What the new contract closes: a major that was open and is now retired or gone (its publishers break),
        // and consumers of the exchange's queues left accepting no open major of a type (they would get nothing).
        var broken: [(Census.Key, Census.Entry)] = []
        let queues = exchange.boundQueueNames
        for type in exchange.contract?.contract.types ?? [] {
            let openBefore = Set(type.versions.filter { $0.status != .retired }.map(\.version.major))
            let openAfter = Set((contract.type(type.name)?.versions ?? []).filter { $0.status != .retired }.map(\.version.major))
            for major in openBefore.subtracting(openAfter).sorted() {
                broken += census.livePublishers(exchange: exchange.name, type: type.name, major: major)
            }
            if !openBefore.subtracting(openAfter).isEmpty {
                broken += census.stranded(queues: queues, type: type.name, open: openAfter)
                    .filter { key, _ in openBefore.contains(where: key.majors.contains) }
            }
        }
        if !broken.isEmpty && !force {
            let who = broken.map { key, entry in
                let does = key.role == .publisher
                    ? "publishes \(key.type) \(key.version)"
                    : "consumes queue '\(key.queue)' accepting only \(key.type)@\(AcceptedVersions.describe(key.majors))"
                return "'\(entry.client)' (connection \(key.connection), user \(entry.user)) \(does)"
            }.joined(separator: "; ")
            throw BrokerError(.preconditionFailed, "retiring these versions would break connected clients: \(who); upgrade them first, or apply with force")
        }
        exchange.contract = state
        topologyVersion &+= 1
        if exchange.durable { recordChange(.putContract(contract), by: session) }
        var result: FieldTable = ["exchange": .string(contract.exchange), "types": .int(Int64(contract.types.count))]
        if !broken.isEmpty { result["broken"] = .array(broken.map { .table(censusRow($0.0, $0.1)) }) }
        return result
    }

    /// `contract.show`: `exchange` S (optional). Rows, one per type and version: `exchange`, `type`, `version`,
    /// `status`, `sunset`, `replacement` (those set); with `exchange`, the answer also carries `contract` (the
    /// table `contract.apply` takes).
    func showContract(_ args: ManagementArguments) throws(BrokerError) -> FieldTable {
        var shown: [ExchangeContract] = []
        if args.table["exchange"] != nil {
            let name = try args.string("exchange")
            guard let exchange = exchanges[name] else { throw BrokerError(.notFound, "no exchange '\(name)'") }
            guard let contract = exchange.contract?.contract else {
                throw BrokerError(.notFound, "exchange '\(name)' has no contract; apply one with contract.apply (brokerctl contract apply FILE)")
            }
            shown = [contract]
        } else {
            shown = exchanges.values.compactMap { $0.contract?.contract }.sorted { $0.exchange < $1.exchange }
        }
        var rows: [FieldTable] = []
        for contract in shown {
            for type in contract.types {
                for version in type.versions.sorted(by: { $0.version < $1.version }) {
                    var row: FieldTable = ["exchange": .string(contract.exchange), "type": .string(type.name),
                                           "version": .string("\(version.version)"), "status": .string(version.status.rawValue)]
                    if let sunset = version.sunset { row["sunset"] = .string(sunset) }
                    if let replacement = version.replacement { row["replacement"] = .string(replacement) }
                    rows.append(row)
                }
            }
        }
        var result = try page(rows, args) { $0 }
        if shown.count == 1, args.table["exchange"] != nil, let table = try? FieldTableEncoder().encode(shown[0]) {
            result["contract"] = .table(table)
        }
        return result
    }

    /// `contract.delete`: `exchange` S. The exchange accepts any message again.
    func deleteContract(_ args: ManagementArguments, by session: Session) throws(BrokerError) -> FieldTable {
        let name = try args.string("exchange")
        guard let exchange = exchanges[name] else { throw BrokerError(.notFound, "no exchange '\(name)'") }
        guard exchange.contract != nil else { throw BrokerError(.notFound, "exchange '\(name)' has no contract") }
        exchange.contract = nil
        topologyVersion &+= 1
        if exchange.durable { recordChange(.removeContract(name), by: session) }
        return [:]
    }

    /// `contract.census`: `exchange` S (optional). Rows: who published which version, from which connection.
    func contractCensus(_ args: ManagementArguments) throws(BrokerError) -> FieldTable {
        let exchange = args.table["exchange"] != nil ? try args.string("exchange") : nil
        var queues: Set<String> = []
        if let exchange {
            guard let found = exchanges[exchange] else { throw BrokerError(.notFound, "no exchange '\(exchange)'") }
            queues = found.boundQueueNames
        }
        return try page(census.rows(exchange: exchange, queues: queues), args) { censusRow($0.0, $0.1) }
    }

    private func censusRow(_ key: Census.Key, _ entry: Census.Entry) -> FieldTable {
        var exchange = key.exchange
        var version = "\(key.version)"
        var status: String
        if key.role == .consumer {
            // A consumer's row names the contracted exchanges feeding its queue, the majors it accepts, and the
            // statuses of those majors (`current`, `deprecated`, `retired`, or `undeclared` for none).
            let feeding = queues[key.queue].map { contractedExchanges(feeding: $0, type: key.type) } ?? []
            exchange = feeding.map(\.name).joined(separator: ",")
            version = AcceptedVersions.describe(key.majors)
            let statuses = Set(feeding.flatMap { $0.contract?.contract.type(key.type)?.versions ?? [] }
                .filter { key.majors.contains($0.version.major) }.map(\.status))
            status = statuses.isEmpty ? "undeclared" : TypeVersionContract.Status.allCases.filter(statuses.contains).map(\.rawValue).joined(separator: ",")
        } else {
            status = exchanges[key.exchange]?.contract?.contract.type(key.type)?.version(major: key.version.major)?.status.rawValue ?? "undeclared"
        }
        var row: FieldTable = [
            "exchange": .string(exchange), "type": .string(key.type), "version": .string(version),
            "role": .string(key.role.rawValue), "client": .string(entry.client), "connection": .int(Int64(clamping: key.connection)),
            "user": .string(entry.user), "peer": .string(entry.peer), "messages": .int(Int64(clamping: entry.count)),
            "first_seen": .int(Int64(clamping: entry.firstSeen)), "last_seen": .int(Int64(clamping: entry.lastSeen)),
            "connected": .bool(entry.connected), "status": .string(status),
        ]
        if key.role == .consumer {
            row["queue"] = .string(key.queue)
            row["consumer_tag"] = .int(Int64(key.consumerTag))
        }
        return row
    }

    /// A decoding error as a person reads it: what is wrong, and where.
    static func describe(_ error: any Error) -> String {
        switch error as? DecodingError {
        case .keyNotFound(let key, let context):
            return "missing '\(key.stringValue)'\(path(context.codingPath))"
        case .typeMismatch(_, let context), .valueNotFound(_, let context), .dataCorrupted(let context):
            return "\(context.debugDescription)\(path(context.codingPath))"
        default:
            return "\(error)"
        }
    }

    private static func path(_ path: [any CodingKey]) -> String {
        guard !path.isEmpty else { return "" }
        return " at " + path.map { $0.intValue.map { "[\($0)]" } ?? ".\($0.stringValue)" }.joined().trimmingCharacters(in: CharacterSet(charactersIn: "."))
    }
}
