import ArgumentParser
import BrokerClient
import WireProtocol

extension Brokerctl {
    struct Declare: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Declare a queue or an exchange (succeeds if it exists with the same settings).",
            subcommands: [Queue.self, Exchange.self])
    }
}

extension Brokerctl.Declare {
    struct Queue: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Declare a queue.",
            discussion: """
                Arguments are the queue arguments of docs/protocol.md, as key=value (numbers become integers), e.g.
                  brokerctl declare queue trips --durable --argument x-max-length=100000 --argument x-overflow=reject-publish
                """)

        @Argument(help: "Queue name.") var name: String
        @Flag(help: "Survive a broker restart.") var durable = false
        @Flag(help: "Delete the queue when its last consumer goes.") var autoDelete = false
        @Option(name: .customLong("argument"), help: ArgumentHelp("A queue argument (repeatable).", valueName: "key=value"))
        var arguments: [String] = []
        @OptionGroup var connection: ConnectionOptions

        func validate() throws {
            try usage { try NameRules.validateName(name, kind: "queue") }
            _ = try parseTable(arguments, option: "--argument")
        }

        func run() async throws {
            let table = try parseTable(arguments, option: "--argument")
            let info = try await connection.run {
                try await $0.declareQueue(name, durable: durable, autoDelete: autoDelete, arguments: table)
            }
            print("queue '\(info.name)' declared (\(info.messageCount) messages, \(info.consumerCount) consumers)")
        }
    }

    struct Exchange: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Declare an exchange.")

        @Argument(help: "Exchange name.") var name: String
        @Option(help: "Exchange type.") var type: ExchangeTypeArgument = .direct
        @Flag(help: "Survive a broker restart.") var durable = false
        @Flag(help: "Delete the exchange when its last binding goes.") var autoDelete = false
        @OptionGroup var connection: ConnectionOptions

        func validate() throws { try usage { try NameRules.validateName(name, kind: "exchange") } }

        func run() async throws {
            try await connection.run { try await $0.declareExchange(name, type: type.kind, durable: durable, autoDelete: autoDelete) }
            print("exchange '\(name)' (\(type)) declared")
        }
    }
}

/// `--type` of `declare exchange`.
enum ExchangeTypeArgument: String, ExpressibleByArgument, CaseIterable {
    case direct, fanout, topic

    var kind: ExchangeKind {
        switch self {
        case .direct: .direct
        case .fanout: .fanout
        case .topic: .topic
        }
    }
}
