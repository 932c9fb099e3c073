import ArgumentParser
import BrokerClient
import WireProtocol

extension Brokerctl {
    struct Purge: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Drop a queue's ready messages (unacknowledged ones stay).")

        @Argument(help: "Queue name.") var queue: String
        @OptionGroup var connection: ConnectionOptions

        func validate() throws { try usage { try NameRules.validateName(queue, kind: "queue") } }

        func run() async throws {
            let count = try await connection.run { try await $0.purgeQueue(queue) }
            print("purged \(count) messages from '\(queue)'")
        }
    }
}
