public import WireProtocol

// MARK: - Message contracts (docs/contracts.md)

/// One type and major version of a contract, as `contract.show` lists it.
public struct ContractVersionRow: ManagementRow {
    public static let listMethod = "contract.show"
    public var exchange: String
    public var type: String
    /// `major.minor`.
    public var version: String
    /// `current`, `deprecated` or `retired`.
    public var status: String
    public var sunset: String?
    public var replacement: String?

    enum CodingKeys: String, CodingKey, CaseIterable { case exchange, type, version, status, sunset, replacement }
    public static var columns: [String] { CodingKeys.allCases.map(\.rawValue) }
}

/// Who published which version of a contracted type, from which connection, and which majors each consumer
/// accepts (`contract.census`).
public struct CensusRow: ManagementRow {
    public static let listMethod = "contract.census"
    /// The exchange published to; for a consumer, the contracted exchanges feeding its queue (comma-separated).
    public var exchange: String
    public var type: String
    /// `major.minor` as published; for a consumer the majors it accepts, `1-2` or `2`.
    public var version: String
    /// `publisher` or `consumer`.
    public var role: String
    /// A consumer's queue and tag.
    public var queue: String?
    public var consumerTag: Int64?
    /// The connection's client name.
    public var client: String
    public var connection: Int64
    public var user: String
    public var peer: String
    /// Messages of this version from this connection (a consumer: of this type delivered to it).
    public var messages: Int64
    /// Milliseconds since the Unix epoch.
    public var firstSeen: Int64
    public var lastSeen: Int64
    /// Whether the connection (for a consumer: the consumer) is still there; entries of closed ones stay, as history.
    public var connected: Bool
    /// The version's status in the contract now: `current`, `deprecated`, `retired` or `undeclared`.
    public var status: String

    enum CodingKeys: String, CodingKey, CaseIterable {
        case exchange, type, version, role, queue, client, connection, user, peer, messages, connected, status
        case consumerTag = "consumer_tag", firstSeen = "first_seen", lastSeen = "last_seen"
    }
    public static var columns: [String] { CodingKeys.allCases.map(\.rawValue) }
}

extension BrokerConnection {
    /// Gives an exchange a contract, replacing any it had (admin only). Retiring or dropping a major version a
    /// connected client still publishes is refused (406, naming the clients) unless `force`; forced, the answer
    /// lists the clients that will now be refused.
    @discardableResult
    public func applyContract(_ contract: ExchangeContract, force: Bool = false) async throws -> [CensusRow] {
        try contract.validate()
        let result = try await manage("contract.apply", ["contract": .table(try FieldTableEncoder().encode(contract)), "force": .bool(force)])
        guard case .array(let broken)? = result["broken"] else { return [] }
        return try broken.map { value in
            guard case .table(let row) = value else { throw BrokerError(.frameError, "contract.apply: a broken row is not a table") }
            return try FieldTableDecoder().decode(CensusRow.self, from: row)
        }
    }

    /// Adds `contract` to what the exchange's contract declares (``ExchangeContract/adding(_:)``: new types and
    /// majors only; statuses an operator set stay), or gives the exchange `contract` if it has none. Returns
    /// whether the broker's contract changed. What a service does at every start with the contract it ships: a
    /// new release brings its new major, and never undoes a deprecation or retirement made since.
    @discardableResult
    public func declareContract(_ contract: ExchangeContract) async throws -> Bool {
        let current: ExchangeContract?
        do {
            current = try await self.contract(of: contract.exchange)
        } catch let error as BrokerError where error.code == .notFound {
            current = nil
        }
        let merged = current?.adding(contract) ?? contract
        guard merged != current else { return false }
        try await applyContract(merged)
        return true
    }

    /// The contract of `exchange` (404 if it has none).
    public func contract(of exchange: String) async throws -> ExchangeContract {
        let result = try await manage("contract.show", ["exchange": .string(exchange)])
        guard case .table(let table)? = result["contract"] else {
            throw BrokerError(.frameError, "contract.show answered without the contract")
        }
        return try FieldTableDecoder().decode(ExchangeContract.self, from: table)
    }

    /// Every contract's types and versions, one row each.
    public func listContracts() async throws -> [ContractVersionRow] {
        try await list(ContractVersionRow.self)
    }

    /// Every exchange's contract, whole (with schemas), ordered by exchange name.
    public func allContracts() async throws -> [ExchangeContract] {
        var all: [ExchangeContract] = []
        for exchange in Set(try await listContracts().map(\.exchange)).sorted() { all.append(try await contract(of: exchange)) }
        return all
    }

    /// Removes an exchange's contract: it accepts any message again.
    public func deleteContract(of exchange: String) async throws {
        _ = try await manage("contract.delete", ["exchange": .string(exchange)])
    }

    /// The version census, for one exchange or all.
    public func contractCensus(exchange: String? = nil) async throws -> [CensusRow] {
        guard let exchange else { return try await list(CensusRow.self) }
        let rows = try await rows("contract.census", ["exchange": .string(exchange)])
        return try rows.map { try FieldTableDecoder().decode(CensusRow.self, from: $0) }
    }
}
