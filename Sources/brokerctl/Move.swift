import ArgumentParser
import BrokerClient
import WireProtocol

extension Brokerctl {
    struct Move: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Move ready messages from one queue to another, in order, without loss.",
            discussion: """
                For example, back from a dead-letter queue to the queue they died in:
                  brokerctl move trips.dead trips
                Messages keep their properties and routing key. Stops early if the destination is full \
                (x-overflow reject-publish); what was not moved stays in the source.
                """)

        @Argument(help: "Queue to take messages from.") var source: String
        @Argument(help: "Queue to put them in.") var destination: String
        @Option(help: "How many messages at most (default: all).") var count: Int?
        @OptionGroup var connection: ConnectionOptions

        func validate() throws {
            try usage { try NameRules.validateName(source, kind: "queue") }
            try usage { try NameRules.validateName(destination, kind: "queue") }
            if let count, count < 1 { throw ValidationError("--count must be at least 1") }
        }

        func run() async throws {
            let result = try await connection.run { try await $0.move(from: source, to: destination, count: count) }
            print("moved \(result.moved) messages from '\(source)' to '\(destination)' (\(result.remaining) left in '\(source)')")
            if let stopped = result.stopped {
                throw Failure(error: BrokerError(.resourceError, "stopped early: \(stopped)"), address: connection.address).exit()
            }
        }
    }
}
