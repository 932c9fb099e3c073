import ArgumentParser
import BrokerClient
import Foundation
import WireProtocol

extension Brokerctl {
    struct ContractCommand: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "contract",
            abstract: "Message contracts: which types and versions an exchange accepts, and who still speaks which.",
            discussion: """
                A contract lists an exchange's message types, each with its major versions and their status: \
                current, deprecated (publishers are told to upgrade) or retired (refused). docs/contracts.md \
                describes the file and the rules.
                """,
            subcommands: [Apply.self, Show.self, Delete.self, Census.self, Export.self])
    }
}

extension Brokerctl.ContractCommand {
    struct Apply: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Give exchanges the contracts in a file: contracts (JSON, one or an array), or an AsyncAPI 3.0 document.",
            discussion: """
                Retiring or dropping a version that a connected client still publishes is refused, naming the \
                clients; --force applies it anyway and lists who will now be refused. An AsyncAPI document (as \
                `contract export --asyncapi` writes) also declares its exchanges, queues and bindings first.
                """)

        @Argument(help: "The contract file (JSON), or - for standard input.") var file: String
        @Flag(help: "Retire versions even while connected clients still publish them.") var force = false
        @OptionGroup var connection: ConnectionOptions

        func run() async throws {
            let data = try readInput(file)
            if let document = try Self.asyncAPI(data, file) {
                try await connection.run { client in
                    let broken = try await client.apply(document, force: force)
                    print("applied '\(document.title)' \(document.version): \(document.exchanges.count) exchanges, \(document.queues.count) queues, "
                          + "\(document.bindings.count) bindings, \(document.contracts.count) contracts")
                    Self.report(broken)
                }
                return
            }
            let contracts = try Self.read(data, file)
            try await connection.run { client in
                for contract in contracts {
                    let broken = try await client.applyContract(contract, force: force)
                    let versions = contract.types.reduce(0) { $0 + $1.versions.count }
                    print("exchange '\(contract.exchange)': contract applied (\(contract.types.count) types, \(versions) versions)")
                    Self.report(broken)
                }
            }
        }

        static func report(_ broken: [CensusRow]) {
            for row in broken {
                print("  now refused: '\(row.client)' (connection \(row.connection), user \(row.user)) publishing \(row.type) \(row.version)")
            }
        }

        /// The file as an AsyncAPI document, if it is one (an object with an `asyncapi` member); checked whole
        /// before anything is sent.
        static func asyncAPI(_ data: Data, _ file: String) throws -> AsyncAPIDocument? {
            let json: JSONValue
            do {
                json = try data.withUnsafeBytes { try JSONValue.parse($0) }
            } catch {
                FileHandle.standardError.write(Data("brokerctl: \(file) is not JSON: \(error)\n".utf8))
                throw ExitCode(65)  // EX_DATAERR
            }
            guard json.objectValue?["asyncapi"] != nil else { return nil }
            do {
                return try AsyncAPIDocument(json: json)
            } catch {
                FileHandle.standardError.write(Data("brokerctl: \(file): \(error.message)\n".utf8))
                throw ExitCode(65)
            }
        }

        /// Reads and checks the file before anything is sent: a bad file changes nothing.
        static func read(_ data: Data, _ file: String) throws -> [ExchangeContract] {
            let decoder = JSONDecoder()
            let contracts: [ExchangeContract]
            do {
                contracts = [try decoder.decode(ExchangeContract.self, from: data)]
            } catch let single {
                guard let many = try? decoder.decode([ExchangeContract].self, from: data) else {
                    FileHandle.standardError.write(Data("brokerctl: \(file) is not a contract (or an array of contracts): \(Brokerctl.Definitions.Import.describe(single)); docs/contracts.md shows the format\n".utf8))
                    throw ExitCode(65)  // EX_DATAERR
                }
                contracts = many
            }
            do {
                for contract in contracts { try contract.validate() }
            } catch {
                FileHandle.standardError.write(Data("brokerctl: \(file): \(error.message)\n".utf8))
                throw ExitCode(65)
            }
            return contracts
        }
    }

    struct Show: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Show the contract of one exchange (or of every exchange that has one).",
            discussion: "With --format json and an exchange, prints the contract itself, in the file format apply reads.")

        @Argument(help: "Exchange name (all contracts when omitted).") var exchange: String?
        @OptionGroup var output: OutputOptions
        @OptionGroup var connection: ConnectionOptions

        static let defaults = ["exchange", "type", "version", "status", "sunset", "replacement"]

        func validate() throws {
            if let exchange { try usage { try NameRules.validateName(exchange, kind: "exchange") } }
            _ = try Renderer(format: output.format, requested: output.columnList).columns(defaults: Self.defaults, available: Self.defaults)
        }

        func run() async throws {
            if let exchange, output.format == .json, output.columnList == nil {
                let contract = try await connection.run { try await $0.contract(of: exchange) }
                try writeOutput(try documentJSON(contract), to: nil)
                return
            }
            let renderer = Renderer(format: output.format, requested: output.columnList)
            let columns = try renderer.columns(defaults: Self.defaults, available: Self.defaults)
            let rows = try await connection.run { client in
                if let exchange {
                    _ = try await client.contract(of: exchange)  // 404 with a clear text when it has none
                    return try encodeRows(try await client.listContracts().filter { $0.exchange == exchange })
                }
                return try encodeRows(try await client.listContracts())
            }
            print(renderer.render(rows, columns: columns))
        }
    }

    struct Delete: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Remove an exchange's contract: it accepts any message again.")

        @Argument(help: "Exchange name.") var exchange: String
        @OptionGroup var connection: ConnectionOptions

        func validate() throws { try usage { try NameRules.validateName(exchange, kind: "exchange") } }

        func run() async throws {
            try await connection.run { try await $0.deleteContract(of: exchange) }
            print("exchange '\(exchange)': contract removed")
        }
    }

    struct Census: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Who publishes which version of each contracted type, and which majors each consumer accepts.",
            discussion: """
                Connections that have closed stay listed (connected false) with when they last published, so a \
                version can be retired once nobody has used it for long enough. A consumer's row gives its queue and \
                the majors it accepts (version 1-2). Times are UTC.
                """)

        @Option(help: "Only this exchange.") var exchange: String?
        @OptionGroup var output: OutputOptions
        @OptionGroup var connection: ConnectionOptions

        static let defaults = ["exchange", "type", "role", "version", "status", "queue", "client", "connection", "connected", "messages", "last_seen"]

        func validate() throws {
            if let exchange { try usage { try NameRules.validateName(exchange, kind: "exchange") } }
            _ = try Renderer(format: output.format, requested: output.columnList).columns(defaults: Self.defaults, available: CensusRow.columns)
        }

        func run() async throws {
            let renderer = Renderer(format: output.format, requested: output.columnList)
            let columns = try renderer.columns(defaults: Self.defaults, available: CensusRow.columns)
            var rows = try await connection.run { try encodeRows(try await $0.contractCensus(exchange: exchange)) }
            if output.format == .table {
                // Milliseconds since the epoch read badly in a table: show them as UTC times.
                let formatter = ISO8601DateFormatter()
                for index in rows.indices {
                    for key in ["first_seen", "last_seen"] {
                        if let ms = rows[index][key]?.intValue {
                            rows[index][key] = .string(formatter.string(from: Date(timeIntervalSince1970: Double(ms) / 1000)))
                        }
                    }
                }
            }
            print(renderer.render(rows, columns: columns))
        }
    }
}

extension Brokerctl.ContractCommand {
    struct Export: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Write the contracts as a file apply reads; with --asyncapi, the broker's interfaces as an AsyncAPI 3.0 document.",
            discussion: """
                Without --asyncapi: an array of every contract, in the format `contract apply` reads. With it: exchanges \
                and queues as channels, bindings, and every contracted type's versions as messages with their \
                schemas (docs/contracts.md, "AsyncAPI"); `contract apply` reads the document back.
                """)

        @Flag(help: "Write an AsyncAPI 3.0 document.") var asyncapi = false
        @Option(help: "The document's info.title (with --asyncapi).") var title = "brokerd"
        @Option(name: .customLong("api-version"), help: "The document's info.version (with --asyncapi).") var apiVersion = "1.0.0"
        @Option(help: "host:port written as the document's server (with --asyncapi; default: the address connected to).") var server: String?
        @Option(name: [.short, .long], help: "File to write (default: stdout).") var output: String?
        @OptionGroup var connection: ConnectionOptions

        func run() async throws {
            let data: Data
            if asyncapi {
                let server = self.server ?? "\(connection.host):\(connection.port)"
                data = try documentJSON(try await connection.run { try await $0.exportAsyncAPI(title: title, version: apiVersion, server: server) }.json)
            } else {
                data = try documentJSON(try await connection.run { try await $0.allContracts() })
            }
            try writeOutput(data, to: output)
            if let output { FileHandle.standardError.write(Data("wrote \(output)\n".utf8)) }
        }
    }
}
