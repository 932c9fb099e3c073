import BrokerStorage
import Logging
import NIOCore
public import WireProtocol

/// The management methods behind the `manage` frame (docs/protocol.md §11): listings, peek, move and users. Each
/// takes a table of arguments and answers a table; listings answer `{"rows": [table, ...]}` with snake_case keys,
/// which brokerctl prints as they are. Admin only: the session checks before calling.
extension Broker {
    /// Every method name, for the spec, errors (an unknown method is code 540, like an unknown frame) and tests.
    public static let managementMethods = [
        "list.queues", "list.exchanges", "list.bindings", "list.connections", "list.consumers",
        "queue.peek", "queue.move", "user.list", "user.add", "user.delete", "user.passwd",
        "user.set_permissions", "user.clear_permissions", "user.set_limits", "user.export", "user.import", "connection.close",
        "contract.apply", "contract.show", "contract.delete", "contract.census",
    ]

    /// Runs one management method on behalf of `session` (whose user is an administrator).
    public func manage(_ request: Manage, by session: Session) throws(BrokerError) -> FieldTable {
        guard !Self.readOnlyMethods.contains(request.method) else { return try dispatch(request, by: session) }
        // Everything that changes the broker is logged as an audit trail: who, from where, what, on which object,
        // and how it ended. Secrets (passwords) are never part of the line.
        do {
            let result = try dispatch(request, by: session)
            audit(request, by: session, outcome: "done")
            return result
        } catch {
            audit(request, by: session, outcome: "refused: \(error.code.rawValue) \(error.message)")
            throw error
        }
    }

    /// Management methods that change nothing, and are not audited.
    static let readOnlyMethods: Set<String> = ["list.queues", "list.exchanges", "list.bindings", "list.connections", "list.consumers",
                                               "queue.peek", "user.list", "contract.show", "contract.census"]

    private func audit(_ request: Manage, by session: Session, outcome: String) {
        let object = request.arguments.keys.sorted().filter { !$0.hasPrefix("password") }.map { key in
            "\(key)=\(request.arguments[key].map(Self.auditValue) ?? "")"
        }.joined(separator: " ")
        logger.notice("management action", metadata: [
            "by_user": "\(session.user.name)", "by_connection": "\(session.id)", "by_client": "\(session.clientName)",
            "peer": "\(session.peer)", "action": "\(request.method)", "object": "\(object)", "outcome": "\(outcome)",
        ])
    }

    /// A value for the audit line: scalars as they are; a table by its scalar members with nested containers as
    /// their sizes (`contract={exchange=ride.trips types=[2]}`), so a contract with its schemas is one short line.
    static func auditValue(_ value: FieldValue) -> String {
        switch value {
        case .string(let s): s
        case .int(let i): "\(i)"
        case .bool(let b): "\(b)"
        case .double(let d): "\(d)"
        case .bytes(let b): "<\(b.count) bytes>"
        case .array(let a): "[\(a.count)]"
        case .table(let t):
            "{" + t.keys.sorted().filter { !$0.hasPrefix("password") }.map { key in
                switch t[key] {
                case .table(let inner)?: "\(key)={\(inner.count)}"
                case let member?: "\(key)=\(auditValue(member))"
                case nil: key
                }
            }.joined(separator: " ") + "}"
        }
    }

    private func dispatch(_ request: Manage, by session: Session) throws(BrokerError) -> FieldTable {
        let args = ManagementArguments(request.method, request.arguments)
        switch request.method {
        case "list.queues": return try page(queues.values.sorted { $0.name < $1.name }, args, queueRow)
        case "list.exchanges": return try page(exchanges.values.sorted { $0.name < $1.name }, args, exchangeRow)
        case "list.bindings": return try page(bindingList(), args, bindingRow)
        case "list.connections": return try page(sessions.values.sorted { $0.id < $1.id }, args, connectionRow)
        case "list.consumers": return try page(consumerList(), args, consumerRow)
        case "queue.peek": return try peek(args)
        case "queue.move": return try move(args)
        case "user.list": return try page(users.users.values.sorted { $0.name < $1.name }, args, userRow)
        case "user.add": return try addUser(args, by: session)
        case "user.delete": return try deleteUser(args, by: session)
        case "user.passwd": return try changePassword(args, by: session)
        case "user.set_permissions": return try setPermissions(args, by: session)
        case "user.clear_permissions": return try setPermissions(args, clear: true, by: session)
        case "user.set_limits": return try setLimits(args, by: session)
        case "connection.close": return try closeConnection(args, by: session)
        case "user.export": return try page(users.users.values.sorted { $0.name < $1.name }, args, exportedUserRow)
        case "user.import": return try importUser(args, by: session)
        case "contract.apply": return try applyContract(args, by: session)
        case "contract.show": return try showContract(args)
        case "contract.delete": return try deleteContract(args, by: session)
        case "contract.census": return try contractCensus(args)
        default:
            throw BrokerError(.unknownFrame, "unknown management method '\(request.method)'; known: \(Self.managementMethods.joined(separator: ", "))")
        }
    }

    private func rows(_ rows: [FieldTable]) -> FieldTable { ["rows": .array(rows.map { .table($0) })] }

    /// Most rows a listing answers without `limit`: more would not fit a frame (100,000 queues made a 33 MB
    /// answer). Past it the listing is refused with 506, saying to page.
    public static let unpagedListingLimit = 5_000
    /// Most rows one page may ask for.
    public static let listingPageLimit = 10_000

    /// One page of a listing (docs/protocol.md §11): `offset` (default 0) and `limit` (1 … 10,000; without it,
    /// every row, if there are at most 5,000). Items are sorted by the caller; only the page's rows are built.
    /// The answer carries `total`, the number of rows of the whole listing, so a client knows when it has all.
    func page<Item>(_ items: [Item], _ args: ManagementArguments, _ row: (Item) -> FieldTable) throws(BrokerError) -> FieldTable {
        let offset = try args.int("offset", default: 0, range: 0...Int(Int32.max))
        let limit = try args.int("limit", default: 0, range: 0...Self.listingPageLimit)
        if limit == 0 && args.table["limit"] != nil {
            throw BrokerError(.invalidArgument, "\(args.method): 'limit' must be an integer from 1 to \(Self.listingPageLimit)")
        }
        if limit == 0 && items.count > Self.unpagedListingLimit {
            throw BrokerError(.resourceError, "\(args.method) has \(items.count) rows, more than the \(Self.unpagedListingLimit) one answer holds; ask for pages with 'offset' and 'limit' (brokerctl and BrokerClient page by themselves)")
        }
        let start = min(offset, items.count)
        let end = limit == 0 ? items.count : min(items.count, start + limit)
        return ["rows": .array(items[start..<end].map { .table(row($0)) }), "total": .int(Int64(items.count))]
    }

    // MARK: - Listings

    private func queueRow(_ queue: Queue) -> FieldTable {
        var row: FieldTable = [
            "name": .string(queue.name),
            "durable": .bool(queue.durable),
            "auto_delete": .bool(queue.autoDelete),
            "exclusive": .bool(queue.exclusiveOwner != nil),
            "messages": .int(Int64(queue.readyCount + queue.unackedCount)),
            "messages_ready": .int(Int64(queue.readyCount)),
            "messages_unacked": .int(Int64(queue.unackedCount)),
            "messages_in_memory": .int(Int64(queue.readyCount - queue.pagedCount)),
            "messages_paged": .int(Int64(queue.pagedCount)),
            "memory_bytes": .int(Int64(queue.memoryBytes)),
            "consumers": .int(Int64(queue.consumerCount)),
            "published": .int(Int64(clamping: queue.publishedCount)),
            "delivered": .int(Int64(clamping: queue.deliveredCount)),
            "publish_rate": .double(queue.publishRate),
            "deliver_rate": .double(queue.deliverRate),
            "state": .string(queue.pagedCount > 0 ? "paging" : (queue.publishRate > 0 || queue.deliverRate > 0 ? "running" : "idle")),
        ]
        if let owner = queue.exclusiveOwner { row["owner_connection"] = .int(Int64(clamping: owner)) }
        row["arguments"] = .table(queue.arguments.table)
        return row
    }

    private func exchangeRow(_ exchange: Exchange) -> FieldTable {
        [
            "name": .string(exchange.name),
            "type": .string(exchange.kind.description),
            "durable": .bool(exchange.durable),
            "auto_delete": .bool(exchange.autoDelete),
            "builtin": .bool(exchange.builtIn),
            "bindings": .int(Int64(exchange.bindingCount)),
        ]
    }

    private func bindingList() -> [(exchange: String, queue: String, key: String)] {
        var list: [(exchange: String, queue: String, key: String)] = []
        for exchange in exchanges.values.sorted(by: { $0.name < $1.name }) where !exchange.name.isEmpty {
            for (queue, key, _) in exchange.ownedBindings.sorted(by: { ($0.queue.name, $0.key) < ($1.queue.name, $1.key) }) where !queue.isDeleted {
                list.append((exchange.name, queue.name, key))
            }
        }
        return list
    }

    private func bindingRow(_ binding: (exchange: String, queue: String, key: String)) -> FieldTable {
        ["source": .string(binding.exchange), "destination": .string(binding.queue), "routing_key": .string(binding.key)]
    }

    private func connectionRow(_ session: Session) -> FieldTable {
        [
            "id": .int(Int64(clamping: session.id)),
            "name": .string(session.clientName),
            "peer": .string(session.peer),
            "user": .string(session.user.name),
            "protocol": .string(session.protocolName),
            "channel": .int(Int64(session.channel)),
            "consumers": .int(Int64(session.consumerCount)),
            "messages_unacked": .int(Int64(session.unackedCount)),
            "published": .int(Int64(clamping: session.publishedCount)),
            "delivered": .int(Int64(clamping: session.deliveredCount)),
            "confirm_mode": .bool(session.confirmMode),
            "state": .string(session.isPaused ? "blocked" : (alarm != nil ? "notified" : "running")),
            "connected_seconds": .int(Int64((now() &- session.openedAt) / 1_000_000_000)),
        ]
    }

    private func consumerList() -> [(session: Session, consumer: QueueConsumer)] {
        var list: [(session: Session, consumer: QueueConsumer)] = []
        for session in sessions.values.sorted(by: { $0.id < $1.id }) {
            for consumer in session.consumers.values.sorted(by: { $0.tag < $1.tag }) { list.append((session, consumer)) }
        }
        return list
    }

    private func consumerRow(_ entry: (session: Session, consumer: QueueConsumer)) -> FieldTable {
        let (session, consumer) = entry
        return [
            "queue": .string(consumer.queue.name),
            "consumer_tag": .int(Int64(consumer.tag)),
            "connection": .int(Int64(clamping: session.id)),
            "connection_name": .string(session.clientName),
            "ack_required": .bool(!consumer.noAck),
            "exclusive": .bool(consumer.exclusive),
            "prefetch": .int(Int64(consumer.prefetch)),
            "messages_unacked": .int(Int64(consumer.unacked)),
        ]
    }

    private func userRow(_ user: User) -> FieldTable {
        var row: FieldTable = ["name": .string(user.name), "admin": .bool(user.isAdmin), "loopback_only": .bool(user.loopbackOnly)]
        let permissions = user.permissions ?? .all
        row["configure"] = .string(permissions.configure)
        row["write"] = .string(permissions.write)
        row["read"] = .string(permissions.read)
        if let v = user.limits?.maxQueues { row["max_queues"] = .int(Int64(v)) }
        if let v = user.limits?.maxBindings { row["max_bindings"] = .int(Int64(v)) }
        if let v = user.limits?.maxConsumers { row["max_consumers"] = .int(Int64(v)) }
        return row
    }

    /// A user as `definitions export` saves it: ``userRow(_:)`` plus the password hash (never the password) and
    /// whether its permissions were set, so an import restores it exactly.
    private func exportedUserRow(_ user: User) -> FieldTable {
        var row = userRow(user)
        row["password_rounds"] = .int(Int64(user.password.rounds))
        row["password_salt"] = .bytes(user.password.salt)
        row["password_hash"] = .bytes(user.password.hash)
        row["has_permissions"] = .bool(user.permissions != nil)
        return row
    }

    /// Recomputes every queue's publish and deliver rates; the sweeper calls it about once a second.
    func sampleRates() {
        let time = now()
        let elapsed = Double(time &- lastRateSample) / 1e9
        guard elapsed >= 1 else { return }
        lastRateSample = time
        for queue in queues.values {
            queue.publishRate = Double(queue.publishedCount &- queue.sampledPublished) / elapsed
            queue.deliverRate = Double(queue.deliveredCount &- queue.sampledDelivered) / elapsed
            queue.sampledPublished = queue.publishedCount
            queue.sampledDelivered = queue.deliveredCount
        }
    }

    // MARK: - Messages

    /// `queue.peek {queue, count}`: the first `count` (default 1, at most 1000) ready messages, left untouched.
    private func peek(_ args: ManagementArguments) throws(BrokerError) -> FieldTable {
        let queue = try existingQueue(args.string("queue"))
        let count = try args.int("count", default: 1, range: 1...1000)
        return rows(queue.peek(count).map { message in
            var row = Self.messageRow(message.envelope)
            row["redelivered"] = .bool(message.redelivered)
            return row
        })
    }

    /// A message as management shows it: names, decoded properties (snake_case), body bytes.
    static func messageRow(_ envelope: MessageEnvelope) -> FieldTable {
        let names = try? envelope.names()
        var row: FieldTable = [
            "exchange": .string(names?.exchange ?? ""),
            "routing_key": .string(names?.routingKey ?? ""),
            "body": .bytes(Array(buffer: envelope.body)),
            "body_size": .int(Int64(envelope.bodyLength)),
        ]
        row["properties"] = .table((try? envelope.properties.decode())?.table ?? [:])
        return row
    }

    /// `queue.move {source, destination, count}`: moves up to `count` (default all) ready messages from the head
    /// of one queue to the tail of another, in order, keeping their properties, names and redelivered flags. In
    /// the log, a persistent message gains its record in a durable destination in the same batch that settles it
    /// in the source, so a crash leaves it in one queue or (at worst) both, never in neither. Stops early, without
    /// losing anything, if the destination refuses a message (its overflow policy is `reject-publish`).
    private func move(_ args: ManagementArguments) throws(BrokerError) -> FieldTable {
        let source = try existingQueue(args.string("source"))
        let destination = try existingQueue(args.string("destination"))
        guard source !== destination else { throw BrokerError(.preconditionFailed, "source and destination are the same queue") }
        let limit = try args.int("count", default: Int.max, range: 1...Int.max)
        var moved = 0
        var stoppedBy: String?
        while moved < limit, let message = source.takeHead() {
            var copy = message
            copy.deliveries = 0
            copy.logId = 0
            copy.stored = .none
            if let store, let id = destination.durableId, message.envelope.isPersistent {
                let record = store.appendPublish(envelope: message.envelope.bytes, queues: [id])
                copy.logId = record.id
                copy.stored = record
            }
            guard destination.enqueue(copy) else {
                if let store, let id = destination.durableId, copy.logId != 0 { store.appendSettle(id: copy.logId, queue: id) }
                source.putBackHead(message)
                stoppedBy = "queue '\(destination.name)' refused a message (it is full)"
                break
            }
            if let store, let id = source.durableId, message.logId != 0 { store.appendSettle(id: message.logId, queue: id) }
            moved += 1
        }
        destination.dispatch()
        source.dispatch()
        var result: FieldTable = ["moved": .int(Int64(moved)), "remaining": .int(Int64(source.readyCount))]
        if let stoppedBy { result["stopped"] = .string(stoppedBy) }
        return result
    }

    private func existingQueue(_ name: String) throws(BrokerError) -> Queue {
        try NameRules.validateName(name, kind: "queue")
        guard let queue = queues[name] else { throw BrokerError(.notFound, "no queue '\(name)'") }
        return queue
    }

    // MARK: - Users

    private func addUser(_ args: ManagementArguments, by session: Session) throws(BrokerError) -> FieldTable {
        let name = try args.string("name")
        try Self.validateUserName(name)
        guard users.user(named: name) == nil else { throw BrokerError(.preconditionFailed, "user '\(name)' already exists") }
        let password = try args.string("password")
        guard !password.isEmpty else { throw BrokerError(.invalidArgument, "the password must not be empty") }
        let admin = try args.bool("admin", default: false)
        saveUsers(by: session) { $0.add(User(name: name, password: PasswordHash(password: password), isAdmin: admin)) }
        return [:]
    }

    private func deleteUser(_ args: ManagementArguments, by session: Session) throws(BrokerError) -> FieldTable {
        let name = try args.string("name")
        guard users.user(named: name) != nil else { throw BrokerError(.notFound, "no user '\(name)'") }
        guard name != session.user.name else {
            throw BrokerError(.preconditionFailed, "you cannot delete the user you are connected as ('\(name)')")
        }
        let adminsLeft = users.users.values.filter { $0.isAdmin && $0.name != name }.count
        guard adminsLeft > 0 else { throw BrokerError(.preconditionFailed, "'\(name)' is the last administrator") }
        saveUsers(by: session) { _ = $0.remove(named: name) }
        // As in RabbitMQ: the deleted user's connections go (their credentials no longer exist).
        let closing = sessions.values.filter { $0.user.name == name }
        for other in closing { other.transport?.closeConnection(code: .connectionForced, reason: "user '\(name)' was deleted") }
        return ["closed_connections": .int(Int64(closing.count))]
    }

    /// `user.import`: creates or replaces a user from an exported row (``exportedUserRow(_:)``), password hash and
    /// all; its open connections get the imported user at once, as with any change.
    private func importUser(_ args: ManagementArguments, by session: Session) throws(BrokerError) -> FieldTable {
        let name = try args.string("name")
        try Self.validateUserName(name)
        let rounds = try args.int("password_rounds", default: 0, range: 0...10_000_000)
        guard rounds >= 1 else { throw BrokerError(.invalidArgument, "user.import needs 'password_rounds' from 1 to 10000000") }
        let salt = try args.bytes("password_salt")
        let hash = try args.bytes("password_hash")
        guard (8...64).contains(salt.count), hash.count == 32 else {
            throw BrokerError(.invalidArgument, "user.import: 'password_salt' must be 8 to 64 bytes and 'password_hash' 32 (PBKDF2-SHA256)")
        }
        var user = User(name: name, password: PasswordHash(rounds: rounds, salt: salt, hash: hash), isAdmin: try args.bool("admin", default: false),
                        loopbackOnly: try args.bool("loopback_only", default: false))
        if try args.bool("has_permissions", default: args.table["configure"] != nil) {
            let permissions = Permissions(configure: try args.string("configure"), write: try args.string("write"), read: try args.string("read"))
            try permissions.validate()
            user.permissions = permissions
        }
        func limit(_ key: String) throws(BrokerError) -> Int? {
            let value = try args.int(key, default: 0, range: 0...1_000_000_000)
            return value == 0 ? nil : value
        }
        let limits = UserLimits(maxQueues: try limit("max_queues"), maxBindings: try limit("max_bindings"), maxConsumers: try limit("max_consumers"))
        user.limits = limits == UserLimits() ? nil : limits
        let imported = user
        let replaced = users.user(named: name) != nil
        saveUsers(by: session) { $0.add(imported) }
        for other in sessions.values where other.user.name == name { other.userChanged(imported) }
        topologyVersion &+= 1
        return ["replaced": .bool(replaced)]
    }

    /// An operator closes a connection (`rabbitmqctl close_connection`): the client gets `close` 320 with the
    /// reason, its unacknowledged messages go back to their queues, as for any close.
    private func closeConnection(_ args: ManagementArguments, by session: Session) throws(BrokerError) -> FieldTable {
        let id = try args.int("id", default: -1, range: -1...Int(Int64.max))
        guard id >= 0 else { throw BrokerError(.invalidArgument, "connection.close needs the argument 'id' (from list.connections)") }
        let reason = try args.table["reason"] == nil ? "closed by an operator" : args.string("reason")
        guard reason.utf8.count <= 1000 else { throw BrokerError(.invalidArgument, "connection.close: 'reason' must be at most 1000 bytes") }
        guard let target = sessions[UInt64(id)] else { throw BrokerError(.notFound, "no connection \(id)") }
        guard target !== session else {
            throw BrokerError(.preconditionFailed, "connection \(id) is the one asking; close it from the client instead")
        }
        target.transport?.closeConnection(code: .connectionForced, reason: "closed by \(session.user.name): \(reason)")
        return [:]
    }

    private func changePassword(_ args: ManagementArguments, by session: Session) throws(BrokerError) -> FieldTable {
        try changeUser(args, by: session) { user throws(BrokerError) in
            let password = try args.string("password")
            guard !password.isEmpty else { throw BrokerError(.invalidArgument, "the password must not be empty") }
            user.password = PasswordHash(password: password)
        }
    }

    /// `user.set_permissions {name, configure, write, read}`: three regular expressions over exchange and queue
    /// names; `user.clear_permissions {name}` gives back full access. Connections of the user get the new
    /// permissions at once.
    private func setPermissions(_ args: ManagementArguments, clear: Bool = false, by session: Session) throws(BrokerError) -> FieldTable {
        try changeUser(args, by: session) { user throws(BrokerError) in
            if clear {
                user.permissions = nil
            } else {
                let permissions = Permissions(configure: try args.string("configure"), write: try args.string("write"), read: try args.string("read"))
                try permissions.validate()
                user.permissions = permissions
            }
        }
    }

    /// `user.set_limits {name, max_queues, max_bindings, max_consumers}`: each optional, 0 or absent for none.
    private func setLimits(_ args: ManagementArguments, by session: Session) throws(BrokerError) -> FieldTable {
        try changeUser(args, by: session) { user throws(BrokerError) in
            func limit(_ key: String) throws(BrokerError) -> Int? {
                let value = try args.int(key, default: 0, range: 0...1_000_000_000)
                return value == 0 ? nil : value
            }
            let limits = UserLimits(maxQueues: try limit("max_queues"), maxBindings: try limit("max_bindings"), maxConsumers: try limit("max_consumers"))
            user.limits = limits == UserLimits() ? nil : limits
        }
    }

    /// Changes the existing user the argument `name` names, saves the users, and gives its open connections the
    /// changed user at once (permissions and limits apply from their next operation; cached routes are
    /// recomputed, and so checked again, because the topology version moves).
    private func changeUser(_ args: ManagementArguments, by session: Session,
                            _ edit: (inout User) throws(BrokerError) -> Void) throws(BrokerError) -> FieldTable {
        let name = try args.string("name")
        guard var user = users.user(named: name) else { throw BrokerError(.notFound, "no user '\(name)'") }
        try edit(&user)
        let changed = user
        saveUsers(by: session) { $0.add(changed) }
        for other in sessions.values where other.user.name == name { other.userChanged(changed) }
        topologyVersion &+= 1
        return [:]
    }

    /// Applies a change to the users and saves it (`session`'s answer waits until it is durable); from the first
    /// change on, the saved list is complete (the default user included, or its deletion remembered).
    private func saveUsers(by session: Session, _ change: (inout UserStore) -> Void) {
        change(&users)
        usersCustomized = true
        recordChange(.users(users.users.values.sorted { $0.name < $1.name }, complete: true), by: session)
    }

    static func validateUserName(_ name: String) throws(BrokerError) {
        guard !name.isEmpty, name.utf8.count <= 255,
              name.unicodeScalars.allSatisfy({ $0.value > 0x20 && $0.value != 0x7F }) else {
            throw BrokerError(.invalidArgument, "a user name is 1 to 255 bytes of UTF-8 without spaces or control characters")
        }
    }
}

/// Typed access to a management request's arguments, with errors that name the method and the argument.
struct ManagementArguments {
    let method: String
    let table: FieldTable

    init(_ method: String, _ table: FieldTable) {
        self.method = method
        self.table = table
    }

    func string(_ key: String) throws(BrokerError) -> String {
        guard let value = table[key] else { throw BrokerError(.invalidArgument, "\(method) needs the argument '\(key)'") }
        guard let text = value.stringValue else { throw BrokerError(.invalidArgument, "\(method): '\(key)' must be a string") }
        return text
    }

    func int(_ key: String, default defaultValue: Int, range: ClosedRange<Int>) throws(BrokerError) -> Int {
        guard let value = table[key] else { return defaultValue }
        guard let number = value.intValue, let int = Int(exactly: number), range.contains(int) else {
            throw BrokerError(.invalidArgument, "\(method): '\(key)' must be an integer from \(range.lowerBound) to \(range.upperBound)")
        }
        return int
    }

    func bytes(_ key: String) throws(BrokerError) -> [UInt8] {
        guard let value = table[key] else { throw BrokerError(.invalidArgument, "\(method) needs the argument '\(key)'") }
        guard case .bytes(let bytes) = value else { throw BrokerError(.invalidArgument, "\(method): '\(key)' must be bytes") }
        return bytes
    }

    func bool(_ key: String, default defaultValue: Bool) throws(BrokerError) -> Bool {
        guard let value = table[key] else { return defaultValue }
        guard let flag = value.boolValue else { throw BrokerError(.invalidArgument, "\(method): '\(key)' must be a boolean") }
        return flag
    }
}
