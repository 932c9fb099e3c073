import ArgumentParser
import BrokerClient
import WireProtocol

/// The arguments `bind` and `unbind` share.
struct BindingArguments: ParsableArguments {
    @Argument(help: "Exchange name.") var exchange: String
    @Argument(help: "Queue name.") var queue: String
    @Option(help: "Routing key (a topic pattern for topic exchanges).") var routingKey = ""

    func validate() throws {
        try usage { try NameRules.validateName(exchange, kind: "exchange") }
        try usage { try NameRules.validateName(queue, kind: "queue") }
        try usage { try NameRules.validateKey(routingKey) }
    }
}

extension Brokerctl {
    struct Bind: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Bind a queue to an exchange.")

        @OptionGroup var binding: BindingArguments
        @OptionGroup var connection: ConnectionOptions

        func run() async throws {
            try await connection.run { try await $0.bind(queue: binding.queue, exchange: binding.exchange, key: binding.routingKey) }
            print("bound '\(binding.queue)' to '\(binding.exchange)' with key '\(binding.routingKey)'")
        }
    }

    struct Unbind: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Remove a queue's binding to an exchange.")

        @OptionGroup var binding: BindingArguments
        @OptionGroup var connection: ConnectionOptions

        func run() async throws {
            try await connection.run { try await $0.unbind(queue: binding.queue, exchange: binding.exchange, key: binding.routingKey) }
            print("unbound '\(binding.queue)' from '\(binding.exchange)' with key '\(binding.routingKey)'")
        }
    }
}
