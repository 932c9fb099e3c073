import ArgumentParser
import BrokerClient
import NIOCore
import WireProtocol

/// Columns of a shown message (get and peek).
let messageColumns = PeekedMessage.columns

/// The checks `get` and `peek` share: queue name, count range, columns.
func validateMessageCommand(queue: String, count: Int, maximum: Int, output: OutputOptions) throws {
    try usage { try NameRules.validateName(queue, kind: "queue") }
    guard (1...maximum).contains(count) else { throw ValidationError("--count must be from 1 to \(maximum)") }
    _ = try Renderer(format: output.format, requested: output.columnList).columns(defaults: messageColumns, available: messageColumns)
}

/// Prints messages (get and peek), or says the queue had none.
func printMessages(_ rows: [FieldTable], queue: String, output: OutputOptions) throws {
    let renderer = Renderer(format: output.format, requested: output.columnList)
    let columns = try renderer.columns(defaults: messageColumns, available: messageColumns)
    if rows.isEmpty && output.format == .table {
        print("queue '\(queue)' has no ready messages")
    } else {
        print(renderer.render(rows, columns: columns))
    }
}

extension Brokerctl {
    struct Get: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Take messages from the head of a queue and show them.",
            discussion: """
                Each message is acknowledged after it is received, so it leaves the queue. To look without \
                removing, use peek; to show and keep, use --requeue (they come back marked redelivered).
                """)

        @Argument(help: "Queue name.") var queue: String
        @Option(help: "How many messages at most.") var count = 1
        @Flag(help: "Put the messages back (nack with requeue) instead of acknowledging them.") var requeue = false
        @OptionGroup var output: OutputOptions
        @OptionGroup var connection: ConnectionOptions

        func validate() throws {
            try validateMessageCommand(queue: queue, count: count, maximum: 10_000, output: output)
        }

        func run() async throws {
            let rows = try await connection.run { client in
                var taken: [Message] = []
                while taken.count < count, let message = try await client.get(queue: queue) { taken.append(message) }
                // Settled once, all together, after every message is in hand.
                if let last = taken.last {
                    if requeue {
                        try await client.nack(last.deliveryTag, multiple: true, requeue: true)
                    } else {
                        try await client.ack(last.deliveryTag, multiple: true)
                    }
                }
                return try encodeRows(taken.map(Self.row))
            }
            try printMessages(rows, queue: queue, output: output)
        }

        /// A message taken, shown like a peeked one.
        static func row(_ message: Message) -> PeekedMessage {
            PeekedMessage(exchange: message.exchange, routingKey: message.routingKey, redelivered: message.redelivered,
                          body: Array(buffer: message.body), properties: message.properties.table)
        }
    }
}
