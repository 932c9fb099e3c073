import ArgumentParser
import BrokerClient
import WireProtocol

extension Brokerctl {
    /// `brokerctl close connection ID`: named `CloseCommand` so it does not shadow WireProtocol's `Close` frame.
    struct CloseCommand: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "close",
            abstract: "Close things in the broker.",
            subcommands: [Connection.self])
    }
}

extension Brokerctl.CloseCommand {
    struct Connection: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Close a client connection (its id from 'brokerctl list connections').",
            discussion: """
                The client receives close 320 (CONNECTION_FORCED) with the reason; its unacknowledged messages go \
                back to their queues. A client with automatic recovery reconnects.
                """)

        @Argument(help: "Connection id, as 'list connections' shows it.") var id: Int64
        @Option(help: "Why, as the client will be told (at most 1000 bytes).") var reason = "closed by an operator"
        @OptionGroup var connection: ConnectionOptions

        func validate() throws {
            guard id >= 0 else { throw ValidationError("the connection id must not be negative") }
            guard !reason.isEmpty, reason.utf8.count <= 1000 else { throw ValidationError("--reason must be 1 to 1000 bytes") }
        }

        func run() async throws {
            _ = try await connection.run { try await $0.manage("connection.close", ["id": .int(id), "reason": .string(reason)]) }
            print("closed connection \(id)")
        }
    }
}
