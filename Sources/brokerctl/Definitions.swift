import ArgumentParser
import BrokerClient
import Foundation
import WireProtocol

extension Brokerctl {
    struct Definitions: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Export or import the broker's definitions: exchanges, queues with their arguments, bindings, users.",
            discussion: """
                For backups and for moving to another broker. Users travel as their password hashes (PBKDF2-SHA256, \
                never the passwords), with their permissions and limits. Messages are not part of it. Exclusive \
                queues (owned by a connection) and the built-in exchanges are left out.
                """,
            subcommands: [Export.self, Import.self])
    }
}

/// The definitions file: JSON, stable key order, documented in docs/operations.md ("Definitions").
struct DefinitionsDocument: Codable, Equatable {
    var format = 1
    var brokerdVersion: String
    var exchanges: [ExchangeDefinition] = []
    var queues: [QueueDefinition] = []
    var bindings: [BindingDefinition] = []
    var users: [UserDefinition] = []

    enum CodingKeys: String, CodingKey {
        case format, exchanges, queues, bindings, users
        case brokerdVersion = "brokerd_version"
    }

    struct ExchangeDefinition: Codable, Equatable {
        var name: String
        var type: String
        var durable: Bool
        var autoDelete: Bool
        enum CodingKeys: String, CodingKey { case name, type, durable, autoDelete = "auto_delete" }
    }

    struct QueueDefinition: Codable, Equatable {
        var name: String
        var durable: Bool
        var autoDelete: Bool
        var arguments: [String: ArgumentValue]
        enum CodingKeys: String, CodingKey { case name, durable, arguments, autoDelete = "auto_delete" }
    }

    struct BindingDefinition: Codable, Equatable {
        var source: String
        var destination: String
        var routingKey: String
        enum CodingKeys: String, CodingKey { case source, destination, routingKey = "routing_key" }
    }

    struct UserDefinition: Codable, Equatable {
        var name: String
        var admin: Bool
        var loopbackOnly: Bool
        var password: PasswordHash
        /// nil: full access (no permissions set).
        var permissions: Permissions?
        var limits: [String: Int64]
        enum CodingKeys: String, CodingKey { case name, admin, password, permissions, limits, loopbackOnly = "loopback_only" }

        struct PasswordHash: Codable, Equatable {
            var algorithm = "pbkdf2-sha256"
            var rounds: Int64
            /// Base64.
            var salt: String
            var hash: String
        }

        struct Permissions: Codable, Equatable {
            var configure: String
            var write: String
            var read: String
        }
    }

    /// A queue argument's value: what declare arguments hold (docs/protocol.md §8.2).
    enum ArgumentValue: Codable, Equatable {
        case bool(Bool)
        case int(Int64)
        case double(Double)
        case string(String)

        init(from decoder: any Decoder) throws {
            let container = try decoder.singleValueContainer()
            if let value = try? container.decode(Bool.self) { self = .bool(value) }
            else if let value = try? container.decode(Int64.self) { self = .int(value) }
            else if let value = try? container.decode(Double.self) { self = .double(value) }
            else if let value = try? container.decode(String.self) { self = .string(value) }
            else { throw DecodingError.dataCorruptedError(in: container, debugDescription: "a queue argument must be a boolean, number or string") }
        }

        func encode(to encoder: any Encoder) throws {
            var container = encoder.singleValueContainer()
            switch self {
            case .bool(let v): try container.encode(v)
            case .int(let v): try container.encode(v)
            case .double(let v): try container.encode(v)
            case .string(let v): try container.encode(v)
            }
        }

        init?(_ value: FieldValue) {
            switch value {
            case .bool(let v): self = .bool(v)
            case .int(let v): self = .int(v)
            case .double(let v): self = .double(v)
            case .string(let v): self = .string(v)
            default: return nil
            }
        }

        var fieldValue: FieldValue {
            switch self {
            case .bool(let v): .bool(v)
            case .int(let v): .int(v)
            case .double(let v): .double(v)
            case .string(let v): .string(v)
            }
        }
    }

    static let limitKeys = ["max_queues", "max_bindings", "max_consumers"]

    /// Reads the broker's definitions over the management methods, page by page.
    static func read(from client: BrokerConnection) async throws -> DefinitionsDocument {
        var document = DefinitionsDocument(brokerdVersion: WireProtocol.brokerdVersion)
        for row in try await client.list("exchanges") where row["builtin"]?.boolValue != true {
            document.exchanges.append(ExchangeDefinition(name: row["name"]?.stringValue ?? "", type: row["type"]?.stringValue ?? "direct",
                                                         durable: row["durable"]?.boolValue ?? false,
                                                         autoDelete: row["auto_delete"]?.boolValue ?? false))
        }
        for row in try await client.list("queues") where row["exclusive"]?.boolValue != true {
            var arguments: [String: ArgumentValue] = [:]
            if case .table(let table)? = row["arguments"] {
                for (key, value) in table {
                    guard let argument = ArgumentValue(value) else {
                        throw ValidationError("queue '\(row["name"]?.stringValue ?? "")': argument \(key) has a value a definitions file cannot hold")
                    }
                    arguments[key] = argument
                }
            }
            document.queues.append(QueueDefinition(name: row["name"]?.stringValue ?? "", durable: row["durable"]?.boolValue ?? false,
                                                   autoDelete: row["auto_delete"]?.boolValue ?? false, arguments: arguments))
        }
        let exported = Set(document.queues.map(\.name))
        for row in try await client.list("bindings") where exported.contains(row["destination"]?.stringValue ?? "") {
            document.bindings.append(BindingDefinition(source: row["source"]?.stringValue ?? "", destination: row["destination"]?.stringValue ?? "",
                                                       routingKey: row["routing_key"]?.stringValue ?? ""))
        }
        for row in try await client.allRows("user.export") {
            func bytes(_ key: String) -> String {
                if case .bytes(let b)? = row[key] { Data(b).base64EncodedString() } else { "" }
            }
            let permissions = row["has_permissions"]?.boolValue == true
                ? UserDefinition.Permissions(configure: row["configure"]?.stringValue ?? "", write: row["write"]?.stringValue ?? "",
                                             read: row["read"]?.stringValue ?? "")
                : nil
            var limits: [String: Int64] = [:]
            for key in limitKeys { if let value = row[key]?.intValue { limits[key] = value } }
            document.users.append(UserDefinition(
                name: row["name"]?.stringValue ?? "", admin: row["admin"]?.boolValue ?? false, loopbackOnly: row["loopback_only"]?.boolValue ?? false,
                password: .init(rounds: row["password_rounds"]?.intValue ?? 0, salt: bytes("password_salt"), hash: bytes("password_hash")),
                permissions: permissions, limits: limits))
        }
        return document
    }

    var summary: String {
        "\(exchanges.count) exchanges, \(queues.count) queues, \(bindings.count) bindings, \(users.count) users"
    }
}

extension Brokerctl.Definitions {
    struct Export: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Write the definitions as JSON to a file, or to stdout.")

        @Argument(help: ArgumentHelp("File to write (default: stdout).", valueName: "file")) var file: String?
        @Flag(help: "Write RabbitMQ's definitions format instead, for 'rabbitmqctl import_definitions' (docs/operations.md, \"Scaling out\").")
        var rabbitmq = false
        @Option(help: "With --rabbitmq: the type durable queues get, classic or quorum (replicated; what a cluster is for).")
        var queueType: RabbitMQDefinitions.QueueType = .quorum
        @OptionGroup var connection: ConnectionOptions

        func validate() throws {
            if !rabbitmq && queueType != .quorum { throw ValidationError("--queue-type goes with --rabbitmq") }
        }

        func run() async throws {
            let document = try await connection.run { try await DefinitionsDocument.read(from: $0) }
            if rabbitmq {
                let converted = RabbitMQDefinitions(document, queueType: queueType)
                try writeOutput(try documentJSON(converted), to: file)
                if !converted.users.isEmpty {
                    FileHandle.standardError.write(Data("""
                        brokerctl: RabbitMQ cannot use brokerd's password hashes: the \(converted.users.count) users are exported without a \
                        password; set each with 'rabbitmqctl change_password NAME PASSWORD' after the import

                        """.utf8))
                }
                if let file { print("exported \(document.summary) in RabbitMQ's format to \(file)") }
                return
            }
            try writeOutput(try documentJSON(document), to: file)
            if let file { print("exported \(document.summary) to \(file)") }
        }
    }

    struct Import: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Declare the definitions of a file made by 'definitions export' (- for stdin).",
            discussion: """
                Exchanges, then queues, then bindings are declared as a client declares them: what exists with the \
                same settings is left as it is, so an import can be run again. Users are created or replaced, \
                with their password hashes, permissions and limits. The first refusal stops the import with the \
                object it was about and how many definitions were applied before it (exit 65).
                """)

        @Argument(help: ArgumentHelp("Definitions file, or - for stdin.", valueName: "file")) var file: String
        @OptionGroup var connection: ConnectionOptions

        func run() async throws {
            let data = try readInput(file)
            let document: DefinitionsDocument
            do {
                document = try JSONDecoder().decode(DefinitionsDocument.self, from: data)
            } catch {
                FileHandle.standardError.write(Data("brokerctl: \(file) is not a brokerd definitions file: \(Self.describe(error))\n".utf8))
                throw ExitCode(65)  // EX_DATAERR
            }
            guard document.format == 1 else {
                FileHandle.standardError.write(Data("brokerctl: \(file) has definitions format \(document.format); this brokerctl reads format 1\n".utf8))
                throw ExitCode(65)
            }
            try await connection.run { client in
                var applied = 0
                func step(_ what: String, _ body: () async throws -> Void) async throws {
                    do {
                        try await body()
                        applied += 1
                    } catch let error as BrokerError {
                        throw Failure(error: BrokerError(error.code, "import stopped at \(what) (\(applied) definitions applied before it): \(error.message)"),
                                      address: connection.address)
                    }
                }
                for exchange in document.exchanges {
                    guard let kind = ExchangeKind.allCases.first(where: { $0.description == exchange.type }) else {
                        throw Failure(error: BrokerError(.invalidArgument, "exchange '\(exchange.name)' has unknown type '\(exchange.type)'"), address: connection.address)
                    }
                    try await step("exchange '\(exchange.name)'") {
                        try await client.declareExchange(exchange.name, type: kind, durable: exchange.durable, autoDelete: exchange.autoDelete)
                    }
                }
                for queue in document.queues {
                    try await step("queue '\(queue.name)'") {
                        try await client.declareQueue(queue.name, durable: queue.durable, autoDelete: queue.autoDelete,
                                                      arguments: queue.arguments.mapValues(\.fieldValue))
                    }
                }
                for binding in document.bindings {
                    try await step("binding of '\(binding.destination)' to '\(binding.source)'") {
                        try await client.bind(queue: binding.destination, exchange: binding.source, key: binding.routingKey)
                    }
                }
                for user in document.users {
                    guard let salt = Data(base64Encoded: user.password.salt), let hash = Data(base64Encoded: user.password.hash),
                          user.password.algorithm == "pbkdf2-sha256" else {
                        throw Failure(error: BrokerError(.invalidArgument, "user '\(user.name)': the password must be a pbkdf2-sha256 hash with base64 salt and hash"),
                                      address: connection.address)
                    }
                    var arguments: FieldTable = [
                        "name": .string(user.name), "admin": .bool(user.admin), "loopback_only": .bool(user.loopbackOnly),
                        "password_rounds": .int(user.password.rounds), "password_salt": .bytes(Array(salt)), "password_hash": .bytes(Array(hash)),
                        "has_permissions": .bool(user.permissions != nil),
                    ]
                    if let permissions = user.permissions {
                        arguments["configure"] = .string(permissions.configure)
                        arguments["write"] = .string(permissions.write)
                        arguments["read"] = .string(permissions.read)
                    }
                    for (key, value) in user.limits where DefinitionsDocument.limitKeys.contains(key) { arguments[key] = .int(value) }
                    try await step("user '\(user.name)'") { _ = try await client.manage("user.import", arguments) }
                }
            }
            print("imported \(document.summary)")
        }

        /// A decoding error as one line naming where in the file it is.
        static func describe(_ error: any Error) -> String {
            guard let error = error as? DecodingError else { return "\(error)" }
            func path(_ context: DecodingError.Context) -> String {
                context.codingPath.isEmpty ? "the top level" : context.codingPath.map(\.stringValue).joined(separator: ".")
            }
            switch error {
            case .keyNotFound(let key, let context): return "missing '\(key.stringValue)' at \(path(context))"
            case .typeMismatch(_, let context), .valueNotFound(_, let context), .dataCorrupted(let context):
                return "\(context.debugDescription) (at \(path(context)))"
            @unknown default: return "\(error)"
            }
        }
    }
}

/// brokerd's definitions in RabbitMQ's definitions format (what `rabbitmqctl export_definitions` writes and
/// `import_definitions` reads), for moving to a RabbitMQ cluster (docs/operations.md, "Scaling out"): the default
/// virtual host `/`; durable queues as quorum queues unless told otherwise (quorum queues are durable, never
/// auto-delete, so other queues stay classic); users with their tags (`administrator` for brokerd's admins) and
/// permissions, but no password (RabbitMQ's hashes are not PBKDF2), except `guest`, which RabbitMQ has already;
/// brokerd's per-user limits and loopback-only flags have no RabbitMQ counterpart in this format and are left out.
struct RabbitMQDefinitions: Encodable {
    enum QueueType: String, CaseIterable, ExpressibleByArgument { case classic, quorum }

    struct User: Encodable {
        var name: String
        var passwordHash = ""
        var hashingAlgorithm = "rabbit_password_hashing_sha256"
        var tags: [String]
        enum CodingKeys: String, CodingKey { case name, tags, passwordHash = "password_hash", hashingAlgorithm = "hashing_algorithm" }
    }
    struct Permission: Encodable {
        var user: String
        var vhost = "/"
        var configure: String
        var write: String
        var read: String
    }
    struct Queue: Encodable {
        var name: String
        var vhost = "/"
        var durable: Bool
        var autoDelete: Bool
        var arguments: [String: DefinitionsDocument.ArgumentValue]
        enum CodingKeys: String, CodingKey { case name, vhost, durable, arguments, autoDelete = "auto_delete" }
    }
    struct Exchange: Encodable {
        var name: String
        var vhost = "/"
        var type: String
        var durable: Bool
        var autoDelete: Bool
        var `internal` = false
        var arguments: [String: DefinitionsDocument.ArgumentValue] = [:]
        enum CodingKeys: String, CodingKey { case name, vhost, type, durable, arguments, `internal`, autoDelete = "auto_delete" }
    }
    struct Binding: Encodable {
        var source: String
        var vhost = "/"
        var destination: String
        var destinationType = "queue"
        var routingKey: String
        var arguments: [String: DefinitionsDocument.ArgumentValue] = [:]
        enum CodingKeys: String, CodingKey {
            case source, vhost, destination, arguments
            case destinationType = "destination_type", routingKey = "routing_key"
        }
    }
    struct VirtualHost: Encodable { var name = "/" }

    var users: [User]
    var vhosts = [VirtualHost()]
    var permissions: [Permission]
    var queues: [Queue]
    var exchanges: [Exchange]
    var bindings: [Binding]

    init(_ document: DefinitionsDocument, queueType: QueueType) {
        // RabbitMQ has its own guest (loopback-only, as brokerd's): importing brokerd's, without its password,
        // would lock it out.
        let users = document.users.filter { $0.name != "guest" }
        self.users = users.map { User(name: $0.name, tags: $0.admin ? ["administrator"] : []) }
        // A brokerd user without permissions may do anything: RabbitMQ says that with ".*" for each.
        permissions = users.map { user in
            let p = user.permissions
            return Permission(user: user.name, configure: p?.configure ?? ".*", write: p?.write ?? ".*", read: p?.read ?? ".*")
        }
        queues = document.queues.map { queue in
            var arguments = queue.arguments
            arguments["x-incompatible"] = nil  // brokerd's own (contracts); RabbitMQ would refuse it
            if queueType == .quorum && queue.durable && !queue.autoDelete { arguments["x-queue-type"] = .string("quorum") }
            return Queue(name: queue.name, durable: queue.durable, autoDelete: queue.autoDelete, arguments: arguments)
        }
        exchanges = document.exchanges.map { Exchange(name: $0.name, type: $0.type, durable: $0.durable, autoDelete: $0.autoDelete) }
        bindings = document.bindings.map { Binding(source: $0.source, destination: $0.destination, routingKey: $0.routingKey) }
    }
}
