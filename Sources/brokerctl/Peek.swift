import ArgumentParser
import BrokerClient
import WireProtocol

extension Brokerctl {
    struct Peek: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Show messages at the head of a queue without taking them.",
            discussion: "The messages stay exactly as they were: same position, no redelivered flag, no delivery counted.")

        @Argument(help: "Queue name.") var queue: String
        @Option(help: "How many messages at most (up to 1000).") var count = 1
        @OptionGroup var output: OutputOptions
        @OptionGroup var connection: ConnectionOptions

        func validate() throws {
            try validateMessageCommand(queue: queue, count: count, maximum: 1000, output: output)
        }

        func run() async throws {
            let rows = try await connection.run { try encodeRows(try await $0.peek(queue: queue, count: count)) }
            try printMessages(rows, queue: queue, output: output)
        }
    }
}
