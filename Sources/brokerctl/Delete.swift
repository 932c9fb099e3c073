import ArgumentParser
import BrokerClient
import WireProtocol

extension Brokerctl {
    struct Delete: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Delete a queue or an exchange.", subcommands: [Queue.self, Exchange.self])
    }
}

extension Brokerctl.Delete {
    struct Queue: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Delete a queue and the messages in it.")

        @Argument(help: "Queue name.") var name: String
        @Flag(help: "Only if it has no consumers.") var ifUnused = false
        @Flag(help: "Only if it has no ready messages.") var ifEmpty = false
        @OptionGroup var connection: ConnectionOptions

        func validate() throws { try usage { try NameRules.validateName(name, kind: "queue") } }

        func run() async throws {
            let count = try await connection.run { try await $0.deleteQueue(name, ifUnused: ifUnused, ifEmpty: ifEmpty) }
            print("queue '\(name)' deleted with \(count) ready messages")
        }
    }

    struct Exchange: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Delete an exchange and its bindings.")

        @Argument(help: "Exchange name.") var name: String
        @Flag(help: "Only if it has no bindings.") var ifUnused = false
        @OptionGroup var connection: ConnectionOptions

        func validate() throws { try usage { try NameRules.validateName(name, kind: "exchange") } }

        func run() async throws {
            try await connection.run { try await $0.deleteExchange(name, ifUnused: ifUnused) }
            print("exchange '\(name)' deleted")
        }
    }
}
