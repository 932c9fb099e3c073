public import WireProtocol

// MARK: - Rows of the management listings (docs/protocol.md §11)

/// A management row type: its coding keys are the listing's column names (snake_case, as the broker answers and
/// brokerctl prints them), so decoding the broker's row and encoding it again for output use one definition.
public protocol ManagementRow: Codable, Sendable, Hashable {
    /// The management method that lists these rows (`list.queues`...).
    static var listMethod: String { get }
    /// Every column, in the order a table shows them when asked for all.
    static var columns: [String] { get }
}

/// One queue in `list.queues`.
public struct QueueRow: ManagementRow {
    public static let listMethod = "list.queues"
    public var name: String
    public var durable: Bool
    public var autoDelete: Bool
    public var exclusive: Bool
    /// The connection owning an exclusive queue.
    public var ownerConnection: Int64?
    /// Ready plus unacknowledged.
    public var messages: Int64
    public var messagesReady: Int64
    public var messagesUnacked: Int64
    public var messagesInMemory: Int64
    public var messagesPaged: Int64
    public var memoryBytes: Int64
    public var consumers: Int64
    public var published: Int64
    public var delivered: Int64
    /// Messages per second over the broker's last one-second sample.
    public var publishRate: Double
    public var deliverRate: Double
    /// `idle`, `running` or `paging`.
    public var state: String
    public var arguments: FieldTable

    enum CodingKeys: String, CodingKey, CaseIterable {
        case name, durable, exclusive, messages, consumers, published, delivered, state, arguments
        case autoDelete = "auto_delete", ownerConnection = "owner_connection", messagesReady = "messages_ready"
        case messagesUnacked = "messages_unacked", messagesInMemory = "messages_in_memory", messagesPaged = "messages_paged"
        case memoryBytes = "memory_bytes", publishRate = "publish_rate", deliverRate = "deliver_rate"
    }
    public static var columns: [String] { CodingKeys.allCases.map(\.rawValue) }
}

/// One exchange in `list.exchanges`.
public struct ExchangeRow: ManagementRow {
    public static let listMethod = "list.exchanges"
    public var name: String
    /// `direct`, `fanout` or `topic`.
    public var type: String
    public var durable: Bool
    public var autoDelete: Bool
    /// The default exchange and the `amq.*` ones.
    public var builtin: Bool
    public var bindings: Int64

    enum CodingKeys: String, CodingKey, CaseIterable {
        case name, type, durable, builtin, bindings
        case autoDelete = "auto_delete"
    }
    public static var columns: [String] { CodingKeys.allCases.map(\.rawValue) }
}

/// One binding in `list.bindings`.
public struct BindingRow: ManagementRow {
    public static let listMethod = "list.bindings"
    /// The exchange.
    public var source: String
    /// The queue.
    public var destination: String
    public var routingKey: String

    enum CodingKeys: String, CodingKey, CaseIterable {
        case source, destination
        case routingKey = "routing_key"
    }
    public static var columns: [String] { CodingKeys.allCases.map(\.rawValue) }
}

/// One client connection in `list.connections`.
public struct ConnectionRow: ManagementRow {
    public static let listMethod = "list.connections"
    public var id: Int64
    /// The client name from the hello.
    public var name: String
    public var peer: String
    public var user: String
    public var consumers: Int64
    public var messagesUnacked: Int64
    public var published: Int64
    public var delivered: Int64
    public var confirmMode: Bool
    /// `running`, `notified` (an alarm is on) or `blocked`.
    public var state: String
    public var connectedSeconds: Int64
    /// `native` or `amqp` (nil from brokers before AMQP 0-9-1 support).
    public var protocolName: String?
    /// The AMQP channel this row is (each AMQP channel is listed on its own); 0 for native connections.
    public var channel: Int64?

    enum CodingKeys: String, CodingKey, CaseIterable {
        case id, name, peer, user, consumers, published, delivered, state, channel
        case messagesUnacked = "messages_unacked", confirmMode = "confirm_mode", connectedSeconds = "connected_seconds"
        case protocolName = "protocol"
    }
    public static var columns: [String] { CodingKeys.allCases.map(\.rawValue) }
}

/// One consumer in `list.consumers`.
public struct ConsumerRow: ManagementRow {
    public static let listMethod = "list.consumers"
    public var queue: String
    public var consumerTag: Int64
    public var connection: Int64
    public var connectionName: String
    public var ackRequired: Bool
    public var exclusive: Bool
    public var prefetch: Int64
    public var messagesUnacked: Int64

    enum CodingKeys: String, CodingKey, CaseIterable {
        case queue, connection, exclusive, prefetch
        case consumerTag = "consumer_tag", connectionName = "connection_name", ackRequired = "ack_required"
        case messagesUnacked = "messages_unacked"
    }
    public static var columns: [String] { CodingKeys.allCases.map(\.rawValue) }
}

/// One user in `user.list`.
public struct UserRow: ManagementRow {
    public static let listMethod = "user.list"
    public var name: String
    public var admin: Bool
    /// May connect from loopback addresses only (the built-in guest).
    public var loopbackOnly: Bool
    /// Regular expressions over exchange and queue names (docs/protocol.md §11, "Permissions"); `.*` for all.
    /// Nil from a broker that predates permissions.
    public var configure: String?
    public var write: String?
    public var read: String?
    /// Per-user limits; nil for none.
    public var maxQueues: Int64?
    public var maxBindings: Int64?
    public var maxConsumers: Int64?

    enum CodingKeys: String, CodingKey, CaseIterable {
        case name, admin, configure, write, read
        case loopbackOnly = "loopback_only"
        case maxQueues = "max_queues"
        case maxBindings = "max_bindings"
        case maxConsumers = "max_consumers"
    }
    public static var columns: [String] { CodingKeys.allCases.map(\.rawValue) }
}

/// A message as `queue.peek` shows it, left in its queue.
public struct PeekedMessage: Codable, Sendable, Hashable {
    public var exchange: String
    public var routingKey: String
    public var redelivered: Bool
    public var bodySize: Int64
    public var body: [UInt8]
    /// The message's properties with snake_case names (`message_id`, `content_type`, `headers`...).
    public var properties: FieldTable

    public init(exchange: String, routingKey: String, redelivered: Bool, body: [UInt8], properties: FieldTable) {
        self.exchange = exchange
        self.routingKey = routingKey
        self.redelivered = redelivered
        self.bodySize = Int64(body.count)
        self.body = body
        self.properties = properties
    }

    enum CodingKeys: String, CodingKey, CaseIterable {
        case exchange, routingKey = "routing_key", redelivered, bodySize = "body_size", body, properties
    }
    /// The columns in display order.
    public static var columns: [String] { CodingKeys.allCases.map(\.rawValue) }
}

/// What `queue.move` did.
public struct MoveResult: Codable, Sendable, Hashable {
    public var moved: Int64
    /// Ready messages left in the source.
    public var remaining: Int64
    /// Why the move stopped early (the destination refused a message), if it did.
    public var stopped: String?

    public init(moved: Int64, remaining: Int64, stopped: String? = nil) {
        self.moved = moved
        self.remaining = remaining
        self.stopped = stopped
    }
}

// MARK: - The typed API

extension BrokerConnection {
    /// Lists rows of one kind (admin only): `try await connection.list(QueueRow.self)`.
    public func list<Row: ManagementRow>(_ type: Row.Type) async throws -> [Row] {
        try decodeRows(type, try await allRows(Row.listMethod))
    }

    public func listQueues() async throws -> [QueueRow] { try await list(QueueRow.self) }
    public func listExchanges() async throws -> [ExchangeRow] { try await list(ExchangeRow.self) }
    public func listBindings() async throws -> [BindingRow] { try await list(BindingRow.self) }
    public func listConnections() async throws -> [ConnectionRow] { try await list(ConnectionRow.self) }
    public func listConsumers() async throws -> [ConsumerRow] { try await list(ConsumerRow.self) }
    public func listUsers() async throws -> [UserRow] { try await list(UserRow.self) }

    /// The first `count` ready messages of a queue (1...1000), left where they are.
    public func peek(queue: String, count: Int = 1) async throws -> [PeekedMessage] {
        try decodeRows(PeekedMessage.self, try await rows("queue.peek", ["queue": .string(queue), "count": .int(Int64(count))]))
    }

    /// Moves up to `count` (nil: all) ready messages from the head of `source` to the tail of `destination`.
    public func move(from source: String, to destination: String, count: Int? = nil) async throws -> MoveResult {
        var arguments: FieldTable = ["source": .string(source), "destination": .string(destination)]
        if let count { arguments["count"] = .int(Int64(count)) }
        return try decodeResult(MoveResult.self, try await manage("queue.move", arguments))
    }

    public func addUser(_ name: String, password: String, admin: Bool = false) async throws {
        _ = try await manage("user.add", ["name": .string(name), "password": .string(password), "admin": .bool(admin)])
    }

    public func deleteUser(_ name: String) async throws {
        _ = try await manage("user.delete", ["name": .string(name)])
    }

    /// Restricts what `name` may configure, write and read: each a regular expression that a whole exchange or
    /// queue name must match (`""` allows nothing, `.*` everything; the default exchange is `amq.default`).
    public func setPermissions(of name: String, configure: String, write: String, read: String) async throws {
        _ = try await manage("user.set_permissions", ["name": .string(name), "configure": .string(configure),
                                                      "write": .string(write), "read": .string(read)])
    }

    /// Gives `name` full access again.
    public func clearPermissions(of name: String) async throws {
        _ = try await manage("user.clear_permissions", ["name": .string(name)])
    }

    /// Sets `name`'s limits; nil (or 0) removes one.
    public func setLimits(of name: String, maxQueues: Int? = nil, maxBindings: Int? = nil, maxConsumers: Int? = nil) async throws {
        var arguments: FieldTable = ["name": .string(name)]
        if let maxQueues { arguments["max_queues"] = .int(Int64(maxQueues)) }
        if let maxBindings { arguments["max_bindings"] = .int(Int64(maxBindings)) }
        if let maxConsumers { arguments["max_consumers"] = .int(Int64(maxConsumers)) }
        _ = try await manage("user.set_limits", arguments)
    }

    public func changePassword(of name: String, to password: String) async throws {
        _ = try await manage("user.passwd", ["name": .string(name), "password": .string(password)])
    }

    private func decodeRows<Row: Decodable>(_ type: Row.Type, _ rows: [FieldTable]) throws -> [Row] {
        try rows.map { try decodeResult(type, $0) }
    }

    /// A row the client cannot read is the broker's mistake or a version mismatch: say which, with the field.
    private func decodeResult<Row: Decodable>(_ type: Row.Type, _ row: FieldTable) throws -> Row {
        do {
            return try FieldTableDecoder().decode(type, from: row)
        } catch {
            throw BrokerError(.unexpectedFrame, "the broker's answer does not fit \(type): \(error)")
        }
    }
}
