public import WireProtocol

/// A broker's interfaces as an AsyncAPI 3.0 document: exchanges and queues as channels, bindings, contracts as
/// messages with their versions and schemas (docs/contracts.md, "AsyncAPI").
///
/// `brokerctl contract export --asyncapi` writes one from a running broker, and `contract apply` reads one back
/// (so do services, with ``BrokerConnection/apply(_:force:)``): a document is both the description a team reviews
/// and the declaration the broker enforces. The mapping:
///
/// - an exchange is a channel `exchange.NAME` (address the exchange's name) with an AMQP 0.3.0 channel binding
///   (`is: routingKey`, the exchange's type, durability); a queue is a channel `queue.NAME` with `is: queue`;
///   bindings of a queue are its channel's `x-brokerd-bindings` (AsyncAPI has no exchange-to-queue binding), its
///   declare arguments `x-brokerd-arguments`;
/// - each version of a contracted type is a message in `components.messages` (`TYPE.vMAJOR`), referenced by the
///   exchange's channel: `name` is the type, `payload` the version's schema, `deprecated` its status, and
///   `x-brokerd-version`, `x-brokerd-status`, `x-brokerd-sunset`, `x-brokerd-replacement`, `x-brokerd-validate`
///   what the contract says beyond that;
/// - operations: `publish.NAME` (send) for each exchange with a contract, `consume.NAME` (receive) for each queue,
///   listing the messages that can reach it through its bindings.
public struct AsyncAPIDocument: Sendable, Equatable {
    public struct Exchange: Sendable, Hashable {
        public var name: String
        public var kind: ExchangeKind
        public var durable: Bool
        public var autoDelete: Bool

        public init(name: String, kind: ExchangeKind, durable: Bool = true, autoDelete: Bool = false) {
            self.name = name
            self.kind = kind
            self.durable = durable
            self.autoDelete = autoDelete
        }
    }

    public struct Queue: Sendable, Hashable {
        public var name: String
        public var durable: Bool
        public var autoDelete: Bool
        /// Declare arguments (`x-message-ttl`, `x-dead-letter-exchange`, ...), as JSON values.
        public var arguments: [String: JSONValue]

        public init(name: String, durable: Bool = true, autoDelete: Bool = false, arguments: [String: JSONValue] = [:]) {
            self.name = name
            self.durable = durable
            self.autoDelete = autoDelete
            self.arguments = arguments
        }
    }

    public struct Binding: Sendable, Hashable {
        public var exchange: String
        public var queue: String
        public var routingKey: String

        public init(exchange: String, queue: String, routingKey: String) {
            self.exchange = exchange
            self.queue = queue
            self.routingKey = routingKey
        }
    }

    public var title: String
    public var version: String
    public var description: String?
    /// `host:port` of the broker, written as the document's one server when set.
    public var server: String?
    public var exchanges: [Exchange]
    public var queues: [Queue]
    public var bindings: [Binding]
    public var contracts: [ExchangeContract]

    public init(title: String, version: String, description: String? = nil, server: String? = nil, exchanges: [Exchange] = [],
                queues: [Queue] = [], bindings: [Binding] = [], contracts: [ExchangeContract] = []) {
        self.title = title
        self.version = version
        self.description = description
        self.server = server
        self.exchanges = exchanges
        self.queues = queues
        self.bindings = bindings
        self.contracts = contracts
    }

    static let bindingVersion = JSONValue.string("0.3.0")

    /// The `components.messages` key of a type's major: `trip.requested.v2`. Characters AsyncAPI does not allow
    /// in a component key become `_` (the type's true name is the message's `name`).
    public static func messageKey(type: String, major: UInt16) -> String {
        let allowed = Set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.-_")
        return String(type.map { allowed.contains($0) ? $0 : "_" }) + ".v\(major)"
    }

    static func pointer(_ key: String) -> String { JSONValue.pointerSegment(key) }

    // MARK: - Writing

    /// The document as JSON (AsyncAPI 3.0.0).
    public var json: JSONValue {
        var channels: [String: JSONValue] = [:]
        var operations: [String: JSONValue] = [:]
        var messages: [String: JSONValue] = [:]
        var typesByExchange: [String: [String]] = [:]  // exchange -> message keys

        for contract in contracts {
            for type in contract.types {
                for version in type.versions {
                    let key = Self.messageKey(type: type.name, major: version.version.major)
                    typesByExchange[contract.exchange, default: []].append(key)
                    var message: [String: JSONValue] = [
                        "name": .string(type.name),
                        "title": .string("\(type.name) \(version.version)"),
                        "contentType": .string("application/json"),
                        "x-brokerd-version": .string(version.version.description),
                        "x-brokerd-status": .string(version.status.rawValue),
                    ]
                    if version.status != .current { message["deprecated"] = .bool(true) }
                    if let sunset = version.sunset { message["x-brokerd-sunset"] = .string(sunset) }
                    if let replacement = version.replacement { message["x-brokerd-replacement"] = .string(replacement) }
                    if let schema = version.schema { message["payload"] = schema }
                    if type.validatesPayload { message["x-brokerd-validate"] = .bool(true) }
                    messages[key] = .object(message)
                }
            }
        }
        func refs(_ keys: [String], channel: String) -> JSONValue {
            .array(keys.sorted().map { .object(["$ref": .string("#/channels/\(Self.pointer(channel))/messages/\(Self.pointer($0))")]) })
        }
        func channelMessages(_ keys: [String]) -> JSONValue {
            .object(Dictionary(keys.map { ($0, JSONValue.object(["$ref": .string("#/components/messages/\(Self.pointer($0))")])) },
                               uniquingKeysWith: { first, _ in first }))
        }

        for exchange in exchanges {
            let id = "exchange.\(exchange.name)"
            var channel: [String: JSONValue] = [
                "address": .string(exchange.name),
                "title": .string("exchange \(exchange.name)"),
                "bindings": .object(["amqp": .object([
                    "is": "routingKey",
                    "exchange": .object(["name": .string(exchange.name), "type": .string(exchange.kind.description),
                                         "durable": .bool(exchange.durable), "autoDelete": .bool(exchange.autoDelete), "vhost": "/"]),
                    "bindingVersion": Self.bindingVersion,
                ])]),
            ]
            if let keys = typesByExchange[exchange.name] {
                channel["messages"] = channelMessages(keys)
                operations["publish.\(exchange.name)"] = .object([
                    "action": "send", "channel": .object(["$ref": .string("#/channels/\(Self.pointer(id))")]),
                    "title": .string("publish to \(exchange.name)"), "messages": refs(keys, channel: id),
                ])
            }
            channels[id] = .object(channel)
        }
        for queue in queues {
            let id = "queue.\(queue.name)"
            let feeding = bindings.filter { $0.queue == queue.name }
            var channel: [String: JSONValue] = [
                "address": .string(queue.name),
                "title": .string("queue \(queue.name)"),
                "bindings": .object(["amqp": .object([
                    "is": "queue",
                    "queue": .object(["name": .string(queue.name), "durable": .bool(queue.durable), "exclusive": false,
                                      "autoDelete": .bool(queue.autoDelete), "vhost": "/"]),
                    "bindingVersion": Self.bindingVersion,
                ])]),
            ]
            if !feeding.isEmpty {
                channel["x-brokerd-bindings"] = .array(feeding.map {
                    .object(["exchange": .string($0.exchange), "routingKey": .string($0.routingKey)])
                })
            }
            if !queue.arguments.isEmpty { channel["x-brokerd-arguments"] = .object(queue.arguments) }
            // What can reach the queue: every message of the exchanges bound to it (the routing key decides which
            // do at run time; AsyncAPI has no way to say so per binding).
            let keys = Array(Set(feeding.flatMap { typesByExchange[$0.exchange] ?? [] }))
            if !keys.isEmpty { channel["messages"] = channelMessages(keys) }
            var operation: [String: JSONValue] = [
                "action": "receive", "channel": .object(["$ref": .string("#/channels/\(Self.pointer(id))")]),
                "title": .string("consume from \(queue.name)"),
            ]
            if !keys.isEmpty { operation["messages"] = refs(keys, channel: id) }
            operations["consume.\(queue.name)"] = .object(operation)
            channels[id] = .object(channel)
        }

        var info: [String: JSONValue] = ["title": .string(title), "version": .string(version)]
        if let description { info["description"] = .string(description) }
        var document: [String: JSONValue] = [
            "asyncapi": "3.0.0",
            "info": .object(info),
            "defaultContentType": "application/json",
            "channels": .object(channels),
            "operations": .object(operations),
            "components": .object(["messages": .object(messages)]),
        ]
        if let server {
            document["servers"] = .object(["brokerd": .object([
                "host": .string(server), "protocol": "brokerd", "protocolVersion": .string("\(ProtocolVersion.supported.max() ?? .v1_0)"),
            ])])
        }
        return .object(document)
    }

    // MARK: - Reading

    /// Reads a document written by ``json`` or by hand to the same mapping. Everything the broker would act on is
    /// checked; each problem is an `INVALID_ARGUMENT` naming the place in the document. Parts of AsyncAPI brokerd
    /// has no use for (servers, tags, operation replies, other protocols' bindings) are ignored.
    public init(json document: JSONValue) throws(BrokerError) {
        func fail(_ place: String, _ problem: String) -> BrokerError {
            BrokerError(.invalidArgument, "AsyncAPI document, \(place): \(problem)")
        }
        guard let root = document.objectValue else { throw fail("root", "not an object") }
        guard let version = root["asyncapi"]?.stringValue else { throw fail("asyncapi", "missing; this reads AsyncAPI 3.0 documents") }
        guard version.hasPrefix("3.") else { throw fail("asyncapi", "version \(version); this reads AsyncAPI 3.x documents") }
        let info = root["info"]?.objectValue ?? [:]
        title = info["title"]?.stringValue ?? ""
        self.version = info["version"]?.stringValue ?? ""
        description = info["description"]?.stringValue
        server = nil
        exchanges = []
        queues = []
        bindings = []
        contracts = []

        /// Follows a local `$ref` (`#/components/messages/x`, `#/channels/a/messages/b`) to what it names.
        func resolve(_ value: JSONValue, _ place: String, depth: Int = 0) throws(BrokerError) -> [String: JSONValue] {
            guard let object = value.objectValue else { throw fail(place, "not an object") }
            guard let ref = object["$ref"] else { return object }
            guard let text = ref.stringValue, text.hasPrefix("#/"), depth < 8 else {
                throw fail(place, "only local references (#/components/messages/...) are supported")
            }
            guard let target = document.value(atPointer: String(text.dropFirst())) else { throw fail(place, "'\(text)' points at nothing") }
            return try resolve(target, place, depth: depth + 1)
        }
        func bool(_ object: [String: JSONValue], _ key: String, default value: Bool, _ place: String) throws(BrokerError) -> Bool {
            guard let field = object[key] else { return value }
            guard case .bool(let b) = field else { throw fail(place, "'\(key)' must be true or false") }
            return b
        }

        var types: [String: [MessageTypeContract]] = [:]  // exchange -> its types, in the order first seen
        let channels = root["channels"]?.objectValue ?? [:]
        for id in channels.keys.sorted() {
            let place = "channels.\(id)"
            let channel = try resolve(channels[id]!, place)  // a key of the dictionary being enumerated
            let amqp = channel["bindings"]?.objectValue?["amqp"]?.objectValue
            let kind = amqp?["is"]?.stringValue ?? "routingKey"
            switch kind {
            case "queue":
                let queue = amqp?["queue"]?.objectValue ?? [:]
                guard let name = queue["name"]?.stringValue ?? channel["address"]?.stringValue else {
                    throw fail(place, "a queue channel needs bindings.amqp.queue.name or an address")
                }
                var arguments: [String: JSONValue] = [:]
                if let value = channel["x-brokerd-arguments"] {
                    guard let object = value.objectValue else { throw fail(place, "'x-brokerd-arguments' must be an object") }
                    arguments = object
                }
                queues.append(Queue(name: name, durable: try bool(queue, "durable", default: true, place),
                                    autoDelete: try bool(queue, "autoDelete", default: false, place), arguments: arguments))
                if let value = channel["x-brokerd-bindings"] {
                    guard case .array(let list) = value else { throw fail(place, "'x-brokerd-bindings' must be an array") }
                    for (index, entry) in list.enumerated() {
                        guard let object = entry.objectValue, let exchange = object["exchange"]?.stringValue else {
                            throw fail("\(place).x-brokerd-bindings[\(index)]", "needs 'exchange' (and 'routingKey')")
                        }
                        bindings.append(Binding(exchange: exchange, queue: name, routingKey: object["routingKey"]?.stringValue ?? ""))
                    }
                }
            case "routingKey":
                let exchange = amqp?["exchange"]?.objectValue ?? [:]
                guard let name = exchange["name"]?.stringValue ?? channel["address"]?.stringValue else {
                    throw fail(place, "an exchange channel needs bindings.amqp.exchange.name or an address")
                }
                let typeName = exchange["type"]?.stringValue ?? "topic"
                guard let exchangeKind = ExchangeKind(name: typeName) else {
                    throw fail(place, "exchange type '\(typeName)'; brokerd has direct, fanout and topic exchanges")
                }
                exchanges.append(Exchange(name: name, kind: exchangeKind, durable: try bool(exchange, "durable", default: true, place),
                                          autoDelete: try bool(exchange, "autoDelete", default: false, place)))
                guard let listed = channel["messages"]?.objectValue else { continue }
                for key in listed.keys.sorted() {
                    let messagePlace = "\(place).messages.\(key)"
                    let message = try resolve(listed[key]!, messagePlace)  // a key of the dictionary being enumerated
                    guard let typeName = message["name"]?.stringValue, !typeName.isEmpty else {
                        throw fail(messagePlace, "a message needs 'name', the message type publishers set")
                    }
                    guard let versionText = message["x-brokerd-version"]?.stringValue, let version = ContractVersion(versionText) else {
                        throw fail(messagePlace, "a message needs 'x-brokerd-version', its version like 2.0")
                    }
                    let statusText = message["x-brokerd-status"]?.stringValue
                        ?? (message["deprecated"] == .bool(true) ? "deprecated" : "current")
                    guard let status = TypeVersionContract.Status(rawValue: statusText) else {
                        throw fail(messagePlace, "'x-brokerd-status' is '\(statusText)'; it is current, deprecated or retired")
                    }
                    var schema = message["payload"]
                    if let multi = schema?.objectValue, multi["schema"] != nil {
                        let format = multi["schemaFormat"]?.stringValue ?? ""
                        guard format.isEmpty || format.contains("schema+json") || format.contains("vnd.aai.asyncapi") else {
                            throw fail(messagePlace, "payload schemaFormat '\(format)'; brokerd checks JSON Schema payloads only")
                        }
                        schema = multi["schema"]
                    }
                    let entry = TypeVersionContract(version: version, status: status, sunset: message["x-brokerd-sunset"]?.stringValue,
                                                    replacement: message["x-brokerd-replacement"]?.stringValue, schema: schema)
                    let validates = try bool(message, "x-brokerd-validate", default: false, messagePlace)
                    var list = types[name, default: []]
                    if let index = list.firstIndex(where: { $0.name == typeName }) {
                        list[index].versions.append(entry)
                        if validates { list[index].validatesPayload = true }
                    } else {
                        list.append(MessageTypeContract(name: typeName, versions: [entry], validatesPayload: validates))
                    }
                    types[name] = list
                }
            default:
                throw fail(place, "bindings.amqp.is is '\(kind)'; it is queue or routingKey")
            }
        }
        for exchange in exchanges {
            guard let list = types[exchange.name] else { continue }
            let contract = ExchangeContract(exchange: exchange.name, types: list.map { type in
                var sorted = type
                sorted.versions.sort { $0.version < $1.version }
                return sorted
            })
            try contract.validate()
            contracts.append(contract)
        }
    }
}

extension BrokerConnection {
    /// What the broker declares and enforces, as an AsyncAPI document (admin only): durable and transient
    /// exchanges that are not built in, queues that are not exclusive, their bindings and every contract.
    public func exportAsyncAPI(title: String = "brokerd", version: String = "1.0.0", server: String? = nil) async throws -> AsyncAPIDocument {
        let exchanges = try await listExchanges().filter { !$0.builtin }.compactMap { row in
            ExchangeKind(name: row.type).map { AsyncAPIDocument.Exchange(name: row.name, kind: $0, durable: row.durable, autoDelete: row.autoDelete) }
        }
        let queueRows = try await listQueues().filter { !$0.exclusive }
        let queues = queueRows.map { row in
            AsyncAPIDocument.Queue(name: row.name, durable: row.durable, autoDelete: row.autoDelete,
                                   arguments: row.arguments.mapValues(JSONValue.init(fieldValue:)))
        }
        let names = Set(queueRows.map(\.name))
        let bindings = try await listBindings().filter { names.contains($0.destination) && !$0.source.isEmpty }.map {
            AsyncAPIDocument.Binding(exchange: $0.source, queue: $0.destination, routingKey: $0.routingKey)
        }
        let contracts = try await allContracts()
        return AsyncAPIDocument(title: title, version: version, server: server, exchanges: exchanges, queues: queues,
                                bindings: bindings, contracts: contracts)
    }

    /// Declares what `document` describes, in dependency order: exchanges, queues, bindings, then the contracts
    /// (each as ``applyContract(_:force:)``: retiring a version still in use needs `force`). Declaring what
    /// exists with the same properties changes nothing, so a service may apply its document at every start.
    /// Returns the clients a forced contract now refuses.
    @discardableResult
    public func apply(_ document: AsyncAPIDocument, force: Bool = false) async throws -> [CensusRow] {
        for exchange in document.exchanges {
            try await declareExchange(exchange.name, type: exchange.kind, durable: exchange.durable, autoDelete: exchange.autoDelete)
        }
        for queue in document.queues {
            var arguments: FieldTable = [:]
            for (key, value) in queue.arguments {
                guard let field = value.fieldValue else {
                    throw BrokerError(.invalidArgument, "queue '\(queue.name)': argument \(key) is \(value.summary), which a queue argument cannot be")
                }
                arguments[key] = field
            }
            try await declareQueue(queue.name, durable: queue.durable, autoDelete: queue.autoDelete, arguments: arguments)
        }
        for binding in document.bindings {
            try await bind(queue: binding.queue, exchange: binding.exchange, key: binding.routingKey)
        }
        var broken: [CensusRow] = []
        for contract in document.contracts { broken += try await applyContract(contract, force: force) }
        return broken
    }
}
