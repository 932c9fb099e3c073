import ArgumentParser
import BrokerClient
import NIOCore
import WireProtocol

/// Columns of a shown message (get and peek).
let messageColumns = ["exchange", "routing_key", "redelivered", "body_size", "body", "properties"]

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
            try usage { try NameRules.validateName(queue, kind: "queue") }
            guard (1...10_000).contains(count) else { throw ValidationError("--count must be from 1 to 10000") }
            _ = try Renderer(format: output.format, requested: output.columnList).columns(defaults: messageColumns, available: messageColumns)
        }

        func run() async throws {
            let renderer = Renderer(format: output.format, requested: output.columnList)
            let columns = try renderer.columns(defaults: messageColumns, available: messageColumns)
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
                return taken.map(Self.row)
            }
            if rows.isEmpty && output.format == .table {
                print("queue '\(queue)' has no ready messages")
            } else {
                print(renderer.render(rows, columns: columns))
            }
        }

        static func row(_ message: Message) -> FieldTable {
            [
                "exchange": .string(message.exchange),
                "routing_key": .string(message.routingKey),
                "redelivered": .bool(message.redelivered),
                "body_size": .int(Int64(message.body.readableBytes)),
                "body": .bytes(Array(buffer: message.body)),
                "properties": .table(message.properties.table),
            ]
        }
    }

    struct Peek: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Show messages at the head of a queue without taking them.",
            discussion: "The messages stay exactly as they were: same position, no redelivered flag, no delivery counted.")

        @Argument(help: "Queue name.") var queue: String
        @Option(help: "How many messages at most (up to 1000).") var count = 1
        @OptionGroup var output: OutputOptions
        @OptionGroup var connection: ConnectionOptions

        func validate() throws {
            try usage { try NameRules.validateName(queue, kind: "queue") }
            guard (1...1000).contains(count) else { throw ValidationError("--count must be from 1 to 1000") }
            _ = try Renderer(format: output.format, requested: output.columnList).columns(defaults: messageColumns, available: messageColumns)
        }

        func run() async throws {
            let renderer = Renderer(format: output.format, requested: output.columnList)
            let columns = try renderer.columns(defaults: messageColumns, available: messageColumns)
            let result = try await connection.run { try await $0.manage("queue.peek", ["queue": .string(queue), "count": .int(Int64(count))]) }
            var rows: [FieldTable] = []
            if case .array(let values)? = result["rows"] {
                for case .table(let row) in values { rows.append(row) }
            }
            if rows.isEmpty && output.format == .table {
                print("queue '\(queue)' has no ready messages")
            } else {
                print(renderer.render(rows, columns: columns))
            }
        }
    }

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
            var arguments: FieldTable = ["source": .string(source), "destination": .string(destination)]
            if let count { arguments["count"] = .int(Int64(count)) }
            let result = try await connection.run { try await $0.manage("queue.move", arguments) }
            let moved = result["moved"]?.intValue ?? 0
            let remaining = result["remaining"]?.intValue ?? 0
            print("moved \(moved) messages from '\(source)' to '\(destination)' (\(remaining) left in '\(source)')")
            if let stopped = result["stopped"]?.stringValue {
                throw Failure(error: BrokerError(.resourceError, "stopped early: \(stopped)"), address: connection.address).exit()
            }
        }
    }
}
