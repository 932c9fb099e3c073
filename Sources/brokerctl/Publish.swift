import ArgumentParser
import BrokerClient
import Foundation
import NIOCore
import WireProtocol

extension Brokerctl {
    struct Publish: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Publish one message and wait for the broker's confirm.",
            discussion: """
                The body is the BODY argument, or standard input when it is absent. The message goes through EXCHANGE \
                (default: the default exchange, which routes to the queue named by the routing key). Exits 65 if the \
                broker refuses the message (a full queue) or, with --mandatory, if no queue takes it.
                """)

        @Option(help: "Exchange ('' is the default exchange).") var exchange = ""
        @Option(help: "Routing key.") var routingKey: String
        @Argument(help: "Message body (default: read standard input).") var body: String?

        @Flag(help: "Persistent: written to disk in durable queues before the confirm.") var persistent = false
        @Flag(help: "Fail unless some queue takes the message.") var mandatory = false
        @Option(help: "Content type, e.g. application/json.") var contentType: String?
        @Option(help: "Message id.") var messageId: String?
        @Option(help: "Correlation id.") var correlationId: String?
        @Option(help: "Reply-to queue.") var replyTo: String?
        @Option(help: "Message type name.") var type: String?
        @Option(help: "Message type version.") var typeVersion: UInt16?
        @Option(help: "Expiration in milliseconds.") var expiration: UInt32?
        @Option(help: "Priority (0-255).") var priority: UInt8?
        @Option(name: .customLong("header"), help: ArgumentHelp("A header (repeatable).", valueName: "key=value"))
        var headers: [String] = []

        @OptionGroup var connection: ConnectionOptions

        func validate() throws {
            if !exchange.isEmpty { try usage { try NameRules.validateName(exchange, kind: "exchange") } }
            try usage { try NameRules.validateKey(routingKey) }
            _ = try parseTable(headers, option: "--header")
        }

        func run() async throws {
            let bytes = body.map { ByteBuffer(string: $0) } ?? ByteBuffer(bytes: Array(FileHandle.standardInput.readDataToEndOfFile()))
            let headerTable = try parseTable(headers, option: "--header")
            let properties = MessageProperties(
                messageId: messageId, correlationId: correlationId, replyTo: replyTo, contentType: contentType, type: type,
                typeVersion: typeVersion, timestamp: Int64(Date().timeIntervalSince1970), expiration: expiration,
                persistent: persistent, priority: priority, headers: headerTable.isEmpty ? nil : headerTable)
            let returned = try await connection.run { client -> ReturnedMessage? in
                try await client.enableConfirms()
                let watcher = Task { () -> ReturnedMessage? in
                    for await message in client.returns { return message }
                    return nil
                }
                defer { watcher.cancel() }
                try await client.publish(exchange: exchange, routingKey: routingKey, body: bytes, properties: properties, mandatory: mandatory)
                guard mandatory else { return nil }
                // The broker sends a return before the confirm of the same message, so by now it is in the stream.
                try await Task.sleep(for: .milliseconds(100))
                watcher.cancel()
                return await watcher.value
            }
            if let returned {
                throw Failure(error: BrokerError(returned.code, "no queue took the message (\(returned.text))"), address: connection.address).exit()
            }
            print("published \(bytes.readableBytes) bytes to '\(exchange.isEmpty ? "(default)" : exchange)' with key '\(routingKey)' (confirmed)")
        }
    }
}
