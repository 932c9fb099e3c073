import ArgumentParser
import BrokerClient
import WireProtocol

extension Brokerctl {
    struct List: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "List queues, exchanges, bindings, connections or consumers.",
            discussion: Kind.allCases.map(\.columnHelp).joined(separator: "\n\n")
                + "\n\nRates are messages per second over the broker's last one-second sample.")

        enum Kind: String, ExpressibleByArgument, CaseIterable {
            case queues, exchanges, bindings, connections, consumers

            var defaults: [String] {
                switch self {
                case .queues:
                    ["name", "messages_ready", "messages_unacked", "consumers", "messages_in_memory", "messages_paged", "memory_bytes",
                     "publish_rate", "deliver_rate", "state"]
                case .exchanges: ["name", "type", "durable", "auto_delete", "bindings"]
                case .bindings: ["source", "destination", "routing_key"]
                case .connections: ["id", "name", "peer", "user", "consumers", "messages_unacked", "state"]
                case .consumers: ["queue", "consumer_tag", "connection", "ack_required", "prefetch", "messages_unacked"]
                }
            }

            /// The columns of this listing for --help, wrapped to fit 80 columns (argument-parser does not indent
            /// the lines it wraps itself).
            var columnHelp: String {
                var lines = ["\(rawValue) columns (the defaults | the others):"]
                var line = " "
                for (i, column) in (defaults + extra).enumerated() {
                    let word = " " + column + (i == defaults.count - 1 && !extra.isEmpty ? " |" : (i < defaults.count + extra.count - 1 ? "," : ""))
                    if line.count + word.count > 76 {
                        lines.append(line)
                        line = " "
                    }
                    line += word
                }
                lines.append(line)
                return lines.joined(separator: "\n")
            }

            var extra: [String] {
                switch self {
                case .queues:
                    ["durable", "auto_delete", "exclusive", "owner_connection", "messages", "published", "delivered", "arguments"]
                case .exchanges: ["builtin"]
                case .bindings: []
                case .connections: ["published", "delivered", "confirm_mode", "connected_seconds"]
                case .consumers: ["connection_name", "exclusive"]
                }
            }
        }

        @Argument(help: "What to list.")
        var kind: Kind

        @OptionGroup var output: OutputOptions
        @OptionGroup var connection: ConnectionOptions

        func validate() throws {
            _ = try Renderer(format: output.format, requested: output.columnList)
                .columns(defaults: kind.defaults, available: kind.defaults + kind.extra)
        }

        func run() async throws {
            let renderer = Renderer(format: output.format, requested: output.columnList)
            let columns = try renderer.columns(defaults: kind.defaults, available: kind.defaults + kind.extra)
            let rows = try await connection.run { try await $0.list(kind.rawValue) }
            print(renderer.render(rows, columns: columns))
        }
    }
}
